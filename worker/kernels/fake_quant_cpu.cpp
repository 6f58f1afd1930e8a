// CPU twins of the fused fake quantizers: what the engine runs on CPUs, and the reference the CUDA kernels
// are tested against, itself tested against autograd of the unfused expressions in worker/quantizer.cpp.
// Every value is computed with the same fp32 operations in the same order as the unfused graph (including
// ATen's backward formulas, noted where they matter), so the twin differs from it only where ATen's
// vectorised sigmoid or its summation order does. The weight backward takes each group's extrema from the
// forward when given them (else measures them again); the activation backward recomputes a row's.
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

// ---- span kernels ---------------------------------------------------------------------------------
// The loops over a group's (row's) elements, written so that the compiler vectorises them: reductions
// keep kLanes independent partial results (combined in a fixed order, so results do not depend on the
// machine), selects instead of branches. Each is compiled for AVX-512, AVX2 and the baseline, chosen
// when the program loads (GCC's target_clones). The file is compiled without FMA contraction
// (worker/CMakeLists.txt): every product and sum rounds as the unfused ATen ops round.

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define QF_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QF_VECTOR_CLONES
#endif

constexpr int kLanes = 16;

// The quantization grid of one group (row): step Δ, zero point z and the code range [lo, hi].
struct Grid {
  float scale, zero, lo, hi;
};

// clamp(round(v / Δ) + z, lo, hi) and whether the unclamped value lay inside [lo, hi] (at::clamp passes
// the gradient there, bounds included). round_ste's forward (round(v) - v) + v is exactly round(v) in fp32.
inline float unclamped_code(float v, const Grid& g) { return std::nearbyint(v / g.scale) + g.zero; }
inline float clamp_code(float u, const Grid& g) { return std::min(std::max(u, g.lo), g.hi); }
inline bool in_range(float u, const Grid& g) { return g.lo <= u && u <= g.hi; }

// max and min of v[0, n), n >= 1 (exact: no rounding is involved, so the lane split changes nothing).
QF_VECTOR_CLONES void span_min_max(const float* v, std::int64_t n, float* max_out, float* min_out) {
  float hi[kLanes], lo[kLanes];
  for (int j = 0; j < kLanes; ++j) hi[j] = lo[j] = v[0];
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      hi[j] = v[i + j] > hi[j] ? v[i + j] : hi[j];
      lo[j] = v[i + j] < lo[j] ? v[i + j] : lo[j];
    }
  }
  for (; i < n; ++i) hi[0] = v[i] > hi[0] ? v[i] : hi[0], lo[0] = v[i] < lo[0] ? v[i] : lo[0];
  for (int j = 1; j < kLanes; ++j) hi[0] = hi[j] > hi[0] ? hi[j] : hi[0], lo[0] = lo[j] < lo[0] ? lo[j] : lo[0];
  *max_out = hi[0];
  *min_out = lo[0];
}

// max |v| over v[0, n).
QF_VECTOR_CLONES float span_abs_max(const float* v, std::int64_t n) {
  float hi[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) hi[j] = std::fabs(v[i + j]) > hi[j] ? std::fabs(v[i + j]) : hi[j];
  }
  for (; i < n; ++i) hi[0] = std::fabs(v[i]) > hi[0] ? std::fabs(v[i]) : hi[0];
  for (int j = 1; j < kLanes; ++j) hi[0] = hi[j] > hi[0] ? hi[j] : hi[0];
  return hi[0];
}

// How many of v[0, n) equal value (|v| when abs): the ties among which amax/amin split a gradient.
QF_VECTOR_CLONES std::int64_t span_count_equal(const float* v, std::int64_t n, float value, bool abs) {
  std::int64_t count = 0;
  if (abs) {
    for (std::int64_t i = 0; i < n; ++i) count += std::fabs(v[i]) == value;
  } else {
    for (std::int64_t i = 0; i < n; ++i) count += v[i] == value;
  }
  return count;
}

// The first position of value in v (it is there): what max(-1) / min(-1) pick among ties. Blocks of
// kLanes are tested with one vector compare each; the block that holds it is then scanned.
QF_VECTOR_CLONES std::int64_t first_equal(const float* v, std::int64_t n, float value) {
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    bool any = false;
    for (int j = 0; j < kLanes; ++j) any |= v[i + j] == value;
    if (any) break;
  }
  while (i + 1 < n && v[i] != value) ++i;
  return i;
}

// out = Δ · (clamp(round(v / Δ) + z, lo, hi) - z).
QF_VECTOR_CLONES void span_fake_quant(const float* v, float* out, std::int64_t n, Grid g) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = g.scale * (clamp_code(unclamped_code(v[i], g), g) - g.zero);
}

// The gradient of the span's Δ·(code - z) into Δ, in the two parts autograd sums separately: the
// product's (grad · (code - z)) and the division's (-grad_v · ((v / Δ) / Δ), ATen's formula), where
// grad_v = grad · Δ inside the clamp's range and 0 outside. Returned summed, product part first. With
// kDirect, the same pass also writes the gradient reaching each v directly (through round_ste and the
// division): out = grad_v / Δ. Inlined into each vector clone below.
template <bool kDirect>
inline float scale_grad_pass(const float* v, const float* grad, float* out, std::int64_t n, const Grid& g) {
  float mul[kLanes] = {}, div[kLanes] = {};
  std::int64_t i = 0;
  auto term = [&](int j, std::int64_t k) {
    const float u = unclamped_code(v[k], g);
    mul[j] += grad[k] * (clamp_code(u, g) - g.zero);
    const float gv = in_range(u, g) ? grad[k] * g.scale : 0.0f;
    div[j] += -gv * ((v[k] / g.scale) / g.scale);
    if (kDirect) out[k] = gv / g.scale;
  };
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) term(j, i + j);
  }
  for (; i < n; ++i) term(0, i);
  float m = 0.0f, d = 0.0f;
  for (int j = 0; j < kLanes; ++j) m += mul[j], d += div[j];
  return m + d;
}

QF_VECTOR_CLONES float span_scale_grad(const float* v, const float* grad, std::int64_t n, Grid g) {
  return scale_grad_pass<false>(v, grad, nullptr, n, g);
}

QF_VECTOR_CLONES float span_backward(const float* v, const float* grad, float* out, std::int64_t n, Grid g) {
  return scale_grad_pass<true>(v, grad, out, n, g);
}

// The activation row's backward: the direct gradient plus each tie's share of the gradient into the
// row's max and min (symmetric rows: of max |x|, times sign(x)).
QF_VECTOR_CLONES void span_act_grad(const float* v, const float* grad, float* out, std::int64_t n, Grid g, bool sym,
                                    float max, float max_share_grad, float min, float min_share_grad) {
  for (std::int64_t i = 0; i < n; ++i) {
    float r = (in_range(unclamped_code(v[i], g), g) ? grad[i] * g.scale : 0.0f) / g.scale;
    if (sym) {
      r = std::fabs(v[i]) == max ? r + max_share_grad * sign_of(v[i]) : r;
    } else {
      r = v[i] == max ? r + max_share_grad : r;
      r = v[i] == min ? r + min_share_grad : r;
    }
    out[i] = r;
  }
}

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
  Grid grid(const WeightQuantSpec& spec) const { return {scale, zero, 0.0f, qmax_of(spec.bits)}; }
};

// The group's quantization parameters from its extrema (measured by weight_group, or saved by the forward).
WeightGroup derive_group(float max, float min, std::int64_t imax, std::int64_t imin, const float* upper,
                         const float* lower, const WeightQuantSpec& spec) {
  WeightGroup g;
  g.max = max;
  g.min = min;
  g.imax = imax;
  g.imin = imin;
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

// Measures the group; positions: also find imax and imin (what a backward needs; 0 otherwise).
WeightGroup weight_group(const float* w, std::int64_t n, const float* upper, const float* lower, const WeightQuantSpec& spec,
                         bool positions) {
  float max = 0.0f, min = 0.0f;
  span_min_max(w, n, &max, &min);
  return derive_group(max, min, positions ? first_equal(w, n, max) : 0, positions ? first_equal(w, n, min) : 0, upper,
                      lower, spec);
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
    r.max = span_abs_max(x, d);
    r.max_count = span_count_equal(x, d, r.max, /*abs=*/true);
    r.raw = r.max / qpos;
    r.lo = -qpos - 1.0f;
    r.hi = qpos;
  } else {
    span_min_max(x, d, &r.max, &r.min);
    r.max_count = span_count_equal(x, d, r.max, false);
    r.min_count = span_count_equal(x, d, r.min, false);
    r.hi = qmax_of(spec.bits);
    r.raw = (r.max - r.min) / r.hi;
  }
  r.scale = std::max(r.raw, kMinScale);
  if (!spec.sym) r.zero = std::nearbyint(-r.min / r.scale);
  return r;
}

Grid grid_of(const ActRow& r) { return {r.scale, r.zero, r.lo, r.hi}; }

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

at::Tensor fake_quant_weight_forward_cpu(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip,
                                         WeightGroupStats* stats) {
  check_weight_inputs(w, spec, clip);
  check_cpu(w);
  const std::int64_t out_features = w.size(0), in = w.size(1), groups = num_groups(in, spec.group_size);
  at::Tensor out = at::empty_like(w);
  if (stats) {
    stats->extrema = at::empty({out_features * groups, 2}, w.options());
    stats->positions = at::empty({out_features * groups, 2}, w.options().dtype(at::kLong));
  }
  const float* wp = w.data_ptr<float>();
  const float* up = clip.defined() ? clip.upper.data_ptr<float>() : nullptr;
  const float* lp = clip.defined() ? clip.lower.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  float* ep = stats ? stats->extrema.data_ptr<float>() : nullptr;
  std::int64_t* pp = stats ? stats->positions.data_ptr<std::int64_t>() : nullptr;
  const std::int64_t grain = std::max<std::int64_t>(1, kGrainElements / (in / groups + 1));
  at::parallel_for(0, out_features * groups, grain, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t i = first; i < last; ++i) {
      const GroupSpan s = group_span(i, in, spec.group_size, groups);
      const std::int64_t base = s.row * in + s.begin;
      const WeightGroup g = weight_group(wp + base, s.size, up ? up + i : nullptr, lp ? lp + i : nullptr, spec, ep != nullptr);
      span_fake_quant(wp + base, op + base, s.size, g.grid(spec));
      if (ep != nullptr) ep[2 * i] = g.max, ep[2 * i + 1] = g.min, pp[2 * i] = g.imax, pp[2 * i + 1] = g.imin;
    }
  });
  return out;
}

WeightFakeQuantGrads fake_quant_weight_backward_cpu(const at::Tensor& grad_out, const at::Tensor& w,
                                                    const WeightQuantSpec& spec, const ClipParams& clip,
                                                    const WeightGroupStats* stats) {
  check_weight_inputs(w, spec, clip);
  check_cpu(w);
  check_grad(grad_out, w);
  const std::int64_t out_features = w.size(0), in = w.size(1), groups = num_groups(in, spec.group_size);
  if (stats) {
    QF_CHECK(stats->extrema.numel() == 2 * out_features * groups && stats->positions.numel() == 2 * out_features * groups,
             "group statistics do not match the weights");
  }
  WeightFakeQuantGrads grads{at::empty_like(w), {}, {}};
  if (clip.defined()) grads.upper = at::empty_like(clip.upper), grads.lower = at::empty_like(clip.lower);
  const float* wp = w.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  const float* up = clip.defined() ? clip.upper.data_ptr<float>() : nullptr;
  const float* lp = clip.defined() ? clip.lower.data_ptr<float>() : nullptr;
  const float* ep = stats ? stats->extrema.data_ptr<float>() : nullptr;
  const std::int64_t* pp = stats ? stats->positions.data_ptr<std::int64_t>() : nullptr;
  float* gwp = grads.w.data_ptr<float>();
  float* gup = clip.defined() ? grads.upper.data_ptr<float>() : nullptr;
  float* glp = clip.defined() ? grads.lower.data_ptr<float>() : nullptr;
  const std::int64_t grain = std::max<std::int64_t>(1, kGrainElements / (in / groups + 1));
  at::parallel_for(0, out_features * groups, grain, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t i = first; i < last; ++i) {
      const GroupSpan s = group_span(i, in, spec.group_size, groups);
      const std::int64_t base = s.row * in + s.begin;
      const float* ui = up ? up + i : nullptr;
      const float* li = lp ? lp + i : nullptr;
      const WeightGroup g = ep != nullptr ? derive_group(ep[2 * i], ep[2 * i + 1], pp[2 * i], pp[2 * i + 1], ui, li, spec)
                                          : weight_group(wp + base, s.size, ui, li, spec, true);
      const float grad_scale = span_backward(wp + base, gp + base, gwp + base, s.size, g.grid(spec));
      const WeightGroupGrads gg = weight_group_backward(g, grad_scale, up != nullptr, spec);
      if (gup != nullptr) gup[i] = gg.upper, glp[i] = gg.lower;
      gwp[base + g.imax] += gg.max;  // max(-1) sends Δ's gradient to its first maximum
      gwp[base + g.imin] += gg.min;
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
      span_fake_quant(row, op + r * d, d, grid_of(act_row(row, d, spec)));
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
      // clamp_min(raw, 1e-5) passes the gradient where raw >= 1e-5; the scale is not detached (unlike z).
      const float grad_raw = a.raw >= kMinScale ? span_scale_grad(row, grow, d, grid_of(a)) : 0.0f;
      const float grad_max = grad_raw / a.hi;  // a.hi: qmax, or qpos for sym
      const float grad_min = -grad_max;
      // amax / amin share their gradient evenly among ties (symmetric: times abs's sign(x)).
      span_act_grad(row, grow, gxp + r * d, d, grid_of(a), spec.sym, a.max, grad_max / static_cast<float>(a.max_count),
                    a.min, spec.sym ? 0.0f : grad_min / static_cast<float>(a.min_count));
    }
  });
  return grad_x;
}

}  // namespace qforge::worker::kernels
