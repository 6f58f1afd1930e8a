// One LLaMA decoder block in LibTorch, HF semantics:
//   h   = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))   with n1 = RMSNorm(x)
//   out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2))                    with n2 = RMSNorm(h)
// Attention is causal, with GQA (each KV head serves num_heads / num_kv_heads query heads);
// softmax is computed in fp32 whatever the activation dtype.
//
// Quantized models run the same function: weights are already fake-quantized, and with activation
// quantization on (ActQuantSpec) the inputs of q/k/v, o, gate/up and down, and Q and K after RoPE and V
// (per token and head) are fake-quantized dynamically, as OmniQuant/AffineQuant evaluate (algorithms.md
// §1.1); the softmax output is never quantized.
// Faithful AffineQuant results may carry extras a stock LLaMA lacks: an RMSNorm bias
// (`*_layernorm.bias`, added after the norm's weight) and a dense runtime transform after the norm
// (`*_layernorm.affine_inverse` [H, H], applied as n·A⁻¹ in row-vector form).
#pragma once

#include <ATen/core/Tensor.h>

#include "storage/hf_config.h"
#include "storage/safetensors.h"
#include "worker/quantizer.h"
#include "worker/rope.h"

namespace qforge::worker {

struct BlockWeights {
  at::Tensor input_norm, post_norm;         // [H]
  at::Tensor q, k, v, o;                    // [out, in]
  at::Tensor gate, up, down;
  at::Tensor q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias;  // undefined when absent
  at::Tensor input_norm_bias, post_norm_bias;        // faithful extras, undefined when absent
  at::Tensor input_norm_inverse, post_norm_inverse;  // [H, H]
  at::Tensor q_norm, k_norm;  // Qwen3's per-head RMSNorm weights [head_dim], undefined when absent
  // R4: down_proj's input is x·down_rotation at run time ([F, F], shared by every block; down is already
  // W·down_rotation); undefined when the model has none.
  at::Tensor down_rotation;
  // R3: Q and K after RoPE are q·qk_rotation, k·qk_rotation per head ([d, d], shared; q·kᵀ is unchanged),
  // before their quantization; undefined when the model has none.
  at::Tensor qk_rotation;

  // Loads block `index` from a checkpoint, converted to dtype on device.
  static BlockWeights load(const storage::CheckpointReader& ckpt, const storage::LlamaConfig& config, int index,
                           at::ScalarType dtype, const at::Device& device);
  std::uint64_t nbytes() const;
  // The tensor a checkpoint stores under block suffix `suffix` ("self_attn.q_proj.weight", ...; the
  // names of partition::expected_block_tensors); InternalError for an unknown suffix.
  const at::Tensor& tensor(const std::string& suffix) const;
  // A copy on `device` (every defined tensor; dtypes kept).
  BlockWeights to(const at::Device& device) const;
  // A seeded-by-the-caller random block with the config's shapes (no biases): matrices N(0, weight_std²),
  // norm weights 1 + N(0, norm_std²), drawn in fp64 and converted to dtype. For tests and benchmarks.
  static BlockWeights random(const storage::LlamaConfig& config, at::ScalarType dtype, double weight_std,
                             double norm_std);
};

// HF LlamaRMSNorm: normalise in fp32, cast back, multiply by the weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// RMSNorm followed by the optional faithful extras (bias, runtime affine inverse).
at::Tensor block_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& inverse,
                      double eps);

// Intermediate activations a caller may want from a forward (calibration statistics).
struct BlockTaps {
  at::Tensor qkv_input;   // norm1 output (input of q/k/v)
  at::Tensor o_input;     // attention output (input of o_proj)
  at::Tensor fc1_input;   // norm2 output (input of gate/up)
  at::Tensor down_input;  // silu(gate) * up as down_proj sees it (activation-quantized when that is on)
};

// x: [batch, seqlen, hidden] -> same shape.
at::Tensor block_forward(const storage::LlamaConfig& config, const BlockWeights& w, const at::Tensor& x,
                         const RopeTables& rope, const ActQuantSpec& act = {}, BlockTaps* taps = nullptr);

// Keys and values of earlier positions, for token-by-token decoding: [batch, kv_heads, t, head_dim].
struct KvCache {
  at::Tensor k, v;
  std::int64_t length() const { return k.defined() ? k.size(2) : 0; }
};

// Decodes one new position per sequence (x: [batch, 1, hidden]) given the cache of earlier positions,
// appends this position's keys/values to the cache. Equals block_forward on the whole prefix at the
// last position (no activation quantization: used to sample from FP models).
at::Tensor block_decode(const storage::LlamaConfig& config, const BlockWeights& w, const at::Tensor& x,
                        const RopeTables& rope, KvCache& cache);

}  // namespace qforge::worker
