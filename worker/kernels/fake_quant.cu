// CUDA kernels of the fused fake quantizers (worker/kernels/fake_quant.h): one thread block per weight group
// (a whole row when per-channel) or per activation row, block-wide reductions by warp shuffles plus one
// shared slot per warp. Forward: read the group once for max/min, once to write Q. Backward: recompute the
// statistics, reduce the two sums into Δ, then write dW/dx in a third pass (re-reads hit L1/L2).
//
// The arithmetic is the CPU twin's (fake_quant_cpu.cpp) operation for operation: IEEE division (nvcc's
// default -prec-div=true), rintf (half to even, as std::nearbyint), __float2half_rn (as c10::Half), min/max
// written as std::min/std::max are, and no FMA contraction (--fmad=false, worker/CMakeLists.txt). The kernel
// and the twin then differ only in expf's last bits (sigmoid of the clip logits) and in the order of the
// fp32 sums into Δ.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "worker/kernels/fake_quant_cuda.h"

namespace qforge::worker::kernels::cuda {
namespace {

constexpr float kMinScale = 1e-5f;
constexpr float kMaxScale = 1e4f;
constexpr int kMaxThreads = 256;

// ---- scalar helpers, as in the twin ----------------------------------------------------------------

__device__ float smax(float a, float b) { return a < b ? b : a; }  // std::max
__device__ float smin(float a, float b) { return b < a ? b : a; }  // std::min
__device__ float qmax_of(int bits) { return static_cast<float>((1 << bits) - 1); }
__device__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ float round_to_fp16(float v) { return __half2float(__float2half_rn(v)); }
__device__ float sign_of(float v) { return static_cast<float>((v > 0.0f) - (v < 0.0f)); }
__device__ float max_share(float self, float other, float grad) {
  return self == other ? grad / 2.0f : (self < other ? 0.0f : grad);
}
__device__ float min_share(float self, float other, float grad) {
  return self == other ? grad / 2.0f : (self > other ? 0.0f : grad);
}

struct Code {
  float value;
  bool in_range;
};
__device__ Code code_of(float v, float scale, float zero, float lo, float hi) {
  const float u = rintf(v / scale) + zero;
  return {smin(smax(u, lo), hi), lo <= u && u <= hi};
}
__device__ float direct_grad(float grad, const Code& q, float scale) {
  return (q.in_range ? grad * scale : 0.0f) / scale;
}

// ---- block-wide all-reductions (blockDim.x a multiple of 32): every thread gets the same bits ---------

struct Arg {
  float value;
  int index;  // -1: no element
};

__device__ float shfl_down(float v, int delta) { return __shfl_down_sync(0xffffffffu, v, delta); }
__device__ int shfl_down(int v, int delta) { return __shfl_down_sync(0xffffffffu, v, delta); }
__device__ Arg shfl_down(Arg a, int delta) { return {shfl_down(a.value, delta), shfl_down(a.index, delta)}; }

// max(-1) / min(-1) pick the first position of a tie, so the lower index wins between equal values.
struct ArgMax {
  __device__ Arg operator()(Arg a, Arg b) const {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
  }
};
struct ArgMin {
  __device__ Arg operator()(Arg a, Arg b) const {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    return (b.value < a.value || (b.value == a.value && b.index < a.index)) ? b : a;
  }
};
struct Max {
  __device__ float operator()(float a, float b) const { return smax(a, b); }
};
struct Min {
  __device__ float operator()(float a, float b) const { return smin(a, b); }
};
struct Add {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Lane 0 of each warp reduces its warp; every thread then combines the per-warp results in the same order,
// so all threads hold identical values (the scalar chain after it runs redundantly in every thread).
template <class T, class Op>
__device__ T block_allreduce(T v, Op op) {
  __shared__ T per_warp[32];
  for (int delta = 16; delta > 0; delta >>= 1) v = op(v, shfl_down(v, delta));
  __syncthreads();  // a previous reduction may still be reading per_warp
  if ((threadIdx.x & 31) == 0) per_warp[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = per_warp[0];
  for (int i = 1; i < static_cast<int>(blockDim.x >> 5); ++i) r = op(r, per_warp[i]);
  return r;
}

// Sums of one group's (row's) gradient into Δ: the product's and the division's terms, kept apart as
// autograd sums them apart.
struct ScaleGradTerms {
  float mul, div;
  __device__ void add(float grad, float v, const Code& q, float scale, float zero) {
    mul += grad * (q.value - zero);
    const float gv = q.in_range ? grad * scale : 0.0f;
    div += -gv * ((v / scale) / scale);
  }
};

// ---- weights --------------------------------------------------------------------------------------

struct WeightGroup {
  int imax, imin;
  float max, min, sig_upper, sig_lower, xmax, xmin, hi, lo, raw, scale, zero;
};

__device__ WeightGroup weight_group(const float* w, int n, const float* upper, const float* lower,
                                    const WeightKernelSpec& spec) {
  Arg hi{0.0f, -1}, lo{0.0f, -1};
  for (int c = threadIdx.x; c < n; c += blockDim.x) {  // ascending: a thread keeps its first tie
    const float v = w[c];
    if (hi.index < 0 || v > hi.value) hi = {v, c};
    if (lo.index < 0 || v < lo.value) lo = {v, c};
  }
  hi = block_allreduce(hi, ArgMax{});
  lo = block_allreduce(lo, ArgMin{});
  WeightGroup g;
  g.imax = hi.index;
  g.imin = lo.index;
  g.max = hi.value;
  g.min = lo.value;
  g.sig_upper = g.sig_lower = 1.0f;
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
    g.lo = smin(g.xmin, 0.0f);
    g.hi = smax(g.xmax, 0.0f);
  }
  const float qmax = qmax_of(spec.bits);
  g.raw = spec.sym ? (2.0f * smax(fabsf(g.hi), fabsf(g.lo))) / qmax : (g.hi - g.lo) / qmax;
  g.scale = round_to_fp16(smin(smax(g.raw, kMinScale), kMaxScale));
  if (spec.sym) {
    g.zero = static_cast<float>(1 << (spec.bits - 1));
  } else {
    g.zero = rintf(-g.lo / g.scale);
    if (spec.deployable) g.zero = smin(smax(g.zero, 0.0f), qmax);
  }
  return g;
}

struct WeightGroupGrads {
  float max, min, upper, lower;
};

__device__ WeightGroupGrads weight_group_backward(const WeightGroup& g, float grad_scale, bool clip,
                                                  const WeightKernelSpec& spec) {
  const float qmax = qmax_of(spec.bits);
  const float grad_raw = (kMinScale <= g.raw && g.raw <= kMaxScale) ? grad_scale : 0.0f;
  float grad_hi, grad_lo;
  if (spec.sym) {
    const float grad_amax = (grad_raw / qmax) * 2.0f;
    const float ahi = fabsf(g.hi), alo = fabsf(g.lo);
    grad_hi = max_share(ahi, alo, grad_amax) * sign_of(g.hi);
    grad_lo = max_share(alo, ahi, grad_amax) * sign_of(g.lo);
  } else {
    grad_hi = grad_raw / qmax;
    grad_lo = -grad_hi;
  }
  if (!spec.sym && spec.deployable) {
    grad_hi = max_share(g.xmax, 0.0f, grad_hi);
    grad_lo = min_share(g.xmin, 0.0f, grad_lo);
  }
  WeightGroupGrads r{grad_hi, grad_lo, 0.0f, 0.0f};
  if (clip) {
    r.upper = ((grad_hi * g.max) * (1.0f - g.sig_upper)) * g.sig_upper;
    r.lower = ((grad_lo * g.min) * (1.0f - g.sig_lower)) * g.sig_lower;
    r.max = grad_hi * g.sig_upper;
    r.min = grad_lo * g.sig_lower;
  }
  return r;
}

// This block's group: offset of its first element, index of its clip logits, width (a partial last group
// has its own columns only).
struct GroupSpan {
  std::int64_t base, param;
  int size;
};
__device__ GroupSpan group_span(std::int64_t cols, std::int64_t group_size, std::int64_t groups) {
  const std::int64_t row = blockIdx.x / groups, group = blockIdx.x % groups, begin = group * group_size;
  const std::int64_t size = cols - begin < group_size ? cols - begin : group_size;
  return {row * cols + begin, row * groups + group, static_cast<int>(size)};
}

__global__ void __launch_bounds__(kMaxThreads)
    weight_forward_kernel(const float* __restrict__ w, const float* __restrict__ upper,
                          const float* __restrict__ lower, float* __restrict__ out, std::int64_t cols,
                          std::int64_t group_size, std::int64_t groups, WeightKernelSpec spec) {
  const GroupSpan s = group_span(cols, group_size, groups);
  const float* wg = w + s.base;
  const WeightGroup g = weight_group(wg, s.size, upper ? upper + s.param : nullptr,
                                     lower ? lower + s.param : nullptr, spec);
  const float qmax = qmax_of(spec.bits);
  for (int c = threadIdx.x; c < s.size; c += blockDim.x) {
    const Code q = code_of(wg[c], g.scale, g.zero, 0.0f, qmax);
    out[s.base + c] = g.scale * (q.value - g.zero);
  }
}

__global__ void __launch_bounds__(kMaxThreads)
    weight_backward_kernel(const float* __restrict__ grad_out, const float* __restrict__ w,
                           const float* __restrict__ upper, const float* __restrict__ lower,
                           float* __restrict__ grad_w, float* __restrict__ grad_upper,
                           float* __restrict__ grad_lower, std::int64_t cols, std::int64_t group_size,
                           std::int64_t groups, WeightKernelSpec spec) {
  const GroupSpan s = group_span(cols, group_size, groups);
  const float* wg = w + s.base;
  const float* gg = grad_out + s.base;
  const WeightGroup g = weight_group(wg, s.size, upper ? upper + s.param : nullptr,
                                     lower ? lower + s.param : nullptr, spec);
  const float qmax = qmax_of(spec.bits);
  ScaleGradTerms terms{0.0f, 0.0f};
  for (int c = threadIdx.x; c < s.size; c += blockDim.x) {
    terms.add(gg[c], wg[c], code_of(wg[c], g.scale, g.zero, 0.0f, qmax), g.scale, g.zero);
  }
  const float mul = block_allreduce(terms.mul, Add{});
  const float div = block_allreduce(terms.div, Add{});
  const WeightGroupGrads r = weight_group_backward(g, mul + div, upper != nullptr, spec);
  if (grad_upper != nullptr && threadIdx.x == 0) {
    grad_upper[s.param] = r.upper;
    grad_lower[s.param] = r.lower;
  }
  for (int c = threadIdx.x; c < s.size; c += blockDim.x) {
    float grad = direct_grad(gg[c], code_of(wg[c], g.scale, g.zero, 0.0f, qmax), g.scale);
    if (c == g.imax) grad += r.max;
    if (c == g.imin) grad += r.min;
    grad_w[s.base + c] = grad;
  }
}

// ---- activations ----------------------------------------------------------------------------------

struct ActRow {
  float max, min;
  int max_count, min_count;
  float raw, scale, zero, lo, hi;
};

__device__ ActRow act_row(const float* x, int d, const ActKernelSpec& spec) {
  ActRow r{};
  if (spec.sym) {
    float m = 0.0f;  // |x| >= 0
    for (int c = threadIdx.x; c < d; c += blockDim.x) m = smax(m, fabsf(x[c]));
    r.max = block_allreduce(m, Max{});
    int count = 0;
    for (int c = threadIdx.x; c < d; c += blockDim.x) count += fabsf(x[c]) == r.max;
    r.max_count = block_allreduce(count, Add{});
    r.hi = static_cast<float>((1 << (spec.bits - 1)) - 1);
    r.lo = -r.hi - 1.0f;
    r.raw = r.max / r.hi;
  } else {
    float hi = -INFINITY, lo = INFINITY;
    for (int c = threadIdx.x; c < d; c += blockDim.x) hi = smax(hi, x[c]), lo = smin(lo, x[c]);
    r.max = block_allreduce(hi, Max{});
    r.min = block_allreduce(lo, Min{});
    int nmax = 0, nmin = 0;
    for (int c = threadIdx.x; c < d; c += blockDim.x) nmax += x[c] == r.max, nmin += x[c] == r.min;
    r.max_count = block_allreduce(nmax, Add{});
    r.min_count = block_allreduce(nmin, Add{});
    r.hi = qmax_of(spec.bits);
    r.raw = (r.max - r.min) / r.hi;
  }
  r.scale = smax(r.raw, kMinScale);
  if (!spec.sym) r.zero = rintf(-r.min / r.scale);
  return r;
}

__global__ void __launch_bounds__(kMaxThreads)
    act_forward_kernel(const float* __restrict__ x, float* __restrict__ out, int d, ActKernelSpec spec) {
  const std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * d;
  const ActRow a = act_row(x + base, d, spec);
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    const Code q = code_of(x[base + c], a.scale, a.zero, a.lo, a.hi);
    out[base + c] = (q.value - a.zero) * a.scale;
  }
}

__global__ void __launch_bounds__(kMaxThreads)
    act_backward_kernel(const float* __restrict__ grad_out, const float* __restrict__ x, float* __restrict__ grad_x,
                        int d, ActKernelSpec spec) {
  const std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * d;
  const float* row = x + base;
  const float* grow = grad_out + base;
  const ActRow a = act_row(row, d, spec);
  ScaleGradTerms terms{0.0f, 0.0f};
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    terms.add(grow[c], row[c], code_of(row[c], a.scale, a.zero, a.lo, a.hi), a.scale, a.zero);
  }
  const float mul = block_allreduce(terms.mul, Add{});
  const float div = block_allreduce(terms.div, Add{});
  const float grad_raw = a.raw >= kMinScale ? mul + div : 0.0f;
  const float grad_max = grad_raw / a.hi;
  const float grad_min = -grad_max;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    const float v = row[c];
    float grad = direct_grad(grow[c], code_of(v, a.scale, a.zero, a.lo, a.hi), a.scale);
    if (spec.sym) {
      if (fabsf(v) == a.max) grad += (grad_max / static_cast<float>(a.max_count)) * sign_of(v);
    } else {
      if (v == a.max) grad += grad_max / static_cast<float>(a.max_count);
      if (v == a.min) grad += grad_min / static_cast<float>(a.min_count);
    }
    grad_x[base + c] = grad;
  }
}

// Threads per block: a power of two from 32 to kMaxThreads covering the group (row) width.
int threads_for(std::int64_t width) {
  int t = 32;
  while (t < width && t < kMaxThreads) t *= 2;
  return t;
}

// Blocks are counted in a 1-D grid and widths in int.
bool fits_grid(std::int64_t blocks, std::int64_t width) { return blocks <= INT_MAX && width <= INT_MAX; }

struct WeightGrid {
  std::int64_t group_size, groups;
};
WeightGrid weight_grid(std::int64_t cols, const WeightKernelSpec& spec) {
  const std::int64_t g = spec.group_size > 0 ? spec.group_size : cols;
  return {g, (cols + g - 1) / g};
}

}  // namespace

cudaError_t launch_fake_quant_weight_forward(const float* w, const float* upper, const float* lower, float* out,
                                             std::int64_t rows, std::int64_t cols, const WeightKernelSpec& spec,
                                             cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const WeightGrid grid = weight_grid(cols, spec);
  if (!fits_grid(rows * grid.groups, cols)) return cudaErrorInvalidConfiguration;
  weight_forward_kernel<<<static_cast<unsigned>(rows * grid.groups), threads_for(std::min(grid.group_size, cols)), 0,
                          stream>>>(w, upper, lower, out, cols, grid.group_size, grid.groups, spec);
  return cudaGetLastError();
}

cudaError_t launch_fake_quant_weight_backward(const float* grad_out, const float* w, const float* upper,
                                              const float* lower, float* grad_w, float* grad_upper, float* grad_lower,
                                              std::int64_t rows, std::int64_t cols, const WeightKernelSpec& spec,
                                              cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const WeightGrid grid = weight_grid(cols, spec);
  if (!fits_grid(rows * grid.groups, cols)) return cudaErrorInvalidConfiguration;
  weight_backward_kernel<<<static_cast<unsigned>(rows * grid.groups), threads_for(std::min(grid.group_size, cols)),
                           0, stream>>>(grad_out, w, upper, lower, grad_w, grad_upper, grad_lower, cols,
                                        grid.group_size, grid.groups, spec);
  return cudaGetLastError();
}

cudaError_t launch_fake_quant_act_forward(const float* x, float* out, std::int64_t rows, std::int64_t cols,
                                          const ActKernelSpec& spec, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (!fits_grid(rows, cols)) return cudaErrorInvalidConfiguration;
  act_forward_kernel<<<static_cast<unsigned>(rows), threads_for(cols), 0, stream>>>(x, out, static_cast<int>(cols),
                                                                                     spec);
  return cudaGetLastError();
}

cudaError_t launch_fake_quant_act_backward(const float* grad_out, const float* x, float* grad_x, std::int64_t rows,
                                           std::int64_t cols, const ActKernelSpec& spec, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (!fits_grid(rows, cols)) return cudaErrorInvalidConfiguration;
  act_backward_kernel<<<static_cast<unsigned>(rows), threads_for(cols), 0, stream>>>(grad_out, x, grad_x,
                                                                                      static_cast<int>(cols), spec);
  return cudaGetLastError();
}

}  // namespace qforge::worker::kernels::cuda
