// GPTQ rounding (Frantar et al. 2022, algorithms.md "GPTQ"): the codes of a linear W [out, in] chosen
// column by column so that the layer's output on the calibration inputs X moves least, each column's
// rounding error compensated on the columns not yet quantized through the inverse Hessian of
// ||X Wᵀ - X Ŵᵀ||², H = 2 XᵀX.
//
// The grid is static and given (scales and zero points per row and group, WeightQParams of
// worker/quantizer.h, exactly what the exporter packs): from min/max as RTN's, or from learned clipping
// (OmniQuant/AffineQuant), after the transforms are folded. GPTQ decides only the codes, so act-order
// (columns in decreasing diag(H)) never splits a group's parameters and the exported g_idx stays trivial.
//
// Per column j (in processing order): q_j = Δ_g (clamp(round(w_j / Δ_g) + z_g, 0, qmax) - z_g),
// e_j = (w_j - q_j) / U_jj, and w_k -= e_j U_jk for the later columns k, where U is the upper Cholesky
// factor of H⁻¹ (H dampened by `damp` times its mean diagonal; inputs that are always zero get H_jj = 1
// and W_:j = 0, as the reference does). Columns are processed in lazy blocks of `block_size` (the
// update of later blocks is one matrix product per block), which changes only the summation order.
// Arithmetic is in W's dtype (fp64 for the tests, fp32 in the engine).
#pragma once

#include <ATen/core/Tensor.h>

#include "worker/quantizer.h"

namespace qforge::worker {

struct GptqOptions {
  bool enabled = false;     // --rounding gptq (else codes are rounded to nearest)
  double damp = 0.01;       // --gptq-damp: fraction of mean(diag H) added to the diagonal
  bool act_order = false;   // --act-order: columns in decreasing diag(H)
  std::int64_t block_size = 128;
};

struct GptqResult {
  at::Tensor codes;  // uint8 [out, in]
  at::Tensor q;      // dequantized codes, W's dtype [out, in]
};

// H: [in, in] in W's dtype (symmetric, positive semi-definite). InternalError when H + damping is not
// positive definite (a larger damp helps), naming `label`.
GptqResult gptq_quantize(const at::Tensor& w, const at::Tensor& h, const WeightQuantSpec& spec, const WeightQParams& qp,
                         const GptqOptions& options, const std::string& label = "gptq");

// Adds 2·XᵀX of the rows of x [..., in] to h [in, in] (float32 products, accumulated in h's dtype).
void add_to_hessian(at::Tensor& h, const at::Tensor& x);

}  // namespace qforge::worker
