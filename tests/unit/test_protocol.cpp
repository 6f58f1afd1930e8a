// The coordinator-worker protocol (common/protocol.h) against hand-written messages: each fixture below
// is what version 5 puts on the wire, written out by hand from the header's description, not produced
// by encode(). Decoding a fixture must give the fields written in it, and encoding those fields must
// give the fixture back (as JSON: key order is not part of the format). A change of the encoding that
// forgets to bump kVersion fails here.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/protocol.h"

namespace qforge {
namespace {

using nlohmann::json;
namespace p = protocol;

// decode(fixture) == expected, and encode(expected) == fixture.
template <typename T>
T round_trip(const char* fixture, const T& expected) {
  const p::Message m = p::decode(fixture, 3);
  EXPECT_TRUE(std::holds_alternative<T>(m)) << "decoded as " << p::type_name(m);
  EXPECT_EQ(json::parse(p::encode(expected)), json::parse(fixture));
  return std::get<T>(m);
}

TEST(Protocol, HelloAndHeartbeatMatchTheirFixtures) {
  const auto h = round_trip(R"({"v":5,"type":"hello","rank":2,"host":"node7","device":"cuda:1",
                                "memory_bytes":1099511627776,"threads":8})",
                            p::Hello{2, "node7", "cuda:1", 1099511627776ull, 8});
  EXPECT_EQ(h.host, "node7");
  EXPECT_EQ(h.memory_bytes, 1099511627776ull);
  const auto hb = round_trip(R"({"v":5,"type":"heartbeat","rank":1,"assignment":12,"phase":"train"})",
                             p::Heartbeat{1, 12, "train"});
  EXPECT_EQ(hb.assignment, 12);
  EXPECT_EQ(hb.phase, "train");
}

TEST(Protocol, EachKindOfAssignmentMatchesItsFixture) {
  const auto fp = round_trip(R"({"v":5,"type":"assign","id":1,"ranks":[0,1,2],
                                 "work":{"kind":"fp_pass","samples":[3,4,5]}})",
                             p::Assign{1, {0, 1, 2}, p::FpPassWork{{3, 4, 5}}});
  EXPECT_EQ(std::get<p::FpPassWork>(fp.work).samples, (std::vector<std::int64_t>{3, 4, 5}));

  const auto probe = round_trip(R"({"v":5,"type":"assign","id":2,"ranks":[0,1],
      "work":{"kind":"probe","blocks":[0,1],"samples":[0,1],"x_fp_files":["b0001-fp-a000001-t0.h5"]}})",
                                p::Assign{2, {0, 1}, p::ProbeWork{{0, 1}, {0, 1}, {"b0001-fp-a000001-t0.h5"}}});
  EXPECT_EQ(std::get<p::ProbeWork>(probe.work).blocks, (std::vector<int>{0, 1}));

  p::UnitWork u;
  u.unit = 3;
  u.first_block = 4;
  u.num_blocks = 2;
  u.x_fp_files = {"b0004-fp-a000007-t0.h5"};
  u.x_q_files = {"b0004-q-a000007-t0.h5"};
  u.write_next = true;
  u.resume_from = "unit-0003-ckpt-a000009.safetensors";
  u.resume_digest = "ab12";
  const auto unit = round_trip(R"({"v":5,"type":"assign","id":11,"ranks":[2,3],
      "work":{"kind":"unit","unit":3,"first_block":4,"num_blocks":2,
              "x_fp_files":["b0004-fp-a000007-t0.h5"],"x_q_files":["b0004-q-a000007-t0.h5"],
              "write_next":true,"last_unit":false,
              "resume_from":"unit-0003-ckpt-a000009.safetensors","resume_digest":"ab12"}})",
                               p::Assign{11, {2, 3}, u});
  const auto& back = std::get<p::UnitWork>(unit.work);
  EXPECT_EQ(unit.id, 11);
  EXPECT_EQ(unit.ranks, (std::vector<int>{2, 3}));
  EXPECT_EQ(back.first_block, 4);
  EXPECT_EQ(back.num_blocks, 2);
  EXPECT_TRUE(back.write_next);
  EXPECT_FALSE(back.last_unit);
  EXPECT_EQ(back.resume_from, u.resume_from);
}

TEST(Protocol, DoneFailedShutdownAndCheckpointMatchTheirFixtures) {
  p::Done d;
  d.rank = 2;
  d.assignment = 11;
  d.samples = 5;
  d.cache_files = {"b0006-fp-a000011-t0.h5", "b0006-q-a000011-t0.h5"};
  d.shard = p::UnitFile{"unit-0003.safetensors", "cd34"};
  d.report = {{"final_loss", 0.5}};
  d.peak_rss = 1000;
  d.baseline_rss = 10;
  d.cache_bytes_written = 20;
  d.cache_bytes_read = 30;
  d.seconds = 1.5;
  const auto done = round_trip(R"({"v":5,"type":"done","rank":2,"assignment":11,"probed_block":null,"samples":5,
      "cache_files":["b0006-fp-a000011-t0.h5","b0006-q-a000011-t0.h5"],
      "shard":{"name":"unit-0003.safetensors","sha256":"cd34"},"stopped":false,"checkpoint":null,
      "report":{"final_loss":0.5},"peak_rss":1000,"baseline_rss":10,"cache_bytes_written":20,
      "cache_bytes_read":30,"seconds":1.5})",
                               d);
  ASSERT_TRUE(done.shard.has_value());
  EXPECT_EQ(done.shard->sha256, "cd34");
  EXPECT_FALSE(done.checkpoint.has_value());
  EXPECT_FALSE(done.probed_block.has_value());
  EXPECT_EQ(done.report["final_loss"], 0.5);

  p::Done stopped;
  stopped.assignment = 9;
  stopped.stopped = true;
  stopped.checkpoint = p::UnitFile{"unit-0003-ckpt-a000009.safetensors", "ab12"};
  stopped.report = {{"epoch", 1}, {"step", 7}};
  const auto st = round_trip(R"({"v":5,"type":"done","rank":0,"assignment":9,"probed_block":null,"samples":0,
      "cache_files":[],"shard":null,"stopped":true,
      "checkpoint":{"name":"unit-0003-ckpt-a000009.safetensors","sha256":"ab12"},
      "report":{"epoch":1,"step":7},"peak_rss":0,"baseline_rss":0,"cache_bytes_written":0,
      "cache_bytes_read":0,"seconds":0.0})",
                             stopped);
  EXPECT_TRUE(st.stopped);
  EXPECT_EQ(st.checkpoint->name, "unit-0003-ckpt-a000009.safetensors");

  p::Done probe;
  probe.assignment = 2;
  probe.probed_block = 0;
  EXPECT_EQ(std::get<p::Done>(p::decode(p::encode(probe), 0)).probed_block, 0);

  const auto f = round_trip(R"({"v":5,"type":"failed","rank":1,"assignment":11,"reason":"bad weight","exit_code":2,
                                "damaged_file":null})",
                            p::Failed{1, 11, "bad weight", 2, std::nullopt});
  EXPECT_EQ(f.reason, "bad weight");
  EXPECT_EQ(f.exit_code, 2);
  EXPECT_FALSE(f.damaged_file.has_value());
  const auto damaged = round_trip(R"({"v":5,"type":"failed","rank":0,"assignment":3,"reason":"checksum","exit_code":2,
                                      "damaged_file":"b0001-fp-a000002-t0.h5"})",
                                  p::Failed{0, 3, "checksum", 2, std::string("b0001-fp-a000002-t0.h5")});
  EXPECT_EQ(damaged.damaged_file, "b0001-fp-a000002-t0.h5");
  const auto sd = round_trip(R"({"v":5,"type":"shutdown","ok":false,"reason":"lost rank 2","abort":true,"exit_code":5})",
                             p::Shutdown{false, "lost rank 2", true, 5});
  EXPECT_TRUE(sd.abort);
  EXPECT_EQ(sd.exit_code, 5);
  EXPECT_EQ(round_trip(R"({"v":5,"type":"checkpoint","assignment":11})", p::Checkpoint{11}).assignment, 11);
}

// Each refusal names the sender and what is wrong, rather than letting a worker misread a message.
TEST(Protocol, OtherVersionsUnknownTypesAndIncompleteMessagesAreRefusedNamingTheSender) {
  const auto refusal = [](const std::string& bytes) {
    try {
      p::decode(bytes, 7);
    } catch (const InternalError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(refusal(R"({"v":3,"type":"checkpoint","assignment":1})").find("rank 7 speaks version 3"), std::string::npos);
  EXPECT_NE(refusal("not json").find("rank 7"), std::string::npos);
  EXPECT_NE(refusal(R"({"v":5,"type":"gossip"})").find("unknown message type 'gossip'"), std::string::npos);
  EXPECT_NE(refusal(R"({"v":5,"type":"heartbeat","rank":1,"phase":"train"})").find("not a valid heartbeat"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"v":5,"type":"assign","id":1,"ranks":[0],"work":{"kind":"nap"}})").find("unknown work kind 'nap'"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"v":5,"type":"failed","rank":"one","assignment":1,"reason":"x","exit_code":1})").find("rank 7"),
            std::string::npos);
}

}  // namespace
}  // namespace qforge
