// Uniform fake quantizers (worker/quantizer.h, algorithms.md §1.2), checked against numbers worked out
// by hand on tiny tensors. Each expected value was computed with plain python3, emulating the fp32
// arithmetic of the implementation (f32 = struct 'f' round trip) and the fp16 storage rounding of the
// weight scales (f16 = struct 'e' round trip); the arithmetic is in the comment next to each literal.
// Rounding is half-to-even everywhere (torch .round() and python round() agree); inputs were chosen
// so that no W/Δ lands within 1e-3 of a .5 tie, so fp32-vs-fp64 details cannot flip a code.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/error.h"
#include "worker/quantizer.h"

namespace qforge::worker {
namespace {

// f16(1e-5): the clamped minimum scale as stored in fp16. 1e-5 is subnormal in fp16 (step 2^-24),
// 1e-5 / 2^-24 = 167.77 -> 168 · 2^-24 = 1.0013580322265625e-05.
constexpr double kMinScaleFp16 = 1.0013580322265625e-05;

// σ(4) = 1 / (1 + e^-4) = 0.9820137900379085 (fp32: 0.9820137619972229); σ'(4) = σ(1 - σ).
constexpr double kSigmoid4 = 0.9820137900379085;

at::Tensor make(const std::vector<float>& values, std::int64_t rows, std::int64_t cols) {
  return at::tensor(values, at::kFloat).view({rows, cols}).clone();
}

// Element by element, so a failure names the flat index and both values. Exact comparison: every
// weight-side expectation is an fp16 scale times a small integer, which fp32 represents exactly.
void expect_exact(const at::Tensor& actual, const std::vector<double>& expected) {
  at::Tensor a = actual.detach().to(at::kDouble).contiguous().view(-1);
  ASSERT_EQ(a.numel(), static_cast<std::int64_t>(expected.size()));
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(a[static_cast<std::int64_t>(i)].item<double>(), expected[i]) << "flat index " << i;
  }
}

// Within 4 fp32 ulps: activation outputs are fp32 products whose last bit depends on operation order.
void expect_float(const at::Tensor& actual, const std::vector<float>& expected) {
  at::Tensor a = actual.detach().to(at::kFloat).contiguous().view(-1);
  ASSERT_EQ(a.numel(), static_cast<std::int64_t>(expected.size()));
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_FLOAT_EQ(a[static_cast<std::int64_t>(i)].item<float>(), expected[i]) << "flat index " << i;
  }
}

bool all_finite(const at::Tensor& t) { return at::isfinite(t.detach()).all().item<bool>(); }

// ---------------------------------------------------------------------------------------------
// 1. Asymmetric per-channel 4-bit (qmax = 15).

// Row 0 = [-1, -0.2, 0.3, 2]:  Δ = f16((2 - -1)/15) = f16(0.2) = 0.199951171875,
//   z = round(1/Δ) = round(5.0012) = 5, W/Δ = [-5.0012, -1.0002, 1.5004, 10.0024]
//   codes = round(W/Δ) + 5 = [0, 4, 7, 15], Q = Δ·(codes - 5) = Δ·[-5, -1, 2, 10].
// Row 1 = [0.5, -0.5, 0.25, -0.75]: Δ = f16(1.25/15) = f16(0.083333) = 0.08331298828125,
//   z = round(0.75/Δ) = round(9.0022) = 9, W/Δ = [6.0015, -6.0015, 3.0007, -9.0022]
//   codes = [15, 3, 12, 0], Q = Δ·[6, -6, 3, -9].
TEST(WeightQuantAsym, PerChannel4BitHandWorked) {
  const at::Tensor w = make({-1.0f, -0.2f, 0.3f, 2.0f, 0.5f, -0.5f, 0.25f, -0.75f}, 2, 4);
  WeightQuantSpec spec;  // 4 bits, per channel, asymmetric, deployable
  const WeightQParams qp = weight_qparams(w, spec);
  ASSERT_EQ(qp.scale.sizes(), (at::IntArrayRef{2, 1}));
  ASSERT_EQ(qp.zero.sizes(), (at::IntArrayRef{2, 1}));
  expect_exact(qp.scale, {0.199951171875, 0.08331298828125});
  expect_exact(qp.zero, {5.0, 9.0});

  const at::Tensor codes = weight_codes(w, spec, qp);
  EXPECT_EQ(codes.scalar_type(), at::kByte);
  expect_exact(codes, {0, 4, 7, 15, 15, 3, 12, 0});

  const double d0 = 0.199951171875, d1 = 0.08331298828125;
  const std::vector<double> deq = {-5 * d0, -1 * d0, 2 * d0, 10 * d0, 6 * d1, -6 * d1, 3 * d1, -9 * d1};
  // = [-0.999755859375, -0.199951171875, 0.39990234375, 1.99951171875,
  //    0.4998779296875, -0.4998779296875, 0.24993896484375, -0.74981689453125]
  expect_exact(dequantize_weight(codes, spec, qp), deq);
  const at::Tensor fq = fake_quant_weight(w, spec);
  EXPECT_EQ(fq.sizes(), w.sizes());
  EXPECT_EQ(fq.scalar_type(), at::kFloat);
  expect_exact(fq, deq);
}

// ---------------------------------------------------------------------------------------------
// 2. Symmetric (GPTQ convention) 4-bit: z = 2^3 = 8, Δ = 2·absmax/15, codes in 0..15.

// Row 0 = [-1.5, -0.4, 0.2, 1]:  Δ = f16(2·1.5/15) = f16(0.2) = 0.199951171875,
//   W/Δ = [-7.5018, -2.0005, 1.0002, 5.0012] -> round = [-8, -2, 1, 5] -> codes [0, 6, 9, 13].
//   The negative extreme reaches code 0 exactly: Q = -8Δ = -1.599609375.
// Row 1 = [1.5, -0.3, 0.1, -1.2]: same Δ, W/Δ = [7.5018, -1.5004, 0.5001, -6.0015]
//   -> round = [8, -2, 1, -6] -> +8 = [16, 6, 9, 2]: the positive extreme clamps 16 -> 15,
//   so Q(1.5) = 7Δ = 1.399658203125 (the grid holds 8 negative steps but only 7 positive ones).
TEST(WeightQuantSym, Gptq4BitZeroEightAndPositiveClamp) {
  const at::Tensor w = make({-1.5f, -0.4f, 0.2f, 1.0f, 1.5f, -0.3f, 0.1f, -1.2f}, 2, 4);
  WeightQuantSpec spec;
  spec.sym = true;
  const WeightQParams qp = weight_qparams(w, spec);
  expect_exact(qp.scale, {0.199951171875, 0.199951171875});
  expect_exact(qp.zero, {8.0, 8.0});
  const at::Tensor codes = weight_codes(w, spec, qp);
  expect_exact(codes, {0, 6, 9, 13, 15, 6, 9, 2});
  const double d = 0.199951171875;
  const std::vector<double> deq = {-8 * d, -2 * d, 1 * d, 5 * d, 7 * d, -2 * d, 1 * d, -6 * d};
  expect_exact(dequantize_weight(codes, spec, qp), deq);
  expect_exact(fake_quant_weight(w, spec), deq);
}

// ---------------------------------------------------------------------------------------------
// 3. Groups.

TEST(WeightQuantGroups, NumGroups) {
  EXPECT_EQ(num_groups(5, 2), 3);    // ceil(5/2)
  EXPECT_EQ(num_groups(4, 0), 1);    // 0: one group per row
  EXPECT_EQ(num_groups(4, 2), 2);
  EXPECT_EQ(num_groups(128, 48), 3);  // 48 + 48 + 32
  EXPECT_EQ(num_groups(4, 8), 1);    // group wider than the row
}

// Row [-0.6, 0.9, -0.3, 1.2], g = 2:
//   group 0 [-0.6, 0.9]: Δ = f16(1.5/15) = f16(0.1) = 0.0999755859375, z = round(0.6/Δ) = round(6.0015) = 6,
//     W/Δ = [-6.0015, 9.0022] -> codes [0, 15], Q = Δ·[-6, 9];
//   group 1 [-0.3, 1.2]: Δ = f16(1.5/15) = 0.0999755859375, z = round(3.0007) = 3,
//     W/Δ = [-3.0007, 12.0029] -> codes [0, 15], Q = Δ·[-3, 12].
// Per channel instead, Δ = f16(1.8/15) would be shared; two groups give two independent zero points.
TEST(WeightQuantGroups, TwoGroupsOfTwo) {
  const at::Tensor w = make({-0.6f, 0.9f, -0.3f, 1.2f}, 1, 4);
  WeightQuantSpec spec;
  spec.group_size = 2;
  const WeightQParams qp = weight_qparams(w, spec);
  ASSERT_EQ(qp.scale.sizes(), (at::IntArrayRef{1, 2}));
  expect_exact(qp.scale, {0.0999755859375, 0.0999755859375});
  expect_exact(qp.zero, {6.0, 3.0});
  const at::Tensor codes = weight_codes(w, spec, qp);
  expect_exact(codes, {0, 15, 0, 15});
  const double d = 0.0999755859375;
  const std::vector<double> deq = {-6 * d, 9 * d, -3 * d, 12 * d};
  expect_exact(dequantize_weight(codes, spec, qp), deq);
  expect_exact(fake_quant_weight(w, spec), deq);
}

// in = 5, g = 2 -> G = 3 and the last group holds column 4 alone. The first two groups are those of
// TwoGroupsOfTwo. The single value v = 0.7 has max = min = v, so Δ = 0 -> clamped to 1e-5 -> f16 =
// 1.0013580322265625e-05 and z = round(-0.7/Δ) = round(-69905.06) = -69905, far below 0.
// Not deployable (z kept): code = clamp(round(69905.06) - 69905, 0, 15) = 0, Q = Δ·69905 = 0.69999933,
// within Δ/2 of v.
TEST(WeightQuantGroups, PartialLastGroupSingleColumnNotDeployable) {
  const at::Tensor w = make({-0.6f, 0.9f, -0.3f, 1.2f, 0.7f}, 1, 5);
  WeightQuantSpec spec;
  spec.group_size = 2;
  spec.deployable = false;
  const WeightQParams qp = weight_qparams(w, spec);
  ASSERT_EQ(qp.scale.sizes(), (at::IntArrayRef{1, 3}));
  expect_exact(qp.scale, {0.0999755859375, 0.0999755859375, kMinScaleFp16});
  expect_exact(qp.zero, {6.0, 3.0, -69905.0});
  const at::Tensor fq = fake_quant_weight(w, spec);
  ASSERT_EQ(fq.sizes(), w.sizes());
  EXPECT_TRUE(all_finite(fq));
  const double d = 0.0999755859375;
  expect_exact(fq.narrow(1, 0, 4), {-6 * d, 9 * d, -3 * d, 12 * d});
  EXPECT_NEAR(fq[0][4].item<double>(), 0.7, kMinScaleFp16 / 2);
  expect_exact(fq.narrow(1, 4, 1), {69905 * kMinScaleFp16});
  // The codes path agrees with the fake-quant path on the partial group too.
  EXPECT_TRUE(at::equal(dequantize_weight(weight_codes(w, spec, qp), spec, qp), fq));
}

// Same row with the default deployable spec. Expected (header: "a partial last group is quantized on
// its own columns only"): the lone value dequantizes to within one quantization step of v = 0.7.
// Worked through the implementation: Δ = 1.0013580322265625e-05, z = -69905 clamped to 0,
// code = clamp(round(0.7/Δ) + 0, 0, 15) = clamp(69905, 0, 15) = 15, Q = 15Δ = 1.502e-4, not 0.7.
// A negative lone value fails symmetrically: z clamps to 15, code 0, Q = -15Δ = -1.502e-4.
TEST(WeightQuantGroups, PartialLastGroupSingleColumnDeployableDequantizesNearValue) {
  const at::Tensor w = make({-0.6f, 0.9f, -0.3f, 1.2f, 0.7f, 0.2f, -0.4f, 0.5f, 1.0f, -0.7f}, 2, 5);
  WeightQuantSpec spec;
  spec.group_size = 2;  // deployable = true (default)
  const WeightQParams qp = weight_qparams(w, spec);
  ASSERT_EQ(qp.scale.sizes(), (at::IntArrayRef{2, 3}));
  EXPECT_TRUE(all_finite(qp.scale));
  EXPECT_TRUE(all_finite(qp.zero));
  const at::Tensor fq = fake_quant_weight(w, spec);
  EXPECT_TRUE(all_finite(fq));
  const double step0 = qp.scale[0][2].item<double>(), step1 = qp.scale[1][2].item<double>();
  EXPECT_NEAR(fq[0][4].item<double>(), 0.7, step0) << "lone positive value crushed by the z clamp";
  EXPECT_NEAR(fq[1][4].item<double>(), -0.7, step1) << "lone negative value crushed by the z clamp";
}

// A partial last group of two columns is quantized from exactly those columns: its qparams equal the
// per-channel qparams of the sliced columns, and the padding does not leak into the full groups.
TEST(WeightQuantGroups, PartialGroupUsesOnlyItsColumns) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({3, 10});
  for (bool sym : {false, true}) {
    WeightQuantSpec grouped_spec;
    grouped_spec.group_size = 4;  // groups [0,4) [4,8) [8,10)
    grouped_spec.sym = sym;
    WeightQuantSpec channel_spec;
    channel_spec.sym = sym;
    const WeightQParams qp = weight_qparams(w, grouped_spec);
    ASSERT_EQ(qp.scale.sizes(), (at::IntArrayRef{3, 3}));
    for (std::int64_t g = 0; g < 3; ++g) {
      const std::int64_t width = g < 2 ? 4 : 2;
      const at::Tensor slice = w.narrow(1, 4 * g, width);
      const WeightQParams ref = weight_qparams(slice, channel_spec);
      EXPECT_TRUE(at::equal(qp.scale.narrow(1, g, 1), ref.scale)) << "sym " << sym << " group " << g;
      EXPECT_TRUE(at::equal(qp.zero.narrow(1, g, 1), ref.zero)) << "sym " << sym << " group " << g;
      EXPECT_TRUE(at::equal(fake_quant_weight(w, grouped_spec).narrow(1, 4 * g, width),
                            fake_quant_weight(slice, channel_spec)))
          << "sym " << sym << " group " << g;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Scale clamp: an all-zero row has max = min = 0, so Δ = 0 -> 1e-5 -> f16 = 1.0013580322265625e-05
//    (the unclamped reference would divide by zero); z = round(-0/Δ) = 0 and Q = Δ·(0 - 0) = 0.

TEST(WeightQuantScaleClamp, AllZeroRowIsFiniteAndExactlyZero) {
  const at::Tensor w = make({0.0f, 0.0f, 0.0f, 0.0f, -1.0f, -0.2f, 0.3f, 2.0f}, 2, 4);
  for (bool sym : {false, true}) {
    WeightQuantSpec spec;
    spec.sym = sym;
    const WeightQParams qp = weight_qparams(w, spec);
    EXPECT_EQ(qp.scale[0][0].item<double>(), kMinScaleFp16) << "sym " << sym;
    EXPECT_EQ(qp.zero[0][0].item<double>(), sym ? 8.0 : 0.0) << "sym " << sym;
    const at::Tensor fq = fake_quant_weight(w, spec);
    EXPECT_TRUE(all_finite(fq)) << "sym " << sym;
    expect_exact(fq[0], {0.0, 0.0, 0.0, 0.0});
  }
}

// ---------------------------------------------------------------------------------------------
// 5. Deployable zero clamp. Row [0.5, 0.75, 1, 1.25] (min > 0):
//    Δ = f16(0.75/15) = f16(0.05) = 0.04998779296875, z = round(-0.5/Δ) = round(-10.0024) = -10.
//    W/Δ = [10.0024, 15.0037, 20.0049, 25.0061].
//    deployable = false: z = -10, codes = round(W/Δ) - 10 = [0, 5, 10, 15], Q = Δ·[10, 15, 20, 25].
//    deployable = true:  z = 0, codes = clamp([10, 15, 20, 25], 0, 15) = [10, 15, 15, 15].

TEST(WeightQuantDeployable, PositiveRowZeroPointClamp) {
  const at::Tensor w = make({0.5f, 0.75f, 1.0f, 1.25f}, 1, 4);
  const double d = 0.04998779296875;
  WeightQuantSpec free_spec;
  free_spec.deployable = false;
  const WeightQParams free_qp = weight_qparams(w, free_spec);
  expect_exact(free_qp.scale, {d});
  expect_exact(free_qp.zero, {-10.0});
  expect_exact(weight_codes(w, free_spec, free_qp), {0, 5, 10, 15});
  expect_exact(fake_quant_weight(w, free_spec), {10 * d, 15 * d, 20 * d, 25 * d});

  // Deployable widens the range to contain 0 (GPTQ): xmin = 0, Δ = f16(1.25/15) = 0.08331298828125,
  // z = 0 needs no clamp, codes round(w/Δ) = 6, 9, 12, 15, and the row survives within Δ/2.
  WeightQuantSpec dep_spec;  // deployable = true
  const double dd = 0.08331298828125;
  const WeightQParams dep_qp = weight_qparams(w, dep_spec);
  expect_exact(dep_qp.scale, {dd});
  expect_exact(dep_qp.zero, {0.0});
  expect_exact(weight_codes(w, dep_spec, dep_qp), {6, 9, 12, 15});
  expect_exact(fake_quant_weight(w, dep_spec), {6 * dd, 9 * dd, 12 * dd, 15 * dd});
}

// Negative-only row: z = round(1.25/Δ) = 25 > 15 clamps to qmax in deployable mode.
TEST(WeightQuantDeployable, NegativeRowZeroPointClampsToQmax) {
  const at::Tensor w = make({-0.5f, -0.75f, -1.0f, -1.25f}, 1, 4);
  WeightQuantSpec dep_spec;
  expect_exact(weight_qparams(w, dep_spec).zero, {15.0});
  WeightQuantSpec free_spec;
  free_spec.deployable = false;
  expect_exact(weight_qparams(w, free_spec).zero, {25.0});
}

// ---------------------------------------------------------------------------------------------
// 6. Codes + dequantization rebuild the fake-quant weights bit for bit (what an exporter relies on).

TEST(WeightQuantRoundTrip, CodesDequantizeEqualsFakeQuantBitExact) {
  at::manual_seed(0);
  const at::Tensor w = at::randn({16, 128}) * 0.05;
  for (int bits : {2, 3, 4, 8}) {
    for (std::int64_t g : {0, 32, 48}) {  // 48: groups of 48, 48 and a partial 32
      for (bool sym : {false, true}) {
        for (bool deployable : {true, false}) {
          WeightQuantSpec spec;
          spec.bits = bits;
          spec.group_size = g;
          spec.sym = sym;
          spec.deployable = deployable;
          const WeightQParams qp = weight_qparams(w, spec);
          ASSERT_EQ(qp.scale.sizes(), (at::IntArrayRef{16, num_groups(128, g)}));
          const at::Tensor codes = weight_codes(w, spec, qp);
          ASSERT_EQ(codes.scalar_type(), at::kByte);
          ASSERT_EQ(codes.sizes(), w.sizes());
          EXPECT_LE(codes.max().item<int>(), (1 << bits) - 1);
          // Scales are fp16-representable.
          EXPECT_TRUE(at::equal(qp.scale, qp.scale.to(at::kHalf).to(at::kFloat)));
          const at::Tensor fq = fake_quant_weight(w, spec);
          EXPECT_TRUE(at::equal(dequantize_weight(codes, spec, qp), fq))
              << "bits " << bits << " g " << g << " sym " << sym << " deployable " << deployable;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 7. Straight-through estimator.

// round_ste: forward is round half to even, backward is the identity.
TEST(QuantizerSte, RoundSteForwardRoundBackwardOne) {
  at::Tensor x = at::tensor(std::vector<float>{-2.5f, -0.5f, 0.4f, 0.5f, 1.5f, 2.7f, -3.2f});
  x.set_requires_grad(true);
  const at::Tensor y = round_ste(x);
  expect_exact(y, {-2.0, -0.0, 0.0, 0.0, 2.0, 3.0, -3.0});
  EXPECT_TRUE(at::equal(y.detach(), x.detach().round()));
  y.sum().backward();
  expect_exact(x.grad(), {1, 1, 1, 1, 1, 1, 1});
}

// For an element that is neither the max nor the min of its group and whose code is not clamped,
// Q(w) = Δ·round_ste(w/Δ) locally and Δ does not depend on w, so dQ/dw = Δ·(1/Δ) = 1 exactly
// (z is detached). The max/min elements also receive the gradient through Δ, so they are not checked.
TEST(QuantizerSte, FakeQuantWeightInteriorGradientIsOne) {
  // Asymmetric, row [-1, -0.2, 0.3, 2]: interior columns 1 and 2 (codes 4 and 7, unclamped).
  at::Tensor w = make({-1.0f, -0.2f, 0.3f, 2.0f}, 1, 4);
  w.set_requires_grad(true);
  fake_quant_weight(w, WeightQuantSpec{}).sum().backward();
  EXPECT_EQ(w.grad()[0][1].item<float>(), 1.0f);
  EXPECT_EQ(w.grad()[0][2].item<float>(), 1.0f);
  EXPECT_TRUE(all_finite(w.grad()));

  // Symmetric, row [1.5, -0.3, 0.1, -1.2]: Δ depends on absmax = 1.5 only, so even the row minimum
  // -1.2 (code 2, unclamped) gets exactly 1.
  at::Tensor ws = make({1.5f, -0.3f, 0.1f, -1.2f}, 1, 4);
  ws.set_requires_grad(true);
  WeightQuantSpec sym;
  sym.sym = true;
  fake_quant_weight(ws, sym).sum().backward();
  expect_exact(ws.grad().narrow(1, 1, 3), {1.0, 1.0, 1.0});

  // An interior element whose code clamps gets no gradient: symmetric row [1.5, -0.3, 0.1, 1.4999],
  // Δ = f16(3/15) = 0.199951171875, 1.4999/Δ = 7.5013 rounds to 8, + 8 = 16 > 15 clamps; Δ depends only
  // on the absmax 1.5, so the clamped element's gradient is exactly 0.
  at::Tensor wp = make({1.5f, -0.3f, 0.1f, 1.4999f}, 1, 4);
  wp.set_requires_grad(true);
  fake_quant_weight(wp, sym).sum().backward();
  EXPECT_EQ(wp.grad()[0][3].item<float>(), 0.0f);
}

// ---------------------------------------------------------------------------------------------
// 8. Learnable weight clipping.

TEST(WeightQuantLwc, InitShapeAndValue) {
  const ClipParams clip = ClipParams::init(3, 2);
  ASSERT_TRUE(clip.defined());
  EXPECT_EQ(clip.upper.sizes(), (at::IntArrayRef{3, 2}));
  EXPECT_EQ(clip.lower.sizes(), (at::IntArrayRef{3, 2}));
  EXPECT_TRUE(at::equal(clip.upper, at::full({3, 2}, 4.0f)));
  EXPECT_TRUE(at::equal(clip.lower, at::full({3, 2}, 4.0f)));
  EXPECT_FALSE(ClipParams{}.defined());
}

// Logits 4.0 scale the range by σ(4) = 0.98201379. Row [-1, -0.2, 0.3, 2]:
//   xmax = 2σ = 1.96402758, xmin = -σ = -0.98201379, Δ = f16(3σ/15) = f16(0.19640276) = 0.1964111328125
//   (fp16 step 2^-13 there: 0.19640276 / 2^-13 = 1608.93 -> 1609 · 2^-13),
//   z = round(0.98201379/Δ) = round(4.9998) = 5, W/Δ = [-5.0914, -1.0183, 1.5274, 10.1827]
//   -> codes [0, 4, 7, 15], Q = Δ·[-5, -1, 2, 10]. The clipped max lands on 1.964111 instead of 2.
TEST(WeightQuantLwc, InitialClippingScaleByHand) {
  const at::Tensor w = make({-1.0f, -0.2f, 0.3f, 2.0f}, 1, 4);
  const ClipParams clip = ClipParams::init(1, 1);
  const WeightQParams qp = weight_qparams(w, WeightQuantSpec{}, clip);
  const double d = 0.1964111328125;
  expect_exact(qp.scale, {d});
  // Within half an fp16 step (2^-13 / 2) of the unrounded 3σ/15.
  EXPECT_NEAR(qp.scale.item<double>(), 3 * kSigmoid4 / 15, std::ldexp(1.0, -14));
  expect_exact(qp.zero, {5.0});
  expect_exact(fake_quant_weight(w, WeightQuantSpec{}, clip), {-5 * d, -1 * d, 2 * d, 10 * d});
}

// Both logit tensors receive finite gradients, non-zero in every (row, group), from a reconstruction
// loss on a generic random weight.
TEST(WeightQuantLwc, LogitGradientsDefinedFiniteNonZero) {
  at::manual_seed(7);
  const at::Tensor w = at::randn({4, 64});
  WeightQuantSpec spec;
  spec.group_size = 16;
  ClipParams clip = ClipParams::init(4, num_groups(64, 16));
  clip.upper.set_requires_grad(true);
  clip.lower.set_requires_grad(true);
  (fake_quant_weight(w, spec, clip) - w).pow(2).sum().backward();
  ASSERT_TRUE(clip.upper.grad().defined());
  ASSERT_TRUE(clip.lower.grad().defined());
  EXPECT_EQ(clip.upper.grad().sizes(), (at::IntArrayRef{4, 4}));
  EXPECT_TRUE(all_finite(clip.upper.grad()));
  EXPECT_TRUE(all_finite(clip.lower.grad()));
  EXPECT_TRUE(clip.upper.grad().ne(0).all().item<bool>()) << clip.upper.grad();
  EXPECT_TRUE(clip.lower.grad().ne(0).all().item<bool>()) << clip.lower.grad();
}

// Analytic LWC gradient on W = [-1, 1], asymmetric 2-bit (qmax = 3), logits γ = β = 4, S = Σ Q(W).
//   Δ = (σ(γ)·1 - σ(β)·(-1))/3 = 2σ/3 = 0.65467586 -> f16 = 0.65478515625 (1340.78 · 2^-11 -> 1341),
//   z = round(σ/Δ) = round(1.49975) = 1 (detached).
//   w0 = -1: round(-1.52722) + 1 = -1 -> clamped to 0: Q0 = Δ·(0 - z), dQ0/dΔ = (0 - z) = -1.
//   w1 = +1: round(1.52722) + 1 = 3 = qmax, on the boundary so not clamped (torch clamp passes the
//            gradient at the bounds): Q1 = Δ·round_ste(w1/Δ), dQ1/dΔ = round(w1/Δ) - w1/Δ
//            = 2 - 1.52722 = 0.47278.
//   dS/dΔ = -0.52722; dΔ/dγ = σ'(4)·max W/3 = 0.0176627/3; dΔ/dβ = -σ'(4)·min W/3 = 0.0176627/3.
//   dS/dγ = dS/dβ = -0.52722 · 0.0176627 / 3 = -0.0031040397.
// The fp16 rounding of Δ is the identity in the backward pass, hence the 1e-3 relative tolerance.
TEST(WeightQuantLwc, LogitGradientMatchesHandDerivation) {
  const at::Tensor w = make({-1.0f, 1.0f}, 1, 2);
  WeightQuantSpec spec;
  spec.bits = 2;
  ClipParams clip = ClipParams::init(1, 1);
  clip.upper.set_requires_grad(true);
  clip.lower.set_requires_grad(true);
  const at::Tensor fq = fake_quant_weight(w, spec, clip);
  expect_exact(fq, {-0.65478515625, 2 * 0.65478515625});  // Δ·(0 - 1), Δ·(3 - 1)
  fq.sum().backward();
  const double expected = -0.0031040397;
  EXPECT_NEAR(clip.upper.grad().item<double>(), expected, 1e-3 * std::fabs(expected));
  EXPECT_NEAR(clip.lower.grad().item<double>(), expected, 1e-3 * std::fabs(expected));
}

// Same setting, the loss scaled by 1e-9 and by 1e6: the gradient must scale with it. Calibration losses
// are fp32 block MSEs whose gradients w.r.t. Δ are routinely far below fp16's smallest subnormal (6e-8),
// and a sum over a long row can exceed fp16's max (65504).
//   1e-9: dS/dγ = 1e-9 · -0.0031040397 = -3.1040397e-12 (dS/dΔ = -5.27e-10 on the way).
//   1e6:  dS/dγ = 1e6 · -0.0031040397 = -3104.0397 (dS/dΔ = -5.27e5 on the way).
TEST(WeightQuantLwc, ScaleRoundingIsIdentityInBackward) {
  const at::Tensor w = make({-1.0f, 1.0f}, 1, 2);
  WeightQuantSpec spec;
  spec.bits = 2;
  for (double loss_scale : {1e-9, 1e6}) {
    ClipParams clip = ClipParams::init(1, 1);
    clip.upper.set_requires_grad(true);
    (fake_quant_weight(w, spec, clip).sum() * loss_scale).backward();
    const double expected = -0.0031040397 * loss_scale;
    EXPECT_NEAR(clip.upper.grad().item<double>(), expected, 1e-3 * std::fabs(expected))
        << "loss scale " << loss_scale;
  }
}

// ---------------------------------------------------------------------------------------------
// 9. Activations: dynamic per token (last dimension), scale in fp32 (not fp16-rounded).

// Row 0 = [-1, -0.35, 0.45, 2]: Δ = 3/15 = 0.2 (fp32 0.2), z = round(1/0.2) = 5,
//   x/Δ = [-5, -1.75, 2.25, 10] -> round + 5 = [0, 3, 7, 15] -> (c - 5)·Δ = [-1, -0.4, 0.4, 2].
// Row 1 = [0.1, 0.2, 0.3, 0.4]: Δ = f32(0.4 - 0.1)/15 = 0.0200000014, z = round(-0.1/Δ) = -5
//   (activations keep z outside [0, qmax]), x/Δ = [5, 10, 15, 20] -> -5 -> [0, 5, 10, 15]
//   -> (c + 5)·Δ = [5Δ, 10Δ, 15Δ, 20Δ] = [0.100000009, 0.200000018, 0.300000012, 0.400000036].
TEST(ActQuant, Asym4BitPerTokenHandWorked) {
  const at::Tensor x = make({-1.0f, -0.35f, 0.45f, 2.0f, 0.1f, 0.2f, 0.3f, 0.4f}, 2, 4);
  ActQuantSpec spec;
  spec.bits = 4;
  const at::Tensor y = fake_quant_act(x, spec);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  expect_float(y, {-1.0f, -0.4f, 0.4f, 2.0f, 0.100000009f, 0.200000018f, 0.300000012f, 0.400000036f});
}

// Row [-1.27, 0.5, 0.0132, 0.9], symmetric 8-bit: Δ = 1.27/127 = 0.01 (fp32 0.0099999998),
//   x/Δ = [-127, 50, 1.32, 90] -> round = [-127, 50, 1, 90], all inside the signed grid [-128, 127],
//   output = code·Δ = [-1.27, 0.5, 0.01, 0.9].
TEST(ActQuant, Sym8BitSignedGrid) {
  const at::Tensor x = make({-1.27f, 0.5f, 0.0132f, 0.9f}, 1, 4);
  ActQuantSpec spec;
  spec.bits = 8;
  spec.sym = true;
  const at::Tensor y = fake_quant_act(x, spec);
  expect_float(y, {-1.27f, 0.5f, 0.01f, 0.9f});
  const float delta = 1.27f / 127.0f;
  const at::Tensor codes = y / delta;
  EXPECT_TRUE(at::allclose(codes, codes.round(), 0.0, 1e-4));
  EXPECT_GE(codes.min().item<float>(), -128.0f);
  EXPECT_LE(codes.max().item<float>(), 127.0f);
}

TEST(ActQuant, SixteenBitsIsIdentity) {
  at::manual_seed(11);
  const at::Tensor x = at::randn({3, 8});
  ActQuantSpec spec;  // bits = 16
  EXPECT_FALSE(spec.enabled());
  EXPECT_TRUE(at::equal(fake_quant_act(x, spec), x));
}

TEST(ActQuant, Bf16InBf16Out) {
  at::manual_seed(12);
  const at::Tensor x = at::randn({2, 16}).to(at::kBFloat16);
  ActQuantSpec spec;
  spec.bits = 4;
  const at::Tensor y = fake_quant_act(x, spec);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  // bf16 -> fp32 is exact, so the result is the fp32 quantizer's output rounded to bf16.
  EXPECT_TRUE(at::equal(y, fake_quant_act(x.to(at::kFloat), spec).to(at::kBFloat16)));
}

TEST(ActQuant, TokensAreIndependent) {
  at::manual_seed(13);
  const at::Tensor x = at::randn({2, 8});
  ActQuantSpec spec;
  spec.bits = 4;
  const at::Tensor y = fake_quant_act(x, spec);
  at::Tensor x2 = x.clone();
  x2[0].mul_(10.0).add_(3.0);  // a very different range for token 0 only
  const at::Tensor y2 = fake_quant_act(x2, spec);
  EXPECT_TRUE(at::equal(y2[1], y[1]));
  EXPECT_FALSE(at::equal(y2[0], y[0]));
  // A [B, T, C] input is quantized per token over C, like the flattened [B·T, C] matrix.
  const at::Tensor x3 = at::randn({2, 3, 8});
  EXPECT_TRUE(at::equal(fake_quant_act(x3, spec), fake_quant_act(x3.reshape({6, 8}), spec).view({2, 3, 8})));
}

// STE: for elements that are neither the token's min nor max (Δ does not depend on them) and whose
// codes are not clamped, d out/dx = Δ·(1/Δ) = 1 exactly. Rows of Asym4BitPerTokenHandWorked.
TEST(ActQuant, SteGradientInteriorIsOne) {
  at::Tensor x = make({-1.0f, -0.35f, 0.45f, 2.0f, 0.1f, 0.2f, 0.3f, 0.4f}, 2, 4);
  x.set_requires_grad(true);
  ActQuantSpec spec;
  spec.bits = 4;
  fake_quant_act(x, spec).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(all_finite(x.grad()));
  expect_exact(x.grad().narrow(1, 1, 2), {1.0, 1.0, 1.0, 1.0});

  at::Tensor xs = make({-1.27f, 0.5f, 0.0132f, 0.9f}, 1, 4);
  xs.set_requires_grad(true);
  ActQuantSpec sym;
  sym.bits = 8;
  sym.sym = true;
  fake_quant_act(xs, sym).sum().backward();
  expect_exact(xs.grad().narrow(1, 1, 3), {1.0, 1.0, 1.0});  // everything but the absmax element
}

// ---------------------------------------------------------------------------------------------
// 10. Errors and the disabled path.

TEST(QuantizerErrors, WeightBitsOutOfRangeThrow) {
  const at::Tensor w = make({-1.0f, -0.2f, 0.3f, 2.0f}, 1, 4);
  for (int bits : {1, 9}) {
    WeightQuantSpec spec;
    spec.bits = bits;
    EXPECT_THROW(weight_qparams(w, spec), InternalError) << "bits " << bits;
    EXPECT_THROW(fake_quant_weight(w, spec), InternalError) << "bits " << bits;
  }
}

TEST(QuantizerErrors, ActBitsOutOfRangeThrow) {
  const at::Tensor x = make({-1.0f, -0.2f, 0.3f, 2.0f}, 1, 4);
  ActQuantSpec spec;
  spec.bits = 1;
  EXPECT_THROW(fake_quant_act(x, spec), InternalError);
}

TEST(QuantizerErrors, WeightMustBeTwoDimensional) {
  WeightQuantSpec spec;
  EXPECT_THROW(weight_qparams(at::zeros({4}), spec), InternalError);
}

TEST(WeightQuantDisabled, SixteenBitsIsIdentityAndDtypePreserved) {
  at::manual_seed(14);
  const at::Tensor w = at::randn({4, 8});
  WeightQuantSpec off;
  off.bits = 16;
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(at::equal(fake_quant_weight(w, off), w));
  // Enabled on a bf16 weight: same dtype back, equal to the fp32 result rounded to bf16.
  const at::Tensor wb = w.to(at::kBFloat16);
  const at::Tensor fq = fake_quant_weight(wb, WeightQuantSpec{});
  EXPECT_EQ(fq.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(fq, fake_quant_weight(wb.to(at::kFloat), WeightQuantSpec{}).to(at::kBFloat16)));
}

}  // namespace
}  // namespace qforge::worker
