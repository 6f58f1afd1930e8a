// HF `config.json` for the LLaMA family (LlamaForCausalLM and architectures with the same graph).
//
// Reads the fields qforge needs, fills HF's defaults for optional ones, and refuses inconsistent or
// unknown configurations with an InputError naming the file and field. Both rope forms are accepted:
// top-level rope_theta/rope_scaling (transformers 4.x) and rope_parameters (transformers 5).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "storage/quant_config.h"

namespace qforge::storage {

namespace fs = std::filesystem;

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3 | dynamic
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string architecture = "LlamaForCausalLM";
  std::string model_type = "llama";
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  std::int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::string torch_dtype = "float32";
  std::int64_t bos_token_id = 1;
  std::int64_t eos_token_id = 2;
  // Present for folders written by `qforge quantize` (config.json "quantization_config").
  std::optional<QuantConfig> quant;
  // The file as read, so writers can keep fields qforge does not interpret.
  nlohmann::json raw = nlohmann::json::object();

  std::int64_t q_dim() const { return num_attention_heads * head_dim; }
  std::int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // Parameters of one decoder block, and of the whole model.
  std::int64_t block_parameters() const;
  std::int64_t total_parameters() const;
};

// Parses and validates; `where` names the source in messages (usually the file path).
LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& where);
LlamaConfig read_llama_config(const fs::path& model_dir_or_file);
// Serialises back to HF form: the raw fields plus every field qforge knows, written from the struct.
nlohmann::json llama_config_to_json(const LlamaConfig& config);
// Atomic, pretty-printed with sorted keys (deterministic bytes).
void write_llama_config(const fs::path& model_dir, const LlamaConfig& config);

}  // namespace qforge::storage
