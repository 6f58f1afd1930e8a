#include "jobs/quantize_job.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/fault.h"
#include "common/file_util.h"
#include "common/launcher.h"
#include "common/log.h"
#include "common/mpi_comm.h"
#include "common/sha256.h"
#include "common/signals.h"
#include "coordinator/assembly.h"
#include "coordinator/coordinator.h"
#include "jobs/job_summary.h"
#include "partition/joint_selection.h"
#include "partition/plan.h"
#include "storage/activation_cache.h"
#include "storage/export.h"
#include "storage/job_layout.h"
#include "storage/job_lock.h"
#include "storage/journal.h"
#include "storage/output_folder.h"
#include "storage/safetensors.h"
#include "worker/rotation.h"
#include "storage/token_file.h"
#include "storage/tokenizer.h"
#include "worker/engine_worker.h"
#include "worker/llama_model.h"
#include "worker/threads.h"

namespace qforge::jobs {

namespace {

using nlohmann::json;

storage::QuantConfig make_quant_config(const QuantizeSpec& s) {
  storage::QuantConfig q;
  q.method = worker::method_name(s.method);
  q.bits = s.wbits;
  q.group_size = s.group_size;
  q.sym = s.sym;
  q.act_bits = s.abits;
  q.act_sym = s.act_sym;
  q.deployable = !s.faithful;
  q.block_overrides = s.overrides;
  q.calibration = {{"data", s.calib.source == kGenerateSource ? s.calib.source : fs::path(s.calib.source).filename().string()},
                   {"nsamples", s.calib.nsamples},
                   {"seqlen", s.calib.seqlen},
                   {"seed", s.calib.seed},
                   {"batch_size", s.batch_size},
                   {"recipe", s.recipe.describe()},
                   {"fp64_matrices", s.fp64_matrices}};
  if (s.gptq.enabled) {
    q.calibration["rounding"] = {{"method", "gptq"}, {"damp", s.gptq.damp}, {"act_order", s.gptq.act_order},
                                 {"block_size", s.gptq.block_size}};
  }
  if (s.method == worker::Method::kRtn && s.gptq.enabled) q.calibration["recipe"] = "RTN's min/max grid, codes by GPTQ";
  if (s.method == worker::Method::kRtn && !s.gptq.enabled) {
    q.calibration = {{"recipe", "round to nearest (min/max), no calibration"}};
  }
  return q;
}

// The output's config as the job will write it, for the questions asked before calibrating (which export
// formats will take it); the rotation record says only what it will contain.
storage::LlamaConfig planned_output_config(const QuantizeSpec& s) {
  storage::LlamaConfig c = s.model_config;
  c.quant = make_quant_config(s);
  if (s.rotate != worker::RotationKind::kNone) {
    json r = {{"kind", worker::rotation_kind_name(s.rotate)}, {"seed", s.rotate_seed}};
    if (worker::online_rotations(s.abits)) r["r3"] = r["r4"] = "online";
    c.quant->calibration["rotation"] = r;
  }
  return c;
}

worker::TransformOptions transform_options(const QuantizeSpec& s) {
  worker::TransformOptions t;
  t.method = s.method;
  t.let = s.recipe.let;
  t.lwc = s.recipe.lwc;
  t.deployable = !s.faithful;
  t.shifts = s.faithful && s.recipe.let;
  t.ln_matrix = s.faithful && s.recipe.ln_matrix;
  t.signed_max_init = s.faithful;
  t.alpha = s.recipe.alpha;
  t.stability_factor = s.recipe.stability_factor;
  t.fp64_matrices = s.fp64_matrices;
  return t;
}

worker::CalibOptions block_options(const QuantizeSpec& s, int b) {
  worker::CalibOptions co;
  co.transform = transform_options(s);
  const auto ov = s.overrides.find(b);
  co.weights = {ov != s.overrides.end() && ov->second.bits ? ov->second.bits : s.wbits, s.group_size, s.sym, !s.faithful};
  co.acts = {ov != s.overrides.end() && ov->second.act_bits ? ov->second.act_bits : s.abits, s.act_sym};
  co.epochs = s.recipe.epochs;
  co.batch_size = s.batch_size;
  co.let_lr = s.recipe.let_lr;
  co.lwc_lr = s.recipe.lwc_lr;
  co.aug_loss = s.recipe.aug_loss;
  co.precision = s.compute;
  co.gptq = s.gptq;
  return co;
}

}  // namespace

bool needs_data(const QuantizeSpec& s) { return s.method != worker::Method::kRtn || s.gptq.enabled; }

std::string method_label(const QuantizeSpec& s) {
  if (s.method == worker::Method::kRtn) return s.gptq.enabled ? "gptq" : "rtn";
  return std::string(worker::method_name(s.method)) + (s.gptq.enabled ? "+gptq" : "");
}

namespace {

// MRECG as the job runs it: enabled for calibrated methods with top-k > 0 and at least two blocks.
coordinator::JointSpec joint_spec(const QuantizeSpec& s) {
  const storage::LlamaConfig& cfg = s.model_config;
  coordinator::JointSpec j;
  const int L = static_cast<int>(cfg.num_hidden_layers);
  j.topk = s.joint_topk < 0 ? partition::default_joint_topk(L) : s.joint_topk;
  j.enabled = s.method != worker::Method::kRtn && j.topk > 0 && L > 1;  // nothing is trained without a method
  if (!j.enabled) return {};
  j.max_blocks = s.joint_max_blocks;
  j.data_dependent = s.modcap == "probe";
  j.probe_samples = std::min(s.probe_samples, s.calib.nsamples);
  j.probe_epochs = s.probe_epochs;
  if (!j.data_dependent) {
    for (int b = 0; b < L; ++b) j.data_free_capacity.push_back(static_cast<double>(cfg.block_parameters()) * make_quant_config(s).weight_bits(b));
  }
  return j;
}

fs::path job_dir_of(const QuantizeSpec& s) { return s.job_dir.empty() ? s.out / ".qforge-job" : s.job_dir; }

partition::PlanOptions plan_options(const QuantizeSpec& s, int ranks) {
  partition::PlanOptions o;
  o.mode = s.mode;
  o.ranks = ranks;
  o.team_size = s.team_size;
  o.nsamples = needs_data(s) ? s.calib.nsamples : 0;
  o.seqlen = s.calib.seqlen;
  o.batch_size = s.batch_size;
  o.epochs = s.recipe.epochs;
  o.trains = needs_data(s) && (s.recipe.let || s.recipe.lwc);
  o.aug_loss = s.recipe.aug_loss;
  o.cache_bytes_per_value = s.cache_dtype == storage::CacheDType::kBF16 ? 2 : 4;
  o.affine_matrices = s.method == worker::Method::kAffineQuant && s.recipe.let;
  o.group_size = s.group_size;
  const coordinator::JointSpec j = joint_spec(s);
  if (j.enabled && j.data_dependent && o.mode == partition::EngineMode::kSequential) o.probe_samples = j.probe_samples;
  return o;
}

partition::ModelIndex model_index(const QuantizeSpec& s) {
  return worker::index_checkpoint(s.model_config, storage::CheckpointReader(s.model));
}

// What makes two runs the same job. Paths are left out (a moved model or data file is the same job
// when its content is); what the content is goes in as digests.
json job_identity(const QuantizeSpec& s, const std::string& model_fp, const coordinator::JointSpec& joint) {
  json data = nullptr;
  if (needs_data(s)) {
    data = {{"source", s.calib.source == kGenerateSource ? s.calib.source : fs::path(s.calib.source).filename().string()},
            {"format", s.calib.format}, {"nsamples", s.calib.nsamples}, {"seqlen", s.calib.seqlen}, {"seed", s.calib.seed}};
    if (s.calib.source != kGenerateSource) data["source_sha256"] = sha256_file(s.calib.source);
    if (!s.tokenizer.empty()) data["tokenizer_sha256"] = sha256_file(s.tokenizer);
  }
  const auto& r = s.recipe;
  return {{"qforge", QFORGE_VERSION},
          {"model_fingerprint", model_fp},
          {"data", data},
          {"config", {{"quantization", storage::quant_config_to_json(make_quant_config(s))},
                      {"faithful", s.faithful},
                      {"recipe", {{"epochs", r.epochs}, {"let", r.let}, {"lwc", r.lwc}, {"aug_loss", r.aug_loss},
                                  {"let_lr", r.let_lr}, {"lwc_lr", r.lwc_lr}, {"alpha", r.alpha},
                                  {"sf", r.stability_factor}, {"ln_matrix", r.ln_matrix}}},
                      {"batch_size", s.batch_size},
                      {"fp64_matrices", s.fp64_matrices},
                      {"compute_dtype", worker::compute_precision_name(s.compute)},
                      {"rotate", {{"kind", worker::rotation_kind_name(s.rotate)}, {"seed", s.rotate_seed}}},
                      {"cache_dtype", storage::cache_dtype_name(s.cache_dtype)}}},
          {"mode", partition::engine_mode_name(s.mode)},
          {"team_size", s.team_size},
          {"joint", joint.identity()}};
}

std::string random_id() {
  std::random_device rd;
  std::ostringstream os;
  os << std::hex << rd() << rd() << rd() << rd();
  return os.str();
}

// The calibration windows [nsamples, seqlen] the spec asks for.
at::Tensor calibration_ids(const QuantizeSpec& s) {
  std::unique_ptr<storage::Tokenizer> tok;
  if (s.calib.source != kGenerateSource) {
    fs::path tp = !s.tokenizer.empty() ? s.tokenizer : storage::find_model_tokenizer(s.model);
    if (!tp.empty()) tok = storage::load_tokenizer(tp);
  }
  worker::ModelOptions gen_opt;
  gen_opt.keep_weights = s.calib.source == kGenerateSource;
  const worker::LlamaModel model(s.model, gen_opt);
  return load_calibration(s.calib, tok.get(), model).contiguous();
}

// --dry-run with MRECG probes: the engine's probe (worker::probe_block) of every block, here in one
// process on the FP stream of the probe samples, rounded at each boundary as the cache would.
std::vector<double> dry_run_probe_values(const QuantizeSpec& s, const coordinator::JointSpec& j) {
  if (!j.data_dependent) {
    std::vector<double> v;
    for (double c : j.data_free_capacity) v.push_back(-c);
    return v;
  }
  const at::Tensor ids = calibration_ids(s).slice(0, 0, j.probe_samples);
  const worker::LlamaModel model(s.model);
  const auto& cfg = model.config();
  const worker::RopeTables rope = model.rope(s.calib.seqlen);
  at::NoGradGuard no_grad;
  at::Tensor x = storage::round_to_cache_dtype(model.embed(ids).to(at::kFloat).contiguous(), s.cache_dtype);
  std::vector<double> values;
  for (int b = 0; b < cfg.num_hidden_layers; ++b) {
    const worker::BlockWeights fp = worker::BlockWeights::load(model.checkpoint(), cfg, b, at::kFloat, at::kCPU);
    values.push_back(worker::probe_block(cfg, fp, x, block_options(s, b), s.probe_epochs, rope, "probe of block " + std::to_string(b)).normalized);
    x = storage::round_to_cache_dtype(worker::block_forward(cfg, fp, x, rope), s.cache_dtype);
  }
  return values;
}

// A folder this process must be able to create or write: the nearest existing ancestor must be a
// directory in which a folder can really be made (checked before anything is written, so a typo fails
// fast and leaves nothing). access() alone passes /proc, /sys and, for root, read-only permissions; a
// probe folder made and removed again does not.
void check_writable_folder(const fs::path& path, const std::string& flag) {
  const auto refuse = [&](const std::string& why) { throw InputError(flag, "", path.string() + ": " + why); };
  for (const auto& part : path) {
    if (part.string().size() > NAME_MAX) refuse("a name in the path is longer than " + std::to_string(NAME_MAX) + " bytes");
  }
  try {
    fs::path p = fs::absolute(path);
    while (!fs::exists(p) && p.has_parent_path() && p != p.parent_path()) p = p.parent_path();
    if (!fs::is_directory(p)) refuse(p.string() + " is a file, not a folder");
    std::string probe = (p / (std::string(storage::OutputFolder::kWriteProbePrefix) + "XXXXXX")).string();
    if (::mkdtemp(probe.data()) == nullptr) refuse("cannot create a folder in " + p.string() + ": " + std::strerror(errno));
    ::rmdir(probe.c_str());
  } catch (const fs::filesystem_error& e) {
    refuse(e.code().message());  // a symbolic link loop, a name too long for the file system, ...
  }
}

// The preflight: every check that needs no compute, before anything is written. Returns the plan.
partition::Plan preflight(const QuantizeSpec& s, int ranks) {
  const storage::LlamaConfig& cfg = s.model_config;
  if (cfg.quant) throw InputError((s.model / "config.json").string(), "quantization_config", "the model is already quantized");
  for (const auto& [block, ov] : s.overrides) {
    if (block < 0 || block >= cfg.num_hidden_layers) {
      throw InputError("--block-override", "", "block " + std::to_string(block) + " does not exist (the model has " +
                                                   std::to_string(cfg.num_hidden_layers) + " blocks)");
    }
  }
  check_writable_folder(s.out, "--out");
  if (fs::exists(s.out) && fs::equivalent(s.out, s.model)) throw InputError("--out", "", "must differ from --model");
  if (!s.export_format.empty()) {
    const std::string why = storage::export_refusal(planned_output_config(s), storage::parse_export_format(s.export_format));
    if (!why.empty()) throw InputError("--export", "", "cannot export " + s.export_format + ": " + why);
    check_writable_folder(s.export_out, "--export-out");
  }
  if (s.heartbeat_timeout_s <= 0) throw InputError("--heartbeat-timeout", "", "must be positive");
  check_writable_folder(job_dir_of(s), "--job-dir");
  storage::OutputFolder::check_target(s.out, "--out", {job_dir_of(s)});
  if (!s.export_format.empty()) storage::OutputFolder::check_target(s.export_out, "--export-out");
  return partition::make_block_plan(model_index(s), plan_options(s, ranks));  // batch vs team, memory, coverage
}

// The preflight on every rank, and their agreement before the first collective: a rank whose check fails
// (a folder another node cannot see, a race with a peer) rethrows its own reason, and the others exit 2
// with it instead of waiting in MPI_Comm_dup for a rank that left (nothing on those).
std::optional<partition::Plan> agreed_preflight(const QuantizeSpec& s, int ranks) {
  std::optional<partition::Plan> plan;
  std::exception_ptr error;
  try {
    plan = preflight(s, ranks);
  } catch (...) {
    error = std::current_exception();
  }
  int ok = plan ? 1 : 0, all_ok = 0;
  QF_MPI_CHECK(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (error) std::rethrow_exception(error);
  if (!all_ok) {
    QF_LOG(Error) << "stopping: the preflight failed on another rank (its reason is in that rank's output)";
    plan.reset();
  }
  return plan;
}

int print_dry_run(const QuantizeSpec& s, const partition::Plan& plan, int ranks) {
  std::cout << partition::format_plan_report(plan);
  const storage::LlamaConfig planned = planned_output_config(s);
  std::cout << "the result: qforge eval reads it";
  for (const char* name : {"gptq", "compressed-tensors"}) {
    const std::string why = storage::export_refusal(planned, storage::parse_export_format(name));
    std::cout << "; export " << name << ": " << (why.empty() ? "yes" : "no (" + why + ")");
  }
  std::cout << "\n";
  const coordinator::JointSpec joint = joint_spec(s);
  if (joint.enabled) {
    const std::vector<double> values = dry_run_probe_values(s, joint);
    const partition::JointSelection sel = partition::select_joint_units(values, joint.topk, joint.max_blocks);
    std::cout << "\n" << partition::format_joint_report(values, sel, joint.data_dependent ? "probe" : "data-free", joint.topk, joint.max_blocks);
    std::cout << "\njoint " << partition::format_plan_report(partition::make_plan(model_index(s), plan_options(s, ranks), sel.units));
  }
  std::cout << std::flush;
  return kExitOk;
}

// This rank's compute device for --device (its local rank's GPU for cuda/auto), or nothing when some
// rank has none (checked before anything is written; rank 0 then reports it, exit 2 naming --device).
std::optional<at::Device> rank_device(const QuantizeSpec& s, const MpiSession& mpi, const MpiComm& world) {
  at::Device device = at::kCPU;
  int ok = 1, all_ok = 0;
  try {
    device = worker::parse_device(s.device, mpi.local_rank());
  } catch (const InputError& e) {
    QF_LOG(Error) << "rank " << mpi.world_rank() << ": " << e.what();
    ok = 0;
  }
  QF_MPI_CHECK(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, world.get()));
  if (!all_ok) return std::nullopt;
  return device;
}

// --rotate: the rotated FP model, written once (into a temporary folder renamed into place, so a crash
// leaves no half-written model that a resume would take).
void write_rotated_model_once(const QuantizeSpec& s, const storage::JobLayout& jd) {
  if (fs::exists(jd.rotation_record_path())) return;
  const fs::path tmp = temp_path_for(jd.rotated_model_dir());
  fs::remove_all(tmp);
  const json record =
      worker::write_rotated_model(s.model, tmp, s.rotate, s.rotate_seed, worker::online_rotations(s.abits));
  write_file_atomic(tmp / "qforge-rotation.json", record.dump(1) + "\n");
  fs::remove_all(jd.rotated_model_dir());
  fs::rename(tmp, jd.rotated_model_dir());
  QF_LOG(Info) << "rotated the model: R1 " << record["r1"].get<std::string>() << "; R2 " << record["r2"].get<std::string>()
               << (record.contains("r4") ? "; R3 " + record["r3"].get<std::string>() + "; R4 " + record["r4"].get<std::string>() : "")
               << (s.model_config.tie_word_embeddings ? "; tied embeddings are untied in the output" : "");
}

// The FP model the engine quantizes: the input, or with --rotate its rotated copy in the job directory.
fs::path engine_model(const QuantizeSpec& s) {
  return s.rotate == worker::RotationKind::kNone ? s.model : storage::JobLayout(job_dir_of(s)).rotated_model_dir();
}

// Rank 0: create or check the job directory. Returns what every rank needs to know.
json prepare_job_dir(const QuantizeSpec& s, const partition::Plan& plan, int default_threads) {
  const storage::JobLayout jd(job_dir_of(s));
  const std::string model_fp = storage::model_fingerprint(s.model);
  // "out" is where the job assembles its result (not part of the identity): `qforge export --job-dir` reads it.
  json spec = {{"identity", job_identity(s, model_fp, joint_spec(s))}, {"threads", s.threads > 0 ? s.threads : default_threads},
               {"out", fs::absolute(s.out).string()}};
  spec = storage::create_or_check_job_spec(jd, spec);
  int threads = spec.at("threads").get<int>();
  if (s.threads > 0 && s.threads != threads) {
    QF_LOG(Warn) << "--threads " << s.threads << " differs from this job's pinned " << threads
                 << " threads: results will not be byte-identical to a run with the pinned count";
    threads = s.threads;
  }
  fs::create_directories(jd.units_dir());
  fs::create_directories(jd.cache_dir());
  if (s.rotate != worker::RotationKind::kNone) write_rotated_model_once(s, jd);

  if (needs_data(s) && !fs::exists(jd.calibration_path())) {
    // Drawn once, at the first start; a resumed run reads the same windows back.
    const at::Tensor ids = calibration_ids(s);
    std::vector<std::int32_t> flat(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
    storage::write_token_file(jd.calibration_path(), flat);
    QF_LOG(Info) << "calibration: " << ids.size(0) << " x " << ids.size(1) << " tokens from " << s.calib.source;
  }
  write_file_atomic(jd.plan_path(), plan.to_json().dump(1) + "\n");
  const std::string job_id = random_id();
  write_file_atomic(jd.job_id_path(), job_id + "\n");
  return {{"ok", true}, {"job_id", job_id}, {"threads", threads}, {"team_size", plan.team_size},
          {"model_fingerprint", model_fp}, {"job_fingerprint", spec.at("fingerprint")}};
}

coordinator::AssemblySpec assembly_spec(const QuantizeSpec& s, const storage::JobLayout& jd) {
  coordinator::AssemblySpec a;
  a.model = engine_model(s);
  a.out = s.out;
  a.job = jd;
  a.out_config = s.rotate == worker::RotationKind::kNone ? s.model_config : storage::read_llama_config(a.model);
  a.out_config.quant = make_quant_config(s);
  if (s.rotate != worker::RotationKind::kNone) {
    a.out_config.quant->calibration["rotation"] = json::parse(read_file(jd.rotation_record_path()));
  }
  a.model_dtype = storage::from_scalar_type(worker::parse_compute_dtype(a.out_config.torch_dtype));
  a.shard_bytes = s.shard_bytes;
  a.sidecar_metadata = {{"format", "pt"}, {"bits", std::to_string(s.wbits)}, {"group_size", std::to_string(s.group_size)},
                        {"sym", s.sym ? "true" : "false"}};
  a.report = {{"method", method_label(s)}};
  a.tokenizer = s.tokenizer;
  a.copy_calibration_tokens = needs_data(s);
  return a;
}

// Rank 0 claims the job directory (`*lock`) and prepares it; every rank learns the outcome (nullopt:
// rank 0 refused it, and `*code` is the exit code).
std::optional<json> prepare_everywhere(const QuantizeSpec& s, const partition::Plan& plan, const MpiSession& mpi,
                                       const MpiComm& world, std::unique_ptr<storage::JobLock>* lock, int* code) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int default_threads = std::getenv("QFORGE_THREADS") ? at::get_num_threads() : std::max(1, cores / mpi.local_size());
  json prep;
  if (mpi.world_rank() == 0) {
    try {
      *lock = std::make_unique<storage::JobLock>(storage::JobLayout(job_dir_of(s)));  // held for the job's life
      prep = prepare_job_dir(s, plan, default_threads);
    } catch (const Error& e) {
      world.broadcast(json{{"ok", false}, {"code", e.exit_code()}}.dump(), 0);
      throw;  // rank 0 reports it
    }
  }
  prep = json::parse(world.broadcast(prep.dump(), 0));
  if (prep.at("ok").get<bool>()) return prep;
  *code = prep.at("code").get<int>();
  return std::nullopt;
}

// Every rank must see the same job directory (multi-node runs need it on a shared filesystem).
bool same_job_dir_everywhere(const storage::JobLayout& jd, const std::string& job_id, const MpiComm& world) {
  std::string seen;
  try {
    seen = read_file(jd.job_id_path());
  } catch (const Error&) {
  }
  int ok = seen == job_id + "\n" ? 1 : 0, all_ok = 0;
  QF_MPI_CHECK(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, world.get()));
  if (all_ok) return true;
  if (world.rank() == 0 || !ok) {
    QF_LOG(Error) << jd.root().string() << ": not every rank sees this job directory's job_id (rank " << world.rank()
                  << (ok ? " does" : " does not") << "); multi-node runs need --job-dir on a filesystem shared by all nodes";
  }
  if (world.rank() == 0) throw InputError("--job-dir", "", "not on a shared filesystem (see the log)");
  return false;
}

// Identical on every rank (all parse the same command line), except the device.
worker::EngineSettings engine_settings(const QuantizeSpec& s, const json& prep, const at::Device& device) {
  worker::EngineSettings es;
  es.model = engine_model(s);
  es.job = storage::JobLayout(job_dir_of(s));
  es.model_fingerprint = prep.at("model_fingerprint").get<std::string>();
  es.job_fingerprint = prep.at("job_fingerprint").get<std::string>();
  es.sequential = s.mode == partition::EngineMode::kSequential;
  es.team_size = prep.at("team_size").get<int>();
  es.samples = s.calib.nsamples;
  es.seqlen = s.calib.seqlen;
  es.batch_size = s.batch_size;
  es.cache_dtype = s.cache_dtype;
  es.needs_data = needs_data(s);
  es.blocks = static_cast<int>(s.model_config.num_hidden_layers);
  es.probe_epochs = s.probe_epochs;
  for (int b = 0; b < es.blocks; ++b) es.block_options.push_back(block_options(s, b));
  es.heartbeat_interval_s = std::min(5.0, s.heartbeat_timeout_s / 4);
  es.collective_timeout_s = 2 * s.heartbeat_timeout_s + 10;
  es.device = device;
  return es;
}

std::string describe(const QuantizeSpec& s) {
  return method_label(s) + " W" + std::to_string(s.wbits) + "A" + std::to_string(s.abits) +
         (s.group_size ? " g" + std::to_string(s.group_size) : "") + (s.faithful ? " faithful" : " deployable") +
         (s.rotate != worker::RotationKind::kNone ? std::string(", rotated (") + worker::rotation_kind_name(s.rotate) + ")" : "");
}

void log_job_start(const QuantizeSpec& s, const worker::EngineSettings& es, int ranks, int threads) {
  QF_LOG(Info) << "quantize " << s.model.string() << " -> " << s.out.string() << ": " << describe(s) << "; recipe "
               << s.recipe.describe();
  if (s.recipe.let && s.model_config.qk_norm) {
    QF_LOG(Info) << s.model_config.model_type << ": the q/k transform is one per-pair scale shared by all heads, folded "
                 << "into q_norm/k_norm (the per-head q/k norms between q_proj/k_proj and RoPE break the rest of its "
                 << "equivalence); the other transforms are learned as usual";
  }
  const LauncherInfo launcher = detect_launcher();
  QF_LOG(Info) << "job " << es.job.root().string() << ": " << ranks << " rank" << (ranks > 1 ? "s" : "") << " ("
               << launcher_name(launcher.kind)
               << (launcher.slurm_job_id.empty() ? "" : ", Slurm job " + launcher.slurm_job_id) << "), "
               << partition::engine_mode_name(s.mode) << " mode, " << ranks / es.team_size << " team(s) of "
               << es.team_size << ", " << threads << " compute thread(s) per rank; rank 0 computes on "
               << es.device.str() << " in " << worker::compute_precision_name(s.compute);
  const coordinator::JointSpec joint = joint_spec(s);
  if (joint.enabled) {
    QF_LOG(Info) << "MRECG joint reconstruction: top-" << joint.topk << " capacity drops, units of at most "
                 << joint.max_blocks << " blocks, capacity "
                 << (joint.data_dependent ? "from probes on " + std::to_string(joint.probe_samples) + " samples, " +
                                                std::to_string(s.probe_epochs) + " epoch(s)"
                                          : std::string("data-free (parameters x bits)"));
  }
}

// Rank 0's coordinator thread, on the journal replayed into the plan rank 0 wrote (the input of
// execution).
struct CoordinatorThread {
  std::thread thread;
  coordinator::CoordinatorOutcome outcome;
  std::exception_ptr error;
  std::unique_ptr<storage::Journal> journal;

  void start(const QuantizeSpec& s, const worker::EngineSettings& es, const MpiComm& world) {
    const storage::JobLayout& jd = es.job;
    bool torn_tail = false;
    coordinator::JobState state = coordinator::load_job_state(jd, joint_spec(s), &torn_tail);
    if (torn_tail) {
      QF_LOG(Warn) << jd.journal_path().string() << ": dropping a torn last record (crash during append)";
    }
    journal = std::make_unique<storage::Journal>(jd.journal_path());
    coordinator::CoordinatorSettings cs;
    cs.job = jd;
    cs.ranks = world.size();
    cs.team_size = es.team_size;
    cs.needs_data = es.needs_data;
    cs.heartbeat_timeout_s = s.heartbeat_timeout_s;
    cs.keep_cache = s.keep_cache;
    thread = std::thread([this, &world, cs, aspec = assembly_spec(s, jd), state]() mutable {
      try {
        coordinator::Coordinator c(cs, world, *journal, std::move(state),
                                   [&aspec](const coordinator::JobState& st) { coordinator::assemble_checkpoint(aspec, st); });
        outcome = c.run();
      } catch (...) {
        error = std::current_exception();
      }
    });
  }

  // The coordinator's exit code; aborts every rank where finalizing could wait on a lost or stuck one.
  int join() {
    thread.join();
    if (error) {
      try {
        std::rethrow_exception(error);
      } catch (const Error& e) {
        QF_LOG(Error) << "coordinator: " << e.what();
        // Workers may still wait for work; the journal is intact, so ending every rank is safe.
        MpiSession::abort(e.exit_code());
      }
    }
    if (outcome.must_abort) MpiSession::abort(outcome.exit_code);
    return outcome.exit_code;
  }
};

// The worker loop of this rank; a rank that is not rank 0 returns its exit code here.
int run_rank_worker(const worker::EngineSettings& es, const MpiComm& world, const MpiComm& team) {
  worker::WorkerExit wexit = worker::WorkerExit::kOk;
  try {
    wexit = worker::run_worker(es, world, team);
  } catch (const std::exception& e) {
    // The worker could not even start (e.g. the model does not load on this node): nothing to resume
    // here is lost, but the other ranks would wait for this one, so the whole job ends now.
    QF_LOG(Error) << "worker failed to start: " << e.what();
    MpiSession::abort(kExitInternal);
  }
  if (world.rank() != 0 && wexit == worker::WorkerExit::kAborting) {
    // Rank 0 ends the job with MPI_Abort; entering MPI_Finalize here would wait on the lost peer and
    // race that abort inside the launcher. Wait to be ended (bounded, in case rank 0 is gone too).
    std::this_thread::sleep_for(std::chrono::seconds(120));
    std::_Exit(kExitWorkerLost);
  }
  return wexit == worker::WorkerExit::kOk ? kExitOk : wexit == worker::WorkerExit::kStopped ? kExitStopped : kExitInternal;
}

// After success on rank 0: the default job directory goes, the export is written, the summary printed.
void finish_job(const QuantizeSpec& s, const storage::JobLayout& jd, double seconds) {
  if (s.job_dir.empty()) fs::remove_all(jd.root());
  if (!s.export_format.empty()) {
    const storage::ExportResult r =
        storage::export_checkpoint({s.out, s.export_out, storage::parse_export_format(s.export_format), s.shard_bytes});
    for (const auto& n : r.notes) QF_LOG(Warn) << n;
    QF_LOG(Info) << "exported " << s.export_out.string() << " (" << r.checkpoint_format << ")";
  }
  const JobSummary summary = summarize_output(s.out, s.model, describe(s), seconds);
  std::cout << format_job_summary(summary, s.model, s.export_format.empty() ? fs::path() : s.export_out) << std::flush;
}

}  // namespace

int run_quantize_job(const QuantizeSpec& s) {
  const auto t_start = std::chrono::steady_clock::now();
  MpiSession mpi(nullptr, nullptr);
  const int rank = mpi.world_rank(), ranks = mpi.world_size();
  const std::optional<partition::Plan> agreed = agreed_preflight(s, ranks);
  if (!agreed) return kExitBadInput;
  const partition::Plan& plan = *agreed;
  if (s.dry_run) return rank == 0 ? print_dry_run(s, plan, ranks) : kExitOk;
  set_log_identity(ranks > 1 ? rank : -1, rank == 0 ? "coord+worker" : "worker");
  // Team members log the same epoch lines as rank 0; at the default level only rank 0 speaks.
  if (rank != 0 && log_level() == LogLevel::kInfo) set_log_level(LogLevel::kWarn);
  configure_fault_injection(rank);
  // Slurm's time-limit warning (USR1) and preemption (TERM) reach every rank; the coordinator on rank 0
  // acts on them (checkpoint, journal, stop with kExitStopped), the other ranks just must not die.
  install_stop_signal_handlers();
  const MpiComm world = MpiComm::duplicate(MPI_COMM_WORLD);
  const std::optional<at::Device> device = rank_device(s, mpi, world);
  if (!device) {
    if (rank == 0) throw InputError("--device", "", "'" + s.device + "' is not available on every rank (see the log)");
    return kExitBadInput;
  }
  int refused = kExitOk;
  std::unique_ptr<storage::JobLock> lock;
  const std::optional<json> prep = prepare_everywhere(s, plan, mpi, world, &lock, &refused);
  if (!prep) return refused;
  const storage::JobLayout jd(job_dir_of(s));
  if (!same_job_dir_everywhere(jd, prep->at("job_id").get<std::string>(), world)) return kExitBadInput;

  worker::configure_threads(prep->at("threads").get<int>());
  const worker::EngineSettings es = engine_settings(s, *prep, *device);
  const MpiComm team = world.split(rank / es.team_size, rank);
  CoordinatorThread coord;
  if (rank == 0) {
    log_job_start(s, es, ranks, prep->at("threads").get<int>());
    coord.start(s, es, world);
  }
  const int worker_code = run_rank_worker(es, world, team);
  if (rank != 0) return worker_code;
  if (const int code = coord.join(); code != kExitOk) return code;
  coord.journal.reset();
  finish_job(s, jd, std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
  return kExitOk;
}

partition::Plan quantize_preflight(const QuantizeSpec& s, int ranks) { return preflight(s, ranks); }

}  // namespace qforge::jobs
