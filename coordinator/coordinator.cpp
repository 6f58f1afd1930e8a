#include "coordinator/coordinator.h"

#include <chrono>
#include <csignal>
#include <ctime>
#include <map>
#include <set>
#include <thread>

#include "common/error.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/protocol.h"
#include "common/signals.h"
#include "common/progress.h"
#include "partition/joint_selection.h"
#include "partition/sample_split.h"

namespace qforge::coordinator {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Wall-clock seconds with millisecond resolution (journal "t": status ETA and benchmarks read it).
double unix_time() {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch());
  return static_cast<double>(ms.count()) / 1000.0;
}

// Boundary of a cache slice the worker reported (it names only files it wrote).
int boundary_of(const std::string& name) {
  const auto f = storage::JobLayout::parse_cache_file(name);
  QF_CHECK(f.has_value(), "a worker reported a cache file with a foreign name: " + name);
  return f->boundary;
}

}  // namespace

struct Coordinator::Impl {
  struct Running {  // one assignment in flight
    protocol::Task task;
    int team = 0;
    std::map<int, protocol::Done> dones;  // by rank
  };

  CoordinatorSettings s;
  const MpiComm& control;
  storage::Journal& journal;
  JobState state;
  Assemble assemble;
  std::map<int, Running> running;        // by unit; the FP pass is unit -1, the probes -2
  std::set<int> probes_pending;          // blocks of the probe assignment in flight
  std::map<int, Clock::time_point> last_heard;
  std::map<int, protocol::Hello> hellos;
  std::map<int, std::string> phase;      // rank -> last heartbeat phase
  std::set<int> busy_teams;
  bool failed = false;
  bool stopping = false;                 // a stop signal arrived: checkpoint, then end with kExitStopped
  CoordinatorOutcome outcome;
  int teams = 1;
  ProgressMeter meter;

  Impl(CoordinatorSettings settings, const MpiComm& c, storage::Journal& j, JobState st, Assemble a)
      : s(std::move(settings)), control(c), journal(j), state(std::move(st)), assemble(std::move(a)),
        teams(s.ranks / s.team_size), meter("units", state.units(), "") {}

  void record(json r) {
    r["t"] = unix_time();
    journal.append(r);
    state.apply(r);
  }

  std::vector<int> team_ranks(int team) const {
    std::vector<int> r;
    for (int i = 0; i < s.team_size; ++i) r.push_back(team * s.team_size + i);
    return r;
  }

  std::string unit_label(int unit) const {
    if (unit == -1) return "the FP pass";
    if (unit == -2) return "the MRECG probes";
    const auto [first, count] = state.unit(unit);
    return "unit " + std::to_string(unit) + " (block" + (count > 1 ? "s " : " ") + std::to_string(first) +
           (count > 1 ? "-" + std::to_string(first + count - 1) : "") + ")";
  }

  // What rank r is doing, for messages: the assignment it belongs to, if any.
  int unit_of(int rank) const {
    for (const auto& [u, run] : running) {
      for (int r : run.task.team_ranks) {
        if (r == rank && !run.dones.count(rank)) return u;
      }
    }
    return -2;
  }

  void send_all(const std::string& bytes, const std::set<int>& except = {}) {
    for (int r = 0; r < s.ranks; ++r) {
      if (except.count(r)) continue;
      try {
        control.send(r, protocol::kTagToWorker, bytes);
      } catch (const std::exception& e) {
        QF_LOG(Warn) << "could not reach rank " << r << ": " << e.what();
      }
    }
  }

  void fail(int code, const std::string& message, bool must_abort, const std::set<int>& lost_ranks = {}) {
    QF_LOG(Error) << message;
    failed = true;
    outcome = {code, must_abort, message};
    send_all(protocol::encode(protocol::Shutdown{false, message, must_abort, code}), lost_ranks);
  }

  void dispatch(const Assignment& a) {
    const std::int64_t attempt = state.next_attempt();
    if (a.kind == "fp_pass") {
      const auto missing = state.fp_missing_samples();
      Running run;
      run.task.kind = "fp_pass";
      run.task.attempt = attempt;
      for (int r = 0; r < s.ranks; ++r) {
        if (!partition::even_share(missing, s.ranks, r).empty()) run.task.team_ranks.push_back(r);
      }
      record({{"type", "unit_assigned"}, {"unit", -1}, {"kind", "fp_pass"}, {"attempt", attempt},
              {"ranks", run.task.team_ranks}, {"samples", missing.size()}});
      for (int r : run.task.team_ranks) {
        protocol::Task t = run.task;
        t.samples = partition::even_share(missing, s.ranks, r);
        control.send(r, protocol::kTagToWorker, protocol::encode(t));
      }
      for (int t = 0; t < teams; ++t) busy_teams.insert(t);
      QF_LOG(Info) << "FP pass over " << missing.size() << " samples on " << run.task.team_ranks.size() << " ranks";
      running[-1] = std::move(run);
      return;
    }
    if (a.kind == "probe") {
      const auto blocks = state.missing_probe_blocks();
      Running run;
      run.task.kind = "probe";
      run.task.attempt = attempt;
      run.task.samples = state.probe_sample_ids();
      std::vector<protocol::Task> tasks;
      for (int r = 0; r < s.ranks; ++r) {
        protocol::Task t = run.task;
        for (std::int64_t b : partition::even_share(std::vector<std::int64_t>(blocks.begin(), blocks.end()), s.ranks, r)) {
          t.blocks.push_back(static_cast<int>(b));
        }
        if (t.blocks.empty()) continue;
        for (int b : t.blocks) {
          if (b > 0) {
            for (const auto& f : state.fp_pass_files(b)) t.x_fp_files.push_back(f);
          }
        }
        run.task.team_ranks.push_back(r);
        tasks.push_back(std::move(t));
      }
      record({{"type", "unit_assigned"}, {"unit", -2}, {"kind", "probe"}, {"attempt", attempt},
              {"ranks", run.task.team_ranks}, {"blocks", blocks}});
      for (std::size_t i = 0; i < tasks.size(); ++i) {
        tasks[i].team_ranks = run.task.team_ranks;
        control.send(run.task.team_ranks[i], protocol::kTagToWorker, protocol::encode(tasks[i]));
      }
      probes_pending = std::set<int>(blocks.begin(), blocks.end());
      for (int t = 0; t < teams; ++t) busy_teams.insert(t);
      QF_LOG(Info) << "MRECG probes of " << blocks.size() << " blocks on " << run.task.team_ranks.size() << " ranks ("
                   << run.task.samples.size() << " samples each)";
      running[-2] = std::move(run);
      return;
    }
    const int u = a.unit;
    const auto [first, count] = state.unit(u);
    protocol::Task t;
    t.kind = "unit";
    t.unit = u;
    t.first_block = first;
    t.num_blocks = count;
    t.attempt = attempt;
    t.team_ranks = team_ranks(a.team);
    t.input_boundary = first;
    if (const json& ck = state.checkpoint(u); !ck.is_null()) {
      t.resume_from = ck.at("file").get<std::string>();
      t.resume_digest = ck.at("digest").get<std::string>();
    }
    if (s.needs_data && first > 0) {
      t.x_fp_files = state.boundary_files(first, "fp");
      t.x_q_files = state.sequential() ? state.boundary_files(first, "q") : t.x_fp_files;
    }
    const bool last = u + 1 == state.units();
    t.write_next = s.needs_data && state.sequential() && !last;
    t.last_unit = s.needs_data && state.sequential() && last;
    record({{"type", "unit_assigned"}, {"unit", u}, {"kind", "unit"}, {"attempt", attempt}, {"team", a.team},
            {"ranks", t.team_ranks}});
    for (int r : t.team_ranks) control.send(r, protocol::kTagToWorker, protocol::encode(t));
    busy_teams.insert(a.team);
    QF_LOG(Debug) << unit_label(u) << " -> team " << a.team;
    running[u] = Running{t, a.team, {}};
  }

  void on_done(const protocol::Done& d) {
    const int u = d.task.kind == "fp_pass" ? -1 : d.task.kind == "probe" ? -2 : d.task.unit;
    auto it = running.find(u);
    if (it == running.end() || it->second.task.attempt != d.task.attempt) {
      QF_LOG(Warn) << "ignoring a stale DONE from rank " << d.rank << " for " << unit_label(u);
      return;
    }
    Running& run = it->second;
    run.dones[d.rank] = d;
    if (u == -1) {
      // The FP pass is durable per rank: each slice is journaled as soon as it is cached.
      json files = json::array();
      for (const auto& f : d.files) files.push_back({{"boundary", boundary_of(f)}, {"file", f}});
      record({{"type", "fp_slice_done"}, {"attempt", d.task.attempt}, {"rank", d.rank}, {"samples", d.task.samples},
              {"files", files}, {"peak_rss", d.peak_rss}, {"baseline_rss", d.baseline_rss}, {"seconds", d.seconds},
              {"cache_bytes_written", d.cache_bytes_written}});
      if (run.dones.size() == run.task.team_ranks.size()) {
        QF_LOG(Info) << "FP pass done";
        running.erase(it);
        busy_teams.clear();
      }
      return;
    }
    if (u == -2) {
      // Probes are durable one block at a time.
      const int b = d.task.unit;
      if (!probes_pending.erase(b)) return;
      json rec = d.report;
      rec["type"] = "probe_done";
      rec["attempt"] = d.task.attempt;
      rec["rank"] = d.rank;
      rec["samples"] = d.samples;
      rec["seconds"] = d.seconds;
      rec["peak_rss"] = d.peak_rss;
      rec["baseline_rss"] = d.baseline_rss;
      rec["cache_bytes_read"] = d.cache_bytes_read;
      record(rec);
      QF_LOG(Info) << "probe of block " << b << ": normalised loss " << rec["capacity_loss"].get<double>();
      if (probes_pending.empty()) {
        running.erase(it);
        busy_teams.clear();
        if (!s.keep_cache) collect_garbage();
      }
      return;
    }
    if (run.dones.size() < run.task.team_ranks.size()) return;
    const protocol::Done& lead = run.dones.at(run.task.team_ranks.front());
    if (lead.stopped) {
      QF_CHECK(!lead.shard.empty() && !lead.digest.empty(), "team leader sent no checkpoint for " + unit_label(u));
      record({{"type", "unit_checkpoint"}, {"unit", u}, {"attempt", d.task.attempt}, {"file", lead.shard},
              {"digest", lead.digest}, {"epoch", lead.report.at("epoch")}, {"step", lead.report.at("step")}});
      QF_LOG(Info) << unit_label(u) << " checkpointed at epoch " << lead.report.at("epoch").get<int>() + 1 << " step "
                   << lead.report.at("step").get<std::int64_t>() << " (" << lead.shard << ")";
      busy_teams.erase(run.team);
      running.erase(it);
      return;
    }
    QF_CHECK(!lead.shard.empty() && !lead.digest.empty(), "team leader sent no result shard for " + unit_label(u));
    json ranks = json::array();
    double secs = 0;
    for (int r : run.task.team_ranks) {
      const auto& x = run.dones.at(r);
      ranks.push_back({{"rank", r}, {"samples", x.samples}, {"files", x.files}, {"peak_rss", x.peak_rss},
                       {"baseline_rss", x.baseline_rss}, {"seconds", x.seconds},
                       {"cache_bytes_written", x.cache_bytes_written}, {"cache_bytes_read", x.cache_bytes_read}});
      secs = std::max(secs, x.seconds);
    }
    fault_point("before_journal");
    record({{"type", "unit_done"}, {"unit", u}, {"attempt", d.task.attempt}, {"team", run.team}, {"shard", lead.shard},
            {"digest", lead.digest}, {"report", lead.report}, {"ranks", ranks}, {"seconds", secs}});
    fault_point("after_journal");
    std::string losses;
    if (lead.report.contains("final_loss")) {
      losses = ": unit-output MSE " + lead.report["initial_loss"].dump() + " -> " + lead.report["final_loss"].dump();
    }
    QF_LOG(Info) << unit_label(u) << " done on team " << run.team << " in " << format_duration(secs) << losses;
    remove_dead_checkpoints(u);
    busy_teams.erase(run.team);
    running.erase(it);
    meter.update(state.done_count());
    if (!s.keep_cache) collect_garbage();
  }

  // Removes cache files no record needs any more, and temporaries of crashed writers (nothing is
  // being written when this runs at start; later only files of finished boundaries are removed).
  void collect_garbage(bool at_start = false) {
    const fs::path dir = s.job.cache_dir();
    if (!fs::exists(dir)) return;
    std::set<std::string> keep = state.live_cache_files();
    for (const auto& [u, run] : running) {
      keep.insert(run.task.x_fp_files.begin(), run.task.x_fp_files.end());
      keep.insert(run.task.x_q_files.begin(), run.task.x_q_files.end());
    }
    std::int64_t oldest_running = state.next_attempt();
    for (const auto& [u, run] : running) oldest_running = std::min(oldest_running, run.task.attempt);
    // Only files named like ours (and their temporaries) are ever removed.
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      const auto f = storage::JobLayout::parse_cache_file(name);
      if (keep.count(name) || !f) continue;
      // Files of assignments still in flight are being written: leave them (and their temporaries).
      if (!at_start && f->attempt >= oldest_running) continue;
      std::error_code ec;
      fs::remove(e.path(), ec);
    }
  }

  // Checkpoint files of unit u (all attempts) once it is done, and temporaries of crashed writers.
  void remove_dead_checkpoints(int only_unit = -1) {
    if (!fs::exists(s.job.units_dir())) return;
    const std::set<std::string> live = state.live_checkpoint_files();
    for (const auto& e : fs::directory_iterator(s.job.units_dir())) {
      const std::string name = e.path().filename().string();
      const auto ck = storage::JobLayout::parse_checkpoint(name);
      if (!ck || live.count(name)) continue;
      if (only_unit >= 0 && ck->unit != only_unit) continue;
      std::error_code ec;
      fs::remove(e.path(), ec);
    }
  }

  // A stop signal (Slurm's time-limit warning, preemption): no new work; every unit in flight is asked
  // to checkpoint; FP-pass and probe assignments, durable piece by piece, finish their pieces.
  void begin_stop(int sig) {
    stopping = true;
    const std::string name = sig == SIGUSR1 ? "SIGUSR1" : sig == SIGTERM ? "SIGTERM" : "signal " + std::to_string(sig);
    record({{"type", "stop_requested"}, {"signal", name}});
    QF_LOG(Warn) << name << " received: checkpointing " << running.size() << " assignment(s) in flight, then stopping";
    for (const auto& [u, run] : running) {
      if (u < 0) continue;
      for (int r : run.task.team_ranks) control.send(r, protocol::kTagToWorker, protocol::encode(protocol::Checkpoint{u, run.task.attempt}));
    }
  }

  // MRECG: the joint units, from the probes' (or the data-free) capacities, journaled once; from
  // then on the job's units are these.
  void select_units() {
    const JointSpec& j = state.joint();
    const std::vector<double> values = state.selection_values();
    const partition::JointSelection sel = partition::select_joint_units(values, j.topk, j.max_blocks);
    json units = json::array();
    for (const auto& [first, n] : sel.units) units.push_back({first, n});
    record({{"type", "joint_selection"}, {"capacity", j.data_dependent ? "probe" : "data-free"}, {"values", values},
            {"differentials", sel.differentials}, {"topk", j.topk}, {"max_blocks", j.max_blocks},
            {"selected", sel.selected}, {"dropped", sel.dropped}, {"units", units}});
    std::string joint;
    for (const auto& [first, n] : sel.units) {
      if (n > 1) joint += (joint.empty() ? "" : ", ") + std::to_string(first) + "-" + std::to_string(first + n - 1);
    }
    QF_LOG(Info) << "MRECG: " << sel.units.size() << " units from " << state.blocks() << " blocks; joint: "
                 << (joint.empty() ? "none (no positive differential)" : joint);
    meter = ProgressMeter("units", state.units(), "");
    if (!s.keep_cache) collect_garbage();
  }

  void handle(int from, const std::string& bytes) {
    last_heard[from] = Clock::now();
    const protocol::Message m = protocol::decode(bytes, from);
    if (m.type == "heartbeat") {
      phase[from] = protocol::heartbeat_from(m).phase;
    } else if (m.type == "hello") {
      hellos[from] = protocol::hello_from(m);
    } else if (m.type == "done") {
      on_done(protocol::done_from(m));
    } else if (m.type == "failed") {
      const protocol::Failed f = protocol::failed_from(m);
      const int u = f.task.kind == "fp_pass" ? -1 : f.task.kind == "probe" ? -2 : f.task.unit;
      const std::string msg = unit_label(u) + " failed on rank " + std::to_string(f.rank) + ": " + f.reason;
      record({{"type", "unit_failed"}, {"unit", u}, {"attempt", f.task.attempt}, {"rank", f.rank}, {"message", msg}});
      // With peers, some may be inside a collective with the failed rank that can never complete, and
      // MPI_Finalize would wait on it: the job is ended by MPI_Abort after this record, like a lost rank.
      fail(kExitInternal, msg, s.ranks > 1);
    } else {
      QF_LOG(Warn) << "unexpected " << m.type << " message from rank " << from;
    }
  }

  void check_stalls() {
    const auto now = Clock::now();
    for (int r = 0; r < s.ranks; ++r) {
      const double silent = std::chrono::duration<double>(now - last_heard[r]).count();
      if (silent <= s.heartbeat_timeout_s) continue;
      const int u = unit_of(r);
      const std::string doing = u == -2 ? "while idle" : "while running " + unit_label(u);
      const std::string host = hellos.count(r) ? " on " + hellos[r].host : "";
      const std::string msg = "worker rank " + std::to_string(r) + host + " stopped responding: no heartbeat for " +
                              std::to_string(static_cast<int>(silent)) + " s " + doing + " (timeout " +
                              std::to_string(static_cast<int>(s.heartbeat_timeout_s)) + " s, --heartbeat-timeout)";
      record({{"type", "worker_lost"}, {"rank", r}, {"unit", u == -2 ? json() : json(u)}, {"silent_s", silent},
              {"message", msg}});
      fail(kExitWorkerLost, msg + "; finished units are journaled, rerun the same command to resume", true, {r});
      return;
    }
  }

  CoordinatorOutcome run() {
    record({{"type", "job_start"}, {"ranks", s.ranks}, {"team_size", s.team_size}, {"teams", teams},
            {"done_units", state.done_count()}});
    if (state.starts() > 1) {
      QF_LOG(Info) << "resuming: " << state.done_count() << "/" << state.units() << " units already done (start "
                   << state.starts() << ")";
    }
    const auto t0 = Clock::now();
    for (int r = 0; r < s.ranks; ++r) last_heard[r] = t0;
    if (!s.keep_cache) collect_garbage(true);
    if (fs::exists(s.job.units_dir())) {
      // Half-written result shards of a crashed run (the rename never happened) are dropped.
      for (const auto& e : fs::directory_iterator(s.job.units_dir())) {
        const auto shard = storage::JobLayout::parse_unit_shard(e.path().filename().string());
        if (shard && shard->temporary) fs::remove(e.path());
      }
      remove_dead_checkpoints();
    }
    while (!failed) {
      bool busy = false;
      while (auto m = control.try_recv(MPI_ANY_SOURCE, protocol::kTagToCoordinator)) {
        handle(m->first, m->second);
        busy = true;
        if (failed) break;
      }
      if (failed) break;
      check_stalls();
      if (failed) break;
      if (state.all_units_done() && running.empty()) break;
      if (!stopping && !state.all_units_done() && stop_signal() != 0) begin_stop(stop_signal());
      if (stopping && running.empty()) {
        const std::string msg = "stopped by a signal with " + std::to_string(state.done_count()) + "/" +
                                std::to_string(state.units()) + " units done; units in flight are checkpointed, "
                                "rerun the same command (or let Slurm requeue) to resume";
        record({{"type", "job_stopped"}, {"message", msg}});
        QF_LOG(Warn) << msg;
        outcome = {kExitStopped, false, msg};
        send_all(protocol::encode(protocol::Shutdown{false, msg, false, kExitStopped}));
        return outcome;
      }
      if (!stopping && static_cast<int>(hellos.size()) == s.ranks) {
        std::vector<int> idle;
        for (int t = 0; t < teams; ++t) {
          if (!busy_teams.count(t)) idle.push_back(t);
        }
        std::set<int> running_units;
        for (const auto& [u, run] : running) {
          if (u >= 0) running_units.insert(u);
        }
        if (state.needs_selection()) select_units();
        for (const auto& a : schedule(state, running_units, running.count(-1) + running.count(-2) > 0, idle, teams)) {
          dispatch(a);
          busy = true;
        }
      }
      if (!busy) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (failed) return outcome;
    if (state.complete()) {
      // A rerun of a finished job: the output folder may be gone or hold something else since, so it
      // is written again from the journaled (digest-checked) unit shards; nothing is recomputed.
      QF_LOG(Info) << "the journal says this job is complete: writing its output again from the unit shards";
    }
    fault_point("before_assembly");
    assemble(state);
    record({{"type", "job_complete"}});
    if (!s.keep_cache) collect_garbage();
    send_all(protocol::encode(protocol::Shutdown{true, "done", false}));
    return outcome;
  }
};

Coordinator::Coordinator(CoordinatorSettings settings, const MpiComm& control, storage::Journal& journal, JobState state,
                         Assemble assemble)
    : impl_(std::make_unique<Impl>(std::move(settings), control, journal, std::move(state), std::move(assemble))) {}

Coordinator::~Coordinator() = default;

CoordinatorOutcome Coordinator::run() {
  try {
    return impl_->run();
  } catch (const std::exception& e) {
    // Every worker, rank 0's included, is waiting for this thread: tell them the job is over.
    const std::string msg = std::string("coordinator failed: ") + e.what();
    try {
      impl_->record({{"type", "job_failed"}, {"message", msg}});
    } catch (const std::exception&) {
    }
    impl_->send_all(protocol::encode(protocol::Shutdown{false, msg, true}));
    throw;
  }
}

}  // namespace qforge::coordinator
