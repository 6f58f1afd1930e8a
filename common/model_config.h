// The configuration types of a model, as plain data shared by every layer: the LLaMA-family
// architecture (HF config.json) and qforge's quantization_config. Their file formats are owned by
// storage (storage/hf_config.h parses and writes config.json, storage/quant_config.h the
// quantization_config object); partition plans from them without linking storage.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace qforge {

struct BitsOverride {
  int bits = 0;      // 0: not overridden
  int act_bits = 0;
};

struct QuantConfig {
  std::string method = "rtn";
  int bits = 4;
  std::int64_t group_size = 0;
  bool sym = false;
  int act_bits = 16;
  bool act_sym = false;
  bool deployable = true;
  bool norm_bias = false;
  bool norm_affine = false;
  std::map<int, BitsOverride> block_overrides;
  std::string sidecar = "quantization.safetensors";
  // Empty for qforge folders. For exported folders the packed layout of the weights, which readers
  // dequantize on load: "gptq" (v1 zeros), "gptq_v2", "pack-quantized", "int-quantized".
  std::string format;
  nlohmann::json calibration = nlohmann::json::object();

  int weight_bits(int block) const;
  int activation_bits(int block) const;
};

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
  // Biases: q/k/v (LLaMA's attention_bias, always in Qwen2) and o_proj (LLaMA's attention_bias; a Qwen2
  // output whose transforms made one records it as attention_bias); gate/up/down (mlp_bias).
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  // Qwen3: per-head RMSNorm of q and k (self_attn.q_norm.weight, k_norm.weight [head_dim]) before RoPE.
  bool qk_norm = false;
  // Mistral: each position attends to at most the last sliding_window positions (itself included); 0: all.
  std::int64_t sliding_window = 0;
  // qforge's online rotations (worker/rotation.h), model-wide tensors applied at run time:
  // R4 model.down_proj_rotation [intermediate, intermediate] on down_proj's input (config.json
  // "qforge_down_proj_rotation"), R3 model.qk_rotation [head_dim, head_dim] on Q and K after RoPE
  // ("qforge_qk_rotation"). Only qforge runs such a model; exporters refuse it.
  bool down_proj_rotation = false;
  bool qk_rotation = false;
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

}  // namespace qforge
