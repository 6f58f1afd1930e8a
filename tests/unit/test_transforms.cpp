// Equivalent transformations: every fold is an exact equivalence in fp64 before quantization (MHA and
// GQA, RoPE-commuting q/k at every position of a 16-token window, Qwen3's q/k scale in its norms), the AffineQuant mask schedule, band
// gradients, diagonal-dominance restoration, and that calibration lowers the block loss.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include <nlohmann/json.hpp>
#include <tuple>

#include "storage/hf_config.h"
#include "tests/support/small_model.h"
#include "tests/support/test_data.h"
#include "worker/block_transforms.h"
#include "worker/calibrator.h"
#include "worker/llama_model.h"

namespace qforge::worker {
namespace {

storage::LlamaConfig small_config(int heads, int kv_heads) { return test::small_llama_config(heads, kv_heads); }

BlockWeights random_block(const storage::LlamaConfig& c, at::ScalarType dt) {
  return BlockWeights::random(c, dt, 0.2, 0.1);
}

RopeTables double_rope(const storage::LlamaConfig& c, std::int64_t seqlen) {
  RopeTables rope = make_rope_tables(c, seqlen, at::kCPU);
  return {rope.cos.to(at::kDouble), rope.sin.to(at::kDouble)};
}

ActStats stats_for(const storage::LlamaConfig& c, const BlockWeights& w, const at::Tensor& x, const RopeTables& rope) {
  ActStats s;
  accumulate_act_stats(c, w, x, rope, s);
  return s;
}

// Moves every transform parameter away from its initialisation (off-diagonals included) so the
// equivalence is tested on a generic transform, not the identity.
void perturb(BlockTransforms& t, bool keep_faithful_qk) {
  at::NoGradGuard no_grad;
  for (auto& [name, p] : t.named_let_parameters()) {
    if (keep_faithful_qk && name == "qk.transform") continue;  // folded before RoPE: not an equivalence
    p.mul_(0.7 + 0.6 * at::rand_like(p)).add_(0.05 * at::randn_like(p));
  }
}

double max_output_diff(bool gqa, Method method, bool faithful, bool qk_norm = false) {
  at::manual_seed(gqa ? 1 : 2);
  auto c = small_config(4, gqa ? 2 : 4);
  c.qk_norm = qk_norm;
  BlockWeights fp = random_block(c, at::kDouble);
  at::Tensor x = at::randn({2, 16, c.hidden_size}, at::kDouble);
  RopeTables rope = double_rope(c, 16);
  TransformOptions o;
  o.method = method;
  o.let = true;
  o.deployable = !faithful;
  o.shifts = faithful;
  o.ln_matrix = faithful && method == Method::kAffineQuant;
  o.fp64_matrices = true;
  o.stability_factor = 0.5;
  WeightQuantSpec spec;
  BlockTransforms t(c, fp, stats_for(c, fp, x.to(at::kDouble), rope), o, spec);
  t.set_epoch(1, 3);  // a partial band: the equivalence must hold for any mask
  perturb(t, faithful);
  at::NoGradGuard no_grad;
  BlockWeights folded = t.transformed(fp);
  return (block_forward(c, folded, x, rope) - block_forward(c, fp, x, rope)).abs().max().item<double>();
}

TEST(TransformFold, AffineQuantDeployableIsExactMhaAndGqa) {
  EXPECT_LT(max_output_diff(false, Method::kAffineQuant, false), 1e-9);
  EXPECT_LT(max_output_diff(true, Method::kAffineQuant, false), 1e-9);
}

TEST(TransformFold, OmniQuantDeployableIsExactMhaAndGqa) {
  EXPECT_LT(max_output_diff(false, Method::kOmniQuant, false), 1e-9);
  EXPECT_LT(max_output_diff(true, Method::kOmniQuant, false), 1e-9);
}

TEST(TransformFold, FaithfulShiftsAndLnMatricesAreExact) {
  // Shifts become biases (q/k/v/o/gate/up and an RMSNorm bias), LN matrices a runtime inverse.
  EXPECT_LT(max_output_diff(false, Method::kAffineQuant, true), 1e-9);
  EXPECT_LT(max_output_diff(true, Method::kAffineQuant, true), 1e-9);
  EXPECT_LT(max_output_diff(true, Method::kOmniQuant, true), 1e-9);
}

TEST(TransformFold, Qwen3QkScaleFoldsIntoTheQkNormsExactly) {
  // Per-head q/k norms (Qwen3): the q/k transform is a per-pair scale folded into q_norm/k_norm, in both
  // modes and for both methods, with every other transform as usual.
  for (const Method m : {Method::kAffineQuant, Method::kOmniQuant}) {
    EXPECT_LT(max_output_diff(true, m, false, /*qk_norm=*/true), 1e-9);
    EXPECT_LT(max_output_diff(true, m, true, /*qk_norm=*/true), 1e-9);
  }
  at::manual_seed(4);
  auto c = small_config(4, 2);
  c.qk_norm = true;
  const BlockWeights fp = random_block(c, at::kDouble);
  const at::Tensor x = at::randn({1, 8, c.hidden_size}, at::kDouble);
  TransformOptions o;
  o.method = Method::kAffineQuant;
  o.let = true;
  BlockTransforms t(c, fp, stats_for(c, fp, x, double_rope(c, 8)), o, {});
  std::vector<std::int64_t> qk_shape;
  for (auto& [name, p] : t.named_let_parameters()) {
    if (name == "qk.a") qk_shape = p.sizes().vec();
    EXPECT_NE(name, "qk.b");  // no rotation part
  }
  EXPECT_EQ(qk_shape, (std::vector<std::int64_t>{1, c.head_dim / 2}));
  perturb(t, false);
  at::NoGradGuard no_grad;
  const BlockWeights folded = t.transformed(fp);
  EXPECT_FALSE(at::allclose(folded.k_norm, fp.k_norm));
  // k_norm·s and q_norm/s: their product is unchanged, channel by channel.
  EXPECT_TRUE(at::allclose(folded.k_norm * folded.q_norm, fp.k_norm * fp.q_norm, 1e-12, 1e-12));
}

TEST(TransformFold, FaithfulQkBeforeRopeIsNotAnEquivalence) {
  // The reference's q/k matrix folded before RoPE changes the output away from position 0: the reason
  // the RoPE-commuting transform is the default.
  at::manual_seed(3);
  auto c = small_config(4, 2);
  BlockWeights fp = random_block(c, at::kDouble);
  at::Tensor x = at::randn({1, 16, c.hidden_size}, at::kDouble);
  RopeTables rope = double_rope(c, 16);
  TransformOptions o;
  o.method = Method::kAffineQuant;
  o.let = true;
  o.deployable = false;
  o.fp64_matrices = true;
  BlockTransforms t(c, fp, stats_for(c, fp, x, rope), o, {});
  {
    at::NoGradGuard no_grad;
    for (auto& [name, p] : t.named_let_parameters()) {
      if (name == "qk.transform") p.add_(0.2 * at::randn_like(p));
    }
  }
  at::NoGradGuard no_grad;
  at::Tensor diff = (block_forward(c, t.transformed(fp), x, rope) - block_forward(c, fp, x, rope)).abs();
  EXPECT_LT(diff[0][0].max().item<double>(), 1e-9);  // position 0: RoPE is the identity
  EXPECT_GT(diff.max().item<double>(), 1e-6);
}

TEST(AffineMask, ScheduleMatchesFormula) {
  // w_e = int((n - 1) / (E - 1) * e): n = 8, E = 4 -> 0, 2, 4, 7; E = 1 -> full band.
  EXPECT_EQ(band_width(8, 0, 4), 0);
  EXPECT_EQ(band_width(8, 1, 4), 2);
  EXPECT_EQ(band_width(8, 2, 4), 4);
  EXPECT_EQ(band_width(8, 3, 4), 7);
  EXPECT_EQ(band_width(8, 0, 1), 7);
  // n = 4096, E = 20: 0, 215, 431, ..., 4094 (the reference's float truncation leaves the corners out).
  EXPECT_EQ(band_width(4096, 1, 20), 215);
  EXPECT_EQ(band_width(4096, 19, 20), 4094);
  at::Tensor m = band_mask(5, 1, 0.1);
  const float expected[5][5] = {{1, .1f, 0, 0, 0}, {.1f, 1, .1f, 0, 0}, {0, .1f, 1, .1f, 0}, {0, 0, .1f, 1, .1f}, {0, 0, 0, .1f, 1}};
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) EXPECT_FLOAT_EQ(m[i][j].item<float>(), expected[i][j]) << i << "," << j;
}

TEST(AffineMask, InBandEntriesTrainOutOfBandStayZero) {
  at::manual_seed(4);
  auto c = small_config(4, 2);
  BlockWeights fp = random_block(c, at::kFloat);
  at::Tensor x = at::randn({2, 16, c.hidden_size});
  RopeTables rope = make_rope_tables(c, 16, at::kCPU);
  TransformOptions o;
  o.method = Method::kAffineQuant;
  o.let = true;
  o.stability_factor = 0.5;
  BlockTransforms t(c, fp, stats_for(c, fp, x, rope), o, {});
  at::Tensor vo;
  for (auto& [name, p] : t.named_let_parameters()) {
    if (name == "vo.transform") vo = p;
  }
  ASSERT_TRUE(vo.defined());
  ASSERT_EQ(vo.sizes(), (at::IntArrayRef{2, 8, 8}));  // one d x d matrix per KV group
  t.set_epoch(1, 4);                                    // band half-width int(7/3) = 2
  torch::optim::AdamW opt({vo}, torch::optim::AdamWOptions(1e-2).weight_decay(0));
  at::Tensor target = block_forward(c, fp, x, rope);
  for (int step = 0; step < 3; ++step) {
    WeightQuantSpec spec;
    spec.bits = 3;
    at::Tensor loss = at::mse_loss(block_forward(c, t.fake_quantized(fp), x, rope, {4, false}), target);
    opt.zero_grad();
    loss.backward();
    if (step == 0) {
      at::Tensor g = vo.grad();
      EXPECT_GT(g[0][0][2].abs().item<double>(), 0.0);  // |i - j| = 2: in band
      EXPECT_EQ(g[0][0][3].item<double>(), 0.0);        // |i - j| = 3: out of band
      EXPECT_EQ(g[1][7][0].item<double>(), 0.0);
    }
    opt.step();
  }
  at::NoGradGuard no_grad;
  at::Tensor i = at::arange(8);
  at::Tensor dist = (i.unsqueeze(1) - i.unsqueeze(0)).abs();
  EXPECT_TRUE(vo.masked_select((dist > 2).unsqueeze(0).expand({2, 8, 8})).eq(0).all().item<bool>());
  EXPECT_TRUE(vo.masked_select(((dist > 0) & (dist <= 2)).unsqueeze(0).expand({2, 8, 8})).ne(0).all().item<bool>());
}

TEST(AffineMask, DiagonalDominanceIsRestored) {
  auto c = small_config(4, 4);
  at::manual_seed(5);
  BlockWeights fp = random_block(c, at::kFloat);
  at::Tensor x = at::randn({1, 8, c.hidden_size});
  RopeTables rope = make_rope_tables(c, 8, at::kCPU);
  TransformOptions o;
  o.method = Method::kAffineQuant;
  o.let = true;
  BlockTransforms t(c, fp, stats_for(c, fp, x, rope), o, {});
  t.set_epoch(0, 1);  // full band, sf = 1
  at::Tensor vo;
  for (auto& [name, p] : t.named_let_parameters()) {
    if (name == "vo.transform") vo = p;
  }
  {
    at::NoGradGuard no_grad;
    vo.add_(at::ones_like(vo));  // every row now has off-diagonal mass 7 against a diagonal of ~1
  }
  EXPECT_FALSE(strictly_diagonally_dominant(vo.detach()));
  EXPECT_EQ(t.enforce_diagonal_dominance(), 4 * 8);
  EXPECT_TRUE(strictly_diagonally_dominant(vo.detach()));
  EXPECT_EQ(t.enforce_diagonal_dominance(), 0);
}

TEST(Calibration, TrainingLowersBlockLossOnStories260K) {
  const auto dir = test::shared_data() / "models/stories260K-hf";
  QF_REQUIRE_DATA(dir / "model.safetensors");
  LlamaModel m(dir);
  at::manual_seed(6);
  at::Tensor ids = at::randint(3, 512, {4, 64}, at::kLong);
  at::NoGradGuard no_grad_outer;
  at::Tensor x = m.embed(ids);
  RopeTables rope = m.rope(64);
  BlockWeights fp = BlockWeights::load(m.checkpoint(), m.config(), 0, at::kFloat, at::kCPU);
  ActStats stats = stats_for(m.config(), fp, x, rope);
  at::Tensor y = block_forward(m.config(), fp, x, rope);
  CalibOptions o;
  o.transform.method = Method::kAffineQuant;
  o.transform.let = true;
  o.transform.lwc = true;
  o.weights.bits = 3;
  o.acts.bits = 16;
  o.epochs = 4;
  o.batch_size = 1;
  at::AutoGradMode grad(true);
  BlockResult r = calibrate_block(m.config(), fp, x, y, {}, stats, o, rope, "test block");
  ASSERT_EQ(r.epoch_loss.size(), 4u);
  EXPECT_LT(r.final_loss, r.initial_loss);
  EXPECT_LT(r.epoch_loss.back(), r.epoch_loss.front());
  ASSERT_EQ(r.linears.size(), 7u);
  // The fake-quant weights are exactly the dequantized stored codes.
  for (std::size_t i = 0; i < 7; ++i) {
    const auto& q = r.linears[i];
    at::Tensor deq = q.scales.to(at::kFloat) * (q.codes.to(at::kFloat) - q.zeros.to(at::kFloat));  // per channel
    EXPECT_TRUE(at::equal(deq, linear_weight(r.weights, i))) << linear_names()[i];
  }
}

// A random GQA block with 4 calibration sequences, its statistics and FP targets.
struct SmallProblem {
  storage::LlamaConfig c = small_config(4, 2);
  BlockWeights fp;
  at::Tensor x, y;
  RopeTables rope;
  ActStats stats;
  explicit SmallProblem(std::uint64_t seed) {
    at::manual_seed(seed);
    fp = random_block(c, at::kFloat);
    x = at::randn({4, 16, c.hidden_size});
    rope = make_rope_tables(c, 16, at::kCPU);
    stats = stats_for(c, fp, x, rope);
    at::NoGradGuard ng;
    y = block_forward(c, fp, x, rope);
  }
};

TEST(Calibration, FoldUsesTheLastEpochsMask) {
  SmallProblem p(7);
  const auto& [c, fp, x, y, rope, stats] = std::tie(p.c, p.fp, p.x, p.y, p.rope, p.stats);
  CalibOptions o;
  o.transform.method = Method::kAffineQuant;
  o.transform.let = true;
  o.transform.stability_factor = 0.5;
  o.weights.bits = 3;
  o.epochs = 3;
  BlockResult r = calibrate_block(c, fp, x, y, {}, stats, o, rope, "mask test");
  // Re-fold the trained state under each epoch's mask: only the last one (full band) reproduces the result.
  auto refold = [&](int epoch) {
    BlockTransforms t(c, fp, stats, o.transform, o.weights);
    t.load_state(r.transform_state);
    t.set_epoch(epoch, o.epochs);
    return finalize_block(fp, t, o.weights).weights;
  };
  EXPECT_TRUE(at::equal(refold(2).v, r.weights.v));
  EXPECT_TRUE(at::equal(refold(2).o, r.weights.o));
  EXPECT_FALSE(at::equal(refold(0).o, r.weights.o));
}

TEST(Calibration, Fp64MatricesAndFaithfulShiftsTrainWithoutNaN) {
  SmallProblem p(8);
  const auto& [c, fp, x, y, rope, stats] = std::tie(p.c, p.fp, p.x, p.y, p.rope, p.stats);
  CalibOptions o;
  o.transform.method = Method::kAffineQuant;
  o.transform.let = true;
  o.transform.lwc = true;
  o.transform.deployable = false;
  o.transform.shifts = true;
  o.transform.ln_matrix = true;
  o.transform.fp64_matrices = true;
  o.transform.stability_factor = 1e-2;
  o.weights.bits = 3;
  o.weights.deployable = false;
  o.acts.bits = 6;
  o.epochs = 3;
  o.aug_loss = true;
  BlockResult r = calibrate_block(c, fp, x, y, y, stats, o, rope, "fp64 test");
  EXPECT_TRUE(std::isfinite(r.final_loss));
  EXPECT_LT(r.final_loss, r.initial_loss);
  EXPECT_TRUE(r.weights.input_norm_inverse.defined());
  EXPECT_TRUE(r.weights.input_norm_bias.defined());
  EXPECT_TRUE(at::isfinite(r.weights.o).all().item<bool>());
}

}  // namespace
}  // namespace qforge::worker
