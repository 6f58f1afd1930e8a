// The `quantization_config` qforge writes into config.json and reads back for evaluation.
//
//   "quantization_config": {
//     "quant_method": "qforge", "method": "rtn|omniquant|affinequant",
//     "bits": 4, "group_size": 128 (0 = per channel), "sym": false,
//     "act_bits": 16, "act_sym": false,              // dynamic per-token activations (Q/K/V per head)
//     "deployable": true,                            // false: needs the extra tensors listed below
//     "block_overrides": {"0": {"bits": 8, "act_bits": 8}},
//     "norm_bias": false, "norm_affine": false,      // faithful-mode extras (see worker/llama_block.h)
//     "sidecar": "quantization.safetensors",         // integer codes, fp16 scales, zero points
//     "calibration": {...}                           // how it was made (data, samples, seed, recipe)
//   }
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/model_config.h"

namespace qforge::storage {

using ::qforge::BitsOverride;
using ::qforge::QuantConfig;

// The sidecar's tensors: "<linear>.codes", ".scales", ".zeros".
bool is_sidecar_tensor(const std::string& name);

// Parses the object under "quantization_config" (InputError naming `where` and the field): qforge's
// own, and the GPTQ and compressed-tensors configs qforge exports (method "gptq" or
// "compressed-tensors", `format` set), so `qforge eval` can check an exported folder.
QuantConfig parse_quant_config(const nlohmann::json& j, const std::string& where);
nlohmann::json quant_config_to_json(const QuantConfig& q);

// Per-block bits in an engine's config name the decoder linears of a set of blocks by one regex,
//   model\.layers\.(0|3)\.(self_attn|mlp)\.[a-z_]+_proj$
// (linears only, so no attention module matches, fused names such as vLLM's qkv_proj do; disjoint from the
// other entries' blocks, so no engine's precedence between entries matters), behind the format's prefix:
// compressed-tensors config_groups targets take "re:", GPTQModel's `dynamic` keys "+:" (a positive rule).
// The readers take back exactly this form.
inline constexpr const char* kCtRegexPrefix = "re:";
inline constexpr const char* kGptqDynamicPrefix = "+:";
std::string blocks_target(const std::string& prefix, const std::vector<int>& blocks);
std::optional<std::vector<int>> parse_blocks_target(const std::string& prefix, const std::string& target);

}  // namespace qforge::storage
