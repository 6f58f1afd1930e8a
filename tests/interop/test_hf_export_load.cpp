// The interop tier, exports as a real client loads them: each compressed-tensors checkpoint qforge writes is
// loaded by transformers through the compressed-tensors package and its logits are compared with qforge's
// forward of the same folder (which is the forward `qforge eval` scores).
//   - per-block bits (--block-override 0:8 on W4 g32, symmetric): two config groups, each naming its blocks
//     (and the GPTQ export's `dynamic` rule, read back by qforge; GPTQModel's check is scripts/gptq_check.sh);
//     the loader must give block 0 8-bit weights and the others 4-bit (checked weight by weight). Loaded through
//     transformers' compressed path: its dequantize=True path decompresses every dense layer with one group's
//     scheme (transformers 5.25 get_dense_scheme), and the compressed path cannot take asymmetric packed zero
//     points (llm-compressor#1618), so per-block asymmetric exports have no CPU loader to check them here;
//   - W8A8 int-quantized, random LLaMA, Mistral, Qwen2 (q/k/v biases) and Qwen3 (q/k norms): loaded
//     compressed (no dequantize), so the loader's own dynamic per-token int8 activation quantization runs;
//   - ref-6m (a real trained model) W8 per channel, pack-quantized.
// Tolerances: weights dequantized by the loader are qforge's (q − z)·s, bit for bit: rounded once to fp16 by
// the dequantize=True path, exact in fp32 by the compressed path (measured: logits within 3.2e-7 of the largest);
// fp16 weights (relative rounding ≤ 2⁻¹¹) move fp32 logits in proportion to their size: measured ≤ 1.1e-4 of
// the largest |logit| (ref-6m, whose logits reach ~20), bound 1e-3 of it. W8A8: the loader's dynamic
// symmetric int8 step is max|x|/127.5 (compressed-tensors' calculate_qparams), qforge's (and vLLM's int8
// kernel's) max|x|/127, so most activation codes of the two differ by rounding: measured 0.58–1.1% of the largest
// |logit| on the four random models, bound 5%: it checks that the checkpoint is read as this W8A8 model (a misread
// weight layout or scale moves these logits by their own size), not the activation rounding, which the two
// conventions make differ.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "storage/safetensors.h"
#include "storage/token_file.h"
#include "tests/interop/interop_support.h"
#include "worker/llama_model.h"

namespace qforge::test {
namespace {

namespace fs = std::filesystem;

nlohmann::json quantization_config(const fs::path& dir) {
  std::ifstream in(dir / "config.json");
  return nlohmann::json::parse(in).at("quantization_config");
}

struct LoadResult {
  double vs_export = 0, vs_output = 0;  // max |logit difference|, the first relative to the largest |logit|
};

// Exports `out` to compressed-tensors, loads it in transformers, and compares logits with qforge's forward
// of the export and of `out` itself; every dequantized linear the loader holds equals qforge's fp16 weights.
LoadResult export_and_load(const fs::path& out, bool dequantize, bool check_weights, const std::string& label) {
  const fs::path exported = out.string() + "-ct";
  const auto r = run_qforge("export --model " + shell_quote(out.string()) + " --format compressed-tensors --out " +
                        shell_quote(exported.string()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const fs::path ref_file = out.string() + "-logits.safetensors";
  run_python("logits " + shell_quote(exported.string()) + " " + shell_quote(ref_file.string()) + " --seqlen 24 --dump-weights" +
             (dequantize ? " --dequantize" : ""));
  const storage::SafetensorsFile ref(ref_file);
  if (check_weights) {
    const storage::SafetensorsFile own(out / "model.safetensors");
    int linears = 0;
    for (const auto& t : ref.tensors()) {
      if (t.name.rfind("model.layers.", 0) != 0) continue;
      ++linears;
      // The dequantize=True path multiplies in the scales' dtype (fp16); the compressed path in fp32.
      const at::Tensor want = dequantize ? own.load(t.name).to(at::kHalf).to(at::kFloat) : own.load(t.name);
      EXPECT_TRUE(at::equal(ref.load(t.name), want)) << label << " " << t.name;
    }
    EXPECT_GT(linears, 0);
  }
  const at::Tensor ids = ref.load("ids"), theirs = ref.load("logits");
  const at::Tensor ours = worker::LlamaModel(exported).forward(ids);
  LoadResult res;
  res.vs_export = (ours - theirs).abs().max().item<double>() / theirs.abs().max().item<double>();
  res.vs_output = (worker::LlamaModel(out).forward(ids) - ours).abs().max().item<double>();
  std::printf("[interop] %s: transformers vs qforge max |logit difference| %.3g of the largest |logit|; qforge output vs "
              "its export %.3g\n",
              label.c_str(), res.vs_export, res.vs_output);
  return res;
}

std::string rtn(const fs::path& model, const fs::path& out, const std::string& bits) {
  return "quantize --model " + shell_quote(model.string()) + " --out " + shell_quote(out.string()) + " " + bits +
         " --method rtn --threads 1 --calib-data model:generate --nsamples 4 --calib-seqlen 16";
}

TEST(HfExportLoad, PerBlockBitsExportAsConfigGroupsAndGptqDynamic) {
  QF_REQUIRE_TRANSFORMERS();
  const fs::path dir = make_temp_dir("interop-overrides");
  const fs::path model = dir / "llama";
  run_python("make llama " + shell_quote(model.string()) + " --seed 7");
  const fs::path out = dir / "w4-b0w8";
  auto r = run_qforge(rtn(model, out, "--wbits 4 --group-size 32 --sym --block-override 0:8"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const LoadResult res = export_and_load(out, /*dequantize=*/false, /*check_weights=*/true, "llama W4 g32 sym, block 0 W8");
  EXPECT_LT(res.vs_export, 1e-3);
  EXPECT_LT(res.vs_output, 1e-4);
  const auto groups = quantization_config(out.string() + "-ct").at("config_groups");
  ASSERT_EQ(groups.size(), 2u) << groups.dump();
  std::map<int, std::string> bits_to_target;
  for (const auto& [name, g] : groups.items()) bits_to_target[g["weights"]["num_bits"].get<int>()] = g["targets"][0];
  EXPECT_EQ(bits_to_target[8], "re:model\\.layers\\.(0)\\.(self_attn|mlp)\\.[a-z_]+_proj$");
  EXPECT_EQ(bits_to_target[4], "re:model\\.layers\\.(1)\\.(self_attn|mlp)\\.[a-z_]+_proj$");
  // qforge reads its export back with the same per-block bits.
  std::vector<std::int32_t> ids;
  for (int i = 0; i < 64; ++i) ids.push_back(3 + (i * 37) % 90);  // the random model's vocabulary is 97
  storage::write_token_file(dir / "eval.tok", ids);
  const auto tokens = shell_quote((dir / "eval.tok").string());
  const auto ev_export = qforge_eval_json("--model " + shell_quote(out.string() + "-ct") + " --data " + tokens + " --seqlen 16");
  const auto ev_output = qforge_eval_json("--model " + shell_quote(out.string()) + " --data " + tokens + " --seqlen 16");
  EXPECT_NEAR(ev_export.value("ppl", 0.0), ev_output.value("ppl", -1.0), 1e-4 * ev_output.value("ppl", 0.0)) << ev_export.dump();
  // GPTQ writes the same bits as a GPTQModel `dynamic` rule for block 0 (transformers' loader does not read
  // `dynamic`; GPTQModel does: scripts/gptq_check.sh), and qforge reads them back.
  const fs::path gptq = dir / "w4-b0w8-gptq";
  r = run_qforge("export --model " + shell_quote(out.string()) + " --format gptq --out " + shell_quote(gptq.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(quantization_config(gptq).at("dynamic"),
            nlohmann::json({{"+:model\\.layers\\.(0)\\.(self_attn|mlp)\\.[a-z_]+_proj$", {{"bits", 8}}}}));
  const auto ev_gptq = qforge_eval_json("--model " + shell_quote(gptq.string()) + " --data " + tokens + " --seqlen 16");
  EXPECT_NEAR(ev_gptq.value("ppl", 0.0), ev_output.value("ppl", -1.0), 1e-4 * ev_output.value("ppl", 0.0)) << ev_gptq.dump();
}

class HfExportLoadW8A8 : public ::testing::TestWithParam<const char*> {};

TEST_P(HfExportLoadW8A8, IntQuantizedRunsInTheLoadersCompressedPath) {
  QF_REQUIRE_TRANSFORMERS();
  const std::string arch = GetParam();
  const fs::path dir = make_temp_dir("interop-w8a8-" + arch);
  const fs::path model = dir / arch;
  run_python("make " + arch + " " + shell_quote(model.string()) + " --seed 8");
  const fs::path out = dir / "w8a8";
  const auto r = run_qforge(rtn(model, out, "--wbits 8 --abits 8 --sym --act-sym --group-size 0"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const LoadResult res = export_and_load(out, /*dequantize=*/false, /*check_weights=*/false, arch + " W8A8 int-quantized (compressed load)");
  EXPECT_EQ(quantization_config(out.string() + "-ct").at("format"), "int-quantized");
  EXPECT_LT(res.vs_export, 5e-2);
  // The export holds the linears' input quantization only: qforge's per-head Q/K/V quantization (the
  // OmniQuant protocol its own folder is scored with) is not in it, and qforge runs the export without it.
  EXPECT_GT(res.vs_output, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfExportLoadW8A8, ::testing::Values("llama", "mistral", "qwen2", "qwen3"));

TEST(HfExportLoad, RealModelW8PerChannelPackQuantized) {
  QF_REQUIRE_TRANSFORMERS();
  const fs::path model = shared_data() / "models/ref-6m";
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path dir = make_temp_dir("interop-ref6m");
  const fs::path out = dir / "w8";
  const auto r = run_qforge(rtn(model, out, "--wbits 8 --group-size 0"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const LoadResult res = export_and_load(out, /*dequantize=*/true, /*check_weights=*/true, "ref-6m W8 per-channel pack-quantized");
  EXPECT_LT(res.vs_export, 1e-3);
  EXPECT_LT(res.vs_output, 1e-4);
}

}  // namespace
}  // namespace qforge::test
