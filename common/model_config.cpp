#include "common/model_config.h"

namespace qforge {

int QuantConfig::weight_bits(int block) const {
  auto it = block_overrides.find(block);
  return it != block_overrides.end() && it->second.bits ? it->second.bits : bits;
}

int QuantConfig::activation_bits(int block) const {
  auto it = block_overrides.find(block);
  return it != block_overrides.end() && it->second.act_bits ? it->second.act_bits : act_bits;
}

std::int64_t LlamaConfig::block_parameters() const {
  std::int64_t h = hidden_size, f = intermediate_size;
  std::int64_t n = 2 * h                      // norms
                   + q_dim() * h + 2 * kv_dim() * h + h * q_dim()  // q, k, v, o
                   + 3 * f * h;               // gate, up, down
  if (qkv_bias) n += q_dim() + 2 * kv_dim();
  if (o_bias) n += h;
  if (qk_norm) n += 2 * head_dim;
  if (mlp_bias) n += 2 * f + h;
  return n;
}

std::int64_t LlamaConfig::total_parameters() const {
  std::int64_t n = num_hidden_layers * block_parameters() + vocab_size * hidden_size + hidden_size;
  if (!tie_word_embeddings) n += vocab_size * hidden_size;
  return n;
}

}  // namespace qforge
