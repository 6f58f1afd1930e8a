// One LLaMA decoder block in LibTorch, HF semantics:
//   h   = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))   with n1 = RMSNorm(x)
//   out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2))                    with n2 = RMSNorm(h)
// Attention is causal, with GQA (each KV head serves num_heads / num_kv_heads query heads);
// softmax is computed in fp32 whatever the activation dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include "storage/hf_config.h"
#include "storage/safetensors.h"
#include "worker/rope.h"

namespace qforge::worker {

struct BlockWeights {
  at::Tensor input_norm, post_norm;         // [H]
  at::Tensor q, k, v, o;                    // [out, in]
  at::Tensor gate, up, down;
  at::Tensor q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias;  // undefined when absent

  // Loads block `index` from a checkpoint, converted to dtype on device.
  static BlockWeights load(const storage::CheckpointReader& ckpt, const storage::LlamaConfig& config, int index,
                           at::ScalarType dtype, const at::Device& device);
  std::uint64_t nbytes() const;
};

// HF LlamaRMSNorm: normalise in fp32, cast back, multiply by the weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// x: [batch, seqlen, hidden] -> same shape.
at::Tensor block_forward(const storage::LlamaConfig& config, const BlockWeights& w, const at::Tensor& x,
                         const RopeTables& rope);

}  // namespace qforge::worker
