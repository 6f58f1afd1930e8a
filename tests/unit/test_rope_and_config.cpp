// HF config parsing/validation and rotary embedding scaling, against values worked out independently
// from HF's formulas (plain-Python evaluation, constants below).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "storage/hf_config.h"
#include "tests/support/test_data.h"
#include "worker/rope.h"

namespace qforge {
namespace {

using nlohmann::json;

json base_config() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4,
    "vocab_size": 4096, "max_position_embeddings": 256, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "tie_word_embeddings": false, "torch_dtype": "float32"})");
}

void expect_input_error(const json& j, const std::string& needle) {
  try {
    storage::parse_llama_config(j, "cfg.json");
    FAIL() << "expected InputError mentioning " << needle;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(HfConfig, ParsesRef6mAndDefaults) {
  auto c = storage::parse_llama_config(base_config(), "cfg.json");
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.kv_dim(), 128);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_FALSE(c.qkv_bias || c.o_bias);
  // 6.8M parameters: 6 blocks + embeddings + untied head + final norm.
  EXPECT_EQ(c.block_parameters(), 2 * 256 + 256 * 256 * 2 + 2 * 128 * 256 + 3 * 768 * 256);
  EXPECT_EQ(c.total_parameters(), 6 * c.block_parameters() + 2 * 4096 * 256 + 256);
  json j = base_config();
  j.erase("num_key_value_heads");
  EXPECT_EQ(storage::parse_llama_config(j, "x").num_key_value_heads, 8);
}

TEST(HfConfig, RealConfigFilesParse) {
  for (const char* m : {"models/ref-6m", "models/stories260K-hf"}) {
    auto dir = test::shared_data() / m;
    QF_REQUIRE_DATA(dir / "config.json");
    auto c = storage::read_llama_config(dir);
    EXPECT_GT(c.num_hidden_layers, 0);
    EXPECT_EQ(c.num_attention_heads % c.num_key_value_heads, 0);
  }
}

TEST(HfConfig, RejectsInconsistentValues) {
  json j = base_config();
  j["num_attention_heads"] = 6;  // 256 % 6 != 0
  expect_input_error(j, "num_attention_heads");
  j = base_config();
  j["num_key_value_heads"] = 3;  // 8 % 3 != 0
  expect_input_error(j, "num_key_value_heads");
  j = base_config();
  j["architectures"] = {"MistralForCausalLM"};
  expect_input_error(j, "architectures");
  j = base_config();
  j["model_type"] = "gpt2";
  expect_input_error(j, "model_type");
}

TEST(HfConfig, RejectsWrongTypesAndMissingFields) {
  json j = base_config();
  j["hidden_size"] = "256";
  expect_input_error(j, "hidden_size");
  j = base_config();
  j.erase("vocab_size");
  expect_input_error(j, "vocab_size");
  j = base_config();
  j["tie_word_embeddings"] = 1;
  expect_input_error(j, "tie_word_embeddings");
  j = base_config();
  j["num_hidden_layers"] = 0;
  expect_input_error(j, "num_hidden_layers");
  j = base_config();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_input_error(j, "rope_scaling");
  expect_input_error(json::array(), "object");
}

TEST(HfConfig, RopeParametersFormOfTransformers5) {
  json j = base_config();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 500000.0}, {"factor", 2.0}};
  auto c = storage::parse_llama_config(j, "x");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
}

TEST(HfConfig, JsonRoundTripKeepsFields) {
  json j = base_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  j["custom_field"] = "kept";
  auto c = storage::parse_llama_config(j, "x");
  auto back = storage::parse_llama_config(storage::llama_config_to_json(c), "y");
  EXPECT_EQ(back.rope_scaling.type, "llama3");
  EXPECT_EQ(back.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(back.head_dim, c.head_dim);
  EXPECT_EQ(storage::llama_config_to_json(c)["custom_field"], "kept");
}

storage::LlamaConfig rope_config(const std::string& type) {
  json j = base_config();
  j["hidden_size"] = 4096;
  j["num_attention_heads"] = 32;
  j["num_key_value_heads"] = 8;
  j["rope_theta"] = 500000.0;
  if (type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  } else if (type == "linear") {
    j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  }
  return storage::parse_llama_config(j, "x");
}

TEST(Rope, Llama3ScalingMatchesHfFormula) {
  // Expected values from HF _compute_llama3_parameters evaluated in plain Python (head_dim 128,
  // theta 5e5, factor 8, low 1, high 4, original 8192): high frequencies kept, low ones divided by 8,
  // indices 29..34 in the smooth band.
  at::Tensor inv = worker::rope_inv_freq(rope_config("llama3"), 16);
  ASSERT_EQ(inv.size(0), 64);
  const std::vector<std::pair<int, double>> expected = {
      {0, 1.0}, {20, 0.016560440080994446}, {29, 0.002166570763503359}, {30, 0.0013718935677611381},
      {32, 0.0005248461609929547}, {34, 0.00017850781276799638}, {40, 3.428102195952591e-05},
      {63, 3.068925988914511e-07}};
  for (auto [i, v] : expected) EXPECT_NEAR(inv[i].item<double>() / v, 1.0, 1e-5) << "index " << i;
}

TEST(Rope, LinearScalingDividesFrequencies) {
  at::Tensor plain = worker::rope_inv_freq(rope_config("default"), 16);
  at::Tensor linear = worker::rope_inv_freq(rope_config("linear"), 16);
  EXPECT_TRUE(at::allclose(linear * 4.0, plain));
  EXPECT_NEAR(plain[1].item<double>() / std::pow(500000.0, -2.0 / 128.0), 1.0, 1e-6);  // fp32 table
}

TEST(Rope, RotateHalfOnHandWorkedVector) {
  // head_dim 4, position 1, inv_freq (1, 0.01) for theta=10000: pair (x0, x2) rotates by 1 rad,
  // pair (x1, x3) by 0.01 rad.
  json j = base_config();
  j["hidden_size"] = 8;
  j["num_attention_heads"] = 2;
  j["num_key_value_heads"] = 2;
  auto c = storage::parse_llama_config(j, "x");
  auto rope = worker::make_rope_tables(c, 2, at::kCPU);
  at::Tensor x = at::tensor({1.f, 2.f, 3.f, 4.f}).view({1, 1, 1, 4}).expand({1, 1, 2, 4}).contiguous();
  at::Tensor y = worker::apply_rope(x, rope)[0][0][1];
  const double a = 1.0, b = 0.01;
  std::vector<double> expected = {1 * std::cos(a) - 3 * std::sin(a), 2 * std::cos(b) - 4 * std::sin(b),
                                  3 * std::cos(a) + 1 * std::sin(a), 4 * std::cos(b) + 2 * std::sin(b)};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i].item<double>(), expected[static_cast<std::size_t>(i)], 1e-6);
  // Position 0 is the identity.
  EXPECT_TRUE(at::allclose(worker::apply_rope(x, rope)[0][0][0], x[0][0][0]));
  // Positions along dim 1 ([batch, seqlen, heads, d], as the block applies it): the same values, bit for bit.
  at::Tensor many = at::randn({2, 3, 2, 4});  // [batch, heads, seqlen, d]
  at::Tensor tokens_major = worker::apply_rope(many.transpose(1, 2).contiguous(), rope, 0, worker::RopeLayout::kTokensHeads);
  EXPECT_TRUE(at::equal(tokens_major.transpose(1, 2), worker::apply_rope(many, rope)));
}

}  // namespace
}  // namespace qforge
