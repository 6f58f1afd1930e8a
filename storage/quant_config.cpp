#include "storage/quant_config.h"

#include "common/error.h"

namespace qforge::storage {

using nlohmann::json;

int QuantConfig::weight_bits(int block) const {
  auto it = block_overrides.find(block);
  return it != block_overrides.end() && it->second.bits ? it->second.bits : bits;
}

int QuantConfig::activation_bits(int block) const {
  auto it = block_overrides.find(block);
  return it != block_overrides.end() && it->second.act_bits ? it->second.act_bits : act_bits;
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

QuantConfig parse_quant_config(const json& j, const std::string& where) {
  if (!j.is_object()) throw InputError(where, "quantization_config", "must be an object");
  QuantConfig q;
  if (j.contains("quant_method") && j.at("quant_method") != "qforge") {
    throw InputError(where, "quantization_config.quant_method",
                     "'" + j.at("quant_method").dump() + "' checkpoints are not read by this qforge version (only qforge fake-quant folders)");
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

}  // namespace qforge::storage
