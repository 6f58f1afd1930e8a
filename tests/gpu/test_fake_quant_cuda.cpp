// The CUDA kernels of the fused fake quantizers against their CPU twins (worker/kernels/fake_quant.h), which
// the unit tier checks against autograd of the unfused expressions: forward values and gradients (w, γ, β;
// x) on the unit tier's cases (tests/support/fake_quant_cases.h), a 7B-shaped weight (4096 x 11008, group
// 128) and a [4, 2048, 4096] activation; plus the quantizer's dispatch to the fused op on CUDA tensors.
//
// Tolerances, from what can differ (fake_quant.cu's header): the kernel repeats the twin's fp32 operations
// (IEEE division, rintf, __float2half_rn, no FMA contraction), so values differ only through expf's last
// bits in σ(γ): none may differ by more than one step Δ, and at most kMaxDifferingFractionClip may differ
// at all with clipping, none without. Gradients differ in the order of the sums into Δ (a tree over
// threads vs a sequential loop; up to 11008 terms per channel, 4096 per token: worst case ~n·eps·Σ|terms|,
// in practice ~sqrt(n)·eps) plus σ's ulps: normwise max|difference| / max|gradient| <= kGradRelTol, and
// kGradRelTolLarge for the 7B shapes.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <cstdio>

#include "tests/support/fake_quant_cases.h"
#include "worker/kernels/fake_quant.h"
#include "worker/quantizer.h"

namespace qforge::worker {
namespace {

constexpr double kMaxDifferingFractionClip = 0.01;
constexpr double kGradRelTol = 1e-5;
constexpr double kGradRelTolLarge = 1e-4;

#define QF_REQUIRE_CUDA()                                                                                     \
  do {                                                                                                        \
    if (!kernels::built_with_cuda()) GTEST_SKIP() << "no CUDA device: qforge was built without CUDA";         \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: torch::cuda::is_available() is false"; \
  } while (0)

struct QuantRun {
  at::Tensor out, grad_x, grad_upper, grad_lower;
};

ClipParams on(const ClipParams& clip, const at::Device& device) {
  if (!clip.defined()) return {};
  return {clip.upper.to(device), clip.lower.to(device)};
}

QuantRun weight_run(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip, const at::Tensor& grad) {
  const at::Device dev = w.device();
  const kernels::WeightFakeQuantGrads g =
      dev.is_cuda() ? kernels::fake_quant_weight_backward_cuda(grad, w, spec, clip)
                    : kernels::fake_quant_weight_backward_cpu(grad, w, spec, clip);
  const at::Tensor out = dev.is_cuda() ? kernels::fake_quant_weight_forward_cuda(w, spec, clip)
                                       : kernels::fake_quant_weight_forward_cpu(w, spec, clip);
  return {out.cpu(), g.w.cpu(), g.upper.defined() ? g.upper.cpu() : at::Tensor(), g.lower.defined() ? g.lower.cpu() : at::Tensor()};
}

QuantRun act_run(const at::Tensor& x, const ActQuantSpec& spec, const at::Tensor& grad) {
  const std::int64_t d = x.size(-1);
  const at::Tensor rows = x.reshape({-1, d}), grad_rows = grad.reshape({-1, d});
  const bool cuda = x.is_cuda();
  const at::Tensor out = cuda ? kernels::fake_quant_act_forward_cuda(rows, spec) : kernels::fake_quant_act_forward_cpu(rows, spec);
  const at::Tensor gx = cuda ? kernels::fake_quant_act_backward_cuda(grad_rows, rows, spec)
                             : kernels::fake_quant_act_backward_cpu(grad_rows, rows, spec);
  return {out.cpu().view(x.sizes()), gx.cpu().view(x.sizes()), {}, {}};
}

void check_weight(const std::string& name, const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip,
                  const at::Tensor& grad, double grad_tol) {
  SCOPED_TRACE(name);
  const at::Device cuda(at::kCUDA, 0);
  const QuantRun twin = weight_run(w, spec, clip, grad);
  const QuantRun gpu = weight_run(w.to(cuda), spec, on(clip, cuda), grad.to(cuda));
  const test::ValueDiff v = test::compare_values(gpu.out, twin.out, test::weight_steps(w, spec, clip));
  EXPECT_EQ(v.beyond_step, 0);
  EXPECT_LE(v.differing, clip.defined() ? static_cast<std::int64_t>(kMaxDifferingFractionClip * v.numel) : 0);
  const double ew = test::grad_error(gpu.grad_x, twin.grad_x);
  const double eu = clip.defined() ? test::grad_error(gpu.grad_upper, twin.grad_upper) : 0.0;
  const double el = clip.defined() ? test::grad_error(gpu.grad_lower, twin.grad_lower) : 0.0;
  EXPECT_LE(ew, grad_tol);
  EXPECT_LE(eu, grad_tol);
  EXPECT_LE(el, grad_tol);
  std::printf("[fake-quant cuda vs twin] %-28s values: %lld/%lld differ, max %.3g (%.3g steps); grad rel err w %.2e up %.2e lo %.2e\n",
              name.c_str(), static_cast<long long>(v.differing), static_cast<long long>(v.numel), v.max_abs, v.max_in_steps,
              ew, eu, el);
}

void check_act(const std::string& name, const at::Tensor& x, const ActQuantSpec& spec, const at::Tensor& grad,
               double grad_tol) {
  SCOPED_TRACE(name);
  const at::Device cuda(at::kCUDA, 0);
  const QuantRun twin = act_run(x, spec, grad);
  const QuantRun gpu = act_run(x.to(cuda), spec, grad.to(cuda));
  const test::ValueDiff v = test::compare_values(gpu.out, twin.out, test::act_steps(x, spec));
  EXPECT_EQ(v.differing, 0);  // no σ on this path
  const double ex = test::grad_error(gpu.grad_x, twin.grad_x);
  EXPECT_LE(ex, grad_tol);
  std::printf("[fake-quant cuda vs twin] %-28s values: %lld/%lld differ, max %.3g; grad rel err x %.2e\n", name.c_str(),
              static_cast<long long>(v.differing), static_cast<long long>(v.numel), v.max_abs, ex);
}

TEST(FakeQuantCuda, WeightKernelMatchesTheTwin) {
  QF_REQUIRE_CUDA();
  const std::vector<test::WeightCase> cases = test::weight_cases();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const test::WeightCase& c = cases[i];
    const at::Tensor w = test::make_weights(c.rows, c.in, c.spec.group_size, 100 + i);
    const ClipParams clip = c.lwc ? test::make_clip(c.rows, num_groups(c.in, c.spec.group_size), 200 + i) : ClipParams{};
    at::manual_seed(300 + i);
    check_weight(c.name, w, c.spec, clip, at::randn({c.rows, c.in}), kGradRelTol);
  }
}

TEST(FakeQuantCuda, ActKernelMatchesTheTwin) {
  QF_REQUIRE_CUDA();
  const std::vector<test::ActCase> cases = test::act_cases();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const test::ActCase& c = cases[i];
    const at::Tensor x = test::make_acts(c.shape, 400 + i);
    at::manual_seed(500 + i);
    check_act(c.name, x, c.spec, at::randn(c.shape), kGradRelTol);
  }
}

TEST(FakeQuantCuda, SevenBShapes) {
  QF_REQUIRE_CUDA();
  WeightQuantSpec spec;  // W4 asym deployable, group 128, with LWC: the calibration recipe's weights
  spec.group_size = 128;
  const at::Tensor w = test::make_weights(4096, 11008, 128, 11);
  const ClipParams clip = test::make_clip(4096, num_groups(11008, 128), 12);
  at::manual_seed(13);
  check_weight("7b-up_proj-w4-g128-lwc", w, spec, clip, at::randn({4096, 11008}), kGradRelTolLarge);
  WeightQuantSpec channel;  // per channel: one 11008-wide block reduction per row
  channel.bits = 3;
  check_weight("7b-down-w3-channel", w.t().contiguous(), channel, {}, at::randn({11008, 4096}), kGradRelTolLarge);

  const at::Tensor x = test::make_acts({4, 2048, 4096}, 14);
  at::manual_seed(15);
  const at::Tensor gx = at::randn({4, 2048, 4096});
  check_act("7b-act-a4-asym", x, ActQuantSpec{4, false}, gx, kGradRelTolLarge);
  check_act("7b-act-a8-sym", x, ActQuantSpec{8, true}, gx, kGradRelTolLarge);
}

// fake_quant_weight / fake_quant_act take the fused path for CUDA tensors (autograd included) and give
// what the unfused expression gives on the CPU, within the same tolerances.
TEST(FakeQuantCuda, QuantizerDispatchesCudaTensorsToTheFusedOp) {
  QF_REQUIRE_CUDA();
  const at::Device cuda(at::kCUDA, 0);
  WeightQuantSpec spec;
  spec.group_size = 32;
  const at::Tensor w = test::make_weights(12, 100, 32, 21);
  const ClipParams clip = test::make_clip(12, num_groups(100, 32), 22);
  at::manual_seed(23);
  const at::Tensor grad = at::randn({12, 100});
  auto run = [&](const at::Device& dev) {
    const at::Tensor wv = w.to(dev).requires_grad_(true);
    const ClipParams cv{clip.upper.to(dev).requires_grad_(true), clip.lower.to(dev).requires_grad_(true)};
    const at::Tensor out = fake_quant_weight(wv, spec, cv);
    out.backward(grad.to(dev));
    return QuantRun{out.detach().cpu(), wv.grad().cpu(), cv.upper.grad().cpu(), cv.lower.grad().cpu()};
  };
  const QuantRun cpu = run(at::kCPU), gpu = run(cuda);
  const test::ValueDiff v = test::compare_values(gpu.out, cpu.out, test::weight_steps(w, spec, clip));
  EXPECT_EQ(v.beyond_step, 0);
  EXPECT_LE(v.differing, static_cast<std::int64_t>(kMaxDifferingFractionClip * v.numel));
  EXPECT_LE(test::grad_error(gpu.grad_x, cpu.grad_x), kGradRelTol);
  EXPECT_LE(test::grad_error(gpu.grad_upper, cpu.grad_upper), kGradRelTol);
  EXPECT_LE(test::grad_error(gpu.grad_lower, cpu.grad_lower), kGradRelTol);

  const at::Tensor x = test::make_acts({2, 12, 64}, 24);
  const at::Tensor gx = at::randn({2, 12, 64});
  const at::Tensor xc = x.clone().requires_grad_(true), xg = x.to(cuda).requires_grad_(true);
  const at::Tensor yc = fake_quant_act(xc, ActQuantSpec{4, false}), yg = fake_quant_act(xg, ActQuantSpec{4, false});
  yc.backward(gx);
  yg.backward(gx.to(cuda));
  EXPECT_TRUE(at::equal(yg.detach().cpu(), yc.detach()));
  EXPECT_LE(test::grad_error(xg.grad().cpu(), xc.grad()), kGradRelTol);
}

}  // namespace
}  // namespace qforge::worker
