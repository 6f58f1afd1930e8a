// `qforge export` end to end: GPTQ and compressed-tensors folders written from the sidecar's integer
// codes load back (dequantized on load) to exactly the fake-quant weights, evaluate to the same
// perplexity, and models the formats cannot express are refused with the reason.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "storage/hf_config.h"
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
  EXPECT_NEAR(ppl(dir / "w8-ct", data) / ppl(w8, data), 1.0, 1e-4);
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
