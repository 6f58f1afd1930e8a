// The distributed engine under `mpirun -np 3 --oversubscribe` (label mpi; ctest runs these serially,
// one compute thread per rank): both modes end to end on stories260K-hf, 1 vs 3 ranks with the same
// global batch, resume after kills at named fault points (byte-identical output), a stopped worker
// reported by rank and unit, a mismatched resume refused, and peak RSS per rank against the plan.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/sha256.h"
#include "storage/journal.h"
#include "storage/safetensors.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::shell_quote;

// Small but real: 5 GQA blocks, 12 windows of 64 tokens sampled from the model, global batch 3 (one
// sequence per rank per step on 3 ranks), AffineQuant W4A4 with 2 epochs unless a test names another
// recipe; block-wise unless a test asks for MRECG joint units (--joint-topk).
const char* const kJobFlags = " --calib-data model:generate --nsamples 12 --calib-seqlen 64 --batch-size 3 --log-level warn";
const char* const kRecipe = " --method affinequant --wbits 4 --abits 4 --epochs 2";

std::vector<json> journal_of(const fs::path& job) { return storage::replay_journal(job / "journal.log").records; }

double eval_ppl(const fs::path& model, const fs::path& tokens) {
  return test::qforge_eval_json("--model " + shell_quote(model.string()) + " --data " + shell_quote(tokens.string()) +
                                " --seqlen 64")
      .value("ppl", NAN);
}

struct EngineMpi : ::testing::Test {
  void SetUp() override {
    model = test::shared_data() / "models/stories260K-hf";
    dir = test::make_temp_dir("engine-mpi");
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir);
  }
  test::CommandResult quantize(int np, const std::string& name, const std::string& flags = "", const std::string& env = "",
                               const std::string& recipe = kRecipe) {
    return test::run_command(test::mpirun_prefix(np, env) + test::qforge_binary() + " quantize --model " + shell_quote(model.string()) +
                             " --out " + shell_quote((dir / name / "out").string()) + " --job-dir " +
                             shell_quote((dir / name / "job").string()) + kJobFlags + recipe +
                             (flags.find("--joint-topk") == std::string::npos ? " --joint-topk 0 " : " ") + flags);
  }
  fs::path model, dir;
};

// 1 vs 3 ranks: the same calibration windows and global batch, so the same method up to summation
// order (one step is checked to be the same computation within fp32 rounding in test_team_step_mpi.cpp).
// A whole calibration amplifies rounding-order differences (a flipped weight or activation code changes
// the straight-through gradient), so the end results are compared within the spread that summation order
// alone produces on ONE rank. bench/rank_spread.sh measured it for this recipe (AffineQuant W3A8, 4
// epochs), scored on held-out text (stories260K/generated-eval.txt, windows of 64) against the FP model:
//   LibTorch 1.13 + OpenBLAS, 1 rank, 1/2/3 threads x Haswell/Sandybridge kernels:
//     KL 0.7525..0.7739 (2.8%), ppl 10.35..10.58 (2.3%); 3 ranks KL 0.7589, ppl 10.39
//   LibTorch 2.11 + MKL, 1 rank, 1/2/3 threads x default/MKL_CBWR=COMPATIBLE kernels:
//     KL 0.7610..0.7665 (0.7%), ppl 10.41..10.47 (0.6%); 3 ranks KL 0.7703 (+1.2%), ppl 10.55 (+1.4%)
//   RTN W3A8: KL 0.8806, ppl 11.91 (KL margin >= 12%, 4x the largest spread)
// (W4A4, the other tests' recipe, does not beat RTN on this model by more than that spread.)
// GPTQ in a team: each rank accumulates the Hessians over its share of the samples and the team sums them
// (the reducer of the gradients), so three ranks choose the codes one rank chooses over all samples, up to
// the summation order of H (which can flip a code sitting on a rounding boundary; bound: 0.1% of them).
// Measured: all 226,560 codes equal; scales and zero points identical (RTN's grid, from the weights alone).
TEST_F(EngineMpi, GptqTeamOfThreeSumsTheHessiansAndChoosesOneRanksCodes) {
  QF_REQUIRE_DATA(model);
  const std::string recipe = " --method gptq --wbits 3";
  auto one = quantize(1, "np1", "", "", recipe);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto three = quantize(3, "np3", "", "", recipe);
  ASSERT_EQ(three.exit_code, 0) << three.output;
  const storage::SafetensorsFile a(dir / "np1/out/quantization.safetensors"), b(dir / "np3/out/quantization.safetensors");
  std::int64_t codes = 0, equal = 0;
  for (const auto& t : a.tensors()) {
    const at::Tensor x = a.load(t.name), y = b.load(t.name);
    if (t.name.size() > 6 && t.name.substr(t.name.size() - 6) == ".codes") {
      codes += x.numel();
      equal += x.eq(y).sum().item<std::int64_t>();
    } else {
      EXPECT_TRUE(at::equal(x, y)) << t.name;  // the grid is RTN's, from the weights alone
    }
  }
  ASSERT_GT(codes, 0);
  std::printf("[gptq team] %lld of %lld codes equal to one rank's\n", static_cast<long long>(equal), static_cast<long long>(codes));
  EXPECT_GE(static_cast<double>(equal) / static_cast<double>(codes), 0.999) << equal << " of " << codes;
  // GPTQ ran on all three ranks with their shares (12 samples / 3), not on rank 0 alone.
  for (const auto& r : journal_of(dir / "np3/job")) {
    if (r["type"] != "unit_done") continue;
    ASSERT_EQ(r["ranks"].size(), 3u) << r.dump();
    for (const auto& rk : r["ranks"]) EXPECT_EQ(rk["samples"], 4) << r.dump();
  }
}

TEST_F(EngineMpi, SequentialOneAndThreeRanksAgreeAndShareTheSamples) {
  QF_REQUIRE_DATA(model);
  const auto story_dir = test::shared_data() / "models/stories260K";
  QF_REQUIRE_DATA(story_dir / "generated-eval.txt");
  const std::string recipe = " --method affinequant --wbits 3 --abits 8 --epochs 4";
  auto one = quantize(1, "np1", "", "", recipe);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto three = quantize(3, "np3", "", "", recipe);
  ASSERT_EQ(three.exit_code, 0) << three.output;
  auto rtn = test::run_command(test::qforge_binary() + " quantize --method rtn --wbits 3 --abits 8 --log-level warn --model " +
                               shell_quote(model.string()) + " --out " + shell_quote((dir / "rtn").string()));
  ASSERT_EQ(rtn.exit_code, 0) << rtn.output;
  // Same windows (drawn once by rank 0), same global batch.
  EXPECT_EQ(sha256_file(dir / "np1/out/calibration.tok"), sha256_file(dir / "np3/out/calibration.tok"));
  auto held_out = [&](const fs::path& m) {
    return test::qforge_eval_json("--seqlen 64 --model " + shell_quote(m.string()) + " --reference " +
                                  shell_quote(model.string()) + " --data " +
                                  shell_quote((story_dir / "generated-eval.txt").string()) + " --tokenizer " +
                                  shell_quote((story_dir / "tok512.bin").string()));
  };
  const json e1 = held_out(dir / "np1/out"), e3 = held_out(dir / "np3/out"), er = held_out(dir / "rtn");
  const double kl1 = e1.at("kl"), kl3 = e3.at("kl"), klr = er.at("kl");
  SCOPED_TRACE("KL np1 " + std::to_string(kl1) + ", np3 " + std::to_string(kl3) + ", rtn " + std::to_string(klr) +
               "; ppl np1 " + std::to_string(e1.at("ppl").get<double>()) + ", np3 " + std::to_string(e3.at("ppl").get<double>()));
  // Within about twice the largest measured one-rank spread (2.8% KL, 2.3% ppl).
  EXPECT_NEAR(kl3 / kl1, 1.0, 0.06);
  EXPECT_NEAR(e3.at("ppl").get<double>() / e1.at("ppl").get<double>(), 1.0, 0.05);
  // Both beat RTN by more than that spread (measured: 0.855..0.879 of RTN's KL).
  EXPECT_LT(kl1, 0.94 * klr);
  EXPECT_LT(kl3, 0.94 * klr);
  EXPECT_GT(kl1, 0.0);  // W3A8 costs something; a no-op quantizer would not
  // Every unit was computed by all three ranks, each with its share: 12 samples / 3 ranks.
  int units = 0;
  for (const auto& r : journal_of(dir / "np3/job")) {
    if (r["type"] != "unit_done") continue;
    ++units;
    ASSERT_EQ(r["ranks"].size(), 3u) << r.dump();
    for (const auto& rk : r["ranks"]) EXPECT_EQ(rk["samples"], 4) << r.dump();
  }
  EXPECT_EQ(units, 5);
  auto st = test::run_command(test::qforge_binary() + " status --job-dir " + shell_quote((dir / "np3/job").string()));
  EXPECT_EQ(st.exit_code, 0) << st.output;
  EXPECT_NE(st.output.find("5/5 units done"), std::string::npos) << st.output;
  EXPECT_NE(st.output.find("r0:20 r1:20 r2:20"), std::string::npos) << st.output;
}

TEST_F(EngineMpi, IndependentModeRunsUnitsConcurrentlyOnDifferentRanks) {
  QF_REQUIRE_DATA(model);
  auto r = quantize(3, "ind", "--mode independent");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::set<int> fp_ranks, teams;
  std::set<int> in_flight;
  std::size_t max_in_flight = 0;
  for (const auto& rec : journal_of(dir / "ind/job")) {
    if (rec["type"] == "fp_slice_done") fp_ranks.insert(rec["rank"].get<int>());
    if (rec["type"] == "unit_assigned" && rec["kind"] == "unit") in_flight.insert(rec["unit"].get<int>());
    if (rec["type"] == "unit_done") {
      teams.insert(rec["team"].get<int>());
      ASSERT_EQ(rec["ranks"].size(), 1u);  // default team size 1 in independent mode
      EXPECT_EQ(rec["ranks"][0]["samples"], 12);
    }
    max_in_flight = std::max(max_in_flight, in_flight.size());
    if (rec["type"] == "unit_done") in_flight.erase(rec["unit"].get<int>());
  }
  EXPECT_EQ(fp_ranks, (std::set<int>{0, 1, 2}));  // the FP pass was split over every rank
  EXPECT_EQ(teams.size(), 3u);                     // units ran on all three ranks
  EXPECT_GE(max_in_flight, 2u);                    // and at the same time
  const double p = eval_ppl(dir / "ind/out", dir / "ind/out/calibration.tok");
  const double fp = eval_ppl(model, dir / "ind/out/calibration.tok");
  EXPECT_TRUE(std::isfinite(p));
  EXPECT_GT(p, fp);
  EXPECT_LT(p, 3 * fp);
}

TEST_F(EngineMpi, ResumeAfterKillsIsByteIdentical) {
  QF_REQUIRE_DATA(model);
  auto ref = quantize(3, "ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const auto want = test::file_digests(dir / "ref/out");
  // <point>:<rank>[:kill:<nth time>] — worker and coordinator sides, during training, a cache write,
  // a result-shard write, around the journal record and in the middle of assembly.
  const std::vector<std::string> faults = {"train_step:1:kill:7", "cache_write:2:kill:3",  "shard_write:0:kill:2",
                                           "before_journal:0:kill:2", "after_journal:0:kill:3", "mid_assembly:0"};
  for (const auto& f : faults) {
    SCOPED_TRACE(f);
    const std::string name = "fault-" + f.substr(0, f.find(':'));
    auto killed = quantize(3, name, "", "QFORGE_FAULT=" + f);
    EXPECT_NE(killed.exit_code, 0) << killed.output;
    EXPECT_NE(killed.output.find("QFORGE_FAULT"), std::string::npos) << killed.output;
    auto resumed = quantize(3, name);
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_EQ(test::file_digests(dir / name / "out"), want);
    std::map<int, int> done;
    int starts = 0;
    for (const auto& rec : journal_of(dir / name / "job")) {
      if (rec["type"] == "unit_done") ++done[rec["unit"].get<int>()];
      if (rec["type"] == "job_start") ++starts;
    }
    EXPECT_EQ(starts, 2);
    EXPECT_EQ(done.size(), 5u);
    for (const auto& [u, n] : done) EXPECT_EQ(n, 1) << "unit " << u << " finished twice";
  }
}

// A stop signal (what Slurm's --signal=B:USR1 warning delivers, here raised by rank 0 itself at its
// 2nd optimiser step): the unit in flight is checkpointed mid-unit, the job ends with exit code 4, and
// the rerun continues from the checkpoint to an output identical to an uninterrupted run.
TEST_F(EngineMpi, StopSignalCheckpointsMidUnitAndTheRerunIsByteIdentical) {
  QF_REQUIRE_DATA(model);
  auto ref = quantize(3, "stop-ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  auto stopped = quantize(3, "stop", "", "QFORGE_FAULT=train_step:0:usr1:2");
  ASSERT_EQ(stopped.exit_code, 4) << stopped.output;
  json checkpoint;
  bool stop_requested = false, job_stopped = false;
  for (const auto& rec : journal_of(dir / "stop/job")) {
    if (rec["type"] == "stop_requested") stop_requested = true;
    if (rec["type"] == "unit_checkpoint") checkpoint = rec;
    if (rec["type"] == "job_stopped") job_stopped = true;
    EXPECT_NE(rec["type"], "unit_done") << "the stop came in unit 0's second step";
  }
  EXPECT_TRUE(stop_requested && job_stopped);
  ASSERT_TRUE(checkpoint.is_object());
  EXPECT_EQ(checkpoint["unit"], 0);
  // 4 steps per epoch, 2 epochs: stopped after step 2..7, i.e. mid-unit.
  const int done_steps = checkpoint["epoch"].get<int>() * 4 + checkpoint["step"].get<int>();
  EXPECT_GE(done_steps, 2);
  EXPECT_LT(done_steps, 8);
  EXPECT_TRUE(fs::exists(dir / "stop/job/units" / checkpoint["file"].get<std::string>()));
  auto st = test::run_command(test::qforge_binary() + " status --job-dir " + shell_quote((dir / "stop/job").string()));
  EXPECT_NE(st.output.find("checkpoint"), std::string::npos) << st.output;
  auto resumed = quantize(3, "stop");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumes at epoch"), std::string::npos) << resumed.output;
  EXPECT_EQ(test::file_digests(dir / "stop/out"), test::file_digests(dir / "stop-ref/out"));
  EXPECT_FALSE(fs::exists(dir / "stop/job/units" / checkpoint["file"].get<std::string>()));  // dead once the unit is done
  // A job that starts on a complete journal exits 0 at once.
  auto again = quantize(3, "stop");
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

// MRECG on a synthetic 16-block model: the FP pass and the probes are split over the ranks, the
// selection is journaled once, joint units train as one on the 3-rank team, and a run killed inside
// the probes or inside a joint unit resumes to the same bytes without redoing journaled work.
TEST_F(EngineMpi, MrecgProbesSelectionAndJointUnitsResumeByteIdentical) {
  const fs::path syn = dir / "syn16";
  auto mk = test::run_command(test::qforge_binary() + " make-synthetic --log-level warn --shape tiny --blocks 16 --out " +
                              shell_quote(syn.string()));
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  model = syn;
  const std::string flags = "--joint-topk 3 --joint-max-blocks 3 --probe-samples 6";
  auto ref = quantize(3, "mrecg-ref", flags);
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const auto want = test::file_digests(dir / "mrecg-ref/out");
  EXPECT_TRUE(want.count("oscillation.json") && want.count("oscillation.svg"));
  json selection;
  std::set<int> probe_ranks, probed;
  for (const auto& rec : journal_of(dir / "mrecg-ref/job")) {
    if (rec["type"] == "probe_done") {
      probe_ranks.insert(rec["rank"].get<int>());
      EXPECT_TRUE(probed.insert(rec["block"].get<int>()).second) << "block probed twice";
      EXPECT_EQ(rec["samples"], 6);
    }
    if (rec["type"] == "joint_selection") {
      EXPECT_TRUE(selection.is_null()) << "selected twice";
      selection = rec;
    }
  }
  EXPECT_EQ(probed.size(), 16u);
  EXPECT_EQ(probe_ranks, (std::set<int>{0, 1, 2}));  // probes ran in parallel on every rank
  ASSERT_TRUE(selection.is_object());
  EXPECT_EQ(selection["selected"].size() + 0u, 3u);
  int first_joint = -1, units = 0;
  for (const auto& u : selection["units"]) {
    if (u[1].get<int>() > 1 && first_joint < 0) first_joint = units;
    ++units;
  }
  ASSERT_GE(first_joint, 0) << selection.dump();
  EXPECT_LT(units, 16);
  // 12 samples, batch 3: 4 optimiser steps per epoch, 2 epochs = 8 steps per unit on every rank.
  const int mid_joint_step = 8 * first_joint + 5;
  const std::vector<std::string> faults = {"probe:1:kill:3", "train_step:1:kill:" + std::to_string(mid_joint_step)};
  for (const auto& f : faults) {
    SCOPED_TRACE(f);
    const std::string name = "mrecg-" + f.substr(0, f.find(':'));
    auto killed = quantize(3, name, flags, "QFORGE_FAULT=" + f);
    EXPECT_NE(killed.exit_code, 0) << killed.output;
    std::map<int, int> probes_before;
    for (const auto& rec : journal_of(dir / name / "job")) {
      if (rec["type"] == "probe_done") ++probes_before[rec["block"].get<int>()];
    }
    auto resumed = quantize(3, name, flags);
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_EQ(test::file_digests(dir / name / "out"), want);
    std::map<int, int> probes, done;
    int selections = 0, joint_assigned = 0;
    for (const auto& rec : journal_of(dir / name / "job")) {
      if (rec["type"] == "probe_done") ++probes[rec["block"].get<int>()];
      if (rec["type"] == "joint_selection") ++selections;
      if (rec["type"] == "unit_done") ++done[rec["unit"].get<int>()];
      if (rec["type"] == "unit_assigned" && rec.value("unit", -1) == first_joint) ++joint_assigned;
    }
    EXPECT_EQ(probes.size(), 16u);
    for (const auto& [b, n] : probes) EXPECT_EQ(n, 1) << "block " << b << " probed twice";
    EXPECT_EQ(selections, 1);
    EXPECT_EQ(static_cast<int>(done.size()), units);
    for (const auto& [u, n] : done) EXPECT_EQ(n, 1) << "unit " << u << " finished twice";
    if (f.rfind("probe", 0) == 0) {
      EXPECT_FALSE(probes_before.empty());  // some probes were durable before the kill and kept
      EXPECT_LT(probes_before.size(), 16u);
    } else {
      EXPECT_EQ(probes_before.size(), 16u);
      EXPECT_EQ(joint_assigned, 2);  // the joint unit was interrupted once and redone once
    }
  }
  auto st = test::run_command(test::qforge_binary() + " status --job-dir " + shell_quote((dir / "mrecg-ref/job").string()));
  EXPECT_EQ(st.exit_code, 0) << st.output;
  EXPECT_NE(st.output.find("MRECG: capacity from probe, top-3"), std::string::npos) << st.output;
  EXPECT_NE(st.output.find("oscillation (normalised loss per block"), std::string::npos) << st.output;
  // Independent mode with the same selection policy completes too (units on the FP stream, in parallel).
  auto ind = quantize(3, "mrecg-ind", flags + " --mode independent");
  ASSERT_EQ(ind.exit_code, 0) << ind.output;
  int ind_units = 0;
  for (const auto& rec : journal_of(dir / "mrecg-ind/job")) ind_units += rec["type"] == "unit_done";
  EXPECT_EQ(ind_units, units);
}

TEST_F(EngineMpi, StoppedWorkerIsReportedByRankAndUnitAndTheJobResumes) {
  QF_REQUIRE_DATA(model);
  // Rank 2 stops itself (SIGSTOP) in its 3rd training step, i.e. during unit 0.
  auto r = quantize(3, "stop", "--heartbeat-timeout 3", "QFORGE_FAULT=train_step:2:stop:3");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("worker rank 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("stopped responding"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("unit 0 (block 0)"), std::string::npos) << r.output;
  bool lost = false;
  for (const auto& rec : journal_of(dir / "stop/job")) {
    if (rec["type"] == "worker_lost") lost = rec["rank"] == 2 && rec["unit"] == 0;
  }
  EXPECT_TRUE(lost);
  auto st = test::run_command(test::qforge_binary() + " status --job-dir " + shell_quote((dir / "stop/job").string()));
  EXPECT_NE(st.output.find("worker rank 2"), std::string::npos) << st.output;
  auto again = quantize(3, "stop");
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

TEST_F(EngineMpi, AUnitFailingOnOneRankEndsTheJobWithItsReasonAndResumes) {
  QF_REQUIRE_DATA(model);
  // Rank 1 fails in unit 1 while ranks 0 and 2 wait for it inside the gradient all-reduce.
  auto r = quantize(3, "fail", "", "QFORGE_FAULT=train_step:1:throw:9");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("unit 1 (block 1) failed on rank 1: injected fault at train_step"), std::string::npos) << r.output;
  bool recorded = false;
  for (const auto& rec : journal_of(dir / "fail/job")) {
    if (rec["type"] == "unit_failed") recorded = rec["rank"] == 1 && rec["unit"] == 1;
  }
  EXPECT_TRUE(recorded);
  auto again = quantize(3, "fail");
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

// Every rank resolves its own --device from its local rank; one without it fails the job (exit 2
// naming --device) before anything is written.
TEST_F(EngineMpi, ADeviceMissingOnTheRanksIsRefusedBeforeAnythingIsWritten) {
  QF_REQUIRE_DATA(model);
  auto r = quantize(3, "gpu", "--device cuda:99", "", " --method rtn");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "gpu"));
}

TEST_F(EngineMpi, MismatchedResumeIsRefused) {
  QF_REQUIRE_DATA(model);
  auto r = quantize(3, "mm", "", "QFORGE_FAULT=after_journal:0:kill:1");
  EXPECT_NE(r.exit_code, 0);
  const std::string before = sha256_file(dir / "mm/job/journal.log");
  auto other = quantize(3, "mm", "--lwc-lr 0.02");
  EXPECT_EQ(other.exit_code, 2) << other.output;
  EXPECT_NE(other.output.find("job.json"), std::string::npos) << other.output;
  EXPECT_NE(other.output.find("lwc_lr=0.02"), std::string::npos) << other.output;
  EXPECT_EQ(sha256_file(dir / "mm/job/journal.log"), before);  // nothing touched
  // A different rank count is a legal resume (byte identity is only promised for the same count).
  auto fewer = quantize(2, "mm");
  EXPECT_EQ(fewer.exit_code, 0) << fewer.output;
}

TEST_F(EngineMpi, PeakRssPerRankStaysWithinOneUnitPlusOneSlice) {
  // A synthetic ref-6m-like model (hidden 256, 6 blocks, vocab 4096): bigger activations than stories260K.
  const fs::path syn = dir / "syn";
  auto mk = test::run_command(test::qforge_binary() + " make-synthetic --shape small --out " + shell_quote(syn.string()));
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  model = syn;
  auto r = test::run_command(test::mpirun_prefix(3) + test::qforge_binary() + " quantize --model " + shell_quote(syn.string()) + " --out " +
                             shell_quote((dir / "rss/out").string()) + " --job-dir " + shell_quote((dir / "rss/job").string()) +
                             " --method omniquant --wbits 4 --abits 4 --calib-data model:generate --nsamples 12"
                             " --calib-seqlen 128 --batch-size 3 --epochs 1 --log-level warn");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json plan = json::parse(std::ifstream(dir / "rss/job/plan.json"));
  const double bound = plan.at("rank_peak_bytes").get<double>();
  // The worker also holds the model's global tensors (embeddings, final norm, head) in fp32, and the
  // runtime grows by a fixed amount on first use that no plan models: OpenBLAS's per-thread GEMM
  // buffer (32 MiB), LibTorch's and HDF5's heaps. Measured here: 60-70 MiB in all.
  const double globals = 4.0 * (2 * 4096 * 256 + 256);
  const double runtime = 64.0 * 1048576;
  int checked = 0;
  for (const auto& rec : journal_of(dir / "rss/job")) {
    if (rec["type"] != "unit_done") continue;
    for (const auto& rk : rec["ranks"]) {
      const double grown = rk["peak_rss"].get<double>() - rk["baseline_rss"].get<double>();
      EXPECT_LT(grown, bound + globals + runtime) << "rank " << rk["rank"] << " grew " << grown / 1048576 << " MiB; plan bound "
                                        << bound / 1048576 << " MiB";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 18);
}

}  // namespace
}  // namespace qforge
