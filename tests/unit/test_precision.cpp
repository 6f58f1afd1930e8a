// --compute-dtype (worker/precision.h): one optimiser step of the shared AffineQuant W4A4 block
// (tests/support/one_step.h) in fp32, bf16 and tf32 on the CPU. bf16 must really change the arithmetic
// of the forward/backward (autocast engaged) while the trained parameters and their gradients stay
// fp32 masters, and must stay close to fp32; tf32 has no CPU meaning and must leave it bit-identical.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "tests/support/one_step.h"
#include "worker/precision.h"

namespace qforge {
namespace {

test::StepOutcome step_in(worker::ComputePrecision precision) {
  test::OneStepProblem p;
  p.options.precision = precision;
  return test::one_step(p, 1, 0, nullptr);
}

TEST(Precision, NamesParseAndUnknownOnesNameTheFlag) {
  EXPECT_EQ(worker::parse_compute_precision("fp32"), worker::ComputePrecision::kFp32);
  EXPECT_EQ(worker::parse_compute_precision("bf16"), worker::ComputePrecision::kBf16);
  EXPECT_EQ(worker::parse_compute_precision("tf32"), worker::ComputePrecision::kTf32);
  for (const char* p : {"fp32", "bf16", "tf32"}) EXPECT_STREQ(worker::compute_precision_name(worker::parse_compute_precision(p)), p);
  try {
    worker::parse_compute_precision("fp16");
    FAIL() << "fp16 accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--compute-dtype"), std::string::npos) << e.what();
  }
}

// With W4A4 quantization on, bf16 rounding flips activation and weight codes, so a bf16 step's loss
// moves far more than rounding alone would (measured here: 9.2% lower, gradient cosines 0.84..0.99):
// whether that still calibrates well is an end-to-end property (tests/gpu/test_device_engine.cpp). What a
// single step must show: autocast engaged, and the masters' gradients in fp32.
TEST(Precision, Bf16StepChangesTheArithmeticAndKeepsFp32Masters) {
  const test::OneComputeThread one_thread;
  const test::StepOutcome fp32 = step_in(worker::ComputePrecision::kFp32);
  const test::StepOutcome bf16 = step_in(worker::ComputePrecision::kBf16);
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU)) << "the precision scope leaked autocast";
  std::printf("[precision] W4A4 step loss fp32 %.9g bf16 %.9g\n", fp32.loss, bf16.loss);
  EXPECT_GT(std::fabs(bf16.loss / fp32.loss - 1.0), 1e-4) << "bf16 did not change the arithmetic";
  ASSERT_EQ(fp32.gradients.size(), bf16.gradients.size());
  for (std::size_t i = 0; i < fp32.gradients.size(); ++i) {
    ASSERT_TRUE(bf16.gradients[i].defined()) << i;
    EXPECT_EQ(bf16.gradients[i].scalar_type(), at::kFloat) << "parameter " << i << ": gradients must reach fp32 masters";
    EXPECT_TRUE(bf16.gradients[i].isfinite().all().item<bool>()) << i;
  }
}

// Without quantization the transformed block equals the FP block exactly (LET is an equivalence), so a
// step's loss is pure rounding error: relative RMS error e = sqrt(loss / mean(y^2)). In bf16 it must be
// of the order of bf16's unit roundoff u = 2^-9 (inputs of every matmul rounded once, fp32 accumulation
// and softmax/norms in fp32: a few u), and in fp32 of fp32's (2^-24). Measured: fp32 e = 2.7e-7 (4.5 u32),
// bf16 e = 5.6e-3 (2.9 u16); the bounds allow 64 u32, and u16/8 .. 8 u16.
TEST(Precision, Bf16ErrorIsBf16RoundingOnAnExactProblem) {
  const test::OneComputeThread one_thread;
  auto rel_rms = [](worker::ComputePrecision precision) {
    test::OneStepProblem p;
    p.options.weights.bits = 16;
    p.options.acts.bits = 16;
    p.options.aug_loss = false;
    p.options.precision = precision;
    const double loss = test::one_step(p, 1, 0, nullptr).loss;
    return std::sqrt(loss / p.y.pow(2).mean().item<double>());
  };
  const double e32 = rel_rms(worker::ComputePrecision::kFp32), e16 = rel_rms(worker::ComputePrecision::kBf16);
  std::printf("[precision] exact problem: relative RMS error fp32 %.3g, bf16 %.3g (bf16 u = %.3g)\n", e32, e16, std::ldexp(1.0, -9));
  const double u16 = std::ldexp(1.0, -9), u32 = std::ldexp(1.0, -24);
  EXPECT_LT(e32, 64 * u32);
  EXPECT_GT(e16, u16 / 8);
  EXPECT_LT(e16, 8 * u16);
}

// The CPU has no TF32: tf32 leaves the arithmetic exactly fp32 there (only CUDA matmuls change).
TEST(Precision, Tf32IsExactlyFp32OnTheCpu) {
  const test::OneComputeThread one_thread;
  const test::StepOutcome fp32 = step_in(worker::ComputePrecision::kFp32);
  const test::StepOutcome tf32 = step_in(worker::ComputePrecision::kTf32);
  EXPECT_EQ(tf32.loss, fp32.loss);
  ASSERT_EQ(fp32.gradients.size(), tf32.gradients.size());
  for (std::size_t i = 0; i < fp32.gradients.size(); ++i) EXPECT_TRUE(at::equal(tf32.gradients[i], fp32.gradients[i])) << i;
}

}  // namespace
}  // namespace qforge
