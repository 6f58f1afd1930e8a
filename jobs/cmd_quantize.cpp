// qforge quantize: RTN, OmniQuant or AffineQuant block reconstruction, single process.
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <regex>

#include "common/error.h"
#include "common/log.h"
#include "jobs/cli.h"
#include "jobs/cmd_quantize.h"
#include "jobs/quantize_job.h"
#include "worker/llama_model.h"

namespace qforge::jobs {

namespace {

// MRECG on by default, with the issue's k = max(1, round(L/8)).
constexpr const char* kDefaultJointTopk = "auto";

// "B:W" or "B:W:A", e.g. "0:8:8" keeps block 0 at W8A8.
std::pair<int, storage::BitsOverride> parse_override(const std::string& text) {
  static const std::regex re(R"(^(\d+):(\d+)(?::(\d+))?$)");
  std::smatch m;
  if (!std::regex_match(text, m, re)) {
    throw InputError("--block-override", "", "'" + text + "' is not BLOCK:WBITS or BLOCK:WBITS:ABITS");
  }
  storage::BitsOverride o;
  o.bits = std::stoi(m[2]);
  if (m[3].matched) o.act_bits = std::stoi(m[3]);
  if (o.bits < 2 || o.bits > 8) throw InputError("--block-override", "", "weight bits must be 2..8 in '" + text + "'");
  if (o.act_bits && (o.act_bits < 4 || o.act_bits > 16)) {
    throw InputError("--block-override", "", "activation bits must be 4..16 in '" + text + "'");
  }
  return {std::stoi(m[1]), o};
}

// The options of a quantize job: the command line's and a --config file's keys.
void add_job_options(po::options_description& job) {
  job.add_options()
      ("model", po::value<std::string>(), "input model folder (HF layout)")
      ("out", po::value<std::string>(), "output folder")
      ("method", po::value<std::string>()->default_value("affinequant"),
       "rtn|gptq|omniquant|affinequant (gptq: RTN's grid with --rounding gptq)")
      ("rounding", po::value<std::string>()->default_value(""),
       "how codes are chosen on the final grid: rtn (nearest) | gptq (GPTQ error feedback on calibration "
       "inputs); default gptq for --method gptq, else rtn")
      ("gptq-damp", po::value<double>()->default_value(0.01), "GPTQ dampening, a fraction of mean(diag H), (0, 1]")
      ("act-order", po::value<bool>()->default_value(false)->implicit_value(true),
       "GPTQ: quantize columns in decreasing diag(H) (the grid stays static)")
      ("rotate", po::value<std::string>()->default_value("none"),
       "none | hadamard | random-orthogonal: rotations R1 (residual stream) and R2 (per head, v->o) folded "
       "into the model before calibration (a randomised Hadamard matrix where one is built, else random orthogonal)")
      ("rotate-seed", po::value<std::uint64_t>()->default_value(0), "seed of the rotations' random signs or matrices")
      ("wbits", po::value<int>()->default_value(4), "weight bits (2..8)")
      ("abits", po::value<int>()->default_value(16), "activation bits (4..16; 16 = weight-only)")
      ("group-size", po::value<std::int64_t>()->default_value(0), "weight group size (0 = per output channel)")
      ("sym", po::value<bool>()->default_value(false)->implicit_value(true), "symmetric weights (GPTQ convention)")
      ("act-sym", po::value<bool>()->default_value(false)->implicit_value(true), "symmetric per-token activations")
      ("faithful", po::value<bool>()->default_value(false)->implicit_value(true),
       "reproduce the official code (shifts, q/k before RoPE, LN matrices, signed-max init); not deployable")
      ("block-override", po::value<std::vector<std::string>>()->composing(), "BLOCK:WBITS[:ABITS], repeatable")
      ("calib-data", po::value<std::string>()->default_value(""), "calibration text/token/C4 file, or model:generate")
      ("calib-format", po::value<std::string>()->default_value(""), "text|wikitext|c4|tokens (default: guessed)")
      ("tokenizer", po::value<std::string>()->default_value(""), "tokenizer (default: from the model folder)")
      ("nsamples", po::value<std::int64_t>()->default_value(128), "calibration sequences")
      ("calib-seqlen", po::value<std::int64_t>()->default_value(0), "tokens per sequence (default min(2048, max positions))")
      ("seed", po::value<std::uint64_t>()->default_value(2), "calibration sampling seed")
      ("batch-size", po::value<std::int64_t>()->default_value(1), "sequences per optimiser step")
      ("epochs", po::value<int>(), "epochs per block (default: recipe)")
      ("let", po::value<bool>(), "learnable equivalent transformation on/off (default: recipe)")
      ("lwc", po::value<bool>(), "learnable weight clipping on/off (default: recipe)")
      ("aug-loss", po::value<bool>(), "add the FP-block-on-quantized-input target (default: recipe)")
      ("let-lr", po::value<double>(), "learning rate of transforms (default: recipe)")
      ("lwc-lr", po::value<double>(), "learning rate of clipping (default: recipe)")
      ("alpha", po::value<double>(), "SmoothQuant migration strength of the init (default: recipe)")
      ("sf", po::value<double>(), "AffineQuant stability factor (default: recipe)")
      ("ln-matrix", po::value<bool>(), "full matrices after the norms (faithful only; default: recipe)")
      ("fp64-matrices", po::value<bool>()->default_value(false)->implicit_value(true), "affine matrices in float64")
      ("compute-dtype", po::value<std::string>()->default_value("fp32"),
       "calibration forward/backward: fp32 | bf16 (autocast) | tf32 (CUDA matmuls); parameters stay fp32")
      ("device", po::value<std::string>()->default_value("auto"),
       "cpu | cuda | cuda:N | auto (each rank: its local rank's GPU when there is one, else the CPU)")
      ("shard-size", po::value<std::string>()->default_value("0"), "max bytes per output shard (0: one file)")
      ("job-dir", po::value<std::string>()->default_value(""),
       "job directory (journal, plan, result shards, activation cache); resumed when it holds this job. "
       "Default <out>/.qforge-job, removed after success")
      ("mode", po::value<std::string>()->default_value("sequential"),
       "sequential (each unit sees the quantized stream of the previous ones) | independent (units on the FP "
       "stream, run concurrently by teams)")
      ("team-size", po::value<int>()->default_value(0),
       "ranks per team sharing each optimiser step (0: all ranks in sequential mode, 1 in independent mode)")
      ("cache-dtype", po::value<std::string>()->default_value("fp32"), "activation cache precision: fp32|bf16")
      ("heartbeat-timeout", po::value<double>()->default_value(60), "seconds of silence after which a rank is reported lost")
      ("keep-cache", po::value<bool>()->default_value(false)->implicit_value(true), "keep activation cache files no unit needs any more")
      ("export", po::value<std::string>()->default_value(""), "after success also export: gptq | compressed-tensors | fake-quant")
      ("export-out", po::value<std::string>()->default_value(""), "folder of the export (default <out>-<format>)")
      ("joint-topk", po::value<std::string>()->default_value(kDefaultJointTopk),
       "MRECG joint reconstruction: merge the blocks across the K largest module-capacity drops into joint units "
       "(auto = max(1, round(blocks / 8)); 0 = block-wise)")
      ("joint-max-blocks", po::value<int>()->default_value(3), "MRECG: most blocks in one joint unit")
      ("modcap", po::value<std::string>()->default_value("probe"),
       "MRECG module capacity: probe (each block's normalised reconstruction loss on FP inputs) | data-free "
       "(parameters x bits; differs only with --block-override)")
      ("probe-epochs", po::value<int>()->default_value(0), "MRECG probe: training epochs per block (0 = initialisation, forward only)")
      ("probe-samples", po::value<std::int64_t>()->default_value(16), "MRECG probe: calibration sequences used")
      ("dry-run", po::value<bool>()->default_value(false)->implicit_value(true),
       "print the plan (units, memory per rank, cache disk, tensor coverage; with MRECG the probes, differentials "
       "and joint units) and exit");
}

// --rounding and GPTQ's settings (`gptq_method`: --method gptq, RTN's grid with GPTQ's codes).
void read_rounding(const po::variables_map& vm, bool gptq_method, QuantizeSpec& s) {
  std::string rounding = vm["rounding"].as<std::string>();
  if (rounding.empty()) rounding = gptq_method ? "gptq" : "rtn";
  if (rounding != "gptq" && rounding != "rtn") throw InputError("--rounding", "", "'" + rounding + "' is not rtn or gptq");
  if (gptq_method && rounding != "gptq") throw InputError("--rounding", "", "--method gptq rounds by GPTQ; use --method rtn");
  s.gptq.enabled = rounding == "gptq";
  s.gptq.damp = number_in(vm, "gptq-damp", 0, 1, true);
  s.gptq.act_order = vm["act-order"].as<bool>();
}

// --model, --out and what the weights become.
void read_quantization(const po::variables_map& vm, QuantizeSpec& s) {
  if (!vm.count("model")) throw InputError("--model", "", "required");
  if (!vm.count("out")) throw InputError("--out", "", "required");
  s.model = vm["model"].as<std::string>();
  s.out = vm["out"].as<std::string>();
  const std::string method = vm["method"].as<std::string>();
  s.method = worker::parse_method(method == "gptq" ? "rtn" : method);
  read_rounding(vm, method == "gptq", s);
  s.rotate = worker::parse_rotation_kind(vm["rotate"].as<std::string>());
  s.rotate_seed = vm["rotate-seed"].as<std::uint64_t>();
  s.wbits = vm["wbits"].as<int>();
  s.abits = vm["abits"].as<int>();
  if (s.wbits < 2 || s.wbits > 8) throw InputError("--wbits", "", "must be 2..8");
  if (s.abits < 4 || s.abits > 16) throw InputError("--abits", "", "must be 4..16 (16 = weight-only)");
  s.group_size = vm["group-size"].as<std::int64_t>();
  if (s.group_size < 0) throw InputError("--group-size", "", "must be >= 0");
  s.sym = vm["sym"].as<bool>();
  s.act_sym = vm["act-sym"].as<bool>();
  s.faithful = vm["faithful"].as<bool>();
  if (vm.count("block-override")) {
    for (const auto& o : vm["block-override"].as<std::vector<std::string>>()) s.overrides.insert(parse_override(o));
  }
  s.model_config = storage::read_llama_config(s.model);
  s.shard_bytes = parse_size(vm["shard-size"].as<std::string>(), "--shard-size");
  s.export_format = vm["export"].as<std::string>();
  s.export_out = vm["export-out"].as<std::string>();
  if (!s.export_format.empty() && s.export_out.empty()) s.export_out = s.out.string() + "-" + s.export_format;
}

// The calibration data and how each step uses it.
void read_calibration(const po::variables_map& vm, QuantizeSpec& s) {
  s.calib.source = vm["calib-data"].as<std::string>();
  s.calib.format = vm["calib-format"].as<std::string>();
  s.calib.nsamples = count_at_least(vm, "nsamples", 1);
  s.calib.seed = vm["seed"].as<std::uint64_t>();
  s.tokenizer = vm["tokenizer"].as<std::string>();
  s.batch_size = vm["batch-size"].as<std::int64_t>();
  if (s.batch_size < 1) throw InputError("--batch-size", "", "must be >= 1");
  s.fp64_matrices = vm["fp64-matrices"].as<bool>();
  s.compute = worker::parse_compute_precision(vm["compute-dtype"].as<std::string>());
  s.calib.seqlen = count_at_least(vm, "calib-seqlen", 0);
  if (s.calib.seqlen == 0) s.calib.seqlen = std::min<std::int64_t>(2048, s.model_config.max_position_embeddings);
  if (needs_data(s) && s.calib.source.empty()) {
    throw InputError("--calib-data", "", "required for " + vm["method"].as<std::string>() +
                                             " (a text, WikiText, C4 or token file, or model:generate)");
  }
}

// The method's recipe, then the flags that override it.
void read_recipe(const po::variables_map& vm, QuantizeSpec& s) {
  s.recipe = worker::default_recipe(s.method, s.wbits, s.abits, s.group_size, s.faithful);
  if (vm.count("epochs")) s.recipe.epochs = vm["epochs"].as<int>();
  if (vm.count("let")) s.recipe.let = vm["let"].as<bool>();
  if (vm.count("lwc")) s.recipe.lwc = vm["lwc"].as<bool>();
  if (vm.count("aug-loss")) s.recipe.aug_loss = vm["aug-loss"].as<bool>();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (vm.count("let-lr")) s.recipe.let_lr = number_in(vm, "let-lr", 0, 1, true);
  if (vm.count("lwc-lr")) s.recipe.lwc_lr = number_in(vm, "lwc-lr", 0, 1, true);
  if (vm.count("alpha")) s.recipe.alpha = number_in(vm, "alpha", 0, 1);
  if (vm.count("sf")) s.recipe.stability_factor = number_in(vm, "sf", 0, kInf, true);
  if (vm.count("ln-matrix")) {
    s.recipe.ln_matrix = vm["ln-matrix"].as<bool>();
    if (s.recipe.ln_matrix && !s.faithful) {
      throw InputError("--ln-matrix", "", "needs --faithful: a full matrix after the norm does not fold into a stock LLaMA");
    }
  }
  if (s.method == worker::Method::kRtn && (s.recipe.let || s.recipe.lwc)) {
    throw InputError("--method", "", "rtn takes no --let/--lwc (use omniquant or affinequant)");
  }
  if (s.recipe.epochs < 0) throw InputError("--epochs", "", "must be >= 0");
  if (s.recipe.stability_factor <= 0) throw InputError("--sf", "", "must be positive");
}

// Where and how the engine runs.
void read_engine(const po::variables_map& vm, QuantizeSpec& s) {
  s.device = vm["device"].as<std::string>();
  worker::check_device_name(s.device);  // whether this machine has the device is the job's check (per rank)
  s.job_dir = vm["job-dir"].as<std::string>();
  s.mode = partition::parse_engine_mode(vm["mode"].as<std::string>());
  s.team_size = vm["team-size"].as<int>();
  if (s.team_size < 0) throw InputError("--team-size", "", "must be >= 0");
  s.cache_dtype = storage::parse_cache_dtype(vm["cache-dtype"].as<std::string>());
  s.heartbeat_timeout_s = number_in(vm, "heartbeat-timeout", 0, std::numeric_limits<double>::infinity(), true);
  s.keep_cache = vm["keep-cache"].as<bool>();
  s.dry_run = vm["dry-run"].as<bool>();
  s.threads = vm["threads"].as<int>();
}

// MRECG joint reconstruction.
void read_joint(const po::variables_map& vm, QuantizeSpec& s) {
  const std::string topk = vm["joint-topk"].as<std::string>();
  if (topk == "auto") {
    s.joint_topk = -1;
  } else {
    try {
      std::size_t used = 0;
      s.joint_topk = std::stoi(topk, &used);
      if (used != topk.size() || s.joint_topk < 0) throw std::invalid_argument(topk);
    } catch (const std::exception&) {
      throw InputError("--joint-topk", "", "'" + topk + "' is not auto or a count >= 0");
    }
  }
  s.joint_max_blocks = vm["joint-max-blocks"].as<int>();
  if (s.joint_max_blocks < 1) throw InputError("--joint-max-blocks", "", "must be >= 1");
  s.modcap = vm["modcap"].as<std::string>();
  if (s.modcap != "probe" && s.modcap != "data-free") throw InputError("--modcap", "", "must be probe or data-free");
  s.probe_epochs = vm["probe-epochs"].as<int>();
  if (s.probe_epochs < 0) throw InputError("--probe-epochs", "", "must be >= 0");
  s.probe_samples = vm["probe-samples"].as<std::int64_t>();
  if (s.probe_samples < 1) throw InputError("--probe-samples", "", "must be >= 1");
  if (s.method == worker::Method::kRtn && s.joint_topk > 0) {
    throw InputError("--joint-topk", "", "joint reconstruction needs a calibrated method (omniquant or affinequant), not rtn");
  }
}

// Parse and validation shared by `qforge quantize` and `qforge submit` (which checks the options after
// its `--` before submitting). nullopt: --help was given and the usage printed (allow_help only; a
// submitted command has no use for it). apply_common: also apply --threads/--log-level, which only the
// process that runs the job should take over.
std::optional<QuantizeSpec> parse_spec(const Args& args, bool allow_help, bool apply_common) {
  po::options_description cli("command-line only");
  add_common_options(cli);
  cli.add_options()("config", po::value<std::string>(), "file of key = value lines with the options below (CLI wins)");
  po::options_description job("quantize options (also valid as config-file keys)");
  add_job_options(job);
  po::options_description all;
  all.add(cli).add(job);
  po::variables_map vm;
  if (!allow_help) {
    for (const auto& a : args) {
      if (a == "--help" || a == "-h") throw InputError(a, "", "not valid here (see qforge quantize --help)");
    }
  }
  if (!parse_args(args, "quantize", "--model DIR --out DIR [--method M --wbits N --abits N ...]", all, vm)) return std::nullopt;
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    std::ifstream in(path);
    if (!in) throw InputError(path, "", "cannot open config file");
    try {
      po::store(po::parse_config_file(in, job), vm);  // values already set on the command line win
    } catch (const po::error& e) {
      throw InputError(path, "", e.what());
    }
    po::notify(vm);
  }
  if (apply_common) apply_common_options(vm);
  QuantizeSpec s;
  read_quantization(vm, s);
  read_calibration(vm, s);
  read_recipe(vm, s);
  read_engine(vm, s);
  read_joint(vm, s);
  QF_LOG(Debug) << "quantize " << s.model.string() << " -> " << s.out.string() << ": " << method_label(s) << " W"
               << s.wbits << "A" << s.abits << (s.group_size ? " g" + std::to_string(s.group_size) : "")
               << (s.faithful ? " faithful" : " deployable") << "; recipe " << s.recipe.describe();
  return s;
}

}  // namespace

QuantizeSpec parse_quantize_spec(const Args& args) { return *parse_spec(args, false, false); }

int run_quantize(const Args& args) {
  const std::optional<QuantizeSpec> s = parse_spec(args, true, true);
  if (!s) return 0;  // --help: usage printed
  return run_quantize_job(*s);
}

}  // namespace qforge::jobs
