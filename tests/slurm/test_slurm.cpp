// The slurm tier: `qforge submit` against a real single-node Slurm 22.05 started by the ctest fixture
// (tests/slurm/cluster_fixture.sh, slurm/dev/local-cluster.sh). stories260K-hf on 2 ranks through srun
// --mpi=pmix must give the same bytes as `mpirun -np 2`; the time-limit warning (USR1 to the batch
// shell) must checkpoint, requeue and finish identically; a chain of 2 survives a cut of its first
// job; a sweep of 2 settings makes 2 job directories. Every Slurm command is run with SLURM_CONF
// exported first (a client without a config looks its controller up in DNS, off the machine).
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "storage/journal.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::shell_quote;

// Long enough (16 epochs: ~3 s per block on 2 ranks) that a signal sent after the first block lands
// inside a later one.
const char* const kFlags =
    " --method affinequant --wbits 4 --abits 4 --calib-data model:generate --nsamples 12 --calib-seqlen 64"
    " --batch-size 2 --epochs 16 --joint-topk 0 --threads 1 --log-level warn";

std::string cluster_script() { return std::string(QFORGE_SOURCE_DIR) + "/slurm/dev/local-cluster.sh"; }

// Runs `command` with the test cluster's SLURM_CONF (and the rest of `local-cluster.sh env`) exported.
test::CommandResult slurm(const std::string& command) {
  return test::run_command("eval \"$(QFORGE_SLURM_DIR=" + shell_quote(QFORGE_SLURM_TEST_DIR) + " bash " +
                           shell_quote(cluster_script()) + " env)\" && " + command);
}

std::vector<json> journal_of(const fs::path& job) { return storage::replay_journal(job / "journal.log").records; }

// "JobState=COMPLETED Restarts=1 ..." fields of `scontrol show job`.
std::map<std::string, std::string> job_fields(const std::string& id) {
  std::map<std::string, std::string> f;
  const auto r = slurm("scontrol show job " + id);
  static const std::regex kv(R"(([A-Za-z]+)=(\S*))");
  for (std::sregex_iterator it(r.output.begin(), r.output.end(), kv), end; it != end; ++it) {
    if (!f.count((*it)[1])) f[(*it)[1]] = (*it)[2];
  }
  return f;
}

std::string wait_for_end(const std::string& id, double seconds = 300) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const std::string state = job_fields(id)["JobState"];
    if (state == "COMPLETED" || state == "FAILED" || state == "CANCELLED" || state == "TIMEOUT" || state == "NODE_FAIL" ||
        state == "OUT_OF_MEMORY") {
      return state;
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return "TIMEOUT(test): " + state;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
}

bool journal_has(const fs::path& job, const std::string& type) {
  if (!fs::exists(job / "journal.log")) return false;
  for (const auto& r : journal_of(job)) {
    if (r.value("type", "") == type) return true;
  }
  return false;
}

bool wait_for_journal(const fs::path& job, const std::string& type, double seconds = 240) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!journal_has(job, type)) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return true;
}

std::vector<std::string> submitted_ids(const fs::path& job) {
  std::vector<std::string> ids;
  std::ifstream in(job / "slurm.json");
  if (!in) return ids;
  const json j = json::parse(in);
  for (const auto& s : j.at("submissions")) ids.push_back(s.at("job_id").get<std::string>());
  return ids;
}

class Slurm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::ifstream marker(std::string(QFORGE_SLURM_TEST_DIR) + ".fixture");
    std::string state;
    marker >> state;
    available_ = state == "ours" || state == "preexisting";
  }
  void SetUp() override {
    if (!available_) GTEST_SKIP() << "the local Slurm cluster is not running (see the slurm_cluster_start test's output)";
    model_ = test::shared_data() / "models/stories260K-hf";
    QF_REQUIRE_DATA(model_);
    dir_ = test::make_temp_dir("slurm");
  }
  void TearDown() override {
    if (!HasFailure() && !dir_.empty()) fs::remove_all(dir_);
  }
  // The same quantization through `mpirun -np 2`, once per test suite run.
  const std::map<std::string, std::string>& reference() {
    static std::map<std::string, std::string> ref;
    static fs::path keep;
    if (ref.empty()) {
      keep = test::make_temp_dir("slurm-ref");
      const auto r = test::run_command(
          test::mpirun_prefix(2) + test::qforge_binary() + " quantize --model " + shell_quote(model_.string()) + " --out " +
          shell_quote((keep / "out").string()) + " --job-dir " + shell_quote((keep / "job").string()) + kFlags);
      EXPECT_EQ(r.exit_code, 0) << r.output;
      if (r.exit_code == 0) ref = test::file_digests(keep / "out");
    }
    return ref;
  }
  test::CommandResult submit(const std::string& name, const std::string& submit_flags, const std::string& quantize_flags = kFlags) {
    return slurm(test::qforge_binary() + " submit --job-dir " + shell_quote((dir_ / name / "job").string()) +
                 " --ntasks-per-node 2 --time 15 " + submit_flags + " -- --model " + shell_quote(model_.string()) +
                 " --out " + shell_quote((dir_ / name / "out").string()) + quantize_flags);
  }
  static bool available_;
  fs::path model_, dir_;
};
bool Slurm::available_ = false;

TEST_F(Slurm, SubmittedTwoRankJobMatchesMpirunByteForByte) {
  const auto& want = reference();
  ASSERT_FALSE(want.empty());
  const auto r = submit("plain", "");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto ids = submitted_ids(dir_ / "plain/job");
  ASSERT_EQ(ids.size(), 1u) << r.output;
  EXPECT_EQ(wait_for_end(ids[0]), "COMPLETED");
  EXPECT_EQ(test::file_digests(dir_ / "plain/out"), want);
  const auto st = slurm(test::qforge_binary() + " status --job-dir " + shell_quote((dir_ / "plain/job").string()));
  EXPECT_NE(st.output.find("Slurm job " + ids[0]), std::string::npos) << st.output;
  EXPECT_NE(st.output.find("COMPLETED"), std::string::npos) << st.output;
}

TEST_F(Slurm, TimeLimitWarningCheckpointsRequeuesAndFinishesIdentically) {
  const auto& want = reference();
  ASSERT_FALSE(want.empty());
  const auto r = submit("usr1", "--signal-seconds 60");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto ids = submitted_ids(dir_ / "usr1/job");
  ASSERT_EQ(ids.size(), 1u);
  const std::string id = ids[0];
  // The warning Slurm sends before the time limit, now: to the batch shell, whose trap forwards it.
  ASSERT_TRUE(wait_for_journal(dir_ / "usr1/job", "unit_done"));
  const auto sig = slurm("scancel --signal=USR1 --batch " + id);
  ASSERT_EQ(sig.exit_code, 0) << sig.output;
  ASSERT_TRUE(wait_for_journal(dir_ / "usr1/job", "job_stopped", 120));
  // The requeued job becomes eligible once the previous run's credential expires (the test cluster's
  // cred_expire is 10 s; forcing StartTime=now earlier gets it killed as "Job credential revoked").
  EXPECT_EQ(wait_for_end(id), "COMPLETED");
  EXPECT_GE(std::stoi(job_fields(id)["Restarts"]), 1);
  EXPECT_TRUE(journal_has(dir_ / "usr1/job", "unit_checkpoint"));
  EXPECT_TRUE(journal_has(dir_ / "usr1/job", "job_complete"));
  EXPECT_EQ(test::file_digests(dir_ / "usr1/out"), want);
}

TEST_F(Slurm, ChainOfTwoSurvivesACutFirstJob) {
  const auto& want = reference();
  ASSERT_FALSE(want.empty());
  const auto r = submit("chain", "--chain 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto ids = submitted_ids(dir_ / "chain/job");
  ASSERT_EQ(ids.size(), 2u) << r.output;
  // A simulated cut of the first job: its time-limit warning, mid-run. It stops at a checkpoint and
  // does not requeue itself (it is part of a chain); the second job continues.
  ASSERT_TRUE(wait_for_journal(dir_ / "chain/job", "unit_done"));
  ASSERT_EQ(slurm("scancel --signal=USR1 --batch " + ids[0]).exit_code, 0);
  const std::string first = wait_for_end(ids[0]);
  EXPECT_NE(first, "COMPLETED") << "the cut job exits with qforge's 'stopped' code 4";
  EXPECT_EQ(job_fields(ids[0])["ExitCode"], "4:0");
  EXPECT_EQ(wait_for_end(ids[1]), "COMPLETED");
  EXPECT_EQ(test::file_digests(dir_ / "chain/out"), want);
  int starts = 0;
  for (const auto& rec : journal_of(dir_ / "chain/job")) starts += rec["type"] == "job_start";
  EXPECT_EQ(starts, 2);
}

TEST_F(Slurm, SweepOfTwoSettingsMakesTwoJobDirectories) {
  const std::string flags =
      " --method omniquant --calib-data model:generate --nsamples 4 --calib-seqlen 32 --batch-size 2 --epochs 1"
      " --joint-topk 0 --threads 1 --log-level warn";
  const auto r = submit("sweep", "--sweep w4a16,w8a16", flags);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto ids = submitted_ids(dir_ / "sweep/job");
  ASSERT_EQ(ids.size(), 1u) << r.output;
  for (int task = 0; task < 2; ++task) EXPECT_EQ(wait_for_end(ids[0] + "_" + std::to_string(task)), "COMPLETED");
  for (const char* setting : {"w4a16", "w8a16"}) {
    SCOPED_TRACE(setting);
    EXPECT_TRUE(journal_has(dir_ / "sweep/job" / setting, "job_complete"));
    const json cfg = json::parse(std::ifstream(dir_ / "sweep/out" / setting / "config.json"));
    EXPECT_EQ(cfg["quantization_config"]["bits"], setting[1] - '0');
  }
}

}  // namespace
}  // namespace qforge
