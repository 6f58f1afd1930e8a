// A damaged job directory finishes (issue 18, case 6): a job file the journal relies on (an activation
// cache slice, a unit's result shard) that is missing or fails its checksum is dropped with the record
// that made it (file_damaged) and recomputed, with a warning naming what is redone, and the output is
// byte-identical to an undamaged run's. Real single-process jobs on stories260K-hf; the coordinator's
// policy for each kind of file (checkpoints, sequential chains, a file damaged again) is tested with
// scripted workers in test_engine_in_process.cpp.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/sha256.h"
#include "storage/job_layout.h"
#include "storage/journal.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::shell_quote;

struct DamagedJob : ::testing::Test {
  void SetUp() override {
    model = test::shared_data() / "models/stories260K-hf";
    dir = test::make_temp_dir("damaged-job");
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir);
  }
  test::CommandResult quantize(const std::string& name, const std::string& mode, const std::string& env = "") {
    return test::run_command(env + " " + test::qforge_binary() + " quantize --log-level warn --model " +
                             shell_quote(model.string()) + " --out " + shell_quote((dir / name / "out").string()) +
                             " --job-dir " + shell_quote((dir / name / "job").string()) + " --mode " + mode +
                             " --method omniquant --wbits 4 --abits 8 --epochs 1 --calib-data model:generate"
                             " --nsamples 4 --calib-seqlen 32 --batch-size 2 --threads 1 --joint-topk 0");
  }
  std::vector<json> records(const std::string& name, const std::string& type) const {
    std::vector<json> out;
    for (const auto& r : storage::replay_journal(dir / name / "job" / "journal.log").records) {
      if (r.value("type", "") == type) out.push_back(r);
    }
    return out;
  }
  fs::path model, dir;
};

// Independent mode: killed after two units, one FP-pass slice a later unit reads is truncated; the
// rerun's worker finds it unreadable, the FP pass over its samples runs again and the unit with it.
// Then, on the finished job, a unit's shard is deleted: the rerun computes that unit again.
TEST_F(DamagedJob, ADamagedCacheSliceOrAMissingShardIsRecomputedToTheSameBytes) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  ASSERT_EQ(quantize("ref", "independent").exit_code, 0);
  const auto want = test::file_digests(dir / "ref/out");

  auto r = quantize("hurt", "independent", "QFORGE_FAULT=after_journal:0:kill:2");
  ASSERT_NE(r.exit_code, 0) << r.output;
  ASSERT_EQ(records("hurt", "unit_done").size(), 2u);
  const auto slices = records("hurt", "fp_slice_done");
  ASSERT_EQ(slices.size(), 1u);
  std::string victim;
  for (const auto& f : slices[0]["files"]) {
    if (f["boundary"] == 3) victim = f["file"].get<std::string>();
  }
  ASSERT_FALSE(victim.empty());
  const fs::path victim_path = dir / "hurt/job/cache" / victim;
  ASSERT_TRUE(fs::exists(victim_path));
  fs::resize_file(victim_path, fs::file_size(victim_path) / 2);

  r = quantize("hurt", "independent");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("cache file " + victim + " is damaged"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("recomputing the FP pass over 4 samples"), std::string::npos) << r.output;
  EXPECT_EQ(test::file_digests(dir / "hurt/out"), want);
  auto damaged = records("hurt", "file_damaged");
  ASSERT_EQ(damaged.size(), 1u);
  EXPECT_EQ(damaged[0]["file"], victim);
  EXPECT_EQ(records("hurt", "fp_slice_done").size(), 2u);

  const std::string shard = storage::JobLayout::unit_shard_name(1);
  fs::remove(dir / "hurt/job/units" / shard);
  r = quantize("hurt", "independent");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("shard file " + shard + " is missing: dropped; recomputing unit 1 (block 1)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(test::file_digests(dir / "hurt/out"), want);
  std::map<int, int> done;
  for (const auto& rec : records("hurt", "unit_done")) ++done[rec["unit"].get<int>()];
  EXPECT_EQ(done, (std::map<int, int>{{0, 1}, {1, 2}, {2, 1}, {3, 1}, {4, 1}}));
}

// Sequential mode: unit 2's shard of a finished job is changed; redoing unit 2 needs the quantized
// stream that units 0 and 1 made (collected long ago), so units 0-2 run again, and the output is the
// undamaged run's.
TEST_F(DamagedJob, AChangedShardOfASequentialJobRedoesTheUnitsThatFeedIt) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  ASSERT_EQ(quantize("seq", "sequential").exit_code, 0);
  const auto want = test::file_digests(dir / "seq/out");
  const fs::path shard = dir / "seq/job/units" / storage::JobLayout::unit_shard_name(2);
  fs::resize_file(shard, fs::file_size(shard) - 1);
  const auto r = quantize("seq", "sequential");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("does not match its digest in the journal: dropped; recomputing unit 2 (block 2)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(test::file_digests(dir / "seq/out"), want);
  std::vector<int> redone;
  const auto done = records("seq", "unit_done");
  for (std::size_t i = 5; i < done.size(); ++i) redone.push_back(done[i]["unit"].get<int>());
  EXPECT_EQ(redone, (std::vector<int>{0, 1, 2}));
  const auto st = test::run_command(test::qforge_binary() + " status --job-dir " + shell_quote((dir / "seq/job").string()));
  EXPECT_NE(st.output.find("damaged job files dropped and recomputed: 3"), std::string::npos) << st.output;
}

}  // namespace
}  // namespace qforge
