#include "storage/export.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "common/strings.h"
#include "common/file_util.h"
#include "common/log.h"
#include "storage/output_folder.h"
#include "storage/quant_config.h"
#include "storage/quant_pack.h"

namespace qforge::storage {

using nlohmann::json;

namespace {

std::string strip(const std::string& s, const std::string& suffix) { return s.substr(0, s.size() - suffix.size()); }


fs::path sidecar_path(const fs::path& dir) {
  if (fs::exists(dir / "quantization.safetensors.index.json")) return dir / "quantization.safetensors.index.json";
  return dir / "quantization.safetensors";
}

}  // namespace

namespace {

// Every linear's name pattern and [out, in] (the same in every block).
std::vector<std::pair<std::string, std::pair<std::int64_t, std::int64_t>>> linear_shapes(const LlamaConfig& c) {
  const std::int64_t h = c.hidden_size, f = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
  return {{"self_attn.q_proj", {q, h}}, {"self_attn.k_proj", {kv, h}}, {"self_attn.v_proj", {kv, h}},
          {"self_attn.o_proj", {h, q}}, {"mlp.gate_proj", {f, h}},     {"mlp.up_proj", {f, h}},
          {"mlp.down_proj", {h, f}}};
}

// The block of a decoder linear's name ("model.layers.<b>.<...>"), -1 for any other tensor.
int block_of(const std::string& linear) {
  const std::string head = "model.layers.";
  if (linear.compare(0, head.size(), head) != 0) return -1;
  return std::atoi(linear.c_str() + head.size());
}

// The distinct (weight bits, activation bits) of the blocks, each with its blocks in order.
using Schemes = std::map<std::pair<int, int>, std::vector<int>>;
Schemes block_schemes(const LlamaConfig& c, const QuantConfig& q) {
  Schemes out;
  for (int b = 0; b < c.num_hidden_layers; ++b) out[{q.weight_bits(b), q.activation_bits(b)}].push_back(b);
  return out;
}

// The packers' own checks (storage/quant_pack.h) on every linear shape, as a reason.
std::string packing_refusal(const LlamaConfig& c, const QuantConfig& q, int bits, ExportFormat format) {
  if (format != ExportFormat::kGptq) return "";
  for (const auto& [name, shape] : linear_shapes(c)) {
    try {
      check_gptq_bits(bits, "model.layers.*." + name);
      check_gptq_shape(shape.first, shape.second, q.group_size, "model.layers.*." + name);
    } catch (const InputError& e) {
      return e.what();
    }
  }
  return "";
}

// Why `format` cannot hold blocks of `bits`-bit weights and `act_bits`-bit activations ("" when it can).
std::string scheme_refusal(const LlamaConfig& model, const QuantConfig& q, int bits, int act_bits, ExportFormat format) {
  if (format == ExportFormat::kGptq && act_bits < 16) {
    return "GPTQ checkpoints are weight-only and this model quantizes activations to " + std::to_string(act_bits) +
           " bits; export compressed-tensors (W8A8 with --act-sym) or calibrate with --abits 16";
  }
  if (format == ExportFormat::kCompressedTensors) {
    if (act_bits == 16 && bits != 4 && bits != 8) {
      return "compressed-tensors pack-quantized holds 4- or 8-bit weights (this model has " + std::to_string(bits) + ")";
    }
    if (act_bits < 16) {
      if (act_bits != 8 || bits != 8) {
        return "compressed-tensors int-quantized expresses W8A8 only (this model is W" + std::to_string(bits) + "A" +
               std::to_string(act_bits) + ")";
      }
      if (!q.act_sym) {
        return "compressed-tensors reads dynamic per-token activations only as symmetric int8; calibrate with --act-sym";
      }
      if (!q.sym || q.group_size != 0) {
        return "compressed-tensors int-quantized needs symmetric per-channel weights; calibrate with --sym --group-size 0";
      }
    }
  }
  return packing_refusal(model, q, bits, format);
}

}  // namespace

std::string export_refusal(const LlamaConfig& model, ExportFormat format) {
  QF_CHECK(model.quant.has_value(), "export_refusal needs a quantized model's config");
  const QuantConfig& q = *model.quant;
  if (q.calibration.contains("rotation") && q.calibration["rotation"].contains("r4")) {
    return "it rotates activations at run time (R4 on down_proj's input, R3 on Q/K: --rotate with quantized "
           "activations), operations no export format here expresses; qforge eval runs it, or calibrate with "
           "--abits 16 for a stock checkpoint";
  }
  if (format == ExportFormat::kFakeQuant) return "";
  if (!q.deployable || q.norm_bias || q.norm_affine) {
    return "it was calibrated with --faithful and needs runtime transforms (norm shifts/matrices) no engine format "
           "expresses; calibrate without --faithful";
  }
  const Schemes schemes = block_schemes(model, q);
  std::set<bool> activation_formats;
  for (const auto& [scheme, blocks] : schemes) {
    const std::string why = scheme_refusal(model, q, scheme.first, scheme.second, format);
    if (!why.empty()) return schemes.size() == 1 ? why : "block " + std::to_string(blocks.front()) + ": " + why;
    activation_formats.insert(scheme.second < 16);
  }
  if (activation_formats.size() > 1) {
    return "it mixes weight-only and W8A8 blocks, which compressed-tensors writes in two formats (pack-quantized, "
           "int-quantized) where one checkpoint holds one";
  }
  return "";
}

namespace {

// Per-block bits become GPTQModel `dynamic` rules, one per bit width other than the base one, naming its blocks.
json gptq_config(const QuantConfig& q, const Schemes& schemes, const std::string& fmt) {
  json j = {{"quant_method", "gptq"}, {"bits", q.bits}, {"group_size", q.group_size > 0 ? q.group_size : -1},
            {"desc_act", false}, {"sym", q.sym}, {"damp_percent", 0.01}, {"true_sequential", true},
            {"static_groups", false}, {"lm_head", false}, {"checkpoint_format", fmt}, {"format", fmt},
            {"pack_dtype", "int32"}, {"meta", {{"quantizer", {std::string("qforge:") + QFORGE_VERSION}}}}};
  json dynamic = json::object();
  for (const auto& [scheme, blocks] : schemes) {
    if (scheme.first != q.bits) dynamic[blocks_target(kGptqDynamicPrefix, blocks)] = {{"bits", scheme.first}};
  }
  if (!dynamic.empty()) j["dynamic"] = dynamic;
  return j;
}

json ct_scheme(const QuantConfig& q, int bits, const json& target, bool int_quantized) {
  json weights = {{"num_bits", bits}, {"type", "int"}, {"symmetric", q.sym},
                  {"strategy", q.group_size > 0 ? "group" : "channel"},
                  {"group_size", q.group_size > 0 ? json(q.group_size) : json(nullptr)}, {"dynamic", false},
                  {"actorder", nullptr}, {"block_structure", nullptr}, {"observer", "minmax"},
                  {"observer_kwargs", json::object()}};
  json acts = nullptr;
  if (int_quantized) {
    acts = {{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"strategy", "token"}, {"dynamic", true},
            {"observer", nullptr}};
  }
  return {{"targets", {target}}, {"weights", weights}, {"input_activations", acts}, {"output_activations", nullptr}};
}

// One config group targeting Linear, or with per-block bits one group per bit width naming its blocks.
json ct_config(const QuantConfig& q, const Schemes& schemes, bool int_quantized) {
  json groups = json::object();
  for (const auto& [scheme, blocks] : schemes) {
    const json target = schemes.size() == 1 ? json("Linear") : json(blocks_target(kCtRegexPrefix, blocks));
    groups["group_" + std::to_string(groups.size())] = ct_scheme(q, scheme.first, target, int_quantized);
  }
  return {{"quant_method", "compressed-tensors"},
          {"format", int_quantized ? "int-quantized" : "pack-quantized"},
          {"quantization_status", "compressed"},
          {"version", "0.9.0"},
          {"config_groups", groups},
          {"ignore", {"lm_head"}},
          {"kv_cache_scheme", nullptr},
          {"sparsity_config", json::object()},
          {"transform_config", json::object()},
          {"global_compression_ratio", nullptr}};
}

}  // namespace

ExportFormat parse_export_format(const std::string& name) {
  if (name == "gptq") return ExportFormat::kGptq;
  if (name == "compressed-tensors") return ExportFormat::kCompressedTensors;
  if (name == "fake-quant") return ExportFormat::kFakeQuant;
  throw InputError("--format", "", "'" + name + "' is not gptq, compressed-tensors or fake-quant");
}

ExportResult export_checkpoint(const ExportOptions& o) {
  verify_output_folder(o.model);
  const LlamaConfig cfg = read_llama_config(o.model);
  const std::string where = (o.model / "config.json").string();
  if (!cfg.quant || !cfg.quant->format.empty()) {
    throw InputError(where, "quantization_config", "not a qforge quantized folder (run qforge quantize first)");
  }
  const QuantConfig& q = *cfg.quant;
  if (fs::exists(o.out) && fs::equivalent(o.out, o.model)) throw InputError("--out", "", "must differ from --model");
  if (o.format != ExportFormat::kFakeQuant) {
    const std::string why = export_refusal(cfg, o.format);
    if (!why.empty()) throw InputError(where, "quantization_config", "cannot export: " + why);
  }
  const CheckpointReader model(o.model);
  ExportResult result;
  json out_quant;
  std::vector<TensorSpec> specs;
  std::map<std::string, std::function<at::Tensor()>> producers;
  auto copy = [&](const std::string& name) {
    const auto& info = model.info(name);
    specs.push_back({name, info.dtype, info.shape});
    producers[name] = [&model, name] { return model.load(name); };
  };

  if (o.format == ExportFormat::kFakeQuant) {
    for (const auto& name : model.names()) copy(name);
    result.checkpoint_format = "fake-quant";
  } else {
    const fs::path side_path = sidecar_path(o.model);
    if (!fs::exists(side_path)) throw InputError(side_path.string(), "", "the sidecar of integer codes is missing");
    auto side = std::make_shared<CheckpointReader>(side_path);
    std::set<std::string> linears;
    for (const auto& n : side->names()) {
      if (ends_with(n, ".codes")) linears.insert(strip(n, ".codes"));
    }
    const bool gptq = o.format == ExportFormat::kGptq;
    const bool int_quantized = !gptq && q.act_bits < 16;
    bool v2 = false;
    if (gptq && !q.sym) {
      for (const auto& l : linears) v2 = v2 || !gptq_v1_can_store(side->load(l + ".zeros"));
    }
    result.checkpoint_format = gptq ? (v2 ? "gptq_v2" : "gptq") : (int_quantized ? "int-quantized" : "pack-quantized");
    if (v2) {
      result.notes.push_back("some asymmetric zero points are 0, which GPTQ v1 (zero - 1) cannot store: wrote "
                             "checkpoint_format gptq_v2, read by GPTQModel and by vLLM's gptq method (PR #26092 and "
                             "later), not by AutoGPTQ, exllama or Marlin");
    }
    if (int_quantized) {
      result.notes.push_back("int-quantized holds the linears' dynamic per-token int8 input quantization only: qforge's "
                             "per-head Q/K/V activation quantization (how the result was scored) is not part of the "
                             "format, so engines, and qforge eval of this export, run without it");
    }
    const Schemes schemes = block_schemes(cfg, q);
    if (gptq && schemes.size() > 1) {
      result.notes.push_back("per-block bits are written as GPTQModel `dynamic` rules, read by GPTQModel and vLLM's "
                             "gptq methods; transformers' own GPTQ loading (optimum) ignores them and cannot load "
                             "this folder");
    }
    out_quant = gptq ? gptq_config(q, schemes, result.checkpoint_format) : ct_config(q, schemes, int_quantized);
    // Packs one linear at a time; the writer asks for its tensors consecutively.
    struct Cache {
      std::string linear;
      std::map<std::string, at::Tensor> tensors;
    };
    auto cache = std::make_shared<Cache>();
    // One copy of the scheme, shared by every tensor's producer.
    const auto quant = std::make_shared<const QuantConfig>(q);
    const auto bits_of = [quant](const std::string& linear) { return quant->weight_bits(block_of(linear)); };
    auto packed = [cache, side, quant, bits_of, gptq, int_quantized, v2](const std::string& linear) -> std::map<std::string, at::Tensor>& {
      if (cache->linear == linear) return cache->tensors;
      const int bits = bits_of(linear);
      QuantizedLinearData d{side->load(linear + ".codes"), side->load(linear + ".scales"), side->load(linear + ".zeros")};
      std::map<std::string, at::Tensor> t;
      if (gptq) {
        GptqTensors g = pack_gptq(d, bits, quant->group_size, v2, linear);
        t = {{"qweight", g.qweight}, {"qzeros", g.qzeros}, {"scales", g.scales}, {"g_idx", g.g_idx}};
      } else if (int_quantized) {
        auto [w, s] = pack_int8_channel(d, linear);
        t = {{"weight", w}, {"weight_scale", s}};
      } else {
        CompressedTensorsPacked c = pack_compressed_tensors(d, bits, quant->sym, linear);
        t = {{"weight_packed", c.weight_packed}, {"weight_scale", c.weight_scale}, {"weight_shape", c.weight_shape}};
        if (c.weight_zero_point.defined()) t["weight_zero_point"] = c.weight_zero_point;
      }
      cache->linear = linear;
      cache->tensors = std::move(t);
      return cache->tensors;
    };
    for (const auto& name : model.names()) {
      if (!ends_with(name, ".weight") || !linears.count(strip(name, ".weight"))) {
        copy(name);
        continue;
      }
      const std::string linear = strip(name, ".weight");
      // Headers are planned from the shapes alone; each linear is packed once, when the writer asks for
      // its first tensor (the cache serves the rest).
      const auto& codes = side->info(linear + ".codes");
      const PackedFormat pf = gptq ? PackedFormat::kGptq : int_quantized ? PackedFormat::kInt8Channel : PackedFormat::kPackQuantized;
      for (const auto& t : packed_layout(pf, codes.shape[0], codes.shape[1], side->info(linear + ".scales").shape[1],
                                         bits_of(linear), q.group_size, q.sym, linear)) {
        specs.push_back({linear + "." + t.suffix, from_scalar_type(t.dtype), t.shape});
        producers[linear + "." + t.suffix] = [packed, linear, suffix = t.suffix] { return packed(linear).at(suffix); };
      }
    }
  }
  OutputFolder folder(o.out);  // incomplete until publish(); nothing of an earlier export survives
  CheckpointWriter writer(o.out, specs, o.shard_bytes);
  writer.write([&](const TensorSpec& spec) { return producers.at(spec.name)(); });

  // config.json: the input's, with the format's quantization_config (fake-quant keeps qforge's).
  json config = json::parse(read_file(o.model / "config.json"));
  if (o.format != ExportFormat::kFakeQuant) {
    config["quantization_config"] = out_quant;
    config["quantization_config"]["qforge"] = {{"method", q.method}, {"calibration", q.calibration}};
    if (o.format == ExportFormat::kGptq) write_file_atomic(o.out / "quantize_config.json", out_quant.dump(2) + "\n");
  } else {
    config["quantization_config"].erase("sidecar");
  }
  write_file_atomic(o.out / "config.json", config.dump(2) + "\n");
  copy_model_side_files(o.model, o.out, {"calibration.tok"});
  folder.publish();
  return result;
}

void install_dequantizing_view(CheckpointReader& ckpt, const LlamaConfig& config) {
  if (!config.quant || config.quant->format.empty()) return;
  const QuantConfig q = *config.quant;
  const std::string fmt = q.format;
  std::vector<std::string> linears;
  const std::string key = fmt.rfind("gptq", 0) == 0 ? ".qweight" : fmt == "pack-quantized" ? ".weight_packed" : ".weight_scale";
  for (const auto& n : ckpt.names()) {
    if (ends_with(n, key)) linears.push_back(strip(n, key));
  }
  const CheckpointReader* r = &ckpt;
  for (const auto& l : linears) {
    TensorInfo info;
    info.name = l + ".weight";
    info.dtype = DType::kF32;
    std::vector<std::string> replaces;
    std::function<at::Tensor()> make;
    if (fmt.rfind("gptq", 0) == 0) {
      const auto& qw = ckpt.info(l + ".qweight");
      info.shape = {qw.shape[1], ckpt.info(l + ".g_idx").shape[0]};
      replaces = {l + ".qweight", l + ".qzeros", l + ".scales", l + ".g_idx"};
      const bool v2 = fmt == "gptq_v2";
      make = [r, l, q, v2] {
        GptqTensors t{r->load_stored(l + ".qweight"), r->load_stored(l + ".qzeros"), r->load_stored(l + ".scales"),
                      r->load_stored(l + ".g_idx")};
        return dequantize_linear(unpack_gptq(t, q.weight_bits(block_of(l)), q.group_size, v2), q.group_size);
      };
    } else if (fmt == "pack-quantized") {
      at::Tensor shape = ckpt.load(l + ".weight_shape");
      info.shape = {shape[0].item<std::int64_t>(), shape[1].item<std::int64_t>()};
      replaces = {l + ".weight_packed", l + ".weight_scale", l + ".weight_shape"};
      if (ckpt.contains(l + ".weight_zero_point")) replaces.push_back(l + ".weight_zero_point");
      const bool has_zp = replaces.size() == 4;
      make = [r, l, q, has_zp] {
        CompressedTensorsPacked t{r->load_stored(l + ".weight_packed"), r->load_stored(l + ".weight_scale"),
                                  has_zp ? r->load_stored(l + ".weight_zero_point") : at::Tensor(),
                                  r->load_stored(l + ".weight_shape")};
        return dequantize_linear(unpack_compressed_tensors(t, q.weight_bits(block_of(l)), q.group_size, !has_zp), q.group_size);
      };
    } else {  // int-quantized: int8 weight and per-channel scale
      info.shape = ckpt.info(l + ".weight").shape;
      replaces = {l + ".weight", l + ".weight_scale"};
      make = [r, l] {
        at::Tensor w = r->load_stored(l + ".weight").to(at::kFloat);
        return r->load_stored(l + ".weight_scale").to(at::kFloat) * w;
      };
    }
    info.end = static_cast<std::uint64_t>(info.shape[0] * info.shape[1]) * 4;
    ckpt.add_derived(info, make, replaces);
  }
}

}  // namespace qforge::storage
