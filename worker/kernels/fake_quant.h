// Fused fake quantization: the weight quantizer with learnable clipping and the per-token activation
// quantizer of worker/quantizer.h, each as one pass per group (weights) or row (activations) forward and
// one pass backward, with a CPU twin (vectorised loops: what the engine runs on CPUs, and the reference)
// and a CUDA kernel of the same arithmetic. The method is unchanged: forward and backward equal autograd of
// the unfused expressions in quantizer.cpp.
//
// Why these two are the first fusions (one calibration step of a LLaMA-7B block, bench/bench_calib_step:
// hidden 4096, intermediate 11008, 202.4M linear weights = 0.81 GB in fp32; 7 quantized activations per
// token: n1, q, k, v, attn, n2 (4096 each) and the MLP product (11008) = 35,584 values = 142 KB per token):
//   - Unfused, fake_quant_weight runs ~10 full-size elementwise/reduction kernels forward (max, min, div,
//     round, sub, add, +z, clamp, -z, mul: ~20 tensor-sizes read or written) plus ~15 tiny [out, G] ones,
//     and ~20 full-size kernels backward (mul and div backward, clamp's mask, two sums into Δ, the max/min
//     scatters, three gradient adds: ~30 tensor-sizes). That is ~50 x 0.81 GB = 40 GB per step, 8.4 ms at
//     the H200's 4.8 TB/s, and it does not shrink with the sequence length. Fused: read W, write Q forward;
//     read W and dQ, write dW backward = 5 x 0.81 GB = 4 GB, 0.84 ms. The unfused graph also keeps two extra
//     fp32 copies of every weight alive for the backward (clamp's input, codes - z): 1.6 GB per block.
//   - The step's GEMMs are 6 x 202.4M x T FLOP (+ attention): 314 GFLOP at T = 256, 2.69 TFLOP at T = 2048,
//     i.e. ~5 ms and ~45 ms at ~60 TFLOP/s fp32. So at T = 256 the unfused weight fake-quant costs more than
//     all the block's matrix products (the step is memory-bound in elementwise code), and at T = 2048 ~19%.
//   - Activations: the same ~50 passes over 142 KB x T: 1.8 GB (0.38 ms) at T = 256, 14.6 GB (3.0 ms) at
//     T = 2048, vs 5 passes fused (0.04 / 0.30 ms): the second-largest elementwise cost, growing with T.
//   - Both launch ~600 kernels per step between them (7 weights x ~60, 7 activations x ~30), ~2.5 ms of
//     launch latency at ~4 us each, again comparable to the GEMMs at short T.
//   - FLOPs of the fake-quant itself (~30 per element forward + backward, ~6 GFLOP for the weights) are
//     negligible: at ~0.5 FLOP/byte unfused it is bound by memory traffic, which fusion cuts ~10x.
//   Other elementwise parts of the block (RMSNorm, RoPE, SiLU x up, softmax) are one to three kernels each.
//
// Tensors: the raw twins and kernels take fp32 contiguous tensors, w [out, in] with clip logits [out, G]
// (or undefined: no clipping) and x [rows, d]; the fused ops accept any floating dtype and shape (as the
// unfused ones do) and convert around the fp32 core. Backward passes recompute the group's or row's
// statistics instead of saving them: the kernels are memory-bound, so the recomputation is free.
#pragma once

#include <ATen/core/Tensor.h>

#include "worker/quantizer.h"

namespace qforge::worker {

// Differentiable fused fake quantization: the CUDA kernels for CUDA tensors, the CPU twins for CPU tensors.
// On a CUDA tensor in a build without CUDA they throw InternalError.
at::Tensor fused_fake_quant_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip = {});
at::Tensor fused_fake_quant_act(const at::Tensor& x, const ActQuantSpec& spec);

namespace kernels {

// Gradients of one weight fake-quant: upper/lower are undefined when there is no clipping.
struct WeightFakeQuantGrads {
  at::Tensor w, upper, lower;
};

// What the weight forward finds per group (row-major over [out, groups]) and the backward can reuse
// instead of reading W twice more: max and min (fp32 [.., 2]) and their first positions in the group
// (int64 [.., 2], what max(-1) / min(-1) pick among ties).
struct WeightGroupStats {
  at::Tensor extrema, positions;
};

// CPU twins (reference): fp32 contiguous CPU tensors. With `stats` the forward also records the group
// statistics and the backward takes them from there (else it measures them again): the same values.
at::Tensor fake_quant_weight_forward_cpu(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip,
                                         WeightGroupStats* stats = nullptr);
WeightFakeQuantGrads fake_quant_weight_backward_cpu(const at::Tensor& grad_out, const at::Tensor& w,
                                                    const WeightQuantSpec& spec, const ClipParams& clip,
                                                    const WeightGroupStats* stats = nullptr);
at::Tensor fake_quant_act_forward_cpu(const at::Tensor& x, const ActQuantSpec& spec);
at::Tensor fake_quant_act_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const ActQuantSpec& spec);

// CUDA kernels: fp32 contiguous CUDA tensors, on the current stream. Throw InternalError without CUDA.
at::Tensor fake_quant_weight_forward_cuda(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip);
WeightFakeQuantGrads fake_quant_weight_backward_cuda(const at::Tensor& grad_out, const at::Tensor& w,
                                                     const WeightQuantSpec& spec, const ClipParams& clip);
at::Tensor fake_quant_act_forward_cuda(const at::Tensor& x, const ActQuantSpec& spec);
at::Tensor fake_quant_act_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const ActQuantSpec& spec);

// True when this build compiled the CUDA kernels (QFORGE_WITH_CUDA).
bool built_with_cuda();

}  // namespace kernels
}  // namespace qforge::worker
