// The coordinator (coordinator/coordinator.h) with its ranks as threads of this process: an
// InProcessNetwork (common/transport.h) carries the protocol. Scripted workers do with a unit what
// their script says (finish it, fall silent, fail, or wait for a CHECKPOINT), so stall detection,
// failures, stop signals, resume and clean-up are tested in milliseconds; the last test runs the real
// worker loop (worker/engine_worker.h) on threads, team reductions included. The mpirun tier
// (tests/mpi) runs the same code over MPI.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/protocol.h"
#include "common/sha256.h"
#include "common/transport.h"
#include "coordinator/coordinator.h"
#include "jobs/synthetic_model.h"
#include "storage/journal.h"
#include "storage/token_file.h"
#include "tests/support/test_data.h"
#include "worker/engine_worker.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// kFinishCorrupted: the shard is written but reported with a digest it does not have (as if the disk
// changed it afterwards); kReportDamagedInput: the rank says its first input cache file is damaged.
enum class OnUnit { kFinish, kGoSilent, kFail, kAwaitCheckpoint, kFinishCorrupted, kReportDamagedInput };

// What the workers saw, for the assertions.
struct Observed {
  std::mutex mu;
  std::vector<std::pair<int, protocol::UnitWork>> units;  // (rank, work) of every unit assignment received
  std::vector<protocol::Shutdown> shutdowns;
  std::atomic<int> awaiting_checkpoint{0};
};

// One scripted rank: HELLO, a heartbeat every 5 ms, and answers to assignments.
class ScriptedWorker {
 public:
  ScriptedWorker(InProcessNetwork& net, int rank, storage::JobLayout job, std::function<OnUnit(int unit)> script,
                 Observed& seen)
      : net_(net), t_(net.endpoint(rank)), job_(std::move(job)), script_(std::move(script)), seen_(seen) {}

  void run() {
    send(protocol::Hello{t_.rank(), "test-host", "cpu", 1, 1});
    auto last_beat = Clock::now() - std::chrono::seconds(1);
    for (;;) {
      if (Clock::now() - last_beat > std::chrono::milliseconds(5)) {
        send(protocol::Heartbeat{t_.rank(), current_, current_ ? "train" : "idle"});
        last_beat = Clock::now();
      }
      const auto m = t_.try_recv(0, protocol::kTagToWorker);
      if (!m) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      const protocol::Message msg = protocol::decode(m->second, 0);
      if (const auto* sd = std::get_if<protocol::Shutdown>(&msg)) {
        std::lock_guard<std::mutex> lock(seen_.mu);
        seen_.shutdowns.push_back(*sd);
        return;
      }
      if (const auto* c = std::get_if<protocol::Checkpoint>(&msg)) {
        if (c->assignment == current_ && awaiting_) answer_checkpoint();
        continue;
      }
      if (!on_assign(std::get<protocol::Assign>(msg))) return;  // went silent
    }
  }

 private:
  void send(const protocol::Message& m) { t_.send(0, protocol::kTagToCoordinator, protocol::encode(m)); }

  protocol::Done done(std::int64_t id) const {
    protocol::Done d;
    d.rank = t_.rank();
    d.assignment = id;
    return d;
  }

  // False when this rank went silent (its process "died").
  bool on_assign(const protocol::Assign& a) {
    if (const auto* probe = std::get_if<protocol::ProbeWork>(&a.work)) {
      for (int b : probe->blocks) {
        protocol::Done d = done(a.id);
        d.probed_block = b;
        d.report = {{"capacity_loss", 0.1 * (b + 1)}};
        send(d);
      }
      return true;
    }
    if (std::holds_alternative<protocol::FpPassWork>(a.work)) {
      protocol::Done d = done(a.id);
      d.cache_files = {storage::JobLayout::cache_file_name(1, "fp", a.id, t_.rank())};
      std::ofstream(job_.cache_dir() / d.cache_files[0]) << "FP stream";
      send(d);
      return true;
    }
    const auto& w = std::get<protocol::UnitWork>(a.work);
    leader_ = a.ranks.front() == t_.rank();
    unit_ = w.unit;
    {
      std::lock_guard<std::mutex> lock(seen_.mu);
      seen_.units.emplace_back(t_.rank(), w);
    }
    current_ = a.id;
    const OnUnit what = script_(w.unit);
    switch (what) {
      case OnUnit::kGoSilent:
        send(protocol::Heartbeat{t_.rank(), a.id, "train"});
        net_.disconnect(t_.rank());
        return false;
      case OnUnit::kFail:
        send(protocol::Failed{t_.rank(), a.id, "scripted failure", 1, std::nullopt});
        current_ = 0;
        return true;
      case OnUnit::kAwaitCheckpoint:
        awaiting_ = true;
        ++seen_.awaiting_checkpoint;
        return true;
      case OnUnit::kReportDamagedInput:
        send(protocol::Failed{t_.rank(), a.id, "checksum mismatch", kExitBadInput, w.x_fp_files.at(0)});
        current_ = 0;
        return true;
      case OnUnit::kFinish:
      case OnUnit::kFinishCorrupted:
        break;
    }
    protocol::Done d = done(a.id);
    if (leader_) {
      const std::string name = storage::JobLayout::unit_shard_name(w.unit);
      std::ofstream(job_.units_dir() / name) << "shard of unit " << w.unit;
      d.shard = protocol::UnitFile{name, sha256_file(job_.units_dir() / name)};
      if (what == OnUnit::kFinishCorrupted) d.shard->sha256 = std::string(64, '0');
      d.report = {{"initial_loss", 2.0}, {"final_loss", 1.0}};
    }
    if (w.write_next) {  // a sequential unit's output stream, one slice per rank
      for (const char* stream : {"fp", "q"}) {
        d.cache_files.push_back(storage::JobLayout::cache_file_name(w.first_block + w.num_blocks, stream, a.id, t_.rank()));
        std::ofstream(job_.cache_dir() / d.cache_files.back()) << stream << " stream";
      }
    }
    current_ = 0;
    send(d);
    return true;
  }

  void answer_checkpoint() {
    protocol::Done d = done(current_);
    d.stopped = true;
    d.report = {{"epoch", 0}, {"step", 3}};
    if (leader_) {
      const std::string name = storage::JobLayout::checkpoint_name(unit_, current_);
      std::ofstream(job_.units_dir() / name) << "training state";
      d.checkpoint = protocol::UnitFile{name, sha256_file(job_.units_dir() / name)};
    }
    awaiting_ = false;
    current_ = 0;
    send(d);
  }

  InProcessNetwork& net_;
  const Transport& t_;
  storage::JobLayout job_;
  std::function<OnUnit(int)> script_;
  Observed& seen_;
  std::int64_t current_ = 0;
  int unit_ = -1;
  bool leader_ = false, awaiting_ = false;
};

struct RunResult {
  coordinator::CoordinatorOutcome outcome;
  bool assembled = false;
  std::vector<json> journal;
};

// A job of `blocks` one-block units on `ranks` ranks in teams of `team_size`, run to its end.
struct InProcessJob {
  storage::JobLayout job{test::make_temp_dir("inproc-engine")};
  int blocks = 5, ranks = 3, team_size = 1;
  std::int64_t samples = 0;  // > 0 with independent units: an FP pass first
  bool sequential = false;
  double heartbeat_timeout_s = 30;
  std::function<int()> stop_signal = [] { return 0; };
  Observed seen;

  InProcessJob() {
    fs::create_directories(job.units_dir());
    fs::create_directories(job.cache_dir());
  }

  RunResult run(const std::function<OnUnit(int rank, int unit)>& script) {
    InProcessNetwork net(ranks);
    coordinator::JobState state(blocks, sequential, samples);
    for (const auto& r : storage::replay_journal(job.journal_path()).records) state.apply(r);
    RunResult out;
    {
      storage::Journal journal(job.journal_path());
      coordinator::CoordinatorSettings cs;
      cs.job = job;
      cs.ranks = ranks;
      cs.team_size = team_size;
      cs.needs_data = true;  // units get their input file names (the scripts write stand-ins)
      cs.heartbeat_timeout_s = heartbeat_timeout_s;
      cs.stop_signal = stop_signal;
      std::vector<std::thread> workers;
      for (int r = 0; r < ranks; ++r) {
        workers.emplace_back([&, r] {
          ScriptedWorker(net, r, job, [&, r](int unit) { return script(r, unit); }, seen).run();
        });
      }
      coordinator::Coordinator c(cs, net.endpoint(0), journal, std::move(state),
                                 [&](const coordinator::JobState&) { out.assembled = true; });
      out.outcome = c.run();
      for (auto& w : workers) w.join();
    }
    out.journal = storage::replay_journal(job.journal_path()).records;
    return out;
  }

  std::vector<json> records(const RunResult& r, const std::string& type) const {
    std::vector<json> out;
    for (const auto& rec : r.journal) {
      if (rec.value("type", "") == type) out.push_back(rec);
    }
    return out;
  }
};

OnUnit finish_all(int, int) { return OnUnit::kFinish; }

TEST(EngineInProcess, ThreeRanksRunEveryUnitOnceAndEveryRankGetsTheFinalShutdown) {
  InProcessJob job;
  const RunResult r = job.run(finish_all);
  EXPECT_EQ(r.outcome.exit_code, kExitOk) << r.outcome.message;
  EXPECT_TRUE(r.assembled);
  std::map<int, int> done_per_unit;
  for (const auto& rec : job.records(r, "unit_done")) ++done_per_unit[rec["unit"].get<int>()];
  EXPECT_EQ(done_per_unit, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}}));
  EXPECT_EQ(job.records(r, "job_complete").size(), 1u);
  // Independent teams of one: every rank got work, and every rank was told the job is done.
  std::set<int> ranks_used;
  for (const auto& [rank, w] : job.seen.units) ranks_used.insert(rank);
  EXPECT_EQ(ranks_used, (std::set<int>{0, 1, 2}));
  ASSERT_EQ(job.seen.shutdowns.size(), 3u);
  for (const auto& sd : job.seen.shutdowns) EXPECT_TRUE(sd.ok);
}

TEST(EngineInProcess, AWorkerSilentMidUnitIsReportedByRankUnitAndPhaseAndTheOthersAreAborted) {
  InProcessJob job;
  job.heartbeat_timeout_s = 0.2;
  const RunResult r = job.run([](int rank, int unit) { return rank == 2 && unit >= 0 ? OnUnit::kGoSilent : OnUnit::kFinish; });
  EXPECT_EQ(r.outcome.exit_code, kExitWorkerLost);
  EXPECT_TRUE(r.outcome.must_abort);
  EXPECT_FALSE(r.assembled);
  const auto lost = job.records(r, "worker_lost");
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0]["rank"], 2);
  const int unit = lost[0]["unit"].get<int>();
  EXPECT_EQ(lost[0]["kind"], "unit");
  const std::string msg = lost[0]["message"];
  EXPECT_NE(msg.find("worker rank 2 on test-host stopped responding"), std::string::npos) << msg;
  EXPECT_NE(msg.find("while running unit " + std::to_string(unit) + " (block " + std::to_string(unit) + ") (last phase: train)"),
            std::string::npos)
      << msg;
  // The two live ranks are told to stop, and that rank 0 will abort the job.
  ASSERT_EQ(job.seen.shutdowns.size(), 2u);
  for (const auto& sd : job.seen.shutdowns) EXPECT_TRUE(sd.abort && !sd.ok);
  EXPECT_TRUE(job.records(r, "unit_done").size() < 5u);
}

TEST(EngineInProcess, AFailedUnitIsJournaledWithItsReasonAndEndsTheJob) {
  InProcessJob job;
  job.ranks = 1;
  const RunResult r = job.run([](int, int unit) { return unit == 2 ? OnUnit::kFail : OnUnit::kFinish; });
  EXPECT_EQ(r.outcome.exit_code, kExitInternal);
  EXPECT_FALSE(r.outcome.must_abort);  // one rank: nobody is stuck in a collective
  const auto failed = job.records(r, "unit_failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0]["unit"], 2);
  EXPECT_EQ(failed[0]["message"], "unit 2 (block 2) failed on rank 0: scripted failure");
  EXPECT_EQ(job.records(r, "unit_done").size(), 2u);  // units 0 and 1 ran before it, one at a time
}

// A stop signal while units run: each is checkpointed and the job stops resumably; the rerun resumes
// the checkpointed units from their files, never re-runs a finished one, and removes the checkpoints
// and stray temporaries once they are dead.
TEST(EngineInProcess, AStopSignalCheckpointsUnitsInFlightAndTheRerunResumesThemAndCleansUp) {
  InProcessJob job;
  job.ranks = 2;
  job.blocks = 4;
  job.stop_signal = [&] { return job.seen.awaiting_checkpoint.load() >= 2 ? SIGUSR1 : 0; };
  // Units 0 and 1 start on the two teams and wait; the signal arrives once both do.
  const RunResult first = job.run([](int, int) { return OnUnit::kAwaitCheckpoint; });
  EXPECT_EQ(first.outcome.exit_code, kExitStopped) << first.outcome.message;
  EXPECT_FALSE(first.outcome.must_abort);
  const auto cks = job.records(first, "unit_checkpoint");
  ASSERT_EQ(cks.size(), 2u);
  EXPECT_EQ(job.records(first, "stop_requested")[0]["signal"], "SIGUSR1");
  EXPECT_EQ(job.records(first, "job_stopped").size(), 1u);
  for (const auto& sd : job.seen.shutdowns) EXPECT_EQ(sd.exit_code, kExitStopped);

  // A crashed writer's temporaries and a cache file of an old assignment: dead at the next start.
  const fs::path stray_cache = job.job.cache_dir() / storage::JobLayout::cache_file_name(1, "fp", 1, 0);
  const fs::path stray_shard = job.job.units_dir() / (storage::JobLayout::unit_shard_name(3) + ".tmp.123");
  std::ofstream(stray_cache) << "x";
  std::ofstream(stray_shard) << "x";
  ASSERT_TRUE(storage::JobLayout::parse_unit_shard(stray_shard.filename().string())->temporary);

  job.seen.units.clear();
  job.seen.shutdowns.clear();
  job.stop_signal = [] { return 0; };
  const RunResult second = job.run(finish_all);
  EXPECT_EQ(second.outcome.exit_code, kExitOk) << second.outcome.message;
  EXPECT_TRUE(second.assembled);
  std::map<int, std::string> resumed;
  for (const auto& [rank, w] : job.seen.units) resumed[w.unit] = w.resume_from;
  ASSERT_EQ(resumed.size(), 4u);  // nothing was finished in the first run
  for (const auto& ck : cks) EXPECT_EQ(resumed[ck["unit"].get<int>()], ck["file"].get<std::string>());
  EXPECT_EQ(resumed[2], "");
  EXPECT_EQ(resumed[3], "");
  for (const auto& ck : cks) EXPECT_FALSE(fs::exists(job.job.units_dir() / ck["file"].get<std::string>()));
  EXPECT_FALSE(fs::exists(stray_cache));
  EXPECT_FALSE(fs::exists(stray_shard));

  // A third start of the finished job re-assembles without assigning anything.
  job.seen.units.clear();
  const RunResult third = job.run(finish_all);
  EXPECT_EQ(third.outcome.exit_code, kExitOk);
  EXPECT_TRUE(third.assembled);
  EXPECT_TRUE(job.seen.units.empty());
}

// Sequential mode with one team of three: every unit goes to the whole team, in order, and the team
// leader (team rank 0) is the one that writes the shard.
TEST(EngineInProcess, ASequentialTeamGetsEveryUnitInOrder) {
  InProcessJob job;
  job.sequential = true;
  job.team_size = 3;
  const RunResult r = job.run(finish_all);
  EXPECT_EQ(r.outcome.exit_code, kExitOk) << r.outcome.message;
  std::vector<int> order;
  for (const auto& rec : job.records(r, "unit_done")) order.push_back(rec["unit"].get<int>());
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(job.seen.units.size(), 15u);
  for (const auto& rec : job.records(r, "unit_assigned")) EXPECT_EQ(rec["ranks"], json({0, 1, 2}));
}

// A shard that no longer matches its digest when the job is about to assemble: its unit is dropped
// (file_damaged) and runs again in the same run; nothing else is redone.
TEST(EngineInProcess, ADamagedShardIsRecomputedBeforeAssembly) {
  InProcessJob job;
  std::atomic<int> unit2_runs{0};
  const RunResult r = job.run([&](int, int unit) {
    return unit == 2 && unit2_runs++ == 0 ? OnUnit::kFinishCorrupted : OnUnit::kFinish;
  });
  EXPECT_EQ(r.outcome.exit_code, kExitOk) << r.outcome.message;
  EXPECT_TRUE(r.assembled);
  const auto damaged = job.records(r, "file_damaged");
  ASSERT_EQ(damaged.size(), 1u);
  EXPECT_EQ(damaged[0]["what"], "shard");
  EXPECT_EQ(damaged[0]["file"], storage::JobLayout::unit_shard_name(2));
  EXPECT_EQ(damaged[0]["reason"], "does not match its digest in the journal");
  std::map<int, int> done;
  for (const auto& rec : job.records(r, "unit_done")) ++done[rec["unit"].get<int>()];
  EXPECT_EQ(done, (std::map<int, int>{{0, 1}, {1, 1}, {2, 2}, {3, 1}, {4, 1}}));
}

// A finished sequential job whose unit 2 shard was deleted: redoing unit 2 needs unit 1's output
// stream, which was collected long ago, and so on back to the embedding; units 3 and 4 keep their
// results. The rerun recomputes exactly units 0-2, in order, and assembles.
TEST(EngineInProcess, AMissingShardOfASequentialJobRedoesTheChainThatFeedsIt) {
  InProcessJob job;
  job.sequential = true;
  job.ranks = 1;
  ASSERT_EQ(job.run(finish_all).outcome.exit_code, kExitOk);
  fs::remove(job.job.units_dir() / storage::JobLayout::unit_shard_name(2));
  job.seen.units.clear();
  const RunResult r = job.run(finish_all);
  EXPECT_EQ(r.outcome.exit_code, kExitOk) << r.outcome.message;
  EXPECT_TRUE(r.assembled);
  std::vector<int> redone;
  for (const auto& [rank, w] : job.seen.units) redone.push_back(w.unit);
  EXPECT_EQ(redone, (std::vector<int>{0, 1, 2}));
  std::vector<std::string> what;
  for (const auto& d : job.records(r, "file_damaged")) what.push_back(d["what"].get<std::string>() + " " + d["reason"].get<std::string>());
  EXPECT_EQ(what, (std::vector<std::string>{"shard is missing", "cache is missing", "cache is missing"}));
  EXPECT_TRUE(fs::exists(job.job.units_dir() / storage::JobLayout::unit_shard_name(2)));
  EXPECT_TRUE(fs::is_empty(job.job.cache_dir()));  // the redo's streams were collected again
}

// A worker alone on its unit reports a damaged input slice: the FP-pass slice that holds it is dropped
// and made again, and the unit runs again on it, all in the same run.
TEST(EngineInProcess, ADamagedInputSliceIsRecomputedAndTheUnitRunsAgain) {
  InProcessJob job;
  job.ranks = 1;
  job.blocks = 3;
  job.samples = 4;
  std::atomic<int> unit1_runs{0};
  const RunResult r = job.run([&](int, int unit) {
    return unit == 1 && unit1_runs++ == 0 ? OnUnit::kReportDamagedInput : OnUnit::kFinish;
  });
  EXPECT_EQ(r.outcome.exit_code, kExitOk) << r.outcome.message;
  EXPECT_TRUE(r.assembled);
  const auto slices = job.records(r, "fp_slice_done");
  ASSERT_EQ(slices.size(), 2u);
  const auto damaged = job.records(r, "file_damaged");
  ASSERT_EQ(damaged.size(), 1u);
  EXPECT_EQ(damaged[0]["what"], "cache");
  EXPECT_EQ(damaged[0]["file"], slices[0]["files"][0]["file"]);
  std::vector<std::string> inputs;
  for (const auto& [rank, w] : job.seen.units) {
    if (w.unit == 1) inputs.push_back(w.x_fp_files.at(0));
  }
  EXPECT_EQ(inputs, (std::vector<std::string>{slices[0]["files"][0]["file"], slices[1]["files"][0]["file"]}));
  EXPECT_EQ(unit1_runs.load(), 2);
}

// A checkpoint gone before the resume: that unit starts over, the other resumes from its own.
TEST(EngineInProcess, AMissingCheckpointRestartsItsUnitFromTheBeginning) {
  InProcessJob job;
  job.ranks = 2;
  job.blocks = 2;
  job.stop_signal = [&] { return job.seen.awaiting_checkpoint.load() >= 2 ? SIGUSR1 : 0; };
  const RunResult first = job.run([](int, int) { return OnUnit::kAwaitCheckpoint; });
  ASSERT_EQ(first.outcome.exit_code, kExitStopped);
  std::map<int, std::string> ck;
  for (const auto& rec : job.records(first, "unit_checkpoint")) ck[rec["unit"].get<int>()] = rec["file"].get<std::string>();
  ASSERT_EQ(ck.size(), 2u);
  fs::remove(job.job.units_dir() / ck[0]);
  job.seen.units.clear();
  job.stop_signal = [] { return 0; };
  const RunResult second = job.run(finish_all);
  EXPECT_EQ(second.outcome.exit_code, kExitOk) << second.outcome.message;
  std::map<int, std::string> resumed;
  for (const auto& [rank, w] : job.seen.units) resumed[w.unit] = w.resume_from;
  EXPECT_EQ(resumed, (std::map<int, std::string>{{0, ""}, {1, ck[1]}}));
  const auto damaged = job.records(second, "file_damaged");
  ASSERT_EQ(damaged.size(), 1u);
  EXPECT_EQ(damaged[0]["what"], "checkpoint");
  EXPECT_EQ(damaged[0]["file"], ck[0]);
}

// A unit whose shard is damaged every time it is written: recomputed once, then the job ends naming
// the disk rather than looping.
TEST(EngineInProcess, AFileDamagedAgainAfterItsRecomputeEndsTheJob) {
  InProcessJob job;
  job.ranks = 1;
  job.blocks = 2;
  const RunResult r = job.run([](int, int unit) { return unit == 1 ? OnUnit::kFinishCorrupted : OnUnit::kFinish; });
  EXPECT_EQ(r.outcome.exit_code, kExitBadInput);
  EXPECT_NE(r.outcome.message.find("unit 1 (block 1) was recomputed once in this run already"), std::string::npos)
      << r.outcome.message;
  EXPECT_FALSE(r.assembled);
  EXPECT_EQ(job.records(r, "file_damaged").size(), 1u);
}

// Real workers: an OmniQuant W4A8 job on a 3-block synthetic model, independent mode, run by one rank
// and by three ranks that are threads. With a batch of 2 every FP-pass batch holds the same two
// samples either way (rank r forwards samples 2r, 2r+1), and each unit is calibrated by a team of one
// on all samples, so the three-rank job must write exactly the one-rank job's unit shards.
std::map<int, std::string> run_real_job(const fs::path& model, const fs::path& dir, int ranks) {
  const storage::JobLayout job(dir);
  fs::create_directories(job.units_dir());
  fs::create_directories(job.cache_dir());
  worker::EngineSettings es;
  es.model = model;
  es.job = job;
  es.model_fingerprint = "model";
  es.job_fingerprint = "job";
  es.sequential = false;
  es.samples = 6;
  es.seqlen = 16;
  es.batch_size = 2;
  es.blocks = 3;
  es.heartbeat_interval_s = 0.05;
  es.collective_timeout_s = 60;
  std::vector<std::int32_t> ids;
  for (int i = 0; i < es.samples * es.seqlen; ++i) ids.push_back((i * 37 + 11) % 512);
  storage::write_token_file(job.calibration_path(), ids);
  worker::CalibOptions co;
  co.transform.method = worker::Method::kOmniQuant;
  co.transform.let = co.transform.lwc = true;
  co.weights = {4, 0, false, true};
  co.acts = {8, false};
  co.epochs = 1;
  co.batch_size = es.batch_size;
  es.block_options.assign(3, co);

  InProcessNetwork control(ranks);
  std::vector<std::unique_ptr<InProcessNetwork>> teams;
  for (int r = 0; r < ranks; ++r) teams.push_back(std::make_unique<InProcessNetwork>(1));
  storage::Journal journal(job.journal_path());
  coordinator::CoordinatorSettings cs;
  cs.job = job;
  cs.ranks = ranks;
  cs.team_size = 1;
  cs.stop_signal = [] { return 0; };
  coordinator::CoordinatorOutcome outcome;
  std::thread coord([&] {
    coordinator::Coordinator c(cs, control.endpoint(0), journal, coordinator::JobState(3, false, es.samples),
                               [](const coordinator::JobState&) {});
    outcome = c.run();
  });
  std::vector<std::thread> workers;
  std::vector<worker::WorkerExit> exits(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    workers.emplace_back([&, r] { exits[static_cast<std::size_t>(r)] = worker::run_worker(es, control.endpoint(r), teams[r]->endpoint(0)); });
  }
  for (auto& w : workers) w.join();
  coord.join();
  EXPECT_EQ(outcome.exit_code, kExitOk) << outcome.message;
  for (auto e : exits) EXPECT_EQ(e, worker::WorkerExit::kOk);
  std::map<int, std::string> shards;
  std::set<int> ranks_used;
  for (const auto& rec : storage::replay_journal(job.journal_path()).records) {
    if (rec.value("type", "") == "fp_slice_done") ranks_used.insert(rec["rank"].get<int>());
    if (rec.value("type", "") != "unit_done") continue;
    shards[rec["unit"].get<int>()] = rec["digest"].get<std::string>();
  }
  EXPECT_EQ(static_cast<int>(ranks_used.size()), ranks);  // the FP pass was shared by every rank
  return shards;
}

TEST(EngineInProcess, RealWorkersOnThreeThreadRanksWriteTheOneRankJobsShards) {
  const fs::path dir = test::make_temp_dir("inproc-real");
  jobs::SyntheticOptions so;
  so.blocks = 3;
  so.seed = 7;
  so.write_tokenizer = false;
  jobs::make_synthetic_model(dir / "model", so);
  const auto one = run_real_job(dir / "model", dir / "np1", 1);
  const auto three = run_real_job(dir / "model", dir / "np3", 3);
  ASSERT_EQ(one.size(), 3u);
  EXPECT_EQ(three, one);
}

}  // namespace
}  // namespace qforge
