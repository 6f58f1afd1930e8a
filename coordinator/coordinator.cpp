#include "coordinator/coordinator.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <map>
#include <set>
#include <thread>

#include "common/error.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/protocol.h"
#include "common/progress.h"
#include "common/sha256.h"
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

// "12 s", or "0.25 s" below ten seconds (tests and impatient users set sub-second timeouts).
std::string seconds_text(double s) {
  char b[32];
  std::snprintf(b, sizeof b, s < 10 ? "%.2g s" : "%.0f s", s);
  return b;
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
    std::int64_t id = 0;
    std::vector<int> ranks;
    std::map<int, protocol::Work> work;   // by rank (the FP pass and probes give each rank a share)
    int team = -1;                        // a unit's team; -1: every team (FP pass, probes)
    std::vector<std::string> inputs;      // cache files any of its ranks reads
    std::map<int, protocol::Done> dones;  // by rank
    std::set<int> probes_pending;         // probes: blocks not reported yet
  };

  CoordinatorSettings s;
  const Transport& control;
  storage::Journal& journal;
  JobState state;
  Assemble assemble;
  std::map<std::int64_t, Running> running;  // by assignment id
  std::map<int, Clock::time_point> last_heard;
  std::map<int, protocol::Hello> hellos;
  std::map<int, protocol::Heartbeat> heartbeats;  // rank -> the last one
  std::set<int> busy_teams;
  bool failed = false;
  bool stopping = false;                 // a stop signal arrived: checkpoint, then end with kExitStopped
  CoordinatorOutcome outcome;
  int teams = 1;
  ProgressMeter meter;
  std::set<std::string> redone;  // producers (JobState::producer_of) recomputed for a damaged file

  Impl(CoordinatorSettings settings, const Transport& c, storage::Journal& j, JobState st, Assemble a)
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

  std::string label(const protocol::Work& w) const {
    if (std::holds_alternative<protocol::FpPassWork>(w)) return "the FP pass";
    if (std::holds_alternative<protocol::ProbeWork>(w)) return "the MRECG probes";
    return state.unit_text(std::get<protocol::UnitWork>(w).unit);
  }

  // The assignment rank r is working on (it has not answered yet), if any.
  const Running* assignment_of(int rank) const {
    for (const auto& [id, run] : running) {
      for (int r : run.ranks) {
        if (r == rank && !run.dones.count(rank)) return &run;
      }
    }
    return nullptr;
  }

  void send(int rank, const protocol::Message& m) { control.send(rank, protocol::kTagToWorker, protocol::encode(m)); }

  void send_all(const protocol::Message& m, const std::set<int>& except = {}) {
    const std::string bytes = protocol::encode(m);
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
    send_all(protocol::Shutdown{false, message, must_abort, code}, lost_ranks);
  }

  void start(Running run, int busy_team) {
    if (busy_team < 0) {
      for (int t = 0; t < teams; ++t) busy_teams.insert(t);
    } else {
      busy_teams.insert(busy_team);
    }
    running[run.id] = std::move(run);
  }

  void dispatch_fp_pass(std::int64_t id) {
    const auto missing = state.fp_missing_samples();
    Running run;
    run.id = id;
    for (int r = 0; r < s.ranks; ++r) {
      auto share = partition::even_share(missing, s.ranks, r);
      if (share.empty()) continue;
      run.ranks.push_back(r);
      run.work[r] = protocol::FpPassWork{std::move(share)};
    }
    record({{"type", "unit_assigned"}, {"kind", "fp_pass"}, {"attempt", id}, {"ranks", run.ranks},
            {"samples", missing.size()}});
    for (int r : run.ranks) send(r, protocol::Assign{id, run.ranks, run.work.at(r)});
    QF_LOG(Info) << "FP pass over " << missing.size() << " samples on " << run.ranks.size() << " ranks";
    start(std::move(run), -1);
  }

  void dispatch_probes(std::int64_t id) {
    const auto blocks = state.missing_probe_blocks();
    const auto samples = state.probe_sample_ids();
    Running run;
    run.id = id;
    for (int r = 0; r < s.ranks; ++r) {
      protocol::ProbeWork w;
      w.samples = samples;
      for (std::int64_t b : partition::even_share(std::vector<std::int64_t>(blocks.begin(), blocks.end()), s.ranks, r)) {
        w.blocks.push_back(static_cast<int>(b));
        if (b > 0) {
          for (const auto& f : state.fp_pass_files(static_cast<int>(b))) w.x_fp_files.push_back(f);
        }
      }
      if (w.blocks.empty()) continue;
      run.ranks.push_back(r);
      run.inputs.insert(run.inputs.end(), w.x_fp_files.begin(), w.x_fp_files.end());
      run.work[r] = std::move(w);
    }
    record({{"type", "unit_assigned"}, {"kind", "probe"}, {"attempt", id}, {"ranks", run.ranks}, {"blocks", blocks}});
    for (int r : run.ranks) send(r, protocol::Assign{id, run.ranks, run.work.at(r)});
    run.probes_pending = std::set<int>(blocks.begin(), blocks.end());
    QF_LOG(Info) << "MRECG probes of " << blocks.size() << " blocks on " << run.ranks.size() << " ranks ("
                 << samples.size() << " samples each)";
    start(std::move(run), -1);
  }

  void dispatch_unit(std::int64_t id, int u, int team) {
    const auto [first, count] = state.unit(u);
    protocol::UnitWork w;
    w.unit = u;
    w.first_block = first;
    w.num_blocks = count;
    if (const json& ck = state.checkpoint(u); !ck.is_null()) {
      w.resume_from = ck.at("file").get<std::string>();
      w.resume_digest = ck.at("digest").get<std::string>();
    }
    if (s.needs_data && first > 0) {
      w.x_fp_files = state.boundary_files(first, "fp");
      w.x_q_files = state.sequential() ? state.boundary_files(first, "q") : w.x_fp_files;
    }
    const bool last = u + 1 == state.units();
    w.write_next = s.needs_data && state.sequential() && !last;
    w.last_unit = s.needs_data && state.sequential() && last;
    Running run;
    run.id = id;
    run.ranks = team_ranks(team);
    for (int r : run.ranks) run.work[r] = w;
    run.team = team;
    run.inputs = w.x_fp_files;
    run.inputs.insert(run.inputs.end(), w.x_q_files.begin(), w.x_q_files.end());
    record({{"type", "unit_assigned"}, {"unit", u}, {"kind", "unit"}, {"attempt", id}, {"team", team},
            {"ranks", run.ranks}});
    for (int r : run.ranks) send(r, protocol::Assign{id, run.ranks, w});
    QF_LOG(Debug) << state.unit_text(u) << " -> team " << team;
    start(std::move(run), team);
  }

  void dispatch(const Assignment& a) {
    const std::int64_t id = state.next_attempt();
    switch (a.kind) {
      case WorkKind::kFpPass: return dispatch_fp_pass(id);
      case WorkKind::kProbe: return dispatch_probes(id);
      case WorkKind::kUnit: return dispatch_unit(id, a.unit, a.team);
    }
  }

  void finish(std::map<std::int64_t, Running>::iterator it) {
    if (it->second.team < 0) {
      busy_teams.clear();
    } else {
      busy_teams.erase(it->second.team);
    }
    running.erase(it);
  }

  // The FP pass is durable per rank: each slice is journaled as soon as it is cached.
  void on_fp_slice(std::map<std::int64_t, Running>::iterator it, const protocol::Done& d) {
    const auto& work = std::get<protocol::FpPassWork>(it->second.work.at(d.rank));
    json files = json::array();
    for (const auto& f : d.cache_files) files.push_back({{"boundary", boundary_of(f)}, {"file", f}});
    record({{"type", "fp_slice_done"}, {"attempt", d.assignment}, {"rank", d.rank}, {"samples", work.samples},
            {"files", files}, {"peak_rss", d.peak_rss}, {"baseline_rss", d.baseline_rss}, {"seconds", d.seconds},
            {"cache_bytes_written", d.cache_bytes_written}});
    if (it->second.dones.size() == it->second.ranks.size()) {
      QF_LOG(Info) << "FP pass done";
      finish(it);
    }
  }
  // Probes are durable one block at a time.
  void on_probe(std::map<std::int64_t, Running>::iterator it, const protocol::Done& d) {
    QF_CHECK(d.probed_block.has_value(), "rank " + std::to_string(d.rank) + " answered a probe without its block");
    const int b = *d.probed_block;
    if (!it->second.probes_pending.erase(b)) return;
    json rec = d.report;
    rec["type"] = "probe_done";
    rec["block"] = b;
    rec["attempt"] = d.assignment;
    rec["rank"] = d.rank;
    rec["samples"] = d.samples;
    rec["seconds"] = d.seconds;
    rec["peak_rss"] = d.peak_rss;
    rec["baseline_rss"] = d.baseline_rss;
    rec["cache_bytes_read"] = d.cache_bytes_read;
    record(rec);
    QF_LOG(Info) << "probe of block " << b << ": normalised loss " << rec["capacity_loss"].get<double>();
    if (it->second.probes_pending.empty()) {
      finish(it);
      if (!s.keep_cache) collect_garbage();
    }
  }

  // The team leader's checkpoint of a unit stopped by a stop signal.
  void on_unit_stopped(std::map<std::int64_t, Running>::iterator it, const protocol::Done& lead) {
    const int u = std::get<protocol::UnitWork>(it->second.work.at(lead.rank)).unit;
    QF_CHECK(lead.checkpoint.has_value(), "team leader sent no checkpoint for " + state.unit_text(u));
    record({{"type", "unit_checkpoint"}, {"unit", u}, {"attempt", lead.assignment}, {"file", lead.checkpoint->name},
            {"digest", lead.checkpoint->sha256}, {"epoch", lead.report.at("epoch")}, {"step", lead.report.at("step")}});
    QF_LOG(Info) << state.unit_text(u) << " checkpointed at epoch " << lead.report.at("epoch").get<int>() + 1 << " step "
                 << lead.report.at("step").get<std::int64_t>() << " (" << lead.checkpoint->name << ")";
    finish(it);
  }

  // A unit is journaled done once every member's DONE is in (each wrote its cache slice, the leader the shard).
  void on_unit_done(std::map<std::int64_t, Running>::iterator it) {
    const Running& run = it->second;
    const protocol::Done& lead = run.dones.at(run.ranks.front());
    const int u = std::get<protocol::UnitWork>(run.work.at(lead.rank)).unit;
    if (lead.stopped) return on_unit_stopped(it, lead);
    QF_CHECK(lead.shard.has_value(), "team leader sent no result shard for " + state.unit_text(u));
    json ranks = json::array();
    double secs = 0;
    for (int r : run.ranks) {
      const auto& x = run.dones.at(r);
      ranks.push_back({{"rank", r}, {"samples", x.samples}, {"files", x.cache_files}, {"peak_rss", x.peak_rss},
                       {"baseline_rss", x.baseline_rss}, {"seconds", x.seconds},
                       {"cache_bytes_written", x.cache_bytes_written}, {"cache_bytes_read", x.cache_bytes_read}});
      secs = std::max(secs, x.seconds);
    }
    fault_point("before_journal");
    record({{"type", "unit_done"}, {"unit", u}, {"attempt", lead.assignment}, {"team", run.team},
            {"shard", lead.shard->name}, {"digest", lead.shard->sha256}, {"report", lead.report}, {"ranks", ranks},
            {"seconds", secs}});
    fault_point("after_journal");
    std::string losses;
    if (lead.report.contains("final_loss")) {
      losses = ": unit-output MSE " + lead.report["initial_loss"].dump() + " -> " + lead.report["final_loss"].dump();
    }
    QF_LOG(Info) << state.unit_text(u) << " done on team " << run.team << " in " << format_duration(secs) << losses;
    finish(it);
    remove_dead_checkpoints(u);
    meter.update(state.done_count());
    if (!s.keep_cache) collect_garbage();
  }

  void on_done(const protocol::Done& d) {
    auto it = running.find(d.assignment);
    if (it == running.end() || !it->second.work.count(d.rank)) {
      QF_LOG(Warn) << "ignoring a DONE from rank " << d.rank << " for assignment " << d.assignment << ", not in flight";
      return;
    }
    const protocol::Work& work = it->second.work.at(d.rank);
    if (std::holds_alternative<protocol::ProbeWork>(work)) return on_probe(it, d);
    it->second.dones[d.rank] = d;
    if (std::holds_alternative<protocol::FpPassWork>(work)) return on_fp_slice(it, d);
    if (it->second.dones.size() == it->second.ranks.size()) on_unit_done(it);
  }

  // Removes cache files no record needs any more, and temporaries of crashed writers (nothing is
  // being written when this runs at start; later only files of finished boundaries are removed).
  void collect_garbage(bool at_start = false) {
    const fs::path dir = s.job.cache_dir();
    if (!fs::exists(dir)) return;
    std::set<std::string> keep = state.live_cache_files();
    for (const auto& [id, run] : running) keep.insert(run.inputs.begin(), run.inputs.end());
    // Assignment ids grow: the smallest in flight bounds the files still being written.
    const std::int64_t oldest_running = running.empty() ? state.next_attempt() : running.begin()->first;
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
    for (const auto& [id, run] : running) {
      if (run.team < 0) continue;  // the FP pass and probes finish their pieces
      for (int r : run.ranks) send(r, protocol::Checkpoint{id});
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

  // Journals that a job file is damaged (which drops the record that made it) and says what is redone.
  // A producer whose file is damaged twice in one run has its output damaged as it is made (a failing
  // disk, a file system that loses writes): the job ends instead of recomputing forever.
  // False when the job fails instead.
  bool drop_damaged(const std::string& file, const std::string& what, const std::string& reason) {
    const std::string redo = state.producer_of(file);
    const std::string msg = s.job.root().string() + ": " + what + " file " + file + " " + reason;
    if (!redo.empty() && !redone.insert(redo).second) {
      fail(kExitBadInput, msg + ", and " + redo + " was recomputed once in this run already because of a damaged "
           "file: the disk or file system is losing data", s.ranks > 1);
      return false;
    }
    record({{"type", "file_damaged"}, {"file", file}, {"what", what}, {"reason", reason}});
    QF_LOG(Warn) << msg << ": dropped" << (redo.empty() ? "" : "; recomputing " + redo);
    return true;
  }

  // Every job file the journal relies on from here is present and intact, or dropped with its record
  // (file_damaged) so that the scheduler recomputes it. Repeated until nothing more is dropped: redoing a
  // sequential unit needs its predecessor's output, which may be gone too. Shards are hashed only
  // before assembly (nothing else reads them); checkpoints by digest; cache slices are checked for
  // presence here and by checksum as they are read (a worker reports a bad one: on_failed).
  // Returns how many files were dropped (the job has failed instead when `failed` is set).
  int repair(bool verify_shards) {
    int dropped = 0;
    for (bool again = true; again && !failed;) {
      again = false;
      const auto drop = [&](const std::string& file, const char* what, const std::string& reason) {
        if (failed) return;  // a second failure would send a second SHUTDOWN
        again = drop_damaged(file, what, reason);
        ++dropped;
      };
      for (int u = 0; verify_shards && u < state.units(); ++u) {
        if (!state.unit_done(u)) continue;
        const json& rec = state.done_record(u);
        const std::string problem = file_problem(s.job.units_dir() / rec.at("shard").get<std::string>(), rec.at("digest"));
        if (!problem.empty()) drop(rec.at("shard").get<std::string>(), "shard", problem);
      }
      for (int u = 0; u < state.units(); ++u) {
        const json& ck = state.checkpoint(u);
        if (ck.is_null()) continue;
        const std::string problem = file_problem(s.job.units_dir() / ck.at("file").get<std::string>(), ck.at("digest"));
        if (!problem.empty()) drop(ck.at("file").get<std::string>(), "checkpoint", problem);
      }
      for (const auto& f : state.live_cache_files()) {
        if (fs::is_regular_file(s.job.cache_dir() / f)) continue;
        drop(f, "cache", "is missing");
        break;  // its producer's other files are no longer live: ask again
      }
    }
    return dropped;
  }

  // Why a journaled file cannot be used ("" when it can).
  static std::string file_problem(const fs::path& path, const json& digest) {
    if (!fs::is_regular_file(path)) return "is missing";
    return sha256_file(path) == digest.get<std::string>() ? "" : "does not match its digest in the journal";
  }

  void on_failed(const protocol::Failed& f) {
    const auto it = running.find(f.assignment);
    if (it == running.end() || !it->second.work.count(f.rank)) {
      QF_LOG(Warn) << "ignoring a FAILED from rank " << f.rank << " for assignment " << f.assignment << ", not in flight";
      return;
    }
    const protocol::Work& work = it->second.work.at(f.rank);
    const std::string msg = label(work) + " failed on rank " + std::to_string(f.rank) + ": " + f.reason;
    json rec = {{"type", "unit_failed"}, {"kind", protocol::kind_name(work)}, {"attempt", f.assignment},
                {"rank", f.rank}, {"message", msg}};
    if (const auto* u = std::get_if<protocol::UnitWork>(&work)) rec["unit"] = u->unit;
    record(rec);
    if (f.damaged_file) {
      if (!drop_damaged(*f.damaged_file, kind_of_job_file(*f.damaged_file), "is damaged (" + f.reason + ")")) return;
      // Alone on its assignment, the rank is back waiting for work and nobody waits on it: the
      // scheduler recomputes what was dropped. With peers, some may be inside a collective with it.
      if (it->second.ranks.size() == 1) {
        finish(it);
        repair(false);  // what recomputing it needs may be gone too
        return;
      }
      return fail(kExitBadInput, msg + "; rerun the same command: the damaged file is recomputed", s.ranks > 1);
    }
    // With peers, some may be inside a collective with the failed rank that can never complete, and
    // MPI_Finalize would wait on it: the job is ended by MPI_Abort after this record, like a lost rank.
    fail(f.exit_code == kExitBadInput ? kExitBadInput : kExitInternal, msg, s.ranks > 1);
  }

  static const char* kind_of_job_file(const std::string& name) {
    if (storage::JobLayout::parse_cache_file(name)) return "cache";
    return storage::JobLayout::parse_checkpoint(name) ? "checkpoint" : "shard";
  }

  void handle(int from, const std::string& bytes) {
    last_heard[from] = Clock::now();
    const protocol::Message m = protocol::decode(bytes, from);
    if (const auto* hb = std::get_if<protocol::Heartbeat>(&m)) {
      heartbeats[from] = *hb;
    } else if (const auto* hello = std::get_if<protocol::Hello>(&m)) {
      hellos[from] = *hello;
    } else if (const auto* done = std::get_if<protocol::Done>(&m)) {
      on_done(*done);
    } else if (const auto* failed_msg = std::get_if<protocol::Failed>(&m)) {
      on_failed(*failed_msg);
    } else {
      QF_LOG(Warn) << "unexpected " << protocol::type_name(m) << " message from rank " << from;
    }
  }

  // What a silent rank was doing, for the message that reports it lost.
  std::string doing(int rank) const {
    const Running* run = assignment_of(rank);
    if (!run) return "while idle";
    std::string out = "while running " + label(run->work.at(rank));
    const auto hb = heartbeats.find(rank);
    if (hb != heartbeats.end() && hb->second.assignment == run->id) out += " (last phase: " + hb->second.phase + ")";
    return out;
  }

  void check_stalls() {
    const auto now = Clock::now();
    for (int r = 0; r < s.ranks; ++r) {
      const double silent = std::chrono::duration<double>(now - last_heard[r]).count();
      if (silent <= s.heartbeat_timeout_s) continue;
      const Running* run = assignment_of(r);
      const std::string host = hellos.count(r) ? " on " + hellos[r].host : "";
      const std::string msg = "worker rank " + std::to_string(r) + host + " stopped responding: no heartbeat for " +
                              seconds_text(silent) + " " + doing(r) + " (timeout " + seconds_text(s.heartbeat_timeout_s) +
                              ", --heartbeat-timeout)";
      json rec = {{"type", "worker_lost"}, {"rank", r}, {"unit", nullptr}, {"silent_s", silent}, {"message", msg}};
      if (run) {
        rec["attempt"] = run->id;
        rec["kind"] = protocol::kind_name(run->work.at(r));
        if (const auto* u = std::get_if<protocol::UnitWork>(&run->work.at(r))) rec["unit"] = u->unit;
      }
      record(rec);
      fail(kExitWorkerLost, msg + "; finished units are journaled, rerun the same command to resume", true, {r});
      return;
    }
  }

  // At start nothing is being written: temporaries of a crashed run and dead cache files and
  // checkpoints go; half-written result shards (the rename never happened) too.
  void clean_up_at_start() {
    if (!s.keep_cache) collect_garbage(true);
    if (!fs::exists(s.job.units_dir())) return;
    for (const auto& e : fs::directory_iterator(s.job.units_dir())) {
      const auto shard = storage::JobLayout::parse_unit_shard(e.path().filename().string());
      if (shard && shard->temporary) fs::remove(e.path());
    }
    remove_dead_checkpoints();
  }

  CoordinatorOutcome stop_now() {
    const std::string msg = "stopped by a signal with " + std::to_string(state.done_count()) + "/" +
                            std::to_string(state.units()) + " units done; units in flight are checkpointed, "
                            "rerun the same command (or let Slurm requeue) to resume";
    record({{"type", "job_stopped"}, {"message", msg}});
    QF_LOG(Warn) << msg;
    outcome = {kExitStopped, false, msg};
    send_all(protocol::Shutdown{false, msg, false, kExitStopped});
    return outcome;
  }

  // One scheduler turn (once every rank said HELLO): the policy's assignments for the idle teams.
  bool schedule_turn() {
    std::vector<int> idle;
    for (int t = 0; t < teams; ++t) {
      if (!busy_teams.count(t)) idle.push_back(t);
    }
    std::set<int> running_units;
    bool phase_running = false;
    for (const auto& [id, run] : running) {
      const auto* u = std::get_if<protocol::UnitWork>(&run.work.begin()->second);
      if (u) running_units.insert(u->unit);
      phase_running = phase_running || !u;
    }
    if (state.needs_selection()) select_units();
    const auto assignments = schedule(state, running_units, phase_running, idle, teams);
    for (const auto& a : assignments) dispatch(a);
    return !assignments.empty();
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
    repair(false);
    if (failed) return outcome;
    clean_up_at_start();
    while (!failed) {
      bool busy = false;
      while (auto m = control.try_recv(Transport::kAnySource, protocol::kTagToCoordinator)) {
        handle(m->first, m->second);
        busy = true;
        if (failed) break;
      }
      if (failed) break;
      check_stalls();
      if (failed) break;
      if (state.all_units_done() && running.empty()) {
        if (repair(true) == 0 && !failed) break;  // a dropped shard's unit runs again before assembly
        continue;
      }
      if (!stopping && !state.all_units_done()) {
        if (const int sig = s.stop_signal ? s.stop_signal() : 0) begin_stop(sig);
      }
      if (stopping && running.empty()) return stop_now();
      if (!stopping && static_cast<int>(hellos.size()) == s.ranks) busy = schedule_turn() || busy;
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
    send_all(protocol::Shutdown{true, "done", false});
    return outcome;
  }
};

Coordinator::Coordinator(CoordinatorSettings settings, const Transport& control, storage::Journal& journal, JobState state,
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
    impl_->send_all(protocol::Shutdown{false, msg, true});
    throw;
  }
}

}  // namespace qforge::coordinator
