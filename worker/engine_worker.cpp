#include "worker/engine_worker.h"

#include <ATen/ATen.h>

#include <atomic>
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
  HeartbeatThread(const MpiComm& control, double interval_s) : control_(control), interval_(interval_s) {
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
  void set(int unit, const std::string& phase) {
    std::lock_guard<std::mutex> lock(mu_);
    unit_ = unit;
    phase_ = phase;
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      protocol::Heartbeat hb{control_.rank(), unit_, phase_};
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
  const MpiComm& control_;
  double interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  int unit_ = -1;
  std::string phase_ = "idle";
  std::thread thread_;
};

class Worker {
 public:
  Worker(const EngineSettings& s, const MpiComm& control, const MpiComm& team)
      : s_(s), control_(control), team_(team), baseline_rss_(current_rss_bytes()), heartbeat_(control, s.heartbeat_interval_s) {}

  WorkerExit run() {
    control_.send(0, protocol::kTagToCoordinator,
                  protocol::encode(protocol::Hello{control_.rank(), host_name(), "cpu", total_memory_bytes(),
                                                   at::get_num_threads()}));
    model_ = std::make_unique<LlamaModel>(s_.model);
    if (s_.needs_data) {
      const auto flat = storage::read_token_file(s_.job.calibration_path());
      QF_CHECK(static_cast<std::int64_t>(flat.size()) == s_.samples * s_.seqlen,
               s_.job.calibration_path().string() + " does not hold samples x seqlen tokens");
      ids_ = at::tensor(std::vector<std::int64_t>(flat.begin(), flat.end()), at::kLong).view({s_.samples, s_.seqlen});
      rope_ = model_->rope(s_.seqlen);
    }
    for (;;) {
      const protocol::Message msg = wait_for_coordinator();
      if (msg.type == "shutdown") return exit_of(protocol::shutdown_from(msg));
      const protocol::Task task = protocol::task_from(msg);
      try {
        protocol::Done done = task.kind == "fp_pass" ? run_fp_pass(task) : run_unit(task);
        heartbeat_.set(-1, "idle");
        control_.send(0, protocol::kTagToCoordinator, protocol::encode(done));
        fault_point("after_done");
      } catch (const JobAborted& e) {
        QF_LOG(Warn) << e.what();
        return e.abort ? WorkerExit::kAborting : WorkerExit::kFailed;
      } catch (const std::exception& e) {
        QF_LOG(Error) << (task.kind == "unit" ? "unit " + std::to_string(task.unit) : task.kind) << " failed: " << e.what();
        control_.send(0, protocol::kTagToCoordinator, protocol::encode(protocol::Failed{control_.rank(), task, e.what()}));
      }
    }
  }

 private:
  protocol::Message wait_for_coordinator() {
    for (;;) {
      if (auto m = control_.try_recv(0, protocol::kTagToWorker)) return protocol::decode(m->second, 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  static WorkerExit exit_of(const protocol::Shutdown& s) {
    return s.ok ? WorkerExit::kOk : s.abort ? WorkerExit::kAborting : WorkerExit::kFailed;
  }

  // Called while waiting on team peers: a SHUTDOWN from the coordinator ends the wait.
  void poll_for_shutdown() {
    if (auto m = control_.try_recv(0, protocol::kTagToWorker)) {
      const protocol::Message msg = protocol::decode(m->second, 0);
      QF_CHECK(msg.type == "shutdown", "unexpected " + msg.type + " while a unit runs");
      const protocol::Shutdown sd = protocol::shutdown_from(msg);
      JobAborted e("stopped by the coordinator: " + sd.reason);
      e.abort = sd.abort;
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
  // that every later read of any boundary sees the same rounding.
  at::Tensor embedded(const std::vector<std::int64_t>& rows) const {
    at::NoGradGuard no_grad;
    at::Tensor idx = at::tensor(rows, at::kLong);
    return storage::round_to_cache_dtype(model_->embed(ids_.index_select(0, idx)).to(at::kFloat).contiguous(), s_.cache_dtype);
  }

  std::string write_slice(int boundary, const std::string& stream, std::int64_t attempt, int part,
                          const std::vector<std::int64_t>& rows, const at::Tensor& x) {
    const std::string name = storage::JobDir::cache_file_name(boundary, stream, attempt, part);
    bytes_written_ += storage::write_activation_slice(s_.job.cache_dir() / name, meta(boundary, stream), rows, x);
    return name;
  }

  protocol::Done finish(const protocol::Task& task, std::int64_t samples, Clock::time_point t0) {
    protocol::Done d;
    d.rank = control_.rank();
    d.task = task;
    d.samples = samples;
    d.peak_rss = peak_rss_bytes();
    d.baseline_rss = baseline_rss_;
    d.cache_bytes_written = bytes_written_;
    d.cache_bytes_read = bytes_read_;
    d.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    bytes_written_ = bytes_read_ = 0;
    return d;
  }

  protocol::Done run_fp_pass(const protocol::Task& task) {
    const auto t0 = Clock::now();
    heartbeat_.set(-1, "fp_pass");
    const auto& cfg = model_->config();
    at::NoGradGuard no_grad;
    at::Tensor x = embedded(task.samples);
    std::vector<std::string> files;
    const std::int64_t batch = std::max<std::int64_t>(1, s_.batch_size);
    for (std::size_t u = 0; u + 1 < s_.units.size(); ++u) {
      const auto [first, count] = s_.units[u];
      for (int b = first; b < first + count; ++b) {
        BlockWeights w = BlockWeights::load(model_->checkpoint(), cfg, b, at::kFloat, at::kCPU);
        x = map_batches(x, batch, [&](const at::Tensor& xb) { return block_forward(cfg, w, xb, rope_); });
      }
      x = storage::round_to_cache_dtype(x, s_.cache_dtype);
      files.push_back(write_slice(static_cast<int>(u) + 1, "fp", task.attempt, control_.rank(), task.samples, x));
    }
    protocol::Done d = finish(task, static_cast<std::int64_t>(task.samples.size()), t0);
    d.files = files;
    return d;
  }

  protocol::Done run_unit(const protocol::Task& task) {
    const auto t0 = Clock::now();
    const int u = task.unit;
    const auto [block, nblocks] = s_.units.at(static_cast<std::size_t>(u));
    QF_CHECK(nblocks == 1, "joint units of several blocks are not supported by this engine yet");
    const std::string label = "unit " + std::to_string(u) + " (block " + std::to_string(block) + ")";
    heartbeat_.set(u, "load");
    const int K = static_cast<int>(task.team_ranks.size());
    QF_CHECK(K == team_.size(), "assignment team size differs from this rank's team");
    const int r = team_.rank();
    QF_CHECK(task.team_ranks.at(static_cast<std::size_t>(r)) == control_.rank(), "team rank order mismatch");
    const auto& cfg = model_->config();
    const CalibOptions& co = s_.block_options.at(static_cast<std::size_t>(block));
    MpiTeamReducer reducer(team_, std::chrono::duration<double>(s_.collective_timeout_s), [this] { poll_for_shutdown(); }, label);
    fault_point("unit_start");

    BlockWeights fp = BlockWeights::load(model_->checkpoint(), cfg, block, at::kFloat, at::kCPU);
    BlockResult res;
    std::vector<std::int64_t> rows;
    std::vector<std::string> files;
    json report = {{"unit", u}, {"blocks", {block}}, {"bits", co.weights.bits}, {"act_bits", co.acts.bits}};
    if (s_.needs_data) {
      rows = partition::team_rows(s_.samples, s_.batch_size, K, r);
      const std::int64_t lb = partition::local_batch(s_.batch_size, K, r);
      heartbeat_.set(u, "read");
      at::Tensor x_fp, x_q;
      if (task.input_boundary == 0) {
        x_fp = embedded(rows);
        x_q = x_fp;
      } else {
        x_fp = storage::read_activation_rows(cache_paths(task.x_fp_files), meta(task.input_boundary, "fp"), rows, &bytes_read_);
        x_q = task.x_q_files == task.x_fp_files
                  ? x_fp
                  : storage::read_activation_rows(cache_paths(task.x_q_files), meta(task.input_boundary, "q"), rows, &bytes_read_);
      }
      heartbeat_.set(u, "train");
      ActStats stats;
      at::Tensor y_fp = map_batches(x_fp, lb, [&](const at::Tensor& x) { return accumulate_act_stats(cfg, fp, x, rope_, stats); });
      std::vector<at::Tensor> st{stats.qkv, stats.o, stats.fc1};
      reducer.max(st);
      at::Tensor y_fp2;
      if (co.aug_loss) y_fp2 = map_batches(x_q, lb, [&](const at::Tensor& x) { return block_forward(cfg, fp, x, rope_); });
      const DataSplit split{s_.samples, s_.batch_size, lb};
      res = calibrate_block(cfg, fp, x_q, y_fp, y_fp2, stats, co, rope_, label, &reducer, &split);
      report["initial_loss"] = res.initial_loss;
      report["final_loss"] = res.final_loss;
      report["epoch_loss"] = res.epoch_loss;
      report["diagonal_dominance_projections"] = res.projections;
      if (task.write_next || task.last_unit) {
        heartbeat_.set(u, "write");
        at::Tensor q_next = storage::round_to_cache_dtype(
            map_batches(x_q, lb, [&](const at::Tensor& x) { return block_forward(cfg, res.weights, x, rope_, co.acts); }),
            s_.cache_dtype);
        if (task.write_next) {
          files.push_back(write_slice(u + 1, "fp", task.attempt, r, rows, storage::round_to_cache_dtype(y_fp, s_.cache_dtype)));
          files.push_back(write_slice(u + 1, "q", task.attempt, r, rows, q_next));
        }
        if (task.last_unit) report["calibration_mean_nll"] = calibration_nll(q_next, rows, reducer);
      }
    } else {
      BlockTransforms none(cfg, fp, {}, co.transform, co.weights);
      res = finalize_block(fp, none, co.weights);
    }

    protocol::Done d = finish(task, static_cast<std::int64_t>(rows.size()), t0);
    d.files = files;
    if (r == 0) {
      heartbeat_.set(u, "shard");
      fs::create_directories(s_.job.units_dir());
      const fs::path shard = s_.job.unit_shard(u);
      fault_point("shard_write");
      storage::write_safetensors(shard, block_result_tensors(block, res),
                                 {{"format", "pt"}, {"qforge_unit", std::to_string(u)}, {"qforge_report", report.dump()}});
      d.shard = shard.filename().string();
      d.digest = sha256_file(shard);
      d.report = report;
    }
    return d;
  }

  // Mean next-token NLL of the in-memory quantized model on the calibration windows (team-wide):
  // `qforge eval` of the output folder on calibration.tok reproduces it, a check of the round trip.
  double calibration_nll(const at::Tensor& hidden, const std::vector<std::int64_t>& rows, TeamReducer& reducer) {
    at::NoGradGuard no_grad;
    double sum = 0;
    const std::int64_t L = s_.seqlen;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      at::Tensor logp = at::log_softmax(model_->head(hidden[static_cast<std::int64_t>(i)].unsqueeze(0))[0], -1);
      at::Tensor target = ids_[rows[i]].slice(0, 1, L).unsqueeze(1);
      sum -= logp.slice(0, 0, L - 1).gather(1, target).sum().item<double>();
    }
    std::vector<at::Tensor> v{at::full({1}, sum, at::kDouble)};
    reducer.sum(v);
    return v[0].item<double>() / static_cast<double>(s_.samples * (L - 1));
  }

  const EngineSettings& s_;
  const MpiComm& control_;
  const MpiComm& team_;
  std::uint64_t baseline_rss_;
  HeartbeatThread heartbeat_;
  std::unique_ptr<LlamaModel> model_;
  at::Tensor ids_;
  RopeTables rope_;
  std::uint64_t bytes_written_ = 0, bytes_read_ = 0;
};

}  // namespace

WorkerExit run_worker(const EngineSettings& settings, const MpiComm& control, const MpiComm& team) {
  return Worker(settings, control, team).run();
}

}  // namespace qforge::worker
