// `qforge export` end to end: GPTQ and compressed-tensors folders written from the sidecar's integer
// codes load back (dequantized on load) to exactly the fake-quant weights, evaluate to the same
// perplexity, and models the formats cannot express are refused with the reason.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/export.h"
#include "storage/hf_config.h"
#include "storage/quant_config.h"
#include "storage/safetensors.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"
#include "worker/llama_model.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::shell_quote;

test::CommandResult qf(const std::string& args) { return test::run_command(test::qforge_binary() + " " + args + " --log-level warn"); }

double ppl(const fs::path& model, const fs::path& data) {
  return test::qforge_eval_json("--seqlen 256 --max-windows 40 --model " + shell_quote(model.string()) + " --data " +
                                shell_quote(data.string()))
      .value("ppl", 0.0);
}

// Every tensor of the fake-quant folder equals the exported folder's (dequantized) tensor bit for bit,
// once rounded to the dtype the fake-quant folder stores (fp16 for 7B-like models: scale·(q − z) is
// computed in fp32 and stored rounded, as an fp16 engine rounds it too; fp32 models compare as is).
void expect_same_weights(const fs::path& fake, const fs::path& exported) {
  const auto ca = storage::read_llama_config(fake), cb = storage::read_llama_config(exported);
  auto a = worker::open_model_checkpoint(fake, ca);
  auto b = worker::open_model_checkpoint(exported, cb);
  EXPECT_EQ(a->names(), b->names());
  for (const auto& n : a->names()) {
    if (!b->contains(n)) continue;
    const at::Tensor want = a->load(n);
    EXPECT_TRUE(at::equal(want, b->load(n).to(want.scalar_type()))) << n << " in " << exported;
  }
}

struct Export : ::testing::Test {
  void SetUp() override {
    model = test::shared_data() / "models/ref-6m";
    dir = test::make_temp_dir("export");
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir);
  }
  fs::path model, dir;
};

TEST_F(Export, GptqAndCompressedTensorsEqualTheFakeQuantModel) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path q = dir / "w4g128";
  ASSERT_EQ(qf("quantize --method rtn --wbits 4 --group-size 128 --sym --model " + shell_quote(model.string()) + " --out " +
               shell_quote(q.string()) + " --export gptq").exit_code, 0);
  auto ct = qf("export --format compressed-tensors --model " + shell_quote(q.string()) + " --out " + shell_quote((dir / "ct").string()));
  ASSERT_EQ(ct.exit_code, 0) << ct.output;
  const fs::path gptq = dir / "w4g128-gptq";
  const json gc = json::parse(read_file(gptq / "config.json"))["quantization_config"];
  EXPECT_EQ(gc["quant_method"], "gptq");
  EXPECT_EQ(gc["checkpoint_format"], "gptq");
  EXPECT_EQ(gc["group_size"], 128);
  EXPECT_TRUE(fs::exists(gptq / "quantize_config.json"));
  // Symmetric 4-bit, v1: every stored zero is 8 - 1 = 7 in every nibble.
  storage::CheckpointReader raw(gptq);
  at::Tensor qz = raw.load("model.layers.0.self_attn.q_proj.qzeros");
  EXPECT_EQ(qz.scalar_type(), at::kInt);
  EXPECT_TRUE(at::all(qz == static_cast<std::int32_t>(0x77777777)).item<bool>());
  EXPECT_EQ(raw.info("model.layers.0.mlp.down_proj.qweight").shape, (std::vector<std::int64_t>{768 / 8, 256}));
  EXPECT_EQ(raw.info("model.layers.0.mlp.down_proj.scales").shape, (std::vector<std::int64_t>{6, 256}));
  expect_same_weights(q, gptq);
  expect_same_weights(q, dir / "ct");
  const fs::path data = model / "valid-sample.txt";
  const double p = ppl(q, data);
  EXPECT_NEAR(ppl(gptq, data) / p, 1.0, 1e-4);
  EXPECT_NEAR(ppl(dir / "ct", data) / p, 1.0, 1e-4);
}

TEST_F(Export, AsymmetricAndW8A8PickTheFormatVariantTheirNumbersNeed) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path asym = dir / "asym";
  ASSERT_EQ(qf("quantize --method rtn --wbits 4 --group-size 64 --model " + shell_quote(model.string()) + " --out " + shell_quote(asym.string())).exit_code, 0);
  auto g = qf("export --format gptq --model " + shell_quote(asym.string()) + " --out " + shell_quote((dir / "asym-gptq").string()));
  ASSERT_EQ(g.exit_code, 0) << g.output;
  // v1 stores zero - 1: possible only when no zero point is 0; otherwise v2 and a note saying who reads it.
  storage::CheckpointReader side(asym / "quantization.safetensors");
  bool any_zero = false;
  for (const auto& n : side.names()) {
    if (n.size() > 6 && n.compare(n.size() - 6, 6, ".zeros") == 0) any_zero = any_zero || at::any(side.load(n) == 0).item<bool>();
  }
  const json gc = json::parse(read_file(dir / "asym-gptq/config.json"))["quantization_config"];
  EXPECT_EQ(gc["checkpoint_format"], any_zero ? "gptq_v2" : "gptq");
  if (any_zero) {
    EXPECT_NE(g.output.find("gptq_v2"), std::string::npos) << g.output;
  }
  expect_same_weights(asym, dir / "asym-gptq");
  ASSERT_EQ(qf("export --format compressed-tensors --model " + shell_quote(asym.string()) + " --out " + shell_quote((dir / "asym-ct").string())).exit_code, 0);
  expect_same_weights(asym, dir / "asym-ct");

  // W8A8 with symmetric per-channel weights and symmetric per-token activations: int-quantized.
  const fs::path w8 = dir / "w8a8";
  ASSERT_EQ(qf("quantize --method rtn --wbits 8 --abits 8 --sym --act-sym --model " + shell_quote(model.string()) + " --out " + shell_quote(w8.string())).exit_code, 0);
  auto c = qf("export --format compressed-tensors --model " + shell_quote(w8.string()) + " --out " + shell_quote((dir / "w8-ct").string()));
  ASSERT_EQ(c.exit_code, 0) << c.output;
  const json cc = json::parse(read_file(dir / "w8-ct/config.json"))["quantization_config"];
  EXPECT_EQ(cc["format"], "int-quantized");
  EXPECT_EQ(cc["config_groups"]["group_0"]["input_activations"]["strategy"], "token");
  storage::CheckpointReader raw(dir / "w8-ct");
  EXPECT_EQ(raw.info("model.layers.1.self_attn.o_proj.weight").dtype, storage::DType::kI8);
  expect_same_weights(w8, dir / "w8-ct");
  const fs::path data = model / "valid-sample.txt";
  // The export runs as engines run it, without qforge's per-head Q/K/V activation quantization (not part of
  // int-quantized): its perplexity differs from the output's by that alone (measured ratio 0.99980).
  EXPECT_NEAR(ppl(dir / "w8-ct", data) / ppl(w8, data), 1.0, 1e-3);
  EXPECT_NE(c.output.find("per-head Q/K/V"), std::string::npos) << c.output;
}

TEST_F(Export, ModelsTheFormatsCannotExpressAreRefusedWithTheReason) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path w4a4 = dir / "w4a4";
  ASSERT_EQ(qf("quantize --method rtn --wbits 4 --abits 4 --model " + shell_quote(model.string()) + " --out " + shell_quote(w4a4.string())).exit_code, 0);
  auto g = qf("export --format gptq --model " + shell_quote(w4a4.string()) + " --out " + shell_quote((dir / "x").string()));
  EXPECT_EQ(g.exit_code, 2);
  EXPECT_NE(g.output.find("weight-only"), std::string::npos) << g.output;
  const fs::path w8 = dir / "w8a8asym";
  ASSERT_EQ(qf("quantize --method rtn --wbits 8 --abits 8 --sym --model " + shell_quote(model.string()) + " --out " + shell_quote(w8.string())).exit_code, 0);
  auto c = qf("export --format compressed-tensors --model " + shell_quote(w8.string()) + " --out " + shell_quote((dir / "y").string()));
  EXPECT_EQ(c.exit_code, 2);
  EXPECT_NE(c.output.find("--act-sym"), std::string::npos) << c.output;
  // quantize --export refuses before calibrating.
  auto early = qf("quantize --method rtn --wbits 4 --abits 4 --export gptq --model " + shell_quote(model.string()) + " --out " + shell_quote((dir / "z").string()));
  EXPECT_EQ(early.exit_code, 2);
  EXPECT_FALSE(fs::exists(dir / "z"));
  // stories260K's 172-wide MLP cannot be packed 32 at a time: the layer is named.
  const fs::path stories = test::shared_data() / "models/stories260K-hf";
  const fs::path s4 = dir / "s4";
  ASSERT_EQ(qf("quantize --method rtn --wbits 4 --sym --model " + shell_quote(stories.string()) + " --out " + shell_quote(s4.string())).exit_code, 0);
  auto s = qf("export --format gptq --model " + shell_quote(s4.string()) + " --out " + shell_quote((dir / "s4-gptq").string()));
  EXPECT_EQ(s.exit_code, 2);
  EXPECT_NE(s.output.find("mlp."), std::string::npos) << s.output;
  // ... and quantize --export gptq says so before calibrating (also for a group size that divides nothing).
  for (const std::string flags : {"--wbits 4 --sym", "--wbits 4 --group-size 100"}) {
    auto e = qf("quantize --method rtn " + flags + " --export gptq --model " + shell_quote(stories.string()) + " --out " +
                shell_quote((dir / "s4e").string()));
    EXPECT_EQ(e.exit_code, 2) << e.output;
    EXPECT_NE(e.output.find("cannot export gptq: model.layers.*."), std::string::npos) << e.output;  // the layer named
    EXPECT_FALSE(fs::exists(dir / "s4e"));
  }
  auto g100 = qf("quantize --method rtn --wbits 4 --group-size 100 --export gptq --model " + shell_quote(model.string()) +
                 " --out " + shell_quote((dir / "g100").string()));
  EXPECT_EQ(g100.exit_code, 2) << g100.output;
  EXPECT_NE(g100.output.find("group_size: 100 does not divide in_features 256"), std::string::npos) << g100.output;
  EXPECT_FALSE(fs::exists(dir / "g100"));
}

// The message parse_quant_config refuses `j` with ("" when it reads it).
std::string parse_error(const json& j) {
  try {
    storage::parse_quant_config(j, "config.json");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

// Per-block bits: compressed-tensors takes them as one config group per bit width and GPTQ as GPTQModel
// `dynamic` rules, each naming its blocks in the one form the readers take back; a block the format cannot
// hold, and weight-only blocks beside W8A8 ones, are refused, naming why.
TEST(ExportOverrides, OneConfigGroupPerBitWidthAndTheRefusals) {
  using storage::blocks_target, storage::parse_blocks_target, storage::kCtRegexPrefix, storage::kGptqDynamicPrefix;
  EXPECT_EQ(blocks_target(kCtRegexPrefix, {0, 3, 12}), "re:model\\.layers\\.(0|3|12)\\.(self_attn|mlp)\\.[a-z_]+_proj$");
  EXPECT_EQ(blocks_target(kGptqDynamicPrefix, {5}), "+:model\\.layers\\.(5)\\.(self_attn|mlp)\\.[a-z_]+_proj$");
  EXPECT_EQ(parse_blocks_target(kCtRegexPrefix, blocks_target(kCtRegexPrefix, {0, 3, 12})), (std::vector<int>{0, 3, 12}));
  EXPECT_FALSE(parse_blocks_target(kGptqDynamicPrefix, blocks_target(kCtRegexPrefix, {0})));
  EXPECT_FALSE(parse_blocks_target(kCtRegexPrefix, "re:model\\.layers\\.(0|x)\\.(self_attn|mlp)\\.[a-z_]+_proj$"));
  EXPECT_FALSE(parse_blocks_target(kCtRegexPrefix, "re:.*q_proj"));
  storage::LlamaConfig c;
  c.hidden_size = 64, c.intermediate_size = 128, c.num_attention_heads = 4, c.num_key_value_heads = 4;
  c.head_dim = 16, c.num_hidden_layers = 4;
  QuantConfig q;
  q.bits = 4, q.group_size = 32, q.sym = true;
  q.block_overrides[1] = {8, 0};
  c.quant = q;
  EXPECT_EQ(storage::export_refusal(c, storage::ExportFormat::kCompressedTensors), "");
  EXPECT_EQ(storage::export_refusal(c, storage::ExportFormat::kGptq), "");
  c.quant->block_overrides[2] = {3, 0};
  EXPECT_NE(storage::export_refusal(c, storage::ExportFormat::kCompressedTensors).find("block 2: "), std::string::npos);
  c.quant->block_overrides.erase(2);
  c.quant->bits = 8, c.quant->group_size = 0, c.quant->act_bits = 8, c.quant->act_sym = true;
  c.quant->block_overrides[1] = {8, 16};  // one weight-only block in a W8A8 model
  EXPECT_NE(storage::export_refusal(c, storage::ExportFormat::kCompressedTensors).find("mixes weight-only and W8A8"),
            std::string::npos);
  // The reader takes the groups back as a base scheme and overrides.
  const nlohmann::json groups = {
      {"group_0", {{"targets", {blocks_target(kCtRegexPrefix, {0, 2, 3})}}, {"weights", {{"num_bits", 4}, {"symmetric", true}, {"strategy", "group"}, {"group_size", 32}}}}},
      {"group_1", {{"targets", {blocks_target(kCtRegexPrefix, {1})}}, {"weights", {{"num_bits", 8}, {"symmetric", true}, {"strategy", "group"}, {"group_size", 32}}}}}};
  const QuantConfig back = storage::parse_quant_config(
      {{"quant_method", "compressed-tensors"}, {"format", "pack-quantized"}, {"config_groups", groups}}, "config.json");
  EXPECT_EQ(back.bits, 4);
  EXPECT_EQ(back.weight_bits(1), 8);
  EXPECT_EQ(back.weight_bits(3), 4);
  EXPECT_EQ(back.block_overrides.size(), 1u);
  // GPTQModel's `dynamic`: qforge's per-block rules are read, any other rule is refused with its key.
  nlohmann::json gptq = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 32}, {"sym", true},
                         {"dynamic", {{blocks_target(kGptqDynamicPrefix, {0, 3}), {{"bits", 8}}}}}};
  const QuantConfig g = storage::parse_quant_config(gptq, "config.json");
  EXPECT_EQ(g.weight_bits(0), 8);
  EXPECT_EQ(g.weight_bits(1), 4);
  EXPECT_EQ(g.weight_bits(3), 8);
  gptq["dynamic"] = {{"-:.*mlp.*", nlohmann::json::object()}};
  EXPECT_NE(parse_error(gptq).find("quantization_config.dynamic.-:.*mlp.*"), std::string::npos) << parse_error(gptq);
  gptq["dynamic"] = {{blocks_target(kGptqDynamicPrefix, {1}), {{"bits", 8}, {"group_size", 64}}}};
  EXPECT_NE(parse_error(gptq).find("only an integer \"bits\" override"), std::string::npos) << parse_error(gptq);
}

TEST_F(Export, ThreeBitGptqFromAFinishedJobDirectory) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path q = dir / "w3", job = dir / "w3-job";
  ASSERT_EQ(qf("quantize --method rtn --wbits 3 --group-size 128 --sym --model " + shell_quote(model.string()) + " --out " +
               shell_quote(q.string()) + " --job-dir " + shell_quote(job.string())).exit_code, 0);
  auto r = qf("export --format gptq --job-dir " + shell_quote(job.string()) + " --out " + shell_quote((dir / "w3-gptq").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  storage::CheckpointReader raw(dir / "w3-gptq");
  // 3 bits: 32 input rows in 3 words; 32 output columns of zeros in 3 words.
  EXPECT_EQ(raw.info("model.layers.0.mlp.up_proj.qweight").shape, (std::vector<std::int64_t>{256 * 3 / 32, 768}));
  EXPECT_EQ(raw.info("model.layers.0.mlp.up_proj.qzeros").shape, (std::vector<std::int64_t>{2, 768 * 3 / 32}));
  expect_same_weights(q, dir / "w3-gptq");
  // A job that has not finished cannot be exported.
  write_file_atomic(job / "journal.log", "");
  EXPECT_EQ(qf("export --format gptq --job-dir " + shell_quote(job.string()) + " --out " + shell_quote((dir / "no").string())).exit_code, 2);
}

TEST_F(Export, SevenBShapedBlockRoundTripsBitExactly) {
  const fs::path syn = dir / "syn7b";
  ASSERT_EQ(qf("make-synthetic --shape 7b --blocks 1 --out " + shell_quote(syn.string())).exit_code, 0);
  const fs::path q = dir / "syn7b-q";
  ASSERT_EQ(qf("quantize --method rtn --wbits 4 --group-size 128 --sym --model " + shell_quote(syn.string()) + " --out " + shell_quote(q.string())).exit_code, 0);
  for (const char* f : {"gptq", "compressed-tensors"}) {
    auto r = qf(std::string("export --format ") + f + " --model " + shell_quote(q.string()) + " --out " + shell_quote((dir / f).string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    expect_same_weights(q, dir / f);
  }
}

}  // namespace
}  // namespace qforge
