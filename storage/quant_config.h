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
#include <string>

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

}  // namespace qforge::storage
