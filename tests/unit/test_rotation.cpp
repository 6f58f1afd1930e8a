// Hadamard constructions (worker/hadamard.h) and rotations folded into a model (worker/rotation.h).
// Hadamard: entries ±1 and H Hᵀ = n I, exactly (integer arithmetic in float64), for every construction
// the sizes of the issue need (12, 28, 344, 768; 11008 and 28672 through their factors), and the
// rotations built from them orthogonal to rounding. Rotated models: in float64 the R1/R2-rotated model,
// and with the online R3/R4 too, gives the original's logits within 1e-9 on MHA, GQA and tied-embedding
// models, with Hadamard and random orthogonal rotations, and a model whose size has no Hadamard matrix
// falls back to a random orthogonal one.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/hf_config.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"
#include "worker/hadamard.h"
#include "worker/rotation.h"

namespace qforge::worker {
namespace {

void expect_hadamard(std::int64_t n) {
  SCOPED_TRACE("order " + std::to_string(n) + ": " + hadamard_construction(n));
  const at::Tensor h = hadamard_matrix(n);
  ASSERT_TRUE(h.defined());
  ASSERT_EQ(h.size(0), n);
  EXPECT_TRUE(at::equal(h.abs(), at::ones_like(h)));
  EXPECT_TRUE(at::equal(at::matmul(h, h.t()), n * at::eye(n, at::kDouble)));
}

TEST(Hadamard, EveryConstructionIsHadamard) {
  for (std::int64_t n : {1, 2, 4, 64, 12, 20, 28, 36, 44, 60, 108, 172, 344, 768}) expect_hadamard(n);
  EXPECT_EQ(hadamard_construction(12), "H12 (Paley I, q=11)");
  EXPECT_EQ(hadamard_construction(28), "H28 (Paley I, q=27)");  // GF(3³)
  EXPECT_EQ(hadamard_construction(36), "H36 (Paley II, q=17)");
  EXPECT_EQ(hadamard_construction(344), "H172 (Williamson, w=43) x H2 (Sylvester)");  // the smallest base first
  EXPECT_EQ(hadamard_construction(172), "H172 (Williamson, w=43)");
  EXPECT_EQ(hadamard_construction(768), "H12 (Paley I, q=11) x H64 (Sylvester)");
  // The large model sizes are Kronecker products of factors checked above (H_a ⊗ H_b is Hadamard).
  EXPECT_EQ(hadamard_construction(11008), "H172 (Williamson, w=43) x H64 (Sylvester)");
  EXPECT_EQ(hadamard_construction(28672), "H28 (Paley I, q=27) x H1024 (Sylvester)");
  // No construction here: 188 = 4·47 (neither Paley nor a listed Williamson quadruple) and orders that are
  // not multiples of 4.
  EXPECT_FALSE(hadamard_matrix(188).defined());
  EXPECT_FALSE(hadamard_matrix(6).defined());
  EXPECT_EQ(hadamard_construction(188), "");
}

TEST(Hadamard, RotationsAreOrthogonalSeededAndSayWhatTheyAre) {
  for (const auto& [n, kind] : {std::pair<std::int64_t, RotationKind>{64, RotationKind::kHadamard},
                                {768, RotationKind::kHadamard},
                                {188, RotationKind::kHadamard},
                                {40, RotationKind::kRandomOrthogonal}}) {
    SCOPED_TRACE(n);
    const Rotation r = make_rotation(n, kind, 7);
    EXPECT_LT((at::matmul(r.matrix, r.matrix.t()) - at::eye(n, at::kDouble)).abs().max().item<double>(), 1e-12);
    EXPECT_TRUE(at::equal(r.matrix, make_rotation(n, kind, 7).matrix));
    EXPECT_FALSE(at::equal(r.matrix, make_rotation(n, kind, 8).matrix));
  }
  EXPECT_NE(make_rotation(768, RotationKind::kHadamard, 1).construction.find("randomised Hadamard H12"), std::string::npos);
  EXPECT_NE(make_rotation(188, RotationKind::kHadamard, 1).construction.find("no Hadamard matrix of order 188"),
            std::string::npos);
  EXPECT_THROW(parse_rotation_kind("givens"), InputError);
}

// Logits of a model held as tensors, in their dtype (no activation quantization).
at::Tensor model_logits(const storage::LlamaConfig& c, const ModelWeights& m, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  const RopeTables rope = make_rope_tables(c, ids.size(1), at::kCPU);
  at::Tensor h = at::embedding(m.embed, ids);
  for (const BlockWeights& b : m.blocks) h = block_forward(c, b, h, rope);
  return at::matmul(rms_norm(h, m.final_norm, c.rms_norm_eps), m.head.t());
}

storage::LlamaConfig config(int hidden, int heads, int kv_heads, bool tied) {
  const nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", hidden}, {"intermediate_size", 40},
                            {"num_hidden_layers", 2}, {"num_attention_heads", heads}, {"num_key_value_heads", kv_heads},
                            {"vocab_size", 50}, {"max_position_embeddings", 32}, {"rms_norm_eps", 1e-5},
                            {"tie_word_embeddings", tied}};
  return storage::parse_llama_config(j, "test");
}

ModelWeights random_model(const storage::LlamaConfig& c, bool tied) {
  at::manual_seed(21);
  ModelWeights m;
  m.embed = at::randn({c.vocab_size, c.hidden_size}, at::kDouble);
  m.final_norm = 1 + 0.3 * at::randn({c.hidden_size}, at::kDouble);
  m.head = tied ? m.embed : at::randn({c.vocab_size, c.hidden_size}, at::kDouble) * 0.2;
  for (int b = 0; b < c.num_hidden_layers; ++b) {
    BlockWeights w = BlockWeights::random(c, at::kDouble, 0.2, 0.3);
    w.v_bias = 0.1 * at::randn({c.kv_dim()}, at::kDouble);
    w.o_bias = 0.1 * at::randn({c.hidden_size}, at::kDouble);
    m.blocks.push_back(std::move(w));
  }
  return m;
}

TEST(Rotation, R1AndR2RotatedModelsGiveTheOriginalLogitsInFp64) {
  struct Case {
    int hidden, heads, kv_heads;
    bool tied;
    RotationKind kind;
  };
  // MHA and GQA, tied and untied; 48 = H12 (Paley) x H4, head_dim 8 = H8; 40 has no Hadamard matrix here.
  for (const Case& k : {Case{32, 4, 4, false, RotationKind::kHadamard}, Case{48, 6, 2, true, RotationKind::kHadamard},
                        Case{40, 5, 1, true, RotationKind::kRandomOrthogonal}}) {
    SCOPED_TRACE(std::to_string(k.hidden) + (k.tied ? " tied" : "") + " kv " + std::to_string(k.kv_heads));
    const auto c = config(k.hidden, k.heads, k.kv_heads, k.tied);
    const ModelWeights original = random_model(c, k.tied);
    at::manual_seed(4);
    const at::Tensor ids = at::randint(0, c.vocab_size, {2, 12}, at::kLong);
    const at::Tensor want = model_logits(c, original, ids);
    ModelRotations r;
    r.r1 = make_rotation(c.hidden_size, k.kind, 3).matrix;
    r.r2 = make_rotation(c.head_dim, k.kind, 5).matrix;
    ModelWeights rotated = original;
    rotate_model(c, rotated, r);
    EXPECT_LT((model_logits(c, rotated, ids) - want).abs().max().item<double>(), 1e-9);
    EXPECT_FALSE(at::allclose(rotated.blocks[0].q, original.blocks[0].q));  // it really changed the weights
    EXPECT_TRUE(at::equal(rotated.blocks[1].input_norm, at::ones({c.hidden_size}, at::kDouble)));
    if (k.tied) {
      EXPECT_FALSE(at::equal(rotated.head, rotated.embed));  // untied in the rotated model
    }
    // With the online rotations too (R3 on Q/K after RoPE, R4 on down_proj's input): still the original function.
    r.r3 = make_rotation(c.head_dim, k.kind, 6).matrix;
    r.r4 = make_rotation(c.intermediate_size, k.kind, 7).matrix;
    ModelWeights online = original;
    rotate_model(c, online, r);
    EXPECT_LT((model_logits(c, online, ids) - want).abs().max().item<double>(), 1e-9);
    EXPECT_FALSE(at::allclose(online.blocks[0].down, rotated.blocks[0].down));
    ASSERT_TRUE(online.blocks[1].down_rotation.defined() && online.blocks[1].qk_rotation.defined());
  }
}

TEST(Rotation, ModelsWithFaithfulExtrasAreRefused) {
  const auto c = config(32, 4, 4, false);
  ModelWeights m = random_model(c, false);
  m.blocks[1].input_norm_bias = at::zeros({32}, at::kDouble);
  ModelRotations r;
  r.r1 = make_rotation(32, RotationKind::kHadamard, 1).matrix;
  EXPECT_THROW(rotate_model(c, m, r), InputError);
}

TEST(RotationJob, TheRotatedModelIsTheOriginalFunctionAndTheOutputSaysItIsRotated) {
  const auto model = test::shared_data() / "models/stories260K-hf";
  const auto text = test::shared_data() / "models/stories260K/generated-eval.txt";
  const auto tok = test::shared_data() / "models/stories260K/tok512.bin";
  QF_REQUIRE_DATA(model / "model.safetensors");
  QF_REQUIRE_DATA(text);
  const auto dir = test::make_temp_dir("rotation-job");
  const auto quantize = [&](const std::string& flags) {
    return test::run_command(test::qforge_binary() + " quantize --log-level warn --method rtn --wbits 8 --model " +
                             test::shell_quote(model.string()) + " --out " + test::shell_quote((dir / "out").string()) +
                             " --job-dir " + test::shell_quote((dir / "job").string()) + " " + flags);
  };
  auto r = quantize("--rotate hadamard --rotate-seed 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rotated = dir / "job" / "rotated-model";
  const auto eval = [&](const std::filesystem::path& m) {
    return test::qforge_eval_json("--model " + test::shell_quote(m.string()) + " --data " + test::shell_quote(text.string()) +
                                  " --tokenizer " + test::shell_quote(tok.string()) + " --seqlen 128");
  };
  // fp32 forward of a rotated model: equal to the original's up to float32 rounding of the products.
  const double fp = eval(model).value("ppl", 0.0), rot = eval(rotated).value("ppl", 1.0);
  EXPECT_NEAR(rot / fp, 1.0, 1e-5) << fp << " vs " << rot;
  const auto cfg = nlohmann::json::parse(read_file(dir / "out" / "config.json"));
  EXPECT_EQ(cfg["tie_word_embeddings"], false);
  const auto& rec = cfg["quantization_config"]["calibration"]["rotation"];
  EXPECT_EQ(rec["kind"], "hadamard") << cfg.dump();
  EXPECT_EQ(rec["r1"], "randomised Hadamard H64 (Sylvester), seed 3");
  EXPECT_EQ(rec["r2"], "randomised Hadamard H8 (Sylvester), seed 4");
  EXPECT_LT(eval(dir / "out").value("ppl", 1e9), fp * 1.01);  // W8 weights: a small loss
  // A rerun reuses the rotated model; another rotation is another job, refused on this job directory.
  const auto written = std::filesystem::last_write_time(rotated / "model.safetensors");
  ASSERT_EQ(quantize("--rotate hadamard --rotate-seed 3").exit_code, 0);
  EXPECT_EQ(std::filesystem::last_write_time(rotated / "model.safetensors"), written);
  r = quantize("--rotate hadamard --rotate-seed 4");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = quantize("--rotate spin");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--rotate"), std::string::npos) << r.output;
}

// With quantized activations the rotation adds R3 (Q/K) and R4 (down_proj's input) online: the rotated FP
// model is still the original function, W4A4 damage drops, and the result says it needs qforge to run.
TEST(RotationJob, OnlineRotationsLowerW4A4DamageAndTheResultIsRefusedByExporters) {
  const auto model = test::shared_data() / "models/stories260K-hf";
  const auto text = test::shared_data() / "models/stories260K/generated-eval.txt";
  const auto tok = test::shared_data() / "models/stories260K/tok512.bin";
  QF_REQUIRE_DATA(model / "model.safetensors");
  QF_REQUIRE_DATA(text);
  const auto dir = test::make_temp_dir("rotation-online");
  const auto quantize = [&](const std::string& name, const std::string& flags) {
    return test::run_command(test::qforge_binary() + " quantize --log-level warn --method rtn --wbits 4 --abits 4 "
                             "--calib-data model:generate --nsamples 8 --calib-seqlen 128 --tokenizer " +
                             test::shell_quote(tok.string()) + " --model " + test::shell_quote(model.string()) + " --out " +
                             test::shell_quote((dir / name).string()) + " --job-dir " +
                             test::shell_quote((dir / (name + "-job")).string()) + " " + flags);
  };
  const auto eval = [&](const std::filesystem::path& m) {
    return test::qforge_eval_json("--model " + test::shell_quote(m.string()) + " --reference " +
                                  test::shell_quote(model.string()) + " --data " + test::shell_quote(text.string()) +
                                  " --tokenizer " + test::shell_quote(tok.string()) + " --seqlen 128");
  };
  // Refused before anything is calibrated.
  auto r = quantize("refused", "--rotate hadamard --export gptq");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("R4"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "refused-job"));
  ASSERT_EQ(quantize("plain", "").exit_code, 0);
  r = quantize("rotated", "--rotate hadamard --rotate-seed 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("no export format takes this result"), std::string::npos) << r.output;
  EXPECT_NEAR(eval(dir / "rotated-job" / "rotated-model").value("kl", 1.0), 0.0, 1e-6);  // FP function unchanged
  // KL to FP on held-out text, measured: plain 0.966; rotated (rotate seeds 1, 2, 3) 0.789, 0.762, 0.674.
  const double plain = eval(dir / "plain").value("kl", 0.0), rotated = eval(dir / "rotated").value("kl", 1e9);
  EXPECT_LT(rotated, 0.9 * plain) << plain << " -> " << rotated;
  const auto cfg = nlohmann::json::parse(read_file(dir / "rotated" / "config.json"));
  EXPECT_EQ(cfg["qforge_down_proj_rotation"], true);
  EXPECT_EQ(cfg["qforge_qk_rotation"], true);
  const auto& rec = cfg["quantization_config"]["calibration"]["rotation"];
  EXPECT_NE(rec.value("r3", "").find("online, on Q and K after RoPE"), std::string::npos) << rec.dump();
  EXPECT_NE(rec.value("r4", "").find("H172 (Williamson, w=43)"), std::string::npos) << rec.dump();
  r = test::run_command(test::qforge_binary() + " export --format compressed-tensors --model " +
                        test::shell_quote((dir / "rotated").string()) + " --out " + test::shell_quote((dir / "ct").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("rotates activations at run time"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace qforge::worker
