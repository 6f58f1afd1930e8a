// Uniform fake quantization with a straight-through estimator (algorithms.md §1.2), for weights (per
// output channel or per group of input channels, optional learnable clipping) and activations
// (dynamic, per token).
//
// Weight conventions, for N bits and qmax = 2^N - 1, per row r and group g of W [out, in]:
//   asymmetric (default): xmax = σ(γ)·max W, xmin = σ(β)·min W (σ(·) = 1 without LWC),
//                         Δ = (xmax - xmin) / qmax, clamped to [1e-5, 1e4] (the reference's missing
//                         clamp lets Δ = 0 produce NaN), z = round(-xmin / Δ) with no gradient;
//                         in deployable mode the range is first widened to contain 0 (GPTQ's rule),
//                         so z lies in [0, qmax] and can be stored as is;
//   symmetric (GPTQ):     z = 2^(N-1), Δ = 2·max(|xmax|, |xmin|) / qmax, so exported codes are exactly
//                         the calibrated codes;
//   codes  = clamp(round_ste(W / Δ) + z, 0, qmax),   Q(W) = Δ · (codes - z).
// Δ is rounded to fp16 before use (straight-through in the backward pass), so the fake-quant weights equal what an exporter
// rebuilds from the stored fp16 scales bit for bit.
// Groups: G = ceil(in / g); a partial last group is quantized on its own columns only.
//
// Activations: per token (last dimension), min/max recomputed at every call (also at evaluation);
//   asymmetric: Δ = (max - min) / (2^N - 1), z = round(-min / Δ);
//   symmetric:  Δ = max|x| / (2^(N-1) - 1), signed grid [-2^(N-1), 2^(N-1) - 1];
// bits >= 16 is the identity.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qforge::worker {

struct WeightQuantSpec {
  int bits = 4;
  std::int64_t group_size = 0;  // 0: one group per output channel
  bool sym = false;
  bool deployable = true;       // clamp the asymmetric zero point into [0, qmax]
  bool enabled() const { return bits < 16; }
};

struct ActQuantSpec {
  int bits = 16;
  bool sym = false;
  // Q and K (after RoPE) and V per token and head too, as OmniQuant/AffineQuant evaluate; false: only the
  // linears' inputs, which is all an engine quantizes when it runs an int-quantized (W8A8) export.
  bool heads = true;
  bool enabled() const { return bits < 16; }
};

// round(x) in the forward pass, identity gradient in the backward pass.
at::Tensor round_ste(const at::Tensor& x);

// Number of groups per row.
std::int64_t num_groups(std::int64_t in_features, std::int64_t group_size);

// Learnable weight clipping logits γ (upper) and β (lower), one per row and group: [out, G], init 4.0.
struct ClipParams {
  at::Tensor upper;  // undefined: no clipping
  at::Tensor lower;
  bool defined() const { return upper.defined(); }
  static ClipParams init(std::int64_t out_features, std::int64_t groups, double value = 4.0);
};

struct WeightQParams {
  at::Tensor scale;  // [out, G] fp32 holding fp16-representable values
  at::Tensor zero;   // [out, G] fp32 integers (may lie outside [0, qmax] when not deployable)
};

// Scales and zero points of W [out, in] (differentiable in W and the clip logits through Δ).
WeightQParams weight_qparams(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip = {});
// Fake-quantized W (same shape and dtype as w), with the STE through the rounding: the fused op of
// worker/kernels (one pass each way; CUDA kernel or CPU twin).
at::Tensor fake_quant_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip = {});
// The same as ATen expressions differentiated by autograd: the definition the fused ops are tested against.
at::Tensor unfused_fake_quant_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip = {});
// Integer codes [out, in] (uint8) of W for given qparams, and their dequantization.
at::Tensor weight_codes(const at::Tensor& w, const WeightQuantSpec& spec, const WeightQParams& qp);
at::Tensor dequantize_weight(const at::Tensor& codes, const WeightQuantSpec& spec, const WeightQParams& qp);

// Per-token fake quantization over the last dimension (fused, as fake_quant_weight).
at::Tensor fake_quant_act(const at::Tensor& x, const ActQuantSpec& spec);
at::Tensor unfused_fake_quant_act(const at::Tensor& x, const ActQuantSpec& spec);

}  // namespace qforge::worker
