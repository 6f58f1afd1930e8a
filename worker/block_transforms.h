// Equivalent transformations of one LLaMA block (OmniQuant LET, AffineQuant affine matrices) and
// learnable weight clipping: parameters, SmoothQuant initialisation, the differentiable "transform then
// fake-quantize" weights used at every training step, and the final fold (algorithms.md §1.3, §2.2).
//
// Row-vector convention (y = x Wᵀ + b). For a norm→linears pair with transform T (diagonal diag(s) or a
// full matrix A) and shift δ, the norm output becomes n' = (n − δ)·T⁻¹ and each following linear
// W' = W·Tᵀ, b' = b + W·δ. Diagonal T folds into the RMSNorm weight (g/s) and bias (−δ/s); a full matrix
// stays as a runtime n'·A⁻¹ after the norm (faithful --ln-matrix only).
// v→o, per KV group j (GQA-aware: v_proj output is kv_heads·d): W_v,j' = M_j⁻ᵀ·W_v,j, b_v,j' = (b_v,j − δ_j)·M_j⁻¹,
// and for every query head i of the group W_o,i' = W_o,i·M_jᵀ, b_o += W_o,i·δ_j. Exact since softmax rows sum to 1.
// q/k, per KV group (query heads of the group share it):
//   deployable (default): per rotary pair (i, i+d/2) a scale-rotation c = a + ib acting on the pair as a
//     complex number; it commutes with every RoPE rotation, so k' = k·M and q' = q·M⁻ᵀ = q·M/|c|²
//     leave q·k unchanged at every position. OmniQuant uses b = 0 (a per-pair scale).
//   faithful: a d×d matrix (AffineQuant) or per-channel scale (OmniQuant) folded before RoPE, as the
//     reference does (W_q ← A⁻ᵀW_q, W_k ← A·W_k); not an equivalence under RoPE, but trained through.
//   with per-head q/k norms (Qwen3), in either mode: one per-pair scale s shared by all heads, folded into
//     the norms' weights (k_norm·s, q_norm/s), the part of the transform that commutes with them and RoPE.
// AffineQuant matrices are used through a gradual band mask (|i−j| ≤ w_e, off-diagonals × sf) rebuilt
// each epoch; inverses are recomputed at every step inside autograd.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "storage/hf_config.h"
#include "worker/llama_block.h"
#include "worker/quantizer.h"

namespace qforge::worker {

enum class Method { kRtn, kOmniQuant, kAffineQuant };
Method parse_method(const std::string& name);
const char* method_name(Method m);

struct TransformOptions {
  Method method = Method::kRtn;
  bool let = false;             // learnable equivalent transformation (scales/matrices)
  bool lwc = false;             // learnable weight clipping
  bool deployable = true;       // false = --faithful
  bool shifts = false;          // learnable shifts (faithful only)
  bool ln_matrix = false;       // full matrices after the norms (faithful AffineQuant weight-only)
  bool signed_max_init = false; // the reference's signed W.max in the SmoothQuant rule (faithful)
  double alpha = 0.5;           // SmoothQuant migration strength
  double stability_factor = 1.0;
  bool fp64_matrices = false;
};

// Per-channel max |x| of the inputs of q_proj (= norm1 output), o_proj and up_proj, from the FP stream.
struct ActStats {
  at::Tensor qkv;   // [H]
  at::Tensor o;     // [q_dim]
  at::Tensor fc1;   // [H]
};
// Updates running maxima with one batch of FP-stream block inputs [B, T, H] and returns the FP block's
// output for it (the calibration target), so statistics and targets take one forward pass.
at::Tensor accumulate_act_stats(const storage::LlamaConfig& c, const BlockWeights& w, const at::Tensor& x,
                          const RopeTables& rope, ActStats& stats);

// The names of the seven linears, in the order used everywhere ("self_attn.q_proj", ...).
const std::vector<std::string>& linear_names();
at::Tensor& linear_weight(BlockWeights& w, std::size_t i);
const at::Tensor& linear_weight(const BlockWeights& w, std::size_t i);

class BlockTransforms {
 public:
  BlockTransforms(const storage::LlamaConfig& config, const BlockWeights& fp, const ActStats& stats,
                  const TransformOptions& options, const WeightQuantSpec& wspec);

  // Parameters to train, split into the optimiser's two groups; named ones for logs, checkpoints, tests:
  // "ln1.scale", "ln1.shift", "ln2.scale", "ln2.shift", "vo.transform", "vo.shift", "qk.a", "qk.b", "qk.transform".
  std::vector<std::pair<std::string, at::Tensor>> named_let_parameters() const;
  std::vector<at::Tensor> let_parameters() const;
  std::vector<at::Tensor> lwc_parameters() const;
  // Every trainable tensor by name (LET names above, "clip.<linear>.upper|lower"), detached copies; and
  // the inverse, which overwrites values in place (to resume or re-fold a trained block).
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& state);

  // Rebuilds the band masks for epoch e of E (AffineQuant; no-op otherwise).
  void set_epoch(int epoch, int epochs);
  // The snapping of small scales the reference applies before every step (|x| < 1e-2 -> ±1e-2):
  // to diagonal scales always, to whole matrices only in faithful mode (the reference's quirk).
  void truncate_small_scales();
  // Restores strict diagonal dominance of every effective (masked) matrix by shrinking the
  // off-diagonal entries of offending rows; returns how many rows were projected.
  std::int64_t enforce_diagonal_dominance();

  // Transformed weights with the transforms applied (differentiable), before weight quantization.
  BlockWeights transformed(const BlockWeights& fp) const;
  // transformed() followed by fake quantization of the seven linears (with LWC when enabled).
  BlockWeights fake_quantized(const BlockWeights& fp) const;
  ClipParams clip(std::size_t linear) const;
  bool has_norm_bias() const { return options_.shifts; }
  bool has_norm_affine() const { return options_.ln_matrix; }

 private:
  at::Tensor masked(const at::Tensor& matrix, const at::Tensor& mask) const;
  at::Tensor ln_effective(const at::Tensor& s) const;

  storage::LlamaConfig config_;
  TransformOptions options_;
  WeightQuantSpec wspec_;
  at::Device device_;                 // the block's weights' device: every parameter and mask lives there
  // LET parameters (undefined when unused).
  at::Tensor s_qkv_, s_fc1_;          // [H] or [H, H] with ln_matrix
  at::Tensor d_qkv_, d_fc1_;          // [H] shifts
  at::Tensor vo_;                     // [kv, d] diagonal (OmniQuant) or [kv, d, d] matrices (AffineQuant)
  at::Tensor d_vo_;                   // [kv*d]
  at::Tensor qk_a_, qk_b_;            // deployable: [kv, d/2] pair transforms ([1, d/2] scales with q/k norms)
  at::Tensor qk_;                     // faithful: [kv, d] scales or [kv, d, d] matrices
  at::Tensor head_mask_, ln_mask_;    // current epoch's masks
  std::vector<ClipParams> clips_;     // per linear
};

// Band mask of size n: 1 on the diagonal, sf for 0 < |i - j| <= w, 0 beyond (AffineQuant §2.3).
at::Tensor band_mask(std::int64_t n, std::int64_t w, double sf);
// Half-width of epoch e of E: int((n - 1) / (E - 1) * e); E = 1 gives the full band.
std::int64_t band_width(std::int64_t n, int epoch, int epochs);
// True when every row has |a_ii| > sum_{j != i} |a_ij| (batched over leading dims).
bool strictly_diagonally_dominant(const at::Tensor& a);

}  // namespace qforge::worker
