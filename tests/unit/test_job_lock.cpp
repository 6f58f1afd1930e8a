// One run per job directory (storage/job_lock.h): a second claim is refused naming the holder, by flock
// where the filesystem has it and by a renewed lease where it does not; a lease whose holder stopped
// renewing it is taken over; and `quantize` on a claimed job directory exits 2 before writing anything.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/job_lock.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using storage::JobLock;

std::string refusal(const storage::JobLayout& job, JobLock::Options o) {
  try {
    JobLock second(job, o);
  } catch (const InputError& e) {
    return e.what();
  }
  return "claimed";
}

TEST(JobLock, ASecondClaimIsRefusedNamingTheHolderUntilTheFirstEnds) {
  const storage::JobLayout job(test::make_temp_dir("lock") / "job");
  {
    JobLock first(job, {JobLock::Mode::kFlock, 600});
    EXPECT_FALSE(first.is_lease());
    const std::string why = refusal(job, {JobLock::Mode::kFlock, 600});
    EXPECT_NE(why.find("--job-dir"), std::string::npos) << why;
    EXPECT_NE(why.find("in use by qforge pid " + std::to_string(getpid())), std::string::npos) << why;
  }
  EXPECT_EQ(refusal(job, {JobLock::Mode::kFlock, 600}), "claimed");
}

TEST(JobLock, ALeaseIsHeldWhileRenewedAndTakenOverOnceStale) {
  const storage::JobLayout job(test::make_temp_dir("lease") / "job");
  const JobLock::Options lease{JobLock::Mode::kLease, 0.4};
  {
    JobLock first(job, lease);
    EXPECT_TRUE(first.is_lease());
    std::this_thread::sleep_for(std::chrono::milliseconds(600));  // longer than stale_after: renewals keep it
    const std::string why = refusal(job, lease);
    EXPECT_NE(why.find("in use by qforge pid " + std::to_string(getpid())), std::string::npos) << why;
  }
  EXPECT_FALSE(fs::exists(job.lock_path()));  // given back
  // A holder that died without giving it back: its heartbeat ages, then the lease is taken over.
  write_file_atomic(job.lock_path(), nlohmann::json{{"host", "gone"}, {"pid", 1}, {"heartbeat", 1.0}}.dump());
  EXPECT_EQ(refusal(job, lease), "claimed");
}

TEST(JobLock, QuantizeOnAClaimedJobDirectoryExitsTwoAndWritesNothing) {
  const fs::path model = test::shared_data() / "models/stories260K-hf";
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path dir = test::make_temp_dir("lock-cli");
  const storage::JobLayout job(dir / "job");
  JobLock held(job, {JobLock::Mode::kFlock, 600});
  const auto r = test::run_command(test::qforge_binary() + " quantize --log-level warn --method rtn --model " +
                                   test::shell_quote(model.string()) + " --out " + test::shell_quote((dir / "out").string()) +
                                   " --job-dir " + test::shell_quote(job.root().string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("in use by qforge pid " + std::to_string(getpid())), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "out"));
  EXPECT_FALSE(fs::exists(job.spec_path()));
}

}  // namespace
}  // namespace qforge
