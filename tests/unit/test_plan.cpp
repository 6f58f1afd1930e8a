// The block plan: units in block order with their tensors, exact coverage of the model (and the check
// catching a missing or duplicated tensor), option validation, team resolution, plan.json round trip,
// and hand-computed estimates (rows per rank, cache disk, peak memory) for a tiny model.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "partition/model_index.h"
#include "partition/plan.h"
#include "storage/hf_config.h"

namespace qforge::partition {
namespace {

// H = 8, I = 16, 3 blocks, 2 heads of 4, 1 KV head: 592 parameters per block.
storage::LlamaConfig tiny_config() {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 8}, {"intermediate_size", 16},
                      {"num_hidden_layers", 3}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
                      {"vocab_size", 10}};
  return storage::parse_llama_config(j, "tiny");
}

ModelIndex tiny_index() {
  const storage::LlamaConfig c = tiny_config();
  std::vector<IndexedTensor> tensors;
  auto add = [&](const std::string& name, const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    tensors.push_back({name, shape, "BF16", static_cast<std::uint64_t>(2 * n)});
  };
  for (const auto& [name, shape] : expected_global_tensors(c)) add(name, shape);
  for (int b = 0; b < c.num_hidden_layers; ++b) {
    for (const auto& [suffix, shape] : expected_block_tensors(c)) add(block_tensor_name(b, suffix), shape);
  }
  return ModelIndex(c, tensors, "tiny");
}

PlanOptions data_options() {
  PlanOptions o;
  o.nsamples = 4;
  o.seqlen = 5;
  o.batch_size = 2;
  return o;
}

std::string input_error(const PlanOptions& o) {
  try {
    make_block_plan(tiny_index(), o);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InputError";
  return "";
}

std::string coverage_error(const Plan& plan, const ModelIndex& index) {
  try {
    check_plan_coverage(plan, index);
  } catch (const InternalError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InternalError";
  return "";
}

TEST(Plan, UnitsAreBlocksInOrder) {
  const ModelIndex index = tiny_index();
  const Plan plan = make_block_plan(index, data_options());
  ASSERT_EQ(plan.units.size(), 3u);
  ASSERT_EQ(index.config().block_parameters(), 592);
  EXPECT_EQ(index.block_parameters(1), 592);  // the checkpoint's tensors count what the config says
  for (int b = 0; b < 3; ++b) {
    const WorkUnit& u = plan.units[static_cast<std::size_t>(b)];
    EXPECT_EQ(u.id, b);
    EXPECT_EQ(u.first_block, b);
    EXPECT_EQ(u.num_blocks, 1);
    ASSERT_EQ(u.tensors.size(), 9u);
    EXPECT_EQ(u.tensors.front(), "model.layers." + std::to_string(b) + ".input_layernorm.weight");
    EXPECT_EQ(u.tensors.back(), "model.layers." + std::to_string(b) + ".mlp.down_proj.weight");
    EXPECT_EQ(u.parameters, 592);
    EXPECT_EQ(u.weight_bytes, 2u * 592u);
    EXPECT_EQ(u.train_flops, 0.0);  // not training
    // 2 * P * tokens + 4 * N * T^2 * q_dim
    EXPECT_DOUBLE_EQ(u.forward_flops, 2.0 * 592 * 20 + 4.0 * 4 * 25 * 8);
  }
  EXPECT_EQ(plan.global_tensors,
            (std::vector<std::string>{"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}));
  EXPECT_NO_THROW(check_plan_coverage(plan, index));
  const std::string report = format_plan_report(plan);
  EXPECT_NE(report.find("coverage: 30 tensors, each exactly once"), std::string::npos) << report;
  EXPECT_NE(report.find("1 team of 1 rank"), std::string::npos) << report;
}

TEST(Plan, CoverageCheckNamesMissingAndDuplicatedTensors) {
  const ModelIndex index = tiny_index();
  const Plan good = make_block_plan(index, {});

  Plan missing = good;
  const std::string removed = missing.units[1].tensors[3];
  missing.units[1].tensors.erase(missing.units[1].tensors.begin() + 3);
  std::string msg = coverage_error(missing, index);
  EXPECT_NE(msg.find("missing " + removed), std::string::npos) << msg;

  Plan duplicated = good;
  duplicated.units[2].tensors.push_back(good.units[0].tensors[0]);
  msg = coverage_error(duplicated, index);
  EXPECT_NE(msg.find("duplicated " + good.units[0].tensors[0]), std::string::npos) << msg;
  EXPECT_NE(format_plan_report(duplicated).find("DUPLICATED"), std::string::npos);

  Plan global_twice = good;
  global_twice.global_tensors.push_back("model.norm.weight");
  msg = coverage_error(global_twice, index);
  EXPECT_NE(msg.find("duplicated model.norm.weight"), std::string::npos) << msg;

  Plan gap = good;
  gap.units.erase(gap.units.begin() + 1);
  msg = coverage_error(gap, index);
  EXPECT_NE(msg.find("missing model.layers.1."), std::string::npos) << msg;
  EXPECT_NE(msg.find("block 1 comes next"), std::string::npos) << msg;
}

TEST(Plan, OptionValidation) {
  EXPECT_THROW(parse_engine_mode("parallel"), InputError);
  EXPECT_EQ(parse_engine_mode("independent"), EngineMode::kIndependent);
  EXPECT_STREQ(engine_mode_name(EngineMode::kSequential), "sequential");
  try {
    parse_engine_mode("parallel");
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--mode"), std::string::npos) << e.what();
  }

  PlanOptions o = data_options();
  o.ranks = 4;  // sequential: team of all 4 ranks, but batch 2
  std::string msg = input_error(o);
  EXPECT_NE(msg.find("--batch-size"), std::string::npos) << msg;
  // ... and the message says what would work.
  EXPECT_NE(msg.find("pass --batch-size 4 (or more), or --mode independent"), std::string::npos) << msg;
  o.mode = EngineMode::kIndependent;
  o.team_size = 4;
  EXPECT_NE(input_error(o).find("pass --batch-size 4 (or more), or a smaller --team-size"), std::string::npos);

  o = data_options();
  o.ranks = 4;
  o.team_size = 2;  // sequential with a partial team
  msg = input_error(o);
  EXPECT_NE(msg.find("--team-size"), std::string::npos) << msg;
  EXPECT_NE(msg.find("idle"), std::string::npos) << msg;

  o = data_options();
  o.mode = EngineMode::kIndependent;
  o.ranks = 4;
  o.team_size = 3;
  o.batch_size = 3;
  msg = input_error(o);
  EXPECT_NE(msg.find("--team-size"), std::string::npos) << msg;
  EXPECT_NE(msg.find("divide"), std::string::npos) << msg;

  o = data_options();
  o.trains = true;
  o.epochs = 2;
  o.batch_size = 5;  // more than the 4 samples
  msg = input_error(o);
  EXPECT_NE(msg.find("--batch-size"), std::string::npos) << msg;
  o.trains = false;  // forward-only: a large batch is just one step
  EXPECT_NO_THROW(make_block_plan(tiny_index(), o));

  o = data_options();
  o.ranks = 0;
  EXPECT_NE(input_error(o).find("--ranks"), std::string::npos);

  // RTN with no data: any batch and team are fine.
  PlanOptions rtn;
  rtn.ranks = 4;
  EXPECT_NO_THROW(make_block_plan(tiny_index(), rtn));
}

TEST(Plan, TeamResolution) {
  PlanOptions o = data_options();
  o.ranks = 2;
  Plan p = make_block_plan(tiny_index(), o);
  EXPECT_EQ(p.teams, 1);
  EXPECT_EQ(p.team_size, 2);
  EXPECT_EQ(p.options.team_size, 0);  // the options as given are kept

  o.mode = EngineMode::kIndependent;
  o.ranks = 4;
  o.team_size = 2;
  p = make_block_plan(tiny_index(), o);
  EXPECT_EQ(p.teams, 2);
  EXPECT_EQ(p.team_size, 2);

  o.team_size = 0;  // independent default: one rank per team
  p = make_block_plan(tiny_index(), o);
  EXPECT_EQ(p.teams, 4);
  EXPECT_EQ(p.team_size, 1);
}

TEST(Plan, SamplesPerTeamRank) {
  PlanOptions o;
  o.mode = EngineMode::kIndependent;
  o.ranks = 6;
  o.team_size = 3;
  o.nsamples = 10;
  o.seqlen = 5;
  o.batch_size = 4;  // 2 whole steps of 2+1+1, then 2 leftover samples as 1+1+0
  const Plan p = make_block_plan(tiny_index(), o);
  EXPECT_EQ(p.samples_per_team_rank, (std::vector<std::int64_t>{5, 3, 2}));
}

TEST(Plan, CacheDiskBytes) {
  // One stream: N * T * H * bytes = 4 * 5 * 8 * 4 = 640.
  PlanOptions o = data_options();
  EXPECT_EQ(make_block_plan(tiny_index(), o).cache_disk_bytes, 4u * 640u);  // 2 boundaries x (fp, q)
  o.mode = EngineMode::kIndependent;
  EXPECT_EQ(make_block_plan(tiny_index(), o).cache_disk_bytes, 2u * 640u);  // FP at boundaries 1, 2
  o.cache_bytes_per_value = 2;
  EXPECT_EQ(make_block_plan(tiny_index(), o).cache_disk_bytes, 2u * 320u);
  EXPECT_EQ(make_block_plan(tiny_index(), PlanOptions{}).cache_disk_bytes, 0u);  // no data
}

TEST(Plan, PeakMemoryModel) {
  // Forward-only, one rank: weights 4*592*2 = 4736; activations rows 4 * T 5 * H 8 * 4 B * 4 streams
  // = 2560; step b=2 * T 5 * (16*8 + 4*16 + 2*2*5 = 212) * 4 B * 3 = 25440.
  PlanOptions o = data_options();
  Plan p = make_block_plan(tiny_index(), o);
  EXPECT_EQ(p.rank_peak_bytes, 4736u + 2560u + 25440u);
  EXPECT_EQ(p.units[0].peak_bytes, p.rank_peak_bytes);

  o.aug_loss = true;  // one more stream
  EXPECT_EQ(make_block_plan(tiny_index(), o).rank_peak_bytes, 4736u + 2560u + 640u + 25440u);

  // Training adds trainable state (x16 bytes) and the weight copies in the graph (4*P*3).
  o.aug_loss = false;
  o.trains = true;
  o.epochs = 2;
  p = make_block_plan(tiny_index(), o);
  // Diagonal LET 4H + q_dim + 2 kv_dim = 48; LWC per channel 2 * (8+4+4+8+16+16+8) = 128.
  EXPECT_EQ(p.rank_peak_bytes, 4736u + 2560u + 25440u + (48u + 128u) * 16u + 4u * 592u * 3u);
  EXPECT_DOUBLE_EQ(p.units[0].train_flops, 2 * 3 * p.units[0].forward_flops);
  o.affine_matrices = true;  // 2H^2 + 2*kv*d^2 + 2H + kv_dim = 128 + 32 + 16 + 4 = 180
  EXPECT_EQ(make_block_plan(tiny_index(), o).rank_peak_bytes,
            4736u + 2560u + 25440u + (180u + 128u) * 16u + 4u * 592u * 3u);
}

TEST(Plan, JsonRoundTrip) {
  PlanOptions o = data_options();
  o.mode = EngineMode::kIndependent;
  o.ranks = 4;
  o.team_size = 2;
  o.trains = true;
  o.epochs = 3;
  o.aug_loss = true;
  o.group_size = 4;
  const Plan p = make_block_plan(tiny_index(), o);
  const nlohmann::json j = p.to_json();
  const Plan q = Plan::from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(q.to_json(), j);
  EXPECT_EQ(q.options.mode, EngineMode::kIndependent);
  EXPECT_EQ(q.teams, 2);
  EXPECT_EQ(q.units.size(), 3u);
  EXPECT_EQ(q.units[2].tensors, p.units[2].tensors);
  EXPECT_EQ(q.units[1].train_flops, p.units[1].train_flops);
  EXPECT_EQ(q.rank_peak_bytes, p.rank_peak_bytes);
  EXPECT_NO_THROW(check_plan_coverage(q, tiny_index()));

  nlohmann::json bad = j;
  bad["units"][1].erase("tensors");
  try {
    Plan::from_json(bad);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("units[1].tensors"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qforge::partition
