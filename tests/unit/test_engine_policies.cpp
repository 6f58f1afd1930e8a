// Pure parts of the distributed engine: the data-parallel sample split, the job state rebuilt from
// journal records, the scheduling policy and the job spec check (the protocol: test_protocol.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "common/error.h"
#include "common/file_util.h"
#include "coordinator/job_state.h"
#include "partition/sample_split.h"
#include "storage/job_layout.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

using nlohmann::json;

TEST(SampleSplit, TeamRowsPartitionTheSamplesStepByStep) {
  // 10 samples, batch 4, 3 ranks: steps use [0,4) and [4,8); ranks take 2,1,1 of each step's batch;
  // the 2 leftover samples (8, 9) go to ranks 0 and 1.
  EXPECT_EQ(partition::team_rows(10, 4, 3, 0), (std::vector<std::int64_t>{0, 1, 4, 5, 8}));
  EXPECT_EQ(partition::team_rows(10, 4, 3, 1), (std::vector<std::int64_t>{2, 6, 9}));
  EXPECT_EQ(partition::team_rows(10, 4, 3, 2), (std::vector<std::int64_t>{3, 7}));
  EXPECT_EQ(partition::local_batch(4, 3, 0), 2);
  EXPECT_EQ(partition::local_batch(4, 3, 2), 1);
  for (int k : {1, 2, 3, 5}) {
    std::vector<std::int64_t> all;
    for (int r = 0; r < k; ++r) {
      auto rows = partition::team_rows(37, 5, k, r);
      all.insert(all.end(), rows.begin(), rows.end());
    }
    std::sort(all.begin(), all.end());
    std::vector<std::int64_t> want(37);
    std::iota(want.begin(), want.end(), 0);
    EXPECT_EQ(all, want) << "team size " << k;
  }
  // One rank holds everything in order: the single-process layout.
  auto one = partition::team_rows(7, 2, 1, 0);
  EXPECT_TRUE(std::is_sorted(one.begin(), one.end()));
  EXPECT_EQ(one.size(), 7u);
}

json done(int unit, std::int64_t attempt, std::vector<std::string> files = {}) {
  return {{"type", "unit_done"}, {"unit", unit}, {"attempt", attempt}, {"ranks", {{{"rank", 0}, {"files", files}}}}};
}

TEST(JobState, SequentialScheduleFollowsTheChainAndResumesFromTheJournal) {
  coordinator::JobState st(3, true, 8);
  st.apply({{"type", "job_start"}});
  auto a = coordinator::schedule(st, {}, false, {0}, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].unit, 0);
  EXPECT_TRUE(coordinator::schedule(st, {0}, false, {0}, 1).empty());  // one unit at a time
  st.apply({{"type", "unit_assigned"}, {"unit", 0}, {"attempt", 1}});
  st.apply(done(0, 1, {"b0001-fp-a000001-t0.h5", "b0001-q-a000001-t0.h5"}));
  EXPECT_EQ(st.next_attempt(), 2);
  EXPECT_EQ(st.boundary_files(1, "q"), (std::vector<std::string>{"b0001-q-a000001-t0.h5"}));
  EXPECT_EQ(st.live_cache_files(), (std::set<std::string>{"b0001-fp-a000001-t0.h5", "b0001-q-a000001-t0.h5"}));
  a = coordinator::schedule(st, {}, false, {0}, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].unit, 1);
  // A restarted coordinator replays the same records to the same state.
  coordinator::JobState replayed(3, true, 8);
  for (const auto& r : {json{{"type", "job_start"}}, done(0, 1, {"b0001-q-a000001-t0.h5"}), json{{"type", "job_start"}}}) {
    replayed.apply(r);
  }
  EXPECT_EQ(replayed.starts(), 2);
  EXPECT_TRUE(replayed.unit_done(0));
  EXPECT_FALSE(replayed.unit_done(1));
  EXPECT_EQ(coordinator::schedule(replayed, {}, false, {0}, 1)[0].unit, 1);
  EXPECT_THROW(replayed.apply(done(7, 2)), InternalError);  // outside the plan
  // A job_complete record before every unit is done (a forged or damaged journal) does not end the job.
  replayed.apply({{"type", "job_complete"}});
  EXPECT_FALSE(replayed.complete());
  EXPECT_NE(replayed.last_error().find("only 1 of 3 units done"), std::string::npos) << replayed.last_error();
  EXPECT_EQ(coordinator::schedule(replayed, {}, false, {0}, 1)[0].unit, 1);
  replayed.apply(done(1, 3, {"b0002-q-a000003-t0.h5"}));
  replayed.apply(done(2, 4));
  replayed.apply({{"type", "job_complete"}});
  EXPECT_TRUE(replayed.complete());
}

TEST(JobState, IndependentRunsTheFpPassFirstThenUnitsOnIdleTeams) {
  coordinator::JobState st(4, false, 6);
  EXPECT_FALSE(st.fp_pass_complete());
  EXPECT_TRUE(coordinator::schedule(st, {}, false, {0, 1}, 3).empty());  // needs every team idle
  auto a = coordinator::schedule(st, {}, false, {0, 1, 2}, 3);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].kind, coordinator::WorkKind::kFpPass);
  st.apply({{"type", "fp_slice_done"}, {"attempt", 1}, {"rank", 0}, {"samples", {0, 1, 2}},
            {"files", {{{"boundary", 1}, {"file", "b0001-fp-a000001-t0.h5"}}}}});
  EXPECT_EQ(st.fp_missing_samples(), (std::vector<std::int64_t>{3, 4, 5}));
  st.apply({{"type", "fp_slice_done"}, {"attempt", 1}, {"rank", 1}, {"samples", {3, 4, 5}},
            {"files", {{{"boundary", 1}, {"file", "b0001-fp-a000001-t1.h5"}}}}});
  EXPECT_TRUE(st.fp_pass_complete());
  EXPECT_EQ(st.boundary_files(1, "fp").size(), 2u);
  st.apply(done(1, 2));
  a = coordinator::schedule(st, {2}, false, {0, 2}, 3);  // unit 1 done, unit 2 running: units 0 and 3
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].unit, 0);
  EXPECT_EQ(a[0].team, 0);
  EXPECT_EQ(a[1].unit, 3);
  EXPECT_EQ(a[1].team, 2);
}

TEST(JobSpec, AMatchingSpecResumesAndADifferentOneIsRefusedByField) {
  const auto dir = test::make_temp_dir("jobspec");
  const storage::JobLayout jd(dir / "job");
  json spec = {{"identity", {{"config", {{"bits", 4}, {"epochs", 2}}}, {"mode", "sequential"}}}, {"threads", 2}};
  const json first = storage::create_or_check_job_spec(jd, spec);
  EXPECT_EQ(first["fingerprint"].get<std::string>().size(), 64u);
  spec["threads"] = 7;  // not part of the identity: the first run's pinned value is kept
  EXPECT_EQ(storage::create_or_check_job_spec(jd, spec)["threads"], 2);
  spec["identity"]["config"]["epochs"] = 3;
  try {
    storage::create_or_check_job_spec(jd, spec);
    FAIL() << "a different job was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("config.epochs"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("job.json"), std::string::npos) << e.what();
  }
  write_file_atomic(jd.spec_path(), "{ broken");
  EXPECT_THROW(storage::create_or_check_job_spec(jd, spec), InputError);
  std::filesystem::remove_all(dir);
}

TEST(JobLayout, CacheFileNamesEncodeBoundaryStreamAttemptAndPart) {
  using storage::JobLayout;
  EXPECT_EQ(JobLayout::cache_file_name(3, "q", 12, 1), "b0003-q-a000012-t1.h5");
  EXPECT_EQ(JobLayout::unit_shard_name(7), "unit-00007.safetensors");
  EXPECT_EQ(JobLayout::checkpoint_name(7, 42), "unit-00007.ckpt-a000042.safetensors");
}

// Every name the layout makes reads back (the strings below are written by hand, as FORMAT.md spells
// them), a writer's temporary is recognised as one, and nothing else is taken for a job file: clean-up
// deletes only what these parsers accept.
TEST(JobLayout, ParsesItsOwnNamesAndTheirTemporariesAndNothingElse) {
  using storage::JobLayout;
  auto c = JobLayout::parse_cache_file("b0012-fp-a000345-t2.h5");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->boundary, 12);
  EXPECT_EQ(c->stream, "fp");
  EXPECT_EQ(c->attempt, 345);
  EXPECT_EQ(c->part, 2);
  EXPECT_FALSE(c->temporary);
  c = JobLayout::parse_cache_file("b0001-q-a000001-t0.h5.tmp.4711");
  ASSERT_TRUE(c.has_value());
  EXPECT_TRUE(c->temporary);
  EXPECT_EQ(c->stream, "q");
  auto k = JobLayout::parse_checkpoint("unit-00003.ckpt-a000017.safetensors");
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->unit, 3);
  EXPECT_EQ(k->attempt, 17);
  EXPECT_TRUE(JobLayout::parse_checkpoint("unit-00003.ckpt-a000017.safetensors.tmp.99")->temporary);
  auto u = JobLayout::parse_unit_shard("unit-00005.safetensors.tmp.123");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->unit, 5);
  EXPECT_TRUE(u->temporary);
  EXPECT_FALSE(JobLayout::parse_unit_shard("unit-00005.safetensors")->temporary);
  // Round trips through the makers.
  EXPECT_EQ(JobLayout::parse_cache_file(JobLayout::cache_file_name(40, "q", 123456, 7))->attempt, 123456);
  EXPECT_EQ(JobLayout::parse_checkpoint(JobLayout::checkpoint_name(9, 1))->unit, 9);
  // Not ours: another stream, a missing digit, a checkpoint taken for a shard, foreign suffixes, a
  // temporary without a pid, the old "-<pid>" spelling.
  for (const char* name : {"b0001-x-a000001-t0.h5", "b001-fp-a000001-t0.h5", "b0001-fp-a000001-t0.h5.bak",
                           "b0001-fp-a000001-t0.h5.tmp.", "b0001-fp-a000001-t0.h5.tmp-12", "notes.txt"}) {
    EXPECT_FALSE(JobLayout::parse_cache_file(name).has_value()) << name;
  }
  EXPECT_FALSE(JobLayout::parse_unit_shard("unit-00003.ckpt-a000017.safetensors").has_value());
  EXPECT_FALSE(JobLayout::parse_checkpoint("unit-00003.safetensors").has_value());
  EXPECT_FALSE(JobLayout::parse_unit_shard("unit-3.safetensors").has_value());
}

}  // namespace
}  // namespace qforge
