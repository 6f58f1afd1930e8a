// The interop tier, end to end: a random-weight Qwen3, Mistral and Qwen2 model (built by transformers)
// goes through `qforge quantize` (AffineQuant W4A16 g32), `qforge eval`, `qforge export
// --format compressed-tensors`, and is loaded by transformers through the compressed-tensors package;
// transformers' logits of the exported folder equal qforge's forward of the same folder. The W4A4 result
// of the same model runs in `qforge eval` and is refused by `quantize --export` before any calibration.
//
// Loader: transformers + compressed-tensors (versions in scripts/torch_env.sh), decompressing on load
// (CompressedTensorsConfig(dequantize=True)): transformers' compressed path cannot load asymmetric
// pack-quantized checkpoints (their packed zero points; vllm-project/llm-compressor#1618).
// Exact: the loader dequantizes in the scales' dtype, so each of its weights is qforge's (q − z)·s (exact in
// fp32) rounded once to fp16 — checked for every linear, bit for bit. Tolerance: those fp16 weights (relative
// rounding ≤ 2⁻¹¹) move the fp32 logits by up to 1.75e-4 (measured; Qwen3), bound 1e-3.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "storage/safetensors.h"
#include "tests/interop/interop_support.h"
#include "worker/llama_model.h"

namespace qforge::test {
namespace {

namespace fs = std::filesystem;

std::string quantize_flags(const fs::path& model, const fs::path& out, const std::string& bits) {
  return "quantize --model " + shell_quote(model.string()) + " --out " + shell_quote(out.string()) + " " + bits +
         " --method affinequant --calib-data model:generate --nsamples 8 --calib-seqlen 32 --epochs 2 --threads 1";
}

class HfEndToEnd : public ::testing::TestWithParam<const char*> {};

TEST_P(HfEndToEnd, QuantizeEvalExportAndTransformersLoad) {
  QF_REQUIRE_TRANSFORMERS();
  const std::string arch = GetParam();
  const fs::path dir = make_temp_dir("interop-e2e-" + arch);
  const fs::path model = dir / arch;
  run_python("make " + arch + " " + shell_quote(model.string()) + " --seed 5");

  // W4A4 cannot be exported to compressed-tensors' W4 schemes: refused before anything is calibrated.
  auto r = run_qforge(quantize_flags(model, dir / "w4a4-ct", "--wbits 4 --abits 4 --group-size 32") +
                  " --export compressed-tensors --export-out " + shell_quote((dir / "w4a4-ct-export").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--export"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "w4a4-ct"));
  // ... but runs in qforge eval.
  r = run_qforge(quantize_flags(model, dir / "w4a4", "--wbits 4 --abits 4"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto tokens = (dir / "w4a4" / "calibration.tok").string();
  const auto w4a4 = qforge_eval_json("--model " + shell_quote((dir / "w4a4").string()) + " --reference " +
                                     shell_quote(model.string()) + " --data " + shell_quote(tokens) + " --seqlen 32");
  EXPECT_GT(w4a4.value("kl", -1.0), 0.0) << w4a4.dump();

  r = run_qforge(quantize_flags(model, dir / "w4", "--wbits 4 --group-size 32"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto w4 = qforge_eval_json("--model " + shell_quote((dir / "w4").string()) + " --reference " +
                                   shell_quote(model.string()) + " --data " + shell_quote(tokens) + " --seqlen 32");
  // W4 g32 weights hurt a random model less than W4A4 does (both: KL to its FP model on the same tokens).
  EXPECT_LT(w4.value("kl", 1e9), w4a4.value("kl", 0.0)) << w4.dump() << " vs " << w4a4.dump();

  const fs::path exported = dir / "w4-ct";
  r = run_qforge("export --model " + shell_quote((dir / "w4").string()) + " --format compressed-tensors --out " +
             shell_quote(exported.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path ref_file = dir / "w4-ct-logits.safetensors";
  run_python("logits " + shell_quote(exported.string()) + " " + shell_quote(ref_file.string()) +
             " --dequantize --dump-weights --seqlen 24");
  const storage::SafetensorsFile ref(ref_file);
  const storage::SafetensorsFile own_weights(dir / "w4" / "model.safetensors");
  int linears = 0;
  for (const auto& t : ref.tensors()) {
    if (t.name.rfind("model.layers.", 0) != 0) continue;
    ++linears;
    EXPECT_TRUE(at::equal(ref.load(t.name), own_weights.load(t.name).to(at::kHalf).to(at::kFloat))) << t.name;
  }
  EXPECT_EQ(linears, 2 * 7);
  const at::Tensor ids = ref.load("ids"), theirs = ref.load("logits");
  const at::Tensor ours = worker::LlamaModel(exported).forward(ids);
  const double diff = (ours - theirs).abs().max().item<double>();
  std::printf("[interop] %s W4 g32 compressed-tensors export, transformers vs qforge: max |logit difference| %.3g\n",
              arch.c_str(), diff);
  EXPECT_LT(diff, 1e-3);
  // The export is the quantized result: qforge's forward of its own output folder gives the same logits.
  const double own = (worker::LlamaModel(dir / "w4").forward(ids) - ours).abs().max().item<double>();
  std::printf("[interop] %s qforge output vs its export: max |logit difference| %.3g\n", arch.c_str(), own);
  EXPECT_LT(own, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Families, HfEndToEnd, ::testing::Values("qwen3", "mistral", "qwen2"));

}  // namespace
}  // namespace qforge::test
