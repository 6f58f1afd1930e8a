// Rotations folded into a LLaMA model (QuaRot; SpinQuant's R1/R2 without learning): the model computes
// the same function, but its weights and the residual stream are expressed in a rotated basis where
// outliers are spread out, so they quantize better.
//
// R1 [H, H] on the residual stream: first every RMSNorm weight is folded into the linears that read the
// norm's output (input_layernorm into q/k/v, post_attention_layernorm into gate/up, the final norm into the
// head) and set to 1 (RMSNorm without a weight commutes with an orthogonal R: ‖xR‖ = ‖x‖); then the
// embedding becomes E·R1, every reader of the stream (q/k/v, gate/up, head; W [out, H]) W·R1, every writer
// (o_proj, down_proj; W [H, in]) R1ᵀ·W with its bias b·R1 (row vectors). R2 [d, d] per attention head on
// v_proj's output and o_proj's input (the same R2 for every head, so GQA's shared KV heads stay shared):
// v_proj's rows of each KV head R2ᵀ·W (bias b·R2), o_proj's columns of each query head W·R2.
// A tied head becomes its own tensor (the embedding and the head differ after folding).
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/model_config.h"
#include "worker/hadamard.h"
#include "worker/llama_block.h"

namespace qforge::worker {

struct ModelWeights {
  at::Tensor embed;       // [vocab, H]
  at::Tensor final_norm;  // [H]
  at::Tensor head;        // [vocab, H] (a tied model's: the embedding)
  std::vector<BlockWeights> blocks;
};

// Folds the norms and applies R1 (undefined: none) and R2 (undefined: none) in place, in the dtype of
// the weights. InputError for blocks with faithful extras (an RMSNorm bias or runtime inverse): rotations
// apply to stock models.
// The online rotations act on activations at run time, where activation quantization sees the rotated
// values (QuaRot's R4 and R3; only worth their cost when activations are quantized):
//   R4 [F, F] on down_proj's input: down becomes W·R4 and every block's down_rotation R4;
//   R3 [d, d] on Q and K after RoPE, per head: (q·R3)(k·R3)ᵀ = q·kᵀ, so no weight changes; every block's
//   qk_rotation R3 (worker/llama_block.h).
struct ModelRotations {
  at::Tensor r1, r2, r3, r4;  // undefined: none
};
void rotate_model(const storage::LlamaConfig& config, ModelWeights& model, const ModelRotations& r);
// The same for one block (`index` names it in errors).
void rotate_block(const storage::LlamaConfig& config, BlockWeights& block, const ModelRotations& r, int index);

// Writes the rotated model of the HF folder `model` into the folder `out` (created; model.safetensors in
// float32, config.json with tie_word_embeddings false, the tokenizer files), one block in memory at a time,
// computed in float64. R1 is make_rotation(hidden, kind, seed), R2 make_rotation(head_dim, kind, seed + 1),
// and with `online` R4 make_rotation(intermediate, kind, seed + 2) and R3 make_rotation(head_dim, kind,
// seed + 3), stored once as model.down_proj_rotation and model.qk_rotation (config.json
// qforge_down_proj_rotation, qforge_qk_rotation). Returns what was applied, for the output's config:
// {"kind", "seed", "r1", "r2"[, "r3", "r4"]} (their constructions).
// The online rotations (R3, R4) come with quantized activations only: a weight-only result stays free of
// run-time operations.
inline bool online_rotations(int act_bits) { return act_bits < 16; }

nlohmann::json write_rotated_model(const std::filesystem::path& model, const std::filesystem::path& out, RotationKind kind,
                                   std::uint64_t seed, bool online);

}  // namespace qforge::worker
