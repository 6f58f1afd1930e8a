#include "coordinator/assembly.h"

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <set>

#include "common/error.h"
#include "common/strings.h"
#include "common/fault.h"
#include "common/file_util.h"
#include "common/log.h"
#include "coordinator/oscillation.h"
#include "partition/model_index.h"
#include "storage/hf_config.h"
#include "storage/output_folder.h"
#include "storage/quant_config.h"
#include "storage/safetensors.h"
#include "storage/tokenizer.h"

namespace qforge::coordinator {

namespace fs = std::filesystem;
using nlohmann::json;

void assemble_checkpoint(const AssemblySpec& a, const JobState& state) {
  // The coordinator checked every unit shard against its journaled digest just before (a damaged one's
  // unit ran again), so they are opened as they are.
  std::vector<std::unique_ptr<storage::SafetensorsFile>> shards;
  json blocks = json::array();
  for (int u = 0; u < state.units(); ++u) {
    const json& rec = state.done_record(u);
    const fs::path path = a.job.units_dir() / rec.at("shard").get<std::string>();
    shards.push_back(std::make_unique<storage::SafetensorsFile>(path));
    blocks.push_back(rec.at("report"));
  }
  std::map<std::string, const storage::SafetensorsFile*> owner;
  for (const auto& f : shards) {
    for (const auto& t : f->tensors()) owner[t.name] = f.get();
  }

  storage::LlamaConfig cfg = a.out_config;
  storage::QuantConfig& q = *cfg.quant;
  for (const auto& [name, f] : owner) {
    if (ends_with(name, "layernorm.bias")) q.norm_bias = true;
    if (ends_with(name, "layernorm.affine_inverse")) q.norm_affine = true;
    if (ends_with(name, "attn.q_proj.bias") || ends_with(name, "attn.v_proj.bias")) cfg.qkv_bias = true;
    if (ends_with(name, "attn.o_proj.bias")) cfg.o_bias = true;
    if (ends_with(name, "mlp.gate_proj.bias")) cfg.mlp_bias = true;
  }
  // The tensors written are the ones a reader of the written config expects (an architecture's config may
  // not say "o_proj has a bias, q/k/v not": the missing ones are written as zeros below).
  cfg = storage::parse_llama_config(storage::llama_config_to_json(cfg), a.out.string());

  const storage::CheckpointReader input(a.model);
  const storage::DType model_dtype = a.model_dtype;
  std::vector<storage::TensorSpec> specs;
  std::map<std::string, std::function<at::Tensor()>> producers;
  auto add_global = [&](const std::string& name) {
    const auto& info = input.info(name);
    specs.push_back({name, info.dtype, info.shape});
    producers[name] = [&input, name] { return input.load(name); };
  };
  add_global("model.embed_tokens.weight");
  for (const auto& [first, count] : state.unit_list()) {
    for (int b = first; b < first + count; ++b) {
      for (const auto& [suffix, shape] : partition::expected_block_tensors(cfg)) {
        const std::string name = partition::block_tensor_name(b, suffix);
        // Quantized weights keep the input's dtype per tensor; tensors the transforms added take the model's.
        const storage::DType dt = input.contains(name) ? input.info(name).dtype : model_dtype;
        specs.push_back({name, dt, shape});
        const auto it = owner.find(name);
        const storage::SafetensorsFile* f = it == owner.end() ? nullptr : it->second;
        const auto st = storage::to_scalar_type(dt);
        const auto shp = shape;
        // Biases the written config expects (storage/hf_config.h) but the transforms did not create are 0.
        producers[name] = [f, name, st, shp] { return f ? f->load(name).to(st) : at::zeros(shp, st); };
      }
    }
  }
  add_global("model.norm.weight");
  if (!cfg.tie_word_embeddings) add_global("lm_head.weight");
  if (cfg.down_proj_rotation) add_global("model.down_proj_rotation");
  if (cfg.qk_rotation) add_global("model.qk_rotation");
  storage::OutputFolder folder(a.out);  // from here until publish() the folder reads as incomplete
  storage::CheckpointWriter model_writer(a.out, specs, a.shard_bytes);
  model_writer.write([&](const storage::TensorSpec& spec) { return producers.at(spec.name)(); });
  fault_point("mid_assembly");

  std::vector<storage::TensorSpec> side_specs;
  for (const auto& f : shards) {
    for (const auto& t : f->tensors()) {
      if (storage::is_sidecar_tensor(t.name)) side_specs.push_back({t.name, t.dtype, t.shape});
    }
  }
  storage::CheckpointWriter side_writer(a.out, side_specs, a.shard_bytes, a.sidecar_metadata, "quantization");
  side_writer.write([&](const storage::TensorSpec& spec) { return owner.at(spec.name)->load(spec.name); });
  storage::write_llama_config(a.out, cfg);
  storage::copy_model_side_files(a.model, a.out);
  if (!a.tokenizer.empty() && storage::find_model_tokenizer(a.out).empty()) {
    const std::string name = storage::load_tokenizer(a.tokenizer)->kind() == "sentencepiece" ? "tokenizer.model" : "tokenizer.bin";
    write_file_atomic(a.out / name, read_file(a.tokenizer));
  }
  json report = a.report;
  report["blocks"] = blocks;
  if (!blocks.empty() && blocks.back().contains("calibration_mean_nll")) {
    report["calibration_mean_nll"] = blocks.back()["calibration_mean_nll"];
    report["blocks"].back().erase("calibration_mean_nll");
  }
  write_file_atomic(a.out / "calibration_report.json", report.dump(2) + "\n");
  if (a.copy_calibration_tokens) {
    // Units that calibrated on data report the oscillation curve (RTN has none).
    std::map<int, json> done;
    for (int u = 0; u < state.units(); ++u) done[u] = state.done_record(u);
    const json osc = oscillation_report(state.probes(), state.selection(), done);
    const std::string svg = oscillation_svg(osc, "per-block reconstruction loss across depth");
    for (const fs::path& dir : {a.out, a.job.root()}) {
      write_file_atomic(dir / "oscillation.json", osc.dump(2) + "\n");
      write_file_atomic(dir / "oscillation.svg", svg);
    }
  }
  if (a.copy_calibration_tokens && fs::exists(a.job.calibration_path())) {
    write_file_atomic(a.out / "calibration.tok", read_file(a.job.calibration_path()));
  }
  folder.publish();
  QF_LOG(Info) << "assembled " << a.out.string() << " from " << state.units() << " unit shards";
}

}  // namespace qforge::coordinator
