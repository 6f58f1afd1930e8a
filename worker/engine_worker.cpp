#include "worker/engine_worker.h"

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/fault.h"
#include "common/log.h"
#include "common/protocol.h"
#include "common/sha256.h"
#include "common/sysinfo.h"
#include "partition/model_index.h"
#include "partition/sample_split.h"
#include "storage/safetensors.h"
#include "storage/token_file.h"
#include "worker/llama_model.h"
#include "worker/team_reducer.h"

namespace qforge::worker {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::vector<std::pair<std::string, at::Tensor>> block_result_tensors(int b, const BlockResult& r) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto put = [&](const std::string& suffix, const at::Tensor& t) {
    if (t.defined()) out.emplace_back(partition::block_tensor_name(b, suffix), t.contiguous());
  };
  const auto& w = r.weights;
  put("input_layernorm.weight", w.input_norm);
  put("post_attention_layernorm.weight", w.post_norm);
  put("input_layernorm.bias", w.input_norm_bias);
  put("post_attention_layernorm.bias", w.post_norm_bias);
  put("input_layernorm.affine_inverse", w.input_norm_inverse);
  put("post_attention_layernorm.affine_inverse", w.post_norm_inverse);
  const auto& names = linear_names();
  const at::Tensor* biases[] = {&w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias, &w.gate_bias, &w.up_bias, &w.down_bias};
  for (std::size_t i = 0; i < names.size(); ++i) {
    put(names[i] + ".weight", linear_weight(w, i));
    put(names[i] + ".bias", *biases[i]);
  }
  for (std::size_t i = 0; i < names.size(); ++i) {
    put(names[i] + ".codes", r.linears[i].codes);
    put(names[i] + ".scales", r.linears[i].scales);
    put(names[i] + ".zeros", r.linears[i].zeros);
  }
  return out;
}

namespace {

// Sends HEARTBEAT{rank, unit, phase} every interval from its own thread, so a long training step (or
// a long HDF5 read) never looks like a dead worker; a stopped process stops its heartbeats too.
class HeartbeatThread {
 public:
  HeartbeatThread(const Transport& control, double interval_s) : control_(control), interval_(interval_s) {
    thread_ = std::thread([this] { loop(); });
  }
  ~HeartbeatThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void set(std::int64_t assignment, const std::string& phase) {
    std::lock_guard<std::mutex> lock(mu_);
    assignment_ = assignment;
    phase_ = phase;
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      const protocol::Heartbeat hb{control_.rank(), assignment_, phase_};
      lock.unlock();
      try {
        control_.send(0, protocol::kTagToCoordinator, protocol::encode(hb));
      } catch (const std::exception& e) {
        QF_LOG(Warn) << "heartbeat not sent: " << e.what();
      }
      lock.lock();
      cv_.wait_for(lock, std::chrono::duration<double>(interval_), [this] { return stop_; });
    }
  }
  const Transport& control_;
  double interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::int64_t assignment_ = 0;
  std::string phase_ = "idle";
  std::thread thread_;
};

class Worker {
 public:
  Worker(const EngineSettings& s, const Transport& control, const Transport& team)
      : s_(s), control_(control), team_(team), baseline_rss_(current_rss_bytes()), heartbeat_(control, s.heartbeat_interval_s),
        channel_(team, s.device) {}

  WorkerExit run() {
    send(protocol::Hello{control_.rank(), host_name(), s_.device.str(), total_memory_bytes(), at::get_num_threads()});
    // Ops that allocate on "the current GPU" (and the NCCL communicator) then use this rank's.
    if (s_.device.is_cuda()) c10::impl::getDeviceGuardImpl(s_.device.type())->setDevice(s_.device);
    ModelOptions model_options;
    model_options.device = s_.device;  // embeddings, head and rope tables where the blocks compute
    model_ = std::make_unique<LlamaModel>(s_.model, model_options);
    if (s_.needs_data) {
      const auto flat = storage::read_token_file(s_.job.calibration_path());
      QF_CHECK(static_cast<std::int64_t>(flat.size()) == s_.samples * s_.seqlen,
               s_.job.calibration_path().string() + " does not hold samples x seqlen tokens");
      ids_ = at::tensor(std::vector<std::int64_t>(flat.begin(), flat.end()), at::kLong).view({s_.samples, s_.seqlen});
      rope_ = model_->rope(s_.seqlen);
    }
    for (;;) {
      const protocol::Message msg = wait_for_coordinator();
      if (const auto* sd = std::get_if<protocol::Shutdown>(&msg)) return exit_of(*sd);
      const auto* a = std::get_if<protocol::Assign>(&msg);
      QF_CHECK(a, std::string("unexpected ") + protocol::type_name(msg) + " from the coordinator");
      try {
        run_assignment(*a);
        heartbeat_.set(0, "idle");
        fault_point("after_done");
      } catch (const JobAborted& e) {
        QF_LOG(Warn) << e.what();
        return e.abort ? WorkerExit::kAborting : WorkerExit::kFailed;
      } catch (const DamagedFileError& e) {
        QF_LOG(Warn) << "assignment " << a->id << " (" << protocol::kind_name(a->work) << ") read a damaged job file: " << e.what();
        send(protocol::Failed{control_.rank(), a->id, e.what(), e.exit_code(), fs::path(e.path()).filename().string()});
      } catch (const Error& e) {
        QF_LOG(Error) << "assignment " << a->id << " (" << protocol::kind_name(a->work) << ") failed: " << e.what();
        send(protocol::Failed{control_.rank(), a->id, e.what(), e.exit_code(), std::nullopt});
      } catch (const std::exception& e) {
        QF_LOG(Error) << "assignment " << a->id << " (" << protocol::kind_name(a->work) << ") failed: " << e.what();
        send(protocol::Failed{control_.rank(), a->id, e.what(), kExitInternal, std::nullopt});
      }
    }
  }

 private:
  void send(const protocol::Message& m) { control_.send(0, protocol::kTagToCoordinator, protocol::encode(m)); }

  void run_assignment(const protocol::Assign& a) {
    if (const auto* fp = std::get_if<protocol::FpPassWork>(&a.work)) return send(run_fp_pass(a.id, *fp));
    if (const auto* probe = std::get_if<protocol::ProbeWork>(&a.work)) return run_probes(a.id, *probe);  // one DONE per block
    send(run_unit(a.id, a.ranks, std::get<protocol::UnitWork>(a.work)));
  }

  protocol::Message wait_for_coordinator() {
    for (;;) {
      if (auto m = control_.try_recv(0, protocol::kTagToWorker)) {
        protocol::Message msg = protocol::decode(m->second, 0);
        // A CHECKPOINT for a unit this rank already finished: nothing to stop.
        if (std::holds_alternative<protocol::Checkpoint>(msg)) continue;
        return msg;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  static WorkerExit exit_of(const protocol::Shutdown& s) {
    if (s.ok) return WorkerExit::kOk;
    if (s.abort) return WorkerExit::kAborting;
    return s.exit_code == kExitStopped ? WorkerExit::kStopped : WorkerExit::kFailed;
  }

  // Called while waiting on team peers and before every optimiser step: a SHUTDOWN from the
  // coordinator ends the wait; a CHECKPOINT of the running unit is noted for the next step's vote.
  void poll_for_shutdown() {
    while (auto m = control_.try_recv(0, protocol::kTagToWorker)) {
      const protocol::Message msg = protocol::decode(m->second, 0);
      if (const auto* c = std::get_if<protocol::Checkpoint>(&msg)) {
        if (c->assignment == running_) checkpoint_requested_ = true;
        continue;
      }
      const auto* sd = std::get_if<protocol::Shutdown>(&msg);
      QF_CHECK(sd, std::string("unexpected ") + protocol::type_name(msg) + " while a unit runs");
      JobAborted e("stopped by the coordinator: " + sd->reason);
      e.abort = sd->abort;
      throw e;
    }
  }

  storage::ActivationSliceMeta meta(int boundary, const std::string& stream) const {
    storage::ActivationSliceMeta m;
    m.model_fingerprint = s_.model_fingerprint;
    m.job_fingerprint = s_.job_fingerprint;
    m.boundary = boundary;
    m.stream = stream;
    m.total_samples = s_.samples;
    m.tokens = s_.seqlen;
    m.hidden = model_->config().hidden_size;
    m.dtype = s_.cache_dtype;
    return m;
  }

  std::vector<fs::path> cache_paths(const std::vector<std::string>& names) const {
    std::vector<fs::path> out;
    for (const auto& n : names) out.push_back(s_.job.cache_dir() / n);
    return out;
  }

  // The boundary-0 stream: embeddings of the calibration windows, in the cache's representation so
  // that every later read of any boundary sees the same rounding (on this rank's device).
  at::Tensor embedded(const std::vector<std::int64_t>& rows) const {
    at::NoGradGuard no_grad;
    at::Tensor idx = at::tensor(rows, at::kLong);
    return storage::round_to_cache_dtype(model_->embed(ids_.index_select(0, idx)).to(at::kFloat).contiguous(), s_.cache_dtype);
  }

  // Rows of cached activations, on this rank's device.
  at::Tensor read_rows(const std::vector<std::string>& files, const storage::ActivationSliceMeta& m,
                       const std::vector<std::int64_t>& rows) {
    return storage::read_activation_rows(cache_paths(files), m, rows, &bytes_read_).to(s_.device);
  }

  BlockWeights load_block(int b) const {
    return BlockWeights::load(model_->checkpoint(), model_->config(), b, at::kFloat, s_.device);
  }

  std::string write_slice(int boundary, const std::string& stream, std::int64_t attempt, int part,
                          const std::vector<std::int64_t>& rows, const at::Tensor& x) {
    const std::string name = storage::JobLayout::cache_file_name(boundary, stream, attempt, part);
    bytes_written_ += storage::write_activation_slice(s_.job.cache_dir() / name, meta(boundary, stream), rows, x.cpu());
    return name;
  }

  protocol::Done finish(std::int64_t assignment, std::int64_t samples, Clock::time_point t0) {
    protocol::Done d;
    d.rank = control_.rank();
    d.assignment = assignment;
    d.samples = samples;
    d.peak_rss = peak_rss_bytes();
    d.baseline_rss = baseline_rss_;
    d.cache_bytes_written = bytes_written_;
    d.cache_bytes_read = bytes_read_;
    d.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    bytes_written_ = bytes_read_ = 0;
    return d;
  }

  protocol::Done run_fp_pass(std::int64_t id, const protocol::FpPassWork& work) {
    const auto t0 = Clock::now();
    heartbeat_.set(id, "fp_pass");
    const auto& cfg = model_->config();
    at::NoGradGuard no_grad;
    at::Tensor x = embedded(work.samples);
    std::vector<std::string> files;
    const std::int64_t batch = std::max<std::int64_t>(1, s_.batch_size);
    for (int b = 0; b + 1 < s_.blocks; ++b) {
      BlockWeights w = load_block(b);
      x = storage::round_to_cache_dtype(
          map_batches(x, batch, [&](const at::Tensor& xb) { return block_forward(cfg, w, xb, rope_); }), s_.cache_dtype);
      files.push_back(write_slice(b + 1, "fp", id, control_.rank(), work.samples, x));
    }
    protocol::Done d = finish(id, static_cast<std::int64_t>(work.samples.size()), t0);
    d.cache_files = files;
    return d;
  }

  // The FP-stream rows `rows` at block boundary `boundary` (embeddings at 0), from those of `files`
  // that hold that boundary.
  at::Tensor fp_stream(int boundary, const std::vector<std::string>& files, const std::vector<std::int64_t>& rows) {
    if (boundary == 0) return embedded(rows);
    std::vector<std::string> mine;
    for (const auto& f : files) {
      const auto parsed = storage::JobLayout::parse_cache_file(f);
      if (parsed && parsed->boundary == boundary) mine.push_back(f);
    }
    return read_rows(mine, meta(boundary, "fp"), rows);
  }

  void run_probes(std::int64_t id, const protocol::ProbeWork& work) {
    const auto& cfg = model_->config();
    for (int b : work.blocks) {
      const auto t0 = Clock::now();
      heartbeat_.set(id, "probe of block " + std::to_string(b));
      fault_point("probe");
      const at::Tensor x = fp_stream(b, work.x_fp_files, work.samples);
      const BlockWeights fp = load_block(b);
      const ProbeResult p = probe_block(cfg, fp, x, s_.block_options.at(static_cast<std::size_t>(b)), s_.probe_epochs, rope_,
                                        "probe of block " + std::to_string(b));
      protocol::Done d = finish(id, static_cast<std::int64_t>(work.samples.size()), t0);
      d.probed_block = b;
      d.report = {{"loss", p.loss}, {"energy", p.energy}, {"capacity_loss", p.normalized}, {"epochs", s_.probe_epochs},
                  {"epoch_loss", p.epoch_loss}};
      send(d);
    }
  }

  protocol::Done run_unit(std::int64_t id, const std::vector<int>& ranks, const protocol::UnitWork& task) {
    const auto t0 = Clock::now();
    const int u = task.unit;
    const int block = task.first_block, nblocks = task.num_blocks;
    QF_CHECK(nblocks >= 1 && block >= 0 && block + nblocks <= s_.blocks, "unit " + std::to_string(u) + " names blocks outside the model");
    const std::string label = "unit " + std::to_string(u) + " (block" +
                              (nblocks > 1 ? "s " + std::to_string(block) + "-" + std::to_string(block + nblocks - 1)
                                           : " " + std::to_string(block)) + ")";
    heartbeat_.set(id, "load");
    running_ = id;  // from here on a CHECKPOINT for this assignment may arrive (and is kept for the first step)
    checkpoint_requested_ = false;
    const int K = static_cast<int>(ranks.size());
    QF_CHECK(K == team_.size(), "assignment team size differs from this rank's team");
    const int r = team_.rank();
    QF_CHECK(ranks.at(static_cast<std::size_t>(r)) == control_.rank(), "team rank order mismatch");
    const auto& cfg = model_->config();
    std::vector<CalibOptions> options;
    std::vector<BlockWeights> fp;
    json block_list = json::array(), bits = json::array(), act_bits = json::array();
    for (int b = block; b < block + nblocks; ++b) {
      options.push_back(s_.block_options.at(static_cast<std::size_t>(b)));
      block_list.push_back(b);
      bits.push_back(options.back().weights.bits);
      act_bits.push_back(options.back().acts.bits);
    }
    std::vector<ActQuantSpec> acts;
    for (const auto& o : options) acts.push_back(o.acts);
    const std::unique_ptr<PackedTeamReducer> reducer_owner =
        channel_.reducer(std::chrono::duration<double>(s_.collective_timeout_s), [this] { poll_for_shutdown(); }, label);
    PackedTeamReducer& reducer = *reducer_owner;
    fault_point("unit_start");

    for (int b = block; b < block + nblocks; ++b) fp.push_back(load_block(b));
    UnitResult res;
    std::vector<std::int64_t> rows;
    std::vector<std::string> files;
    // One-block units keep the scalar form of bits and act_bits.
    json report = {{"unit", u}, {"blocks", block_list}, {"bits", nblocks == 1 ? bits[0] : bits},
                   {"act_bits", nblocks == 1 ? act_bits[0] : act_bits}};
    if (s_.needs_data) {
      rows = partition::team_rows(s_.samples, s_.batch_size, K, r);
      const std::int64_t lb = partition::local_batch(s_.batch_size, K, r);
      heartbeat_.set(id, "read");
      at::Tensor x_fp, x_q;
      if (block == 0) {
        x_fp = embedded(rows);
        x_q = x_fp;
      } else {
        x_fp = read_rows(task.x_fp_files, meta(block, "fp"), rows);
        x_q = task.x_q_files == task.x_fp_files ? x_fp : read_rows(task.x_q_files, meta(block, "q"), rows);
      }
      heartbeat_.set(id, "train");
      // Statistics of every block on the FP stream inside the unit, and the FP target at its output.
      std::vector<ActStats> stats(static_cast<std::size_t>(nblocks));
      at::Tensor y_fp = x_fp;
      for (std::size_t i = 0; i < fp.size(); ++i) {
        ActStats& block_stats = stats[i];
        const BlockWeights& w = fp[i];
        y_fp = map_batches(y_fp, lb, [&](const at::Tensor& x) { return accumulate_act_stats(cfg, w, x, rope_, block_stats); });
        std::vector<at::Tensor> maxima{block_stats.qkv, block_stats.o, block_stats.fc1};
        reducer.max(maxima);
      }
      at::Tensor y_fp2;
      if (options.front().aug_loss) y_fp2 = map_batches(x_q, lb, [&](const at::Tensor& x) { return chain_forward(cfg, fp, x, rope_); });
      const DataSplit split{s_.samples, s_.batch_size, lb};
      UnitCheckpoint resume;
      StopControl stop;
      stop.requested = [this] {
        poll_for_shutdown();
        return checkpoint_requested_;
      };
      if (!task.resume_from.empty()) {
        resume = read_checkpoint(task);
        stop.resume = &resume;
      }
      try {
        res = calibrate_unit(cfg, fp, x_q, y_fp, y_fp2, stats, options, rope_, label, &reducer, &split, &stop,
                             FinalLoss::kCallerMeasures);
      } catch (const UnitStopped& stopped) {
        return checkpointed(id, u, stopped.checkpoint, static_cast<std::int64_t>(rows.size()), t0);
      }
      // The oscillation curve: every block's normalised loss at its own output, inside the unit too. Its
      // last point is the unit's final loss, and the same pass gives the next quantized stream.
      std::vector<BlockWeights> quantized;
      for (const auto& br : res.blocks) quantized.push_back(br.weights);
      const std::int64_t elements = s_.samples * s_.seqlen * cfg.hidden_size;
      const bool need_next = task.write_next || task.last_unit;
      at::Tensor q_out;
      json curve = json::array();
      for (const auto& cl : chain_losses(cfg, fp, quantized, x_fp, x_q, rope_, acts, lb, &reducer, elements,
                                         need_next ? &q_out : nullptr, y_fp)) {
        curve.push_back({{"mse", cl.mse}, {"energy", cl.energy}, {"normalized", cl.normalized()}});
        res.final_loss = cl.mse;
      }
      report["initial_loss"] = res.initial_loss;
      report["final_loss"] = res.final_loss;
      report["epoch_loss"] = res.epoch_loss;
      report["diagonal_dominance_projections"] = res.projections;
      report["block_losses"] = curve;
      if (need_next) {
        heartbeat_.set(id, "write");
        const at::Tensor q_next = storage::round_to_cache_dtype(q_out, s_.cache_dtype);
        const int next = block + nblocks;
        if (task.write_next) {
          files.push_back(write_slice(next, "fp", id, r, rows, storage::round_to_cache_dtype(y_fp, s_.cache_dtype)));
          files.push_back(write_slice(next, "q", id, r, rows, q_next));
        }
        if (task.last_unit) report["calibration_mean_nll"] = calibration_nll(q_next, rows, reducer);
      }
    } else {
      for (std::size_t i = 0; i < fp.size(); ++i) {
        BlockTransforms none(cfg, fp[i], {}, options[i].transform, options[i].weights);
        res.blocks.push_back(finalize_block(fp[i], none, options[i].weights));
      }
    }

    protocol::Done d = finish(id, static_cast<std::int64_t>(rows.size()), t0);
    d.cache_files = files;
    if (r == 0) {
      heartbeat_.set(id, "shard");
      fs::create_directories(s_.job.units_dir());
      const fs::path shard = s_.job.unit_shard(u);
      fault_point("shard_write");
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (int i = 0; i < nblocks; ++i) {
        for (auto& t : block_result_tensors(block + i, res.blocks[static_cast<std::size_t>(i)])) tensors.push_back(std::move(t));
      }
      storage::write_safetensors(shard, tensors,
                                 {{"format", "pt"}, {"qforge_unit", std::to_string(u)}, {"qforge_report", report.dump()}});
      d.shard = protocol::UnitFile{shard.filename().string(), sha256_file(shard)};
      d.report = report;
    }
    return d;
  }

  // A mid-unit checkpoint (JobLayout::checkpoint_name: one per attempt, so a checkpoint a
  // later attempt resumes from is never overwritten), written by the team leader; every member then
  // reports the unit stopped.
  protocol::Done checkpointed(std::int64_t id, int unit, const UnitCheckpoint& ck, std::int64_t rows, Clock::time_point t0) {
    protocol::Done d = finish(id, rows, t0);
    d.stopped = true;
    d.report = {{"epoch", ck.epoch}, {"step", ck.step}};
    if (team_.rank() == 0) {
      heartbeat_.set(id, "checkpoint");
      const std::string name = storage::JobLayout::checkpoint_name(unit, id);
      const fs::path path = s_.job.units_dir() / name;
      const json meta = {{"unit", unit}, {"epoch", ck.epoch}, {"step", ck.step}, {"epoch_sum", ck.epoch_sum},
                         {"epoch_loss", ck.epoch_loss}};
      storage::write_safetensors(path, ck.state, {{"format", "pt"}, {"qforge_checkpoint", meta.dump()}});
      d.checkpoint = protocol::UnitFile{name, sha256_file(path)};
    }
    QF_LOG(Info) << "unit " << unit << " stopped at epoch " << (ck.epoch + 1) << " step " << ck.step
                 << (d.checkpoint ? ", checkpoint " + d.checkpoint->name : "");
    return d;
  }

  UnitCheckpoint read_checkpoint(const protocol::UnitWork& task) const {
    const fs::path path = s_.job.units_dir() / task.resume_from;
    if (!fs::is_regular_file(path)) throw DamagedFileError(path.string(), path.string() + ": checkpoint is missing");
    if (sha256_file(path) != task.resume_digest) {
      throw DamagedFileError(path.string(), path.string() + ": checkpoint does not match the digest in the journal "
                                                            "(modified or corrupted)");
    }
    const storage::SafetensorsFile f(path);
    const json meta = json::parse(f.metadata().at("qforge_checkpoint"));
    UnitCheckpoint ck;
    ck.epoch = meta.at("epoch").get<int>();
    ck.step = meta.at("step").get<std::int64_t>();
    ck.epoch_sum = meta.at("epoch_sum").get<double>();
    ck.epoch_loss = meta.at("epoch_loss").get<std::vector<double>>();
    for (const auto& t : f.tensors()) ck.state.emplace_back(t.name, f.load(t.name));
    return ck;
  }

  // Mean next-token NLL of the in-memory quantized model on the calibration windows (team-wide):
  // `qforge eval` of the output folder on calibration.tok reproduces it, a check of the round trip.
  double calibration_nll(const at::Tensor& hidden, const std::vector<std::int64_t>& rows, TeamReducer& reducer) {
    at::NoGradGuard no_grad;
    double sum = 0;
    const std::int64_t L = s_.seqlen;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      at::Tensor logp = at::log_softmax(model_->head(hidden[static_cast<std::int64_t>(i)].unsqueeze(0))[0], -1);
      at::Tensor target = ids_[rows[i]].slice(0, 1, L).unsqueeze(1).to(logp.device());
      sum -= logp.slice(0, 0, L - 1).gather(1, target).sum().item<double>();
    }
    std::vector<at::Tensor> v{at::full({1}, sum, at::kDouble)};
    reducer.sum(v);
    return v[0].item<double>() / static_cast<double>(s_.samples * (L - 1));
  }

  const EngineSettings& s_;
  const Transport& control_;
  const Transport& team_;
  std::uint64_t baseline_rss_;
  HeartbeatThread heartbeat_;
  TeamChannel channel_;
  std::unique_ptr<LlamaModel> model_;
  at::Tensor ids_;
  RopeTables rope_;
  std::uint64_t bytes_written_ = 0, bytes_read_ = 0;
  std::int64_t running_ = 0;             // the unit assignment in flight (CHECKPOINT requests name it)
  bool checkpoint_requested_ = false;
};

}  // namespace

WorkerExit run_worker(const EngineSettings& settings, const Transport& control, const Transport& team) {
  return Worker(settings, control, team).run();
}

}  // namespace qforge::worker
