#include "storage/quant_config.h"

#include <algorithm>

#include "common/error.h"
#include "common/strings.h"

namespace qforge::storage {

using nlohmann::json;

bool is_sidecar_tensor(const std::string& name) {
  return ends_with(name, ".codes") || ends_with(name, ".scales") || ends_with(name, ".zeros");
}

namespace {

int get_int(const json& j, const char* key, int fallback, int lo, int hi, const std::string& where) {
  if (!j.contains(key)) return fallback;
  if (!j.at(key).is_number_integer()) throw InputError(where, std::string("quantization_config.") + key, "must be an integer");
  int v = j.at(key).get<int>();
  if (v < lo || v > hi) {
    throw InputError(where, std::string("quantization_config.") + key,
                     "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
  }
  return v;
}

bool get_bool(const json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.contains(key)) return fallback;
  if (!j.at(key).is_boolean()) throw InputError(where, std::string("quantization_config.") + key, "must be true or false");
  return j.at(key).get<bool>();
}

}  // namespace

namespace {

// GPTQModel's `dynamic` (per-module overrides): qforge's per-block bits, each key one positive rule over
// blocks (blocks_target) overriding "bits" only. Other rules (negative "-:" ones leave modules unquantized,
// other fields change the packing) are refused rather than misread.
void read_gptq_dynamic(const json& j, const std::string& where, QuantConfig& q) {
  if (!j.contains("dynamic") || j["dynamic"].is_null()) return;
  if (!j["dynamic"].is_object()) throw InputError(where, "quantization_config.dynamic", "must be an object");
  for (const auto& [key, rule] : j["dynamic"].items()) {
    const std::string field = "quantization_config.dynamic." + key;
    const auto blocks = parse_blocks_target(kGptqDynamicPrefix, key);
    if (!blocks) throw InputError(where, field, "only per-block rules of the form qforge writes are read");
    if (!rule.is_object() || rule.size() != 1 || !rule.contains("bits") || !rule["bits"].is_number_integer()) {
      throw InputError(where, field, "only an integer \"bits\" override is read");
    }
    const int bits = rule["bits"].get<int>();
    if (bits < 2 || bits > 8) throw InputError(where, field + ".bits", "must be in [2, 8], got " + std::to_string(bits));
    for (int b : *blocks) q.block_overrides[b] = {bits, 0};
  }
}

// GPTQ (formats-and-ecosystem §3a): weight-only, desc_act false.
QuantConfig parse_gptq(const json& j, const std::string& where) {
  QuantConfig q;
  q.method = "gptq";
  q.bits = get_int(j, "bits", 4, 2, 8, where);
  const int gs = j.contains("group_size") ? j.at("group_size").get<int>() : -1;
  q.group_size = gs <= 0 ? 0 : gs;
  q.sym = get_bool(j, "sym", true, where);
  if (get_bool(j, "desc_act", false, where)) throw InputError(where, "quantization_config.desc_act", "act-order GPTQ is not read");
  const std::string fmt = j.value("checkpoint_format", j.value("format", std::string("gptq")));
  if (fmt != "gptq" && fmt != "gptq_v2") throw InputError(where, "quantization_config.checkpoint_format", "must be gptq or gptq_v2");
  q.format = fmt;
  q.sidecar.clear();
  read_gptq_dynamic(j, where, q);
  return q;
}

// One compressed-tensors config group's scheme (weights, and dynamic per-token activations or none).
QuantConfig parse_ct_group(const json& g, const std::string& where) {
  QuantConfig q;
  const json& w = g.at("weights");
  q.bits = w.at("num_bits").get<int>();
  q.sym = w.value("symmetric", true);
  const std::string strategy = w.value("strategy", std::string("channel"));
  q.group_size = strategy == "group" ? w.at("group_size").get<std::int64_t>() : 0;
  if (strategy != "group" && strategy != "channel") throw InputError(where, "quantization_config...weights.strategy", "must be group or channel");
  if (g.contains("input_activations") && !g["input_activations"].is_null()) {
    const json& a = g["input_activations"];
    if (a.value("strategy", std::string()) != "token" || !a.value("dynamic", false)) {
      throw InputError(where, "quantization_config...input_activations", "only dynamic per-token activations are read");
    }
    q.act_bits = a.at("num_bits").get<int>();
    q.act_sym = a.value("symmetric", true);
  }
  return q;
}

// One of several compressed-tensors config groups: its scheme and the blocks its one target names
// (blocks_target), none for "Linear".
struct CtGroup {
  QuantConfig scheme;
  std::optional<std::vector<int>> blocks;
};
CtGroup parse_ct_targeted_group(const std::string& name, const json& g, const std::string& where) {
  const std::string field = "quantization_config.config_groups." + name + ".targets";
  if (!g.contains("targets") || !g["targets"].is_array() || g["targets"].size() != 1 || !g["targets"][0].is_string()) {
    throw InputError(where, field, "one target is read");
  }
  const std::string target = g["targets"][0].get<std::string>();
  CtGroup group{parse_ct_group(g, where), std::nullopt};
  if (target != "Linear") {
    group.blocks = parse_blocks_target(kCtRegexPrefix, target);
    if (!group.blocks) throw InputError(where, field, "'" + target + "' is not Linear or qforge's per-block form");
  }
  return group;
}

// compressed-tensors (§3b): one group (its targets taken as every linear), or (per-block bits, as qforge
// exports them) groups each targeting Linear or naming its blocks; the group over most blocks (or Linear)
// is the base scheme and the others become block overrides. Groups may differ in bits only.
QuantConfig parse_compressed_tensors(const json& j, const std::string& where) {
  const std::string format = j.value("format", std::string());
  if (format != "pack-quantized" && format != "int-quantized") {
    throw InputError(where, "quantization_config.format", "only pack-quantized and int-quantized are read");
  }
  if (!j.contains("config_groups") || !j["config_groups"].is_object() || j["config_groups"].empty()) {
    throw InputError(where, "quantization_config.config_groups", "missing or empty");
  }
  const json& config_groups = j["config_groups"];
  std::vector<CtGroup> groups;
  if (config_groups.size() == 1) {
    groups.push_back({parse_ct_group(config_groups.begin().value(), where), std::nullopt});
  } else {
    for (const auto& [name, g] : config_groups.items()) groups.push_back(parse_ct_targeted_group(name, g, where));
  }
  const auto covers = [](const CtGroup& g) { return g.blocks ? g.blocks->size() : SIZE_MAX; };
  const std::size_t base = static_cast<std::size_t>(
      std::max_element(groups.begin(), groups.end(), [&](const CtGroup& a, const CtGroup& b) { return covers(a) < covers(b); }) -
      groups.begin());
  QuantConfig q = groups[base].scheme;
  q.method = "compressed-tensors";
  q.sidecar.clear();
  q.format = format;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    if (i == base) continue;
    const QuantConfig& s = groups[i].scheme;
    if (!groups[i].blocks || s.sym != q.sym || s.group_size != q.group_size || s.act_sym != q.act_sym) {
      throw InputError(where, "quantization_config.config_groups", "groups that differ in more than bits, or two groups over every Linear, are not read");
    }
    for (int b : *groups[i].blocks) q.block_overrides[b] = {s.bits, s.act_bits};
  }
  return q;
}

}  // namespace

QuantConfig parse_quant_config(const json& j, const std::string& where) {
  if (!j.is_object()) throw InputError(where, "quantization_config", "must be an object");
  QuantConfig q;
  if (j.contains("quant_method") && j.at("quant_method") == "gptq") return parse_gptq(j, where);
  if (j.contains("quant_method") && j.at("quant_method") == "compressed-tensors") return parse_compressed_tensors(j, where);
  if (j.contains("quant_method") && j.at("quant_method") != "qforge") {
    throw InputError(where, "quantization_config.quant_method",
                     j.at("quant_method").dump() + " checkpoints are not read (qforge, gptq and compressed-tensors are)");
  }
  if (j.contains("method")) {
    if (!j.at("method").is_string()) throw InputError(where, "quantization_config.method", "must be a string");
    q.method = j.at("method").get<std::string>();
  }
  q.bits = get_int(j, "bits", 4, 2, 16, where);
  q.group_size = get_int(j, "group_size", 0, 0, 1 << 20, where);
  q.sym = get_bool(j, "sym", false, where);
  q.act_bits = get_int(j, "act_bits", 16, 2, 16, where);
  q.act_sym = get_bool(j, "act_sym", false, where);
  q.deployable = get_bool(j, "deployable", true, where);
  q.norm_bias = get_bool(j, "norm_bias", false, where);
  q.norm_affine = get_bool(j, "norm_affine", false, where);
  if (j.contains("sidecar")) q.sidecar = j.at("sidecar").get<std::string>();
  if (j.contains("calibration")) q.calibration = j.at("calibration");
  if (j.contains("block_overrides")) {
    const json& o = j.at("block_overrides");
    if (!o.is_object()) throw InputError(where, "quantization_config.block_overrides", "must be an object");
    for (const auto& [key, val] : o.items()) {
      int block = 0;
      try {
        block = std::stoi(key);
      } catch (const std::exception&) {
        throw InputError(where, "quantization_config.block_overrides." + key, "key must be a block index");
      }
      q.block_overrides[block] = {get_int(val, "bits", 0, 0, 16, where), get_int(val, "act_bits", 0, 0, 16, where)};
    }
  }
  return q;
}

json quant_config_to_json(const QuantConfig& q) {
  json j;
  j["quant_method"] = "qforge";
  j["method"] = q.method;
  j["bits"] = q.bits;
  j["group_size"] = q.group_size;
  j["sym"] = q.sym;
  j["act_bits"] = q.act_bits;
  j["act_sym"] = q.act_sym;
  j["deployable"] = q.deployable;
  j["norm_bias"] = q.norm_bias;
  j["norm_affine"] = q.norm_affine;
  j["sidecar"] = q.sidecar;
  json o = json::object();
  for (const auto& [block, ov] : q.block_overrides) {
    json e = json::object();
    if (ov.bits) e["bits"] = ov.bits;
    if (ov.act_bits) e["act_bits"] = ov.act_bits;
    o[std::to_string(block)] = e;
  }
  j["block_overrides"] = o;
  j["calibration"] = q.calibration;
  return j;
}

namespace {
constexpr const char* kBlocksRegexHead = "model\\.layers\\.(";
constexpr const char* kBlocksRegexTail = ")\\.(self_attn|mlp)\\.[a-z_]+_proj$";
}  // namespace

std::string blocks_target(const std::string& prefix, const std::vector<int>& blocks) {
  std::string alternatives;
  for (int b : blocks) alternatives += (alternatives.empty() ? "" : "|") + std::to_string(b);
  return prefix + kBlocksRegexHead + alternatives + kBlocksRegexTail;
}

std::optional<std::vector<int>> parse_blocks_target(const std::string& prefix, const std::string& target) {
  const std::string head = prefix + kBlocksRegexHead, tail = kBlocksRegexTail;
  if (target.size() <= head.size() + tail.size() || target.compare(0, head.size(), head) != 0 ||
      target.compare(target.size() - tail.size(), tail.size(), tail) != 0) {
    return std::nullopt;
  }
  std::vector<int> blocks;
  std::string number;
  for (char c : target.substr(head.size(), target.size() - head.size() - tail.size()) + "|") {
    if (c == '|') {
      if (number.empty() || number.size() > 6) return std::nullopt;
      blocks.push_back(std::stoi(number));
      number.clear();
    } else if (c >= '0' && c <= '9') {
      number += c;
    } else {
      return std::nullopt;
    }
  }
  return blocks;
}

}  // namespace qforge::storage
