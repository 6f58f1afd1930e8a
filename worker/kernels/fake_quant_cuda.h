// Internal: launchers of the fused fake-quant kernels in fake_quant.cu. Raw fp32 device pointers, sizes and a
// stream, and no torch types: nvcc never parses LibTorch's headers (slow and fragile). fake_quant_cuda.cpp
// wraps them for tensors. Each returns the launch's error (cudaSuccess when nothing was launched).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qforge::worker::kernels::cuda {

struct WeightKernelSpec {
  int bits;
  std::int64_t group_size;  // 0: one group per row
  bool sym;
  bool deployable;
};

struct ActKernelSpec {
  int bits;
  bool sym;
};

// w, out, grad_out, grad_w: [rows, cols] row-major; upper, lower, grad_upper, grad_lower: [rows, groups],
// or all four null for no clipping.
cudaError_t launch_fake_quant_weight_forward(const float* w, const float* upper, const float* lower, float* out,
                                             std::int64_t rows, std::int64_t cols, const WeightKernelSpec& spec,
                                             cudaStream_t stream);
cudaError_t launch_fake_quant_weight_backward(const float* grad_out, const float* w, const float* upper,
                                              const float* lower, float* grad_w, float* grad_upper, float* grad_lower,
                                              std::int64_t rows, std::int64_t cols, const WeightKernelSpec& spec,
                                              cudaStream_t stream);

// x, out, grad_out, grad_x: [rows, cols] row-major, one token (or token and head) per row.
cudaError_t launch_fake_quant_act_forward(const float* x, float* out, std::int64_t rows, std::int64_t cols,
                                          const ActKernelSpec& spec, cudaStream_t stream);
cudaError_t launch_fake_quant_act_backward(const float* grad_out, const float* x, float* grad_x, std::int64_t rows,
                                           std::int64_t cols, const ActKernelSpec& spec, cudaStream_t stream);

}  // namespace qforge::worker::kernels::cuda
