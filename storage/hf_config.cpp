#include "storage/hf_config.h"

#include "storage/output_folder.h"

#include <set>

#include "common/error.h"
#include "common/file_util.h"

namespace qforge::storage {

using nlohmann::json;

namespace {

// The decoder families qforge implements: the LLaMA graph, plus what each adds (storage/hf_config.h).
struct Architecture {
  const char* name;        // config.json "architectures"[0]
  const char* model_type;  // config.json "model_type"
  bool qkv_bias;           // q/k/v biases whatever attention_bias says (Qwen2)
  bool qk_norm;            // per-head q/k RMSNorm (Qwen3)
  bool sliding_window;     // reads sliding_window (Mistral)
};
constexpr Architecture kArchitectures[] = {
    {"LlamaForCausalLM", "llama", false, false, false},
    {"MistralForCausalLM", "mistral", false, false, true},
    {"Qwen2ForCausalLM", "qwen2", true, false, false},
    {"Qwen3ForCausalLM", "qwen3", false, true, false},
};

std::string supported_list(bool names) {
  std::string out;
  for (const auto& a : kArchitectures) out += (out.empty() ? "" : ", ") + std::string(names ? a.name : a.model_type);
  return out;
}

const Architecture* find_architecture(const std::string& key, bool by_name) {
  for (const auto& a : kArchitectures) {
    if (key == (by_name ? a.name : a.model_type)) return &a;
  }
  return nullptr;
}

class FieldReader {
 public:
  FieldReader(const json& j, const std::string& where) : j_(j), where_(where) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  std::int64_t integer(const char* key, std::optional<std::int64_t> fallback = std::nullopt, std::int64_t min = 1) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      throw InputError(where_, key, "missing required field");
    }
    const json& v = j_.at(key);
    if (!v.is_number_integer()) throw InputError(where_, key, "must be an integer, got " + std::string(v.type_name()));
    std::int64_t x = v.get<std::int64_t>();
    if (x < min) throw InputError(where_, key, "must be >= " + std::to_string(min) + ", got " + std::to_string(x));
    return x;
  }

  double number(const char* key, double fallback, bool positive = true) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number()) throw InputError(where_, key, "must be a number, got " + std::string(v.type_name()));
    double x = v.get<double>();
    if (positive && !(x > 0)) throw InputError(where_, key, "must be positive");
    return x;
  }

  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) throw InputError(where_, key, "must be true or false, got " + std::string(v.type_name()));
    return v.get<bool>();
  }

  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) throw InputError(where_, key, "must be a string, got " + std::string(v.type_name()));
    return v.get<std::string>();
  }

 private:
  const json& j_;
  std::string where_;
};

RopeScaling parse_rope_scaling(const json& j, const std::string& where, const std::string& field) {
  RopeScaling s;
  if (j.is_null()) return s;
  if (!j.is_object()) throw InputError(where, field, "must be an object or null");
  FieldReader r(j, where + ": " + field);
  s.type = r.has("rope_type") ? r.string("rope_type", "default") : r.string("type", "default");
  if (s.type == "default") return s;
  if (s.type != "linear" && s.type != "llama3" && s.type != "dynamic") {
    throw InputError(where, field + ".rope_type", "unsupported rope scaling '" + s.type +
                                                      "' (supported: default, linear, dynamic, llama3)");
  }
  s.factor = r.number("factor", 1.0);
  if (s.type == "llama3") {
    s.low_freq_factor = r.number("low_freq_factor", 1.0);
    s.high_freq_factor = r.number("high_freq_factor", 4.0);
    s.original_max_position_embeddings = r.integer("original_max_position_embeddings", 8192);
    if (!(s.high_freq_factor > s.low_freq_factor)) {
      throw InputError(where, field + ".high_freq_factor", "must be greater than low_freq_factor");
    }
  }
  return s;
}

std::int64_t first_token_id(const json& j, const char* key, std::int64_t fallback) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  const json& v = j.at(key);
  if (v.is_number_integer()) return v.get<std::int64_t>();
  if (v.is_array() && !v.empty() && v.at(0).is_number_integer()) return v.at(0).get<std::int64_t>();
  return fallback;
}

}  // namespace

LlamaConfig parse_llama_config(const json& j, const std::string& where) {
  if (!j.is_object()) throw InputError(where, "", "config must be a JSON object");
  LlamaConfig c;
  c.raw = j;
  FieldReader r(j, where);

  if (j.contains("architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array() || a.empty() || !a.at(0).is_string()) {
      throw InputError(where, "architectures", "must be a non-empty list of strings");
    }
    c.architecture = a.at(0).get<std::string>();
    if (!find_architecture(c.architecture, true)) {
      throw InputError(where, "architectures", "unsupported architecture '" + c.architecture + "' (qforge supports " +
                                                   supported_list(true) + ")");
    }
  }
  c.model_type = r.string("model_type", "llama");
  const Architecture* arch = find_architecture(c.model_type, false);
  if (!arch) {
    throw InputError(where, "model_type", "unsupported model_type '" + c.model_type + "' (qforge supports " +
                                              supported_list(false) + ")");
  }
  if (j.contains("architectures") && c.architecture != arch->name) {
    throw InputError(where, "architectures", "'" + c.architecture + "' does not match model_type '" + c.model_type + "'");
  }
  c.architecture = arch->name;
  if (r.has("hidden_act") && r.string("hidden_act", "silu") != "silu") {
    throw InputError(where, "hidden_act", "unsupported activation '" + r.string("hidden_act", "") + "' (LLaMA uses silu)");
  }

  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads);
  c.vocab_size = r.integer("vocab_size");
  c.max_position_embeddings = r.integer("max_position_embeddings", 2048);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  // attention_bias: q/k/v/o in LLaMA, Qwen3 (and Mistral, whose transformers class ignores it: only qforge's
  // --faithful results set it there); Qwen2 always has q/k/v biases and reads attention_bias as o's only.
  const bool attention_bias = r.boolean("attention_bias", false);
  c.qkv_bias = arch->qkv_bias || attention_bias;
  c.o_bias = attention_bias;
  c.mlp_bias = r.boolean("mlp_bias", false);
  c.qk_norm = arch->qk_norm;
  if (arch->sliding_window) c.sliding_window = r.integer("sliding_window", 0, 0);
  bool sliding_layers = false;
  if (j.contains("layer_types") && j.at("layer_types").is_array()) {
    for (const json& t : j.at("layer_types")) sliding_layers = sliding_layers || t == "sliding_attention";
  }
  if (r.boolean("use_sliding_window", false) || (sliding_layers && !arch->sliding_window)) {
    throw InputError(where, "use_sliding_window", "sliding-window attention in " + c.model_type +
                                                      " models is not supported (only Mistral's sliding_window)");
  }
  c.down_proj_rotation = r.boolean("qforge_down_proj_rotation", false);
  c.qk_rotation = r.boolean("qforge_qk_rotation", false);
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", "float32"));
  c.bos_token_id = first_token_id(j, "bos_token_id", 1);
  c.eos_token_id = first_token_id(j, "eos_token_id", 2);

  if (c.num_attention_heads > c.hidden_size) {
    throw InputError(where, "num_attention_heads", "larger than hidden_size");
  }
  if (r.has("head_dim")) {
    c.head_dim = r.integer("head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      throw InputError(where, "num_attention_heads", "must divide hidden_size (" + std::to_string(c.hidden_size) +
                                                         " % " + std::to_string(c.num_attention_heads) + " != 0)");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) throw InputError(where, "head_dim", "must be even for rotary embeddings");
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    throw InputError(where, "num_key_value_heads", "must divide num_attention_heads (" +
                                                       std::to_string(c.num_attention_heads) + " % " +
                                                       std::to_string(c.num_key_value_heads) + " != 0)");
  }
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" && c.torch_dtype != "bfloat16") {
    throw InputError(where, "torch_dtype", "unsupported dtype '" + c.torch_dtype + "' (float32|float16|bfloat16)");
  }

  if (j.contains("quantization_config") && !j.at("quantization_config").is_null()) {
    c.quant = parse_quant_config(j.at("quantization_config"), where);
  }

  // transformers 5 keeps theta and scaling in rope_parameters; 4.x at the top level.
  if (r.has("rope_parameters")) {
    const json& p = j.at("rope_parameters");
    if (!p.is_object()) throw InputError(where, "rope_parameters", "must be an object");
    c.rope_theta = FieldReader(p, where + ": rope_parameters").number("rope_theta", 10000.0);
    c.rope_scaling = parse_rope_scaling(p, where, "rope_parameters");
  } else {
    c.rope_theta = r.number("rope_theta", 10000.0);
    if (j.contains("rope_scaling")) c.rope_scaling = parse_rope_scaling(j.at("rope_scaling"), where, "rope_scaling");
  }
  return c;
}

LlamaConfig read_llama_config(const fs::path& model_dir_or_file) {
  if (fs::is_directory(model_dir_or_file)) check_not_mid_write(model_dir_or_file);
  fs::path path = fs::is_directory(model_dir_or_file) ? model_dir_or_file / "config.json" : model_dir_or_file;
  if (!fs::exists(path)) {
    throw InputError(path.string(), "", fs::exists(model_dir_or_file) ? "missing config.json in the model folder"
                                                                       : "no such file or directory");
  }
  std::string text = read_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw InputError(path.string(), "", std::string("not valid JSON: ") + e.what());
  }
  return parse_llama_config(j, path.string());
}

json llama_config_to_json(const LlamaConfig& c) {
  json j = c.raw.is_object() ? c.raw : json::object();
  j["architectures"] = json::array({c.architecture});
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  const Architecture* arch = find_architecture(c.model_type, false);
  j["attention_bias"] = arch && arch->qkv_bias ? c.o_bias : (c.qkv_bias || c.o_bias);
  j["mlp_bias"] = c.mlp_bias;
  for (const auto& [key, on] : {std::pair<const char*, bool>{"qforge_down_proj_rotation", c.down_proj_rotation},
                                {"qforge_qk_rotation", c.qk_rotation}}) {
    if (on) {
      j[key] = true;
    } else {
      j.erase(key);
    }
  }
  j["torch_dtype"] = c.torch_dtype;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  if (c.quant) j["quantization_config"] = quant_config_to_json(*c.quant);
  else j.erase("quantization_config");
  if (j.contains("rope_parameters")) {
    j["rope_parameters"]["rope_theta"] = c.rope_theta;
  } else {
    j["rope_theta"] = c.rope_theta;
    if (c.rope_scaling.type == "default") {
      j["rope_scaling"] = nullptr;
    } else {
      json s = {{"rope_type", c.rope_scaling.type}, {"factor", c.rope_scaling.factor}};
      if (c.rope_scaling.type == "llama3") {
        s["low_freq_factor"] = c.rope_scaling.low_freq_factor;
        s["high_freq_factor"] = c.rope_scaling.high_freq_factor;
        s["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
      }
      j["rope_scaling"] = s;
    }
  }
  return j;
}

void write_llama_config(const fs::path& model_dir, const LlamaConfig& config) {
  write_file_atomic(model_dir / "config.json", llama_config_to_json(config).dump(2) + "\n");
}

}  // namespace qforge::storage
