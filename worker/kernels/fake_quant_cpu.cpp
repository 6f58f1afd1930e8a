// CPU twins of the fused fake quantizers: the reference the CUDA kernels are tested against, itself tested
// against autograd of the unfused expressions in worker/quantizer.cpp. Every value is computed with the
// same fp32 operations in the same order as the unfused graph (including ATen's backward formulas, noted
// where they matter), so the twin differs from it only where ATen's vectorised sigmoid or its summation
// order does. The backward recomputes a group's (row's) statistics from the input; nothing is saved.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "worker/kernels/fake_quant.h"

namespace qforge::worker::kernels {
namespace {

constexpr float kMinScale = 1e-5f;  // quantizer.cpp's clamp of Δ, compared in fp32 as ATen does
constexpr float kMaxScale = 1e4f;
// Elements per parallel_for chunk: enough work to amortise a task, small enough to spread 7B rows.
constexpr std::int64_t kGrainElements = 1 << 15;

float qmax_of(int bits) { return static_cast<float>((1LL << bits) - 1); }
float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }
float round_to_fp16(float v) { return static_cast<float>(c10::Half(v)); }
float sign_of(float v) { return static_cast<float>((v > 0.0f) - (v < 0.0f)); }  // at::sgn: 0 at 0

// The part of at::maximum(self, other)'s gradient that reaches self (ATen's derivative: all of it when
// self is the larger, half on a tie, none otherwise); min_share likewise for at::minimum.
float max_share(float self, float other, float grad) {
  return self == other ? grad / 2.0f : (self < other ? 0.0f : grad);
}
float min_share(float self, float other, float grad) {
  return self == other ? grad / 2.0f : (self > other ? 0.0f : grad);
}

// clamp(round(v / Δ) + z, lo, hi) and whether the unclamped value lay inside [lo, hi] (at::clamp passes
// the gradient there, bounds included). round_ste's forward (round(v) - v) + v is exactly round(v) in fp32.
struct Code {
  float value;
  bool in_range;
};
Code code_of(float v, float scale, float zero, float lo, float hi) {
  const float u = std::nearbyint(v / scale) + zero;
  return {std::min(std::max(u, lo), hi), lo <= u && u <= hi};
}

// The gradient of one element's Δ·(code - z) into Δ comes in two parts that autograd sums separately:
// the product's (grad · (code - z)) and the division's (-grad_v · ((v / Δ) / Δ), ATen's formula).
struct ScaleGradTerms {
  float mul = 0.0f, div = 0.0f;
  void add(float grad, float v, const Code& q, float scale, float zero) {
    mul += grad * (q.value - zero);
    const float gv = q.in_range ? grad * scale : 0.0f;
    div += -gv * ((v / scale) / scale);
  }
};
// The gradient reaching v directly (through round_ste and the division), before the max/min terms.
float direct_grad(float grad, const Code& q, float scale) { return (q.in_range ? grad * scale : 0.0f) / scale; }

// ---- weights --------------------------------------------------------------------------------------

// One group's statistics and quantization parameters, as weight_qparams computes them.
struct WeightGroup {
  std::int64_t imax = 0, imin = 0;     // first position of the max / min (what max(-1) / min(-1) pick)
  float max = 0.0f, min = 0.0f;        // the group's max and min
  float sig_upper = 1.0f, sig_lower = 1.0f;  // σ(γ), σ(β); 1 without clipping
  float xmax = 0.0f, xmin = 0.0f;      // clipped range
  float hi = 0.0f, lo = 0.0f;          // range used: clipped, widened to contain 0 when deployable
  float raw = 0.0f;                    // Δ before its clamp
  float scale = 0.0f;                  // Δ used: clamped, rounded to fp16
  float zero = 0.0f;
};

WeightGroup weight_group(const float* w, std::int64_t n, const float* upper, const float* lower,
                         const WeightQuantSpec& spec) {
  WeightGroup g;
  g.max = g.min = w[0];
  for (std::int64_t i = 1; i < n; ++i) {
    if (w[i] > g.max) g.max = w[i], g.imax = i;
    if (w[i] < g.min) g.min = w[i], g.imin = i;
  }
  g.xmax = g.max;
  g.xmin = g.min;
  if (upper != nullptr) {
    g.sig_upper = sigmoid(*upper);
    g.sig_lower = sigmoid(*lower);
    g.xmax = g.sig_upper * g.max;
    g.xmin = g.sig_lower * g.min;
  }
  g.hi = g.xmax;
  g.lo = g.xmin;
  if (!spec.sym && spec.deployable) {
    g.lo = std::min(g.xmin, 0.0f);
    g.hi = std::max(g.xmax, 0.0f);
  }
  const float qmax = qmax_of(spec.bits);
  g.raw = spec.sym ? (2.0f * std::max(std::fabs(g.hi), std::fabs(g.lo))) / qmax : (g.hi - g.lo) / qmax;
  g.scale = round_to_fp16(std::min(std::max(g.raw, kMinScale), kMaxScale));
  if (spec.sym) {
    g.zero = static_cast<float>(1LL << (spec.bits - 1));
  } else {
    g.zero = std::nearbyint(-g.lo / g.scale);
    if (spec.deployable) g.zero = std::min(std::max(g.zero, 0.0f), qmax);
  }
  return g;
}

// Gradients of one group's Δ into its max and min elements and its clip logits.
struct WeightGroupGrads {
  float max = 0.0f, min = 0.0f, upper = 0.0f, lower = 0.0f;
};

WeightGroupGrads weight_group_backward(const WeightGroup& g, float grad_scale, bool clip, const WeightQuantSpec& spec) {
  const float qmax = qmax_of(spec.bits);
  // The fp16 rounding is straight-through; the clamp passes the gradient inside [1e-5, 1e4].
  const float grad_raw = (kMinScale <= g.raw && g.raw <= kMaxScale) ? grad_scale : 0.0f;
  float grad_hi, grad_lo;
  if (spec.sym) {
    const float grad_amax = (grad_raw / qmax) * 2.0f;  // (2·amax) / qmax
    const float ahi = std::fabs(g.hi), alo = std::fabs(g.lo);
    grad_hi = max_share(ahi, alo, grad_amax) * sign_of(g.hi);
    grad_lo = max_share(alo, ahi, grad_amax) * sign_of(g.lo);
  } else {
    grad_hi = grad_raw / qmax;
    grad_lo = -grad_hi;
  }
  if (!spec.sym && spec.deployable) {  // at::maximum(xmax, 0), at::minimum(xmin, 0)
    grad_hi = max_share(g.xmax, 0.0f, grad_hi);
    grad_lo = min_share(g.xmin, 0.0f, grad_lo);
  }
  WeightGroupGrads r{grad_hi, grad_lo, 0.0f, 0.0f};
  if (clip) {  // σ(γ)·max: ATen's sigmoid_backward is (grad·(1 - σ))·σ
    r.upper = ((grad_hi * g.max) * (1.0f - g.sig_upper)) * g.sig_upper;
    r.lower = ((grad_lo * g.min) * (1.0f - g.sig_lower)) * g.sig_lower;
    r.max = grad_hi * g.sig_upper;
    r.min = grad_lo * g.sig_lower;
  }
  return r;
}

// Row r, group j of W [out, in]: its first column and width (a partial last group has its own columns only:
// the unfused code's padding repeats the last column, which changes neither min, max nor their first position).
struct GroupSpan {
  std::int64_t row, group, begin, size;
};
GroupSpan group_span(std::int64_t index, std::int64_t in, std::int64_t group_size, std::int64_t groups) {
  const std::int64_t g = group_size > 0 ? group_size : in;
  const std::int64_t row = index / groups, group = index % groups;
  return {row, group, group * g, std::min(g, in - group * g)};
}

void check_weight_inputs(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip) {
  QF_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous(), "weights must be fp32 contiguous [out, in]");
  QF_CHECK(w.size(0) > 0 && w.size(1) > 0, "weights must not be empty");
  QF_CHECK(spec.bits >= 2 && spec.bits <= 8, "weight bits must be 2..8");
  if (!clip.defined()) return;
  const std::int64_t groups = num_groups(w.size(1), spec.group_size);
  for (const at::Tensor* t : {&clip.upper, &clip.lower}) {
    QF_CHECK(t->defined() && t->scalar_type() == at::kFloat && t->is_contiguous(), "clip logits must be fp32 contiguous");
    QF_CHECK(t->device() == w.device(), "clip logits must be on the weights' device");
    QF_CHECK(t->dim() == 2 && t->size(0) == w.size(0) && t->size(1) == groups, "clip logits must be [out, groups]");
  }
}

void check_cpu(const at::Tensor& t) { QF_CHECK(t.device().is_cpu(), "the CPU twin takes CPU tensors"); }

// ---- activations ----------------------------------------------------------------------------------

// One row's statistics, as fake_quant_act computes them; symmetric rows use max = max|x| and no min.
struct ActRow {
  float max = 0.0f, min = 0.0f;
  std::int64_t max_count = 0, min_count = 0;  // ties: amax/amin share the gradient evenly among them
  float raw = 0.0f, scale = 0.0f, zero = 0.0f;
  float lo = 0.0f, hi = 0.0f;  // code range
};

ActRow act_row(const float* x, std::int64_t d, const ActQuantSpec& spec) {
  ActRow r;
  if (spec.sym) {
    const float qpos = static_cast<float>((1LL << (spec.bits - 1)) - 1);
    r.max = std::fabs(x[0]);
    for (std::int64_t i = 1; i < d; ++i) r.max = std::max(r.max, std::fabs(x[i]));
    for (std::int64_t i = 0; i < d; ++i) r.max_count += std::fabs(x[i]) == r.max;
    r.raw = r.max / qpos;
    r.lo = -qpos - 1.0f;
    r.hi = qpos;
  } else {
    r.max = r.min = x[0];
    for (std::int64_t i = 1; i < d; ++i) r.max = std::max(r.max, x[i]), r.min = std::min(r.min, x[i]);
    for (std::int64_t i = 0; i < d; ++i) r.max_count += x[i] == r.max, r.min_count += x[i] == r.min;
    r.hi = qmax_of(spec.bits);
    r.raw = (r.max - r.min) / r.hi;
  }
  r.scale = std::max(r.raw, kMinScale);
  if (!spec.sym) r.zero = std::nearbyint(-r.min / r.scale);
  return r;
}

void check_act_inputs(const at::Tensor& x, const ActQuantSpec& spec) {
  QF_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "activations must be fp32 contiguous [rows, d]");
  QF_CHECK(x.size(1) > 0, "activation rows must not be empty");
  QF_CHECK(spec.bits >= 2 && spec.bits < 16, "activation bits must be 2..15");
}

void check_grad(const at::Tensor& grad, const at::Tensor& like) {
  QF_CHECK(grad.sizes() == like.sizes() && grad.scalar_type() == at::kFloat && grad.is_contiguous() &&
               grad.device() == like.device(),
           "the output gradient must be fp32 contiguous and shaped like the input");
}

}  // namespace

at::Tensor fake_quant_weight_forward_cpu(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip) {
  check_weight_inputs(w, spec, clip);
  check_cpu(w);
  const std::int64_t out_features = w.size(0), in = w.size(1), groups = num_groups(in, spec.group_size);
  at::Tensor out = at::empty_like(w);
  const float* wp = w.data_ptr<float>();
  const float* up = clip.defined() ? clip.upper.data_ptr<float>() : nullptr;
  const float* lp = clip.defined() ? clip.lower.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const std::int64_t grain = std::max<std::int64_t>(1, kGrainElements / (in / groups + 1));
  at::parallel_for(0, out_features * groups, grain, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t i = first; i < last; ++i) {
      const GroupSpan s = group_span(i, in, spec.group_size, groups);
      const std::int64_t base = s.row * in + s.begin;
      const WeightGroup g = weight_group(wp + base, s.size, up ? up + i : nullptr, lp ? lp + i : nullptr, spec);
      for (std::int64_t c = 0; c < s.size; ++c) {
        const Code q = code_of(wp[base + c], g.scale, g.zero, 0.0f, qmax_of(spec.bits));
        op[base + c] = g.scale * (q.value - g.zero);
      }
    }
  });
  return out;
}

WeightFakeQuantGrads fake_quant_weight_backward_cpu(const at::Tensor& grad_out, const at::Tensor& w,
                                                    const WeightQuantSpec& spec, const ClipParams& clip) {
  check_weight_inputs(w, spec, clip);
  check_cpu(w);
  check_grad(grad_out, w);
  const std::int64_t out_features = w.size(0), in = w.size(1), groups = num_groups(in, spec.group_size);
  WeightFakeQuantGrads grads{at::empty_like(w), {}, {}};
  if (clip.defined()) grads.upper = at::empty_like(clip.upper), grads.lower = at::empty_like(clip.lower);
  const float* wp = w.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  const float* up = clip.defined() ? clip.upper.data_ptr<float>() : nullptr;
  const float* lp = clip.defined() ? clip.lower.data_ptr<float>() : nullptr;
  float* gwp = grads.w.data_ptr<float>();
  float* gup = clip.defined() ? grads.upper.data_ptr<float>() : nullptr;
  float* glp = clip.defined() ? grads.lower.data_ptr<float>() : nullptr;
  const float qmax = qmax_of(spec.bits);
  const std::int64_t grain = std::max<std::int64_t>(1, kGrainElements / (in / groups + 1));
  at::parallel_for(0, out_features * groups, grain, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t i = first; i < last; ++i) {
      const GroupSpan s = group_span(i, in, spec.group_size, groups);
      const std::int64_t base = s.row * in + s.begin;
      const WeightGroup g = weight_group(wp + base, s.size, up ? up + i : nullptr, lp ? lp + i : nullptr, spec);
      ScaleGradTerms terms;
      for (std::int64_t c = 0; c < s.size; ++c) {
        terms.add(gp[base + c], wp[base + c], code_of(wp[base + c], g.scale, g.zero, 0.0f, qmax), g.scale, g.zero);
      }
      const WeightGroupGrads gg = weight_group_backward(g, terms.mul + terms.div, up != nullptr, spec);
      if (gup != nullptr) gup[i] = gg.upper, glp[i] = gg.lower;
      for (std::int64_t c = 0; c < s.size; ++c) {
        float grad = direct_grad(gp[base + c], code_of(wp[base + c], g.scale, g.zero, 0.0f, qmax), g.scale);
        if (c == g.imax) grad += gg.max;  // max(-1) sends Δ's gradient to its first maximum
        if (c == g.imin) grad += gg.min;
        gwp[base + c] = grad;
      }
    }
  });
  return grads;
}

at::Tensor fake_quant_act_forward_cpu(const at::Tensor& x, const ActQuantSpec& spec) {
  check_act_inputs(x, spec);
  check_cpu(x);
  const std::int64_t rows = x.size(0), d = x.size(1);
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<std::int64_t>(1, kGrainElements / d), [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t r = first; r < last; ++r) {
      const float* row = xp + r * d;
      const ActRow a = act_row(row, d, spec);
      for (std::int64_t c = 0; c < d; ++c) {
        const Code q = code_of(row[c], a.scale, a.zero, a.lo, a.hi);
        op[r * d + c] = (q.value - a.zero) * a.scale;
      }
    }
  });
  return out;
}

at::Tensor fake_quant_act_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const ActQuantSpec& spec) {
  check_act_inputs(x, spec);
  check_cpu(x);
  check_grad(grad_out, x);
  const std::int64_t rows = x.size(0), d = x.size(1);
  at::Tensor grad_x = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  float* gxp = grad_x.data_ptr<float>();
  at::parallel_for(0, rows, std::max<std::int64_t>(1, kGrainElements / d), [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t r = first; r < last; ++r) {
      const float* row = xp + r * d;
      const float* grow = gp + r * d;
      const ActRow a = act_row(row, d, spec);
      ScaleGradTerms terms;
      for (std::int64_t c = 0; c < d; ++c) terms.add(grow[c], row[c], code_of(row[c], a.scale, a.zero, a.lo, a.hi), a.scale, a.zero);
      // clamp_min(raw, 1e-5) passes the gradient where raw >= 1e-5; the scale is not detached (unlike z).
      const float grad_raw = a.raw >= kMinScale ? terms.mul + terms.div : 0.0f;
      const float grad_max = grad_raw / a.hi;  // a.hi: qmax, or qpos for sym
      const float grad_min = -grad_max;
      for (std::int64_t c = 0; c < d; ++c) {
        float grad = direct_grad(grow[c], code_of(row[c], a.scale, a.zero, a.lo, a.hi), a.scale);
        if (spec.sym) {
          // amax(|x|): (grad / ties) to each tie, times abs's sign(x).
          if (std::fabs(row[c]) == a.max) grad += (grad_max / static_cast<float>(a.max_count)) * sign_of(row[c]);
        } else {
          if (row[c] == a.max) grad += grad_max / static_cast<float>(a.max_count);
          if (row[c] == a.min) grad += grad_min / static_cast<float>(a.min_count);
        }
        gxp[r * d + c] = grad;
      }
    }
  });
  return grad_x;
}

}  // namespace qforge::worker::kernels
