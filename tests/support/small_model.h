// The small LLaMA configuration the unit tests build random blocks for: hidden 32, intermediate 48,
// vocabulary 64, `heads` query heads over `kv_heads` key/value heads (GQA when fewer), `layers` blocks.
#pragma once

#include <nlohmann/json.hpp>

#include "storage/hf_config.h"

namespace qforge::test {

inline storage::LlamaConfig small_llama_config(int heads, int kv_heads, int layers = 1) {
  const nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 32}, {"intermediate_size", 48},
                            {"num_hidden_layers", layers}, {"num_attention_heads", heads},
                            {"num_key_value_heads", kv_heads}, {"vocab_size", 64}, {"max_position_embeddings", 64},
                            {"rms_norm_eps", 1e-5}};
  return storage::parse_llama_config(j, "test");
}

}  // namespace qforge::test
