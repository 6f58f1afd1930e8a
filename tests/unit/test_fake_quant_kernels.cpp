// The CPU twins of the fused fake quantizers (worker/kernels/fake_quant.h) against autograd of the unfused
// LibTorch expressions in worker/quantizer.cpp, which define the method: values and gradients (w, γ, β; x)
// on seeded random inputs with ties, one-signed, constant, all-zero and partial groups built in
// (tests/support/fake_quant_cases.h), for every weight mode x bits 2/3/4/8 x per-channel/per-group x LWC,
// and activations asym/sym x bits 4/8.
//
// Tolerances, from what can differ:
//  - Values. The twin performs the unfused graph's fp32 operations in the same order (division, round half
//    to even, fp16 rounding of Δ, clamp; round_ste's (round(v) - v) + v is exactly round(v)), so without
//    clipping it must be bit-identical (kMaxDifferingNoClip = 0). With clipping, σ(γ) comes from ATen's
//    vectorised exp in the unfused graph and from std::exp in the twin, which may differ by an ulp; an ulp
//    of σ·max can move Δ by one fp16 ulp (every code of that group then moves by code·ulp < Δ/4) or flip one
//    code whose w/Δ sits on a .5 boundary (one step Δ). So with clipping no element may differ by more than
//    one step, and at most kMaxDifferingFractionClip of them may differ at all.
//  - Gradients. ATen's derivative formulas are reproduced term for term (see fake_quant_cpu.cpp); what
//    differs is the order of the fp32 sums into Δ (ATen's vectorised reduction vs a sequential loop), whose
//    error is at most ~n·eps·Σ|terms| for n ≤ 100 terms here (~6e-6 of Σ|terms|), plus σ's ulp (~6e-8
//    relative). Normwise, max|difference| / max|gradient| <= kGradRelTol.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <functional>

#include "tests/support/fake_quant_cases.h"
#include "worker/kernels/fake_quant.h"
#include "worker/quantizer.h"

namespace qforge::worker {
namespace {

constexpr std::int64_t kMaxDifferingNoClip = 0;
constexpr double kMaxDifferingFractionClip = 0.01;
constexpr double kGradRelTol = 1e-5;

struct QuantRun {
  at::Tensor out, grad_x, grad_upper, grad_lower;
};

ClipParams leaf_copy(const ClipParams& clip) {
  if (!clip.defined()) return {};
  return {clip.upper.clone().requires_grad_(true), clip.lower.clone().requires_grad_(true)};
}

QuantRun unfused_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip, const at::Tensor& grad) {
  const at::Tensor wv = w.clone().requires_grad_(true);
  const ClipParams cv = leaf_copy(clip);
  const at::Tensor out = unfused_fake_quant_weight(wv, spec, cv);
  out.backward(grad);
  return {out.detach(), wv.grad(), cv.defined() ? cv.upper.grad() : at::Tensor(), cv.defined() ? cv.lower.grad() : at::Tensor()};
}

QuantRun twin_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip, const at::Tensor& grad) {
  const kernels::WeightFakeQuantGrads g = kernels::fake_quant_weight_backward_cpu(grad, w, spec, clip);
  return {kernels::fake_quant_weight_forward_cpu(w, spec, clip), g.w, g.upper, g.lower};
}

QuantRun fused_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip, const at::Tensor& grad) {
  const at::Tensor wv = w.clone().requires_grad_(true);
  const ClipParams cv = leaf_copy(clip);
  const at::Tensor out = fused_fake_quant_weight(wv, spec, cv);
  out.backward(grad);
  return {out.detach(), wv.grad(), cv.defined() ? cv.upper.grad() : at::Tensor(), cv.defined() ? cv.lower.grad() : at::Tensor()};
}

QuantRun unfused_act(const at::Tensor& x, const ActQuantSpec& spec, const at::Tensor& grad) {
  const at::Tensor xv = x.clone().requires_grad_(true);
  const at::Tensor out = unfused_fake_quant_act(xv, spec);
  out.backward(grad);
  return {out.detach(), xv.grad(), {}, {}};
}

QuantRun twin_act(const at::Tensor& x, const ActQuantSpec& spec, const at::Tensor& grad) {
  const std::int64_t d = x.size(-1);
  const at::Tensor rows = x.reshape({-1, d}), grad_rows = grad.reshape({-1, d});
  return {kernels::fake_quant_act_forward_cpu(rows, spec).view(x.sizes()),
          kernels::fake_quant_act_backward_cpu(grad_rows, rows, spec).view(x.sizes()), {}, {}};
}

// ---------------------------------------------------------------------------------------------------

TEST(FakeQuantKernels, WeightTwinMatchesUnfusedAutograd) {
  const std::vector<test::WeightCase> cases = test::weight_cases();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const test::WeightCase& c = cases[i];
    SCOPED_TRACE(c.name);
    const at::Tensor w = test::make_weights(c.rows, c.in, c.spec.group_size, 100 + i);
    const ClipParams clip = c.lwc ? test::make_clip(c.rows, num_groups(c.in, c.spec.group_size), 200 + i) : ClipParams{};
    at::manual_seed(300 + i);
    const at::Tensor grad = at::randn({c.rows, c.in});

    const QuantRun ref = unfused_weight(w, c.spec, clip, grad);
    const QuantRun twin = twin_weight(w, c.spec, clip, grad);
    const test::ValueDiff v = test::compare_values(twin.out, ref.out, test::weight_steps(w, c.spec, clip));
    EXPECT_EQ(v.beyond_step, 0);
    if (c.lwc) {
      EXPECT_LE(v.differing, static_cast<std::int64_t>(kMaxDifferingFractionClip * v.numel));
    } else {
      EXPECT_EQ(v.differing, kMaxDifferingNoClip);
    }
    const double ew = test::grad_error(twin.grad_x, ref.grad_x);
    const double eu = c.lwc ? test::grad_error(twin.grad_upper, ref.grad_upper) : 0.0;
    const double el = c.lwc ? test::grad_error(twin.grad_lower, ref.grad_lower) : 0.0;
    EXPECT_LE(ew, kGradRelTol);
    EXPECT_LE(eu, kGradRelTol);
    EXPECT_LE(el, kGradRelTol);
    std::printf("[fake-quant twin vs unfused] %-28s values: %lld/%lld differ, max %.3g (%.3g steps); grad rel err w %.2e up %.2e lo %.2e\n",
                c.name.c_str(), static_cast<long long>(v.differing), static_cast<long long>(v.numel), v.max_abs,
                v.max_in_steps, ew, eu, el);
  }
}

TEST(FakeQuantKernels, ActTwinMatchesUnfusedAutograd) {
  const std::vector<test::ActCase> cases = test::act_cases();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const test::ActCase& c = cases[i];
    SCOPED_TRACE(c.name);
    const at::Tensor x = test::make_acts(c.shape, 400 + i);
    at::manual_seed(500 + i);
    const at::Tensor grad = at::randn(c.shape);

    const QuantRun ref = unfused_act(x, c.spec, grad);
    const QuantRun twin = twin_act(x, c.spec, grad);
    const test::ValueDiff v = test::compare_values(twin.out, ref.out, test::act_steps(x, c.spec));
    EXPECT_EQ(v.differing, kMaxDifferingNoClip);  // no σ on this path: bit-identical
    const double ex = test::grad_error(twin.grad_x, ref.grad_x);
    EXPECT_LE(ex, kGradRelTol);
    std::printf("[fake-quant twin vs unfused] %-28s values: %lld/%lld differ, max %.3g; grad rel err x %.2e\n", c.name.c_str(),
                static_cast<long long>(v.differing), static_cast<long long>(v.numel), v.max_abs, ex);
  }
}

// The differentiable op on CPU is the twin behind an autograd Function: same bits, and the gradients land
// on the right inputs (w, γ, β in that order).
TEST(FakeQuantKernels, FusedOpOnCpuIsTheTwinThroughAutograd) {
  const std::vector<test::WeightCase> cases = test::weight_cases();
  for (std::size_t i = 0; i < cases.size(); i += 5) {
    const test::WeightCase& c = cases[i];
    SCOPED_TRACE(c.name);
    const at::Tensor w = test::make_weights(c.rows, c.in, c.spec.group_size, 100 + i);
    const ClipParams clip = c.lwc ? test::make_clip(c.rows, num_groups(c.in, c.spec.group_size), 200 + i) : ClipParams{};
    const at::Tensor grad = at::randn({c.rows, c.in});
    const QuantRun fused = fused_weight(w, c.spec, clip, grad);
    const QuantRun twin = twin_weight(w, c.spec, clip, grad);
    EXPECT_TRUE(at::equal(fused.out, twin.out));
    EXPECT_TRUE(at::equal(fused.grad_x, twin.grad_x));
    if (c.lwc) {
      EXPECT_TRUE(at::equal(fused.grad_upper, twin.grad_upper));
      EXPECT_TRUE(at::equal(fused.grad_lower, twin.grad_lower));
    }
  }
  const ActQuantSpec spec{4, false};
  const at::Tensor x = test::make_acts({2, 12, 64}, 7);
  const at::Tensor grad = at::randn({2, 12, 64});
  const at::Tensor xv = x.clone().requires_grad_(true);
  fused_fake_quant_act(xv, spec).backward(grad);
  const QuantRun twin = twin_act(x, spec, grad);
  EXPECT_TRUE(at::equal(fused_fake_quant_act(x, spec), twin.out));
  EXPECT_TRUE(at::equal(xv.grad(), twin.grad_x));
  // Other dtypes convert around the fp32 core exactly as the unfused op does.
  const at::Tensor xb = x.to(at::kBFloat16);
  EXPECT_TRUE(at::equal(fused_fake_quant_act(xb, spec), unfused_fake_quant_act(xb, spec)));
}

// ---- the comparison is not vacuous: twins with one term dropped fail it ------------------------------

// The unfused weight quantizer per channel with Δ detached: a twin that forgot the gradient into the scale
// (and so into the max/min elements).
at::Tensor weight_without_scale_grad(const at::Tensor& w, const WeightQuantSpec& spec) {
  const WeightQParams qp = weight_qparams(w.detach(), spec);
  const at::Tensor codes = at::clamp(round_ste(w / qp.scale) + qp.zero, 0.0, static_cast<double>((1 << spec.bits) - 1));
  return qp.scale * (codes - qp.zero);
}

// The unfused asymmetric activation quantizer with either Δ detached, or max/min taken by max(-1)/min(-1),
// which send a tie's whole gradient to its first element instead of sharing it as amax/amin do.
at::Tensor act_variant(const at::Tensor& x, int bits, bool detach_scale) {
  const double qmax = static_cast<double>((1 << bits) - 1);
  at::Tensor xmax = detach_scale ? x.amax(-1, true) : std::get<0>(x.max(-1, true));
  at::Tensor xmin = detach_scale ? x.amin(-1, true) : std::get<0>(x.min(-1, true));
  at::Tensor s = ((xmax - xmin) / qmax).clamp_min(1e-5);
  if (detach_scale) s = s.detach();
  const at::Tensor z = (-xmin / s).round().detach();
  return (at::clamp(round_ste(x / s) + z, 0.0, qmax) - z) * s;
}

at::Tensor grad_of(const at::Tensor& x, const std::function<at::Tensor(const at::Tensor&)>& f, const at::Tensor& grad) {
  const at::Tensor xv = x.clone().requires_grad_(true);
  f(xv).backward(grad);
  return xv.grad();
}

TEST(FakeQuantKernels, ComparisonCatchesADroppedTerm) {
  WeightQuantSpec spec;  // asym deployable, 4 bits, per channel
  const at::Tensor w = test::make_weights(12, 100, 0, 1);
  at::manual_seed(2);
  const at::Tensor gw = at::randn({12, 100});
  const at::Tensor ref_w = unfused_weight(w, spec, {}, gw).grad_x;
  const double dropped_w = test::grad_error(grad_of(w, [&](const at::Tensor& t) { return weight_without_scale_grad(t, spec); }, gw), ref_w);
  EXPECT_GT(dropped_w, 100 * kGradRelTol);

  const ActQuantSpec aspec{4, false};
  const at::Tensor x = test::make_acts({24, 64}, 3);
  const at::Tensor gx = at::randn({24, 64});
  const at::Tensor ref_x = unfused_act(x, aspec, gx).grad_x;
  const double dropped_scale = test::grad_error(grad_of(x, [](const at::Tensor& t) { return act_variant(t, 4, true); }, gx), ref_x);
  const double first_tie_only = test::grad_error(grad_of(x, [](const at::Tensor& t) { return act_variant(t, 4, false); }, gx), ref_x);
  EXPECT_GT(dropped_scale, 100 * kGradRelTol);
  EXPECT_GT(first_tie_only, 100 * kGradRelTol);
  // The same expression with nothing dropped passes: the variants differ only in the dropped term.
  EXPECT_LE(test::grad_error(grad_of(x, [](const at::Tensor& t) { return unfused_fake_quant_act(t, ActQuantSpec{4, false}); }, gx), ref_x),
            kGradRelTol);
  std::printf("[fake-quant negative] rel err with Δ's gradient dropped: weights %.3g, activations %.3g; "
              "ties not shared: %.3g (tolerance %.0e)\n",
              dropped_w, dropped_scale, first_tie_only, kGradRelTol);
}

}  // namespace
}  // namespace qforge::worker
