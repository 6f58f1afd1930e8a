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

#include "common/model_config.h"
#include "storage/quant_config.h"

namespace qforge::storage {

namespace fs = std::filesystem;

using ::qforge::LlamaConfig;
using ::qforge::RopeScaling;

// Parses and validates; `where` names the source in messages (usually the file path).
LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& where);
LlamaConfig read_llama_config(const fs::path& model_dir_or_file);
// Serialises back to HF form: the raw fields plus every field qforge knows, written from the struct.
nlohmann::json llama_config_to_json(const LlamaConfig& config);
// Atomic, pretty-printed with sorted keys (deterministic bytes).
void write_llama_config(const fs::path& model_dir, const LlamaConfig& config);

}  // namespace qforge::storage
