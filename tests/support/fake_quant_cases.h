// Cases, inputs and comparisons shared by the fused fake-quant tests: the unit tier checks the CPU twins
// against autograd of the unfused expressions (tests/unit/test_fake_quant_kernels.cpp), the gpu tier the
// CUDA kernels against the twins (tests/gpu/test_fake_quant_cuda.cpp), on the same cases.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "worker/quantizer.h"

namespace qforge::test {

// ---- cases ----------------------------------------------------------------------------------------

struct WeightCase {
  std::string name;
  std::int64_t rows, in;
  worker::WeightQuantSpec spec;
  bool lwc;
};

// Every mode x bits 2/3/4/8 x per-channel and per-group (in = 100, g = 32: three full groups and a partial
// one of 4 columns) x with and without learnable clipping.
inline std::vector<WeightCase> weight_cases() {
  struct Mode {
    const char* name;
    bool sym, deployable;
  };
  const Mode modes[] = {{"asym-deployable", false, true}, {"asym-free", false, false}, {"sym", true, false}};
  std::vector<WeightCase> cases;
  for (const Mode& m : modes) {
    for (int bits : {2, 3, 4, 8}) {
      for (std::int64_t group : {0, 32}) {
        for (bool lwc : {false, true}) {
          worker::WeightQuantSpec spec;
          spec.bits = bits;
          spec.group_size = group;
          spec.sym = m.sym;
          spec.deployable = m.deployable;
          const std::string name = std::string(m.name) + "-w" + std::to_string(bits) +
                                   (group ? "-g32" : "-channel") + (lwc ? "-lwc" : "");
          cases.push_back({name, 12, 100, spec, lwc});
        }
      }
    }
  }
  return cases;
}

struct ActCase {
  std::string name;
  std::vector<std::int64_t> shape;
  worker::ActQuantSpec spec;
};

inline std::vector<ActCase> act_cases() {
  std::vector<ActCase> cases;
  for (bool sym : {false, true}) {
    for (int bits : {4, 8}) {
      for (const std::vector<std::int64_t>& shape : {std::vector<std::int64_t>{24, 64}, {2, 12, 64}}) {
        const std::string name = std::string(sym ? "sym" : "asym") + "-a" + std::to_string(bits) + "-" +
                                 std::to_string(shape.size()) + "d";
        cases.push_back({name, shape, worker::ActQuantSpec{bits, sym}});
      }
    }
  }
  return cases;
}

// ---- inputs ---------------------------------------------------------------------------------------

// Random weights [rows >= 8, in] with the groups every rule must handle built in, in every group:
// row 0 ties at the max (+0.3 twice) and the min (-0.3 twice; for sym also |max| = |min|), row 1 one-signed
// positive, row 2 positive with an exact 0 minimum (at::minimum(0, 0): the tie that halves the gradient),
// row 3 constant, row 4 all zeros (Δ clamped to 1e-5), row 5 its last column the max, tied with the one
// before (a partial last group's padding repeats that column), row 6 its last column the min, row 7
// one-signed negative.
inline at::Tensor make_weights(std::int64_t rows, std::int64_t in, std::int64_t group_size, std::uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor w = at::randn({rows, in}) * 0.05;
  if (rows < 8) return w;
  const std::int64_t g = group_size > 0 ? group_size : in;
  auto a = w.accessor<float, 2>();
  for (std::int64_t begin = 0; begin < in; begin += g) {
    const std::int64_t end = std::min(in, begin + g);
    auto set = [&](std::int64_t row, std::int64_t offset, float v) {
      if (begin + offset < end) a[row][begin + offset] = v;
    };
    set(0, 0, 0.3f), set(0, 2, 0.3f), set(0, 3, -0.3f), set(0, 5, -0.3f);
    for (std::int64_t c = begin; c < end; ++c) {
      a[1][c] = std::fabs(a[1][c]);
      a[2][c] = std::fabs(a[2][c]) + 0.01f;
      a[3][c] = 0.07f;
      a[4][c] = 0.0f;
      a[7][c] = -std::fabs(a[7][c]) - 0.01f;
    }
    set(2, 1, 0.0f);
  }
  a[5][in - 1] = 0.5f;
  if (in >= 2) a[5][in - 2] = 0.5f;
  a[6][in - 1] = -0.5f;
  return w;
}

// Clip logits [rows, groups] spread over [-1, 6] (σ from 0.27 to 0.998), so clipping really moves the range.
inline worker::ClipParams make_clip(std::int64_t rows, std::int64_t groups, std::uint64_t seed) {
  at::manual_seed(seed);
  return {at::rand({rows, groups}) * 7.0 - 1.0, at::rand({rows, groups}) * 7.0 - 1.0};
}

// Random activations (rows of different scales) with, in the first rows of the flattened [rows, d] view: a
// tie at the max, a tie at the min, a constant row (asym Δ = 0, clamped), an all-zero row (sym too),
// +5 and -5 (a tie of |x| across signs), and a three-way tie at the max.
inline at::Tensor make_acts(const std::vector<std::int64_t>& shape, std::uint64_t seed) {
  at::manual_seed(seed);
  const std::int64_t d = shape.back();
  at::Tensor x = at::randn(shape);
  at::Tensor rows = x.view({-1, d});
  rows.mul_(at::exp(at::randn({rows.size(0), 1}) * 1.5));
  auto a = rows.accessor<float, 2>();
  if (rows.size(0) < 6 || d < 4) return x;
  a[0][1] = a[0][3] = 10.0f;
  a[1][0] = a[1][2] = -10.0f;
  for (std::int64_t c = 0; c < d; ++c) a[2][c] = 0.37f, a[3][c] = 0.0f;
  for (std::int64_t c = 0; c < d; ++c) a[4][c] = std::max(-4.0f, std::min(4.0f, a[4][c]));
  a[4][0] = 5.0f, a[4][1] = -5.0f;
  a[5][0] = a[5][1] = a[5][d - 1] = 20.0f;
  return x;
}

// ---- comparisons ----------------------------------------------------------------------------------

// Forward values: how many elements differ at all, and how many by more than one quantization step
// (`step`: Δ per element). Same-ops twins are bit-identical; an ulp of difference in σ(γ) can move Δ by
// one fp16 ulp (every code of that group shifts by code·ulp < Δ/4) or a code across a rounding tie (Δ).
struct ValueDiff {
  std::int64_t differing = 0, beyond_step = 0, numel = 0;
  double max_abs = 0.0, max_in_steps = 0.0;
};

inline ValueDiff compare_values(const at::Tensor& actual, const at::Tensor& expected, const at::Tensor& step) {
  const at::Tensor a = actual.detach().to(at::kDouble).reshape(-1).cpu();
  const at::Tensor e = expected.detach().to(at::kDouble).reshape(-1).cpu();
  const at::Tensor s = step.detach().to(at::kDouble).reshape(-1).cpu();
  const at::Tensor diff = (a - e).abs();
  ValueDiff r;
  r.numel = a.numel();
  r.differing = (diff > 0).sum().item<std::int64_t>();
  // A step's worth plus rounding slack: Δ·q is exact in fp32, so one step is Δ up to Δ's own ulps.
  r.beyond_step = (diff > s * (1.0 + 1e-6)).sum().item<std::int64_t>();
  r.max_abs = r.numel ? diff.max().item<double>() : 0.0;
  r.max_in_steps = r.numel ? (diff / s).max().item<double>() : 0.0;
  return r;
}

// Gradients, normwise: max|a - b| / max|b|. What differs between two correct implementations is the order
// of the fp32 sums into Δ (and an ulp of σ); see kGradRelTol where it is used.
inline double grad_error(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.detach().to(at::kDouble).cpu(), e = expected.detach().to(at::kDouble).cpu();
  const double scale = e.abs().max().item<double>();
  const double diff = (a - e).abs().max().item<double>();
  return scale > 0.0 ? diff / scale : diff;
}

// Δ of every weight element, from the unfused qparams (no gradient), broadcast to [out, in].
inline at::Tensor weight_steps(const at::Tensor& w, const worker::WeightQuantSpec& spec, const worker::ClipParams& clip) {
  at::NoGradGuard no_grad;
  const worker::WeightQParams qp = worker::weight_qparams(w.cpu(), spec, {clip.upper.defined() ? clip.upper.cpu() : at::Tensor(),
                                                                          clip.lower.defined() ? clip.lower.cpu() : at::Tensor()});
  const std::int64_t in = w.size(1), g = spec.group_size > 0 ? spec.group_size : in;
  return qp.scale.repeat_interleave(g, 1).narrow(1, 0, in);
}

// Δ of every activation element (per row of the last dimension), as fake_quant_act computes it.
inline at::Tensor act_steps(const at::Tensor& x, const worker::ActQuantSpec& spec) {
  at::NoGradGuard no_grad;
  const at::Tensor xf = x.cpu().to(at::kFloat);
  at::Tensor s;
  if (spec.sym) {
    s = xf.abs().amax(-1, true) / static_cast<double>((1LL << (spec.bits - 1)) - 1);
  } else {
    s = (xf.amax(-1, true) - xf.amin(-1, true)) / static_cast<double>((1LL << spec.bits) - 1);
  }
  return s.clamp_min(1e-5).expand_as(xf);
}

}  // namespace qforge::test
