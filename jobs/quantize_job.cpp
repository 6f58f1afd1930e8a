#include "jobs/quantize_job.h"

#include <ATen/ATen.h>

#include <chrono>
#include <regex>
#include <set>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "common/log.h"
#include "coordinator/progress.h"
#include "partition/model_index.h"
#include "storage/safetensors.h"
#include "storage/token_file.h"
#include "storage/tokenizer.h"
#include "worker/calibrator.h"
#include "worker/llama_model.h"

namespace qforge::jobs {

namespace {

using nlohmann::json;

// Files of the input folder carried over to the output unchanged.
const char* const kCarriedFiles[] = {"tokenizer.model", "tokenizer.bin", "tokenizer.json", "tokenizer_config.json",
                                     "special_tokens_map.json", "generation_config.json"};

storage::QuantConfig make_quant_config(const QuantizeSpec& s, bool norm_bias, bool norm_affine) {
  storage::QuantConfig q;
  q.method = worker::method_name(s.method);
  q.bits = s.wbits;
  q.group_size = s.group_size;
  q.sym = s.sym;
  q.act_bits = s.abits;
  q.act_sym = s.act_sym;
  q.deployable = !s.faithful;
  q.norm_bias = norm_bias;
  q.norm_affine = norm_affine;
  q.block_overrides = s.overrides;
  q.calibration = {{"data", s.calib.source == kGenerateSource ? s.calib.source : fs::path(s.calib.source).filename().string()},
                   {"nsamples", s.calib.nsamples},
                   {"seqlen", s.calib.seqlen},
                   {"seed", s.calib.seed},
                   {"batch_size", s.batch_size},
                   {"recipe", s.recipe.describe()},
                   {"fp64_matrices", s.fp64_matrices}};
  if (s.method == worker::Method::kRtn) q.calibration = {{"recipe", "round to nearest (min/max), no calibration"}};
  return q;
}

worker::TransformOptions transform_options(const QuantizeSpec& s) {
  worker::TransformOptions t;
  t.method = s.method;
  t.let = s.recipe.let;
  t.lwc = s.recipe.lwc;
  t.deployable = !s.faithful;
  t.shifts = s.faithful && s.recipe.let;
  t.ln_matrix = s.faithful && s.recipe.ln_matrix;
  t.signed_max_init = s.faithful;
  t.alpha = s.recipe.alpha;
  t.stability_factor = s.recipe.stability_factor;
  t.fp64_matrices = s.fp64_matrices;
  return t;
}

}  // namespace

void run_quantize_job(const QuantizeSpec& s) {
  const auto t_start = std::chrono::steady_clock::now();
  worker::LlamaModel model(s.model, {});
  const auto& cfg = model.config();
  if (cfg.quant) throw InputError((s.model / "config.json").string(), "quantization_config", "the model is already quantized");
  for (const auto& [block, ov] : s.overrides) {
    if (block < 0 || block >= model.num_blocks()) {
      throw InputError("--block-override", "", "block " + std::to_string(block) + " does not exist (the model has " +
                                                   std::to_string(model.num_blocks()) + " blocks)");
    }
  }
  if (fs::exists(s.out) && fs::equivalent(s.out, s.model)) throw InputError("--out", "", "must differ from --model");
  fs::create_directories(s.out);
  const fs::path tmp = s.out / ".qforge-tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);

  const bool needs_data = s.method != worker::Method::kRtn;
  at::Tensor x_fp, x_q, calib_ids;
  worker::RopeTables rope;
  if (needs_data) {
    std::unique_ptr<storage::Tokenizer> tok;
    if (s.calib.source != kGenerateSource) {
      fs::path tp = !s.tokenizer.empty() ? s.tokenizer : storage::find_model_tokenizer(s.model);
      if (!tp.empty()) tok = storage::load_tokenizer(tp);
    }
    worker::ModelOptions gen_opt;
    gen_opt.keep_weights = true;
    std::unique_ptr<worker::LlamaModel> generator;
    if (s.calib.source == kGenerateSource) generator = std::make_unique<worker::LlamaModel>(s.model, gen_opt);
    at::Tensor ids = load_calibration(s.calib, tok.get(), generator ? *generator : model);
    generator.reset();
    calib_ids = ids;
    at::NoGradGuard no_grad;
    x_fp = model.embed(ids).to(at::kFloat);
    x_q = x_fp.clone();
    rope = model.rope(s.calib.seqlen);
    QF_LOG(Info) << "calibration: " << ids.size(0) << " x " << ids.size(1) << " tokens from " << s.calib.source;
  }

  const worker::TransformOptions topt = transform_options(s);
  bool norm_bias = false, norm_affine = false, any_attn_bias = cfg.attention_bias, any_mlp_bias = cfg.mlp_bias;
  json report = {{"method", worker::method_name(s.method)}, {"blocks", json::array()}};
  coordinator::ProgressMeter meter("quantize", model.num_blocks(), "");
  for (int b = 0; b < model.num_blocks(); ++b) {
    const std::string label = "block " + std::to_string(b);
    auto t0 = std::chrono::steady_clock::now();
    worker::BlockWeights fp = worker::BlockWeights::load(model.checkpoint(), cfg, b, at::kFloat, at::kCPU);
    worker::CalibOptions co;
    co.transform = topt;
    co.weights = {s.overrides.count(b) && s.overrides.at(b).bits ? s.overrides.at(b).bits : s.wbits, s.group_size, s.sym,
                  !s.faithful};
    co.acts = {s.overrides.count(b) && s.overrides.at(b).act_bits ? s.overrides.at(b).act_bits : s.abits, s.act_sym};
    co.epochs = s.recipe.epochs;
    co.batch_size = s.batch_size;
    co.let_lr = s.recipe.let_lr;
    co.lwc_lr = s.recipe.lwc_lr;
    co.aug_loss = s.recipe.aug_loss;

    worker::BlockResult r;
    if (needs_data) {
      worker::ActStats stats;
      at::Tensor y_fp, y_fp2;
      y_fp = worker::map_batches(x_fp, s.batch_size,
                                 [&](const at::Tensor& x) { return worker::accumulate_act_stats(cfg, fp, x, rope, stats); });
      if (co.aug_loss) {
        y_fp2 = worker::map_batches(x_q, s.batch_size, [&](const at::Tensor& x) { return worker::block_forward(cfg, fp, x, rope); });
      }
      r = worker::calibrate_block(cfg, fp, x_q, y_fp, y_fp2, stats, co, rope, label);
      x_q = worker::map_batches(x_q, s.batch_size,
                                [&](const at::Tensor& x) { return worker::block_forward(cfg, r.weights, x, rope, co.acts); });
      x_fp = y_fp;
    } else {
      worker::BlockTransforms none(cfg, fp, {}, topt, co.weights);
      r = worker::finalize_block(fp, none, co.weights);
    }
    norm_bias = norm_bias || r.weights.input_norm_bias.defined();
    norm_affine = norm_affine || r.weights.input_norm_inverse.defined();
    any_attn_bias = any_attn_bias || r.weights.q_bias.defined() || r.weights.v_bias.defined() || r.weights.o_bias.defined();
    any_mlp_bias = any_mlp_bias || r.weights.gate_bias.defined();

    // This block's tensors, named as in the checkpoint, go to temporary shards until assembly.
    std::vector<std::pair<std::string, at::Tensor>> weights, sidecar;
    auto put = [&](const std::string& suffix, const at::Tensor& t) {
      if (t.defined()) weights.emplace_back(partition::block_tensor_name(b, suffix), t.contiguous());
    };
    const auto& w = r.weights;
    put("input_layernorm.weight", w.input_norm);
    put("post_attention_layernorm.weight", w.post_norm);
    put("input_layernorm.bias", w.input_norm_bias);
    put("post_attention_layernorm.bias", w.post_norm_bias);
    put("input_layernorm.affine_inverse", w.input_norm_inverse);
    put("post_attention_layernorm.affine_inverse", w.post_norm_inverse);
    const auto& names = worker::linear_names();
    const at::Tensor* biases[] = {&w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias, &w.gate_bias, &w.up_bias, &w.down_bias};
    for (std::size_t i = 0; i < names.size(); ++i) {
      put(names[i] + ".weight", worker::linear_weight(w, i));
      put(names[i] + ".bias", *biases[i]);
      const std::string base = partition::block_tensor_name(b, names[i]);
      sidecar.emplace_back(base + ".codes", r.linears[i].codes);
      sidecar.emplace_back(base + ".scales", r.linears[i].scales);
      sidecar.emplace_back(base + ".zeros", r.linears[i].zeros);
    }
    storage::write_safetensors(tmp / ("block-" + std::to_string(b) + ".safetensors"), weights);
    storage::write_safetensors(tmp / ("sidecar-" + std::to_string(b) + ".safetensors"), sidecar);

    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json jb = {{"block", b}, {"bits", co.weights.bits}, {"act_bits", co.acts.bits}};
    if (needs_data) {
      jb["initial_loss"] = r.initial_loss;
      jb["final_loss"] = r.final_loss;
      jb["epoch_loss"] = r.epoch_loss;
      jb["diagonal_dominance_projections"] = r.projections;
      QF_LOG(Info) << label << " done in " << coordinator::format_duration(secs) << ": block-output MSE " << r.initial_loss
                   << " -> " << r.final_loss;
    }
    report["blocks"].push_back(jb);
    meter.update(b + 1);
  }

  if (needs_data) {
    // NLL of the in-memory quantized model on the calibration windows: `qforge eval` of the output
    // folder on calibration.tok (written below) must reproduce it, which checks the whole round trip.
    at::NoGradGuard no_grad;
    double sum = 0;
    for (std::int64_t i = 0; i < x_q.size(0); ++i) {
      at::Tensor logp = at::log_softmax(model.head(x_q[i].unsqueeze(0))[0], -1);
      const std::int64_t L = calib_ids.size(1);
      sum -= logp.slice(0, 0, L - 1).gather(1, calib_ids[i].slice(0, 1, L).unsqueeze(1)).sum().item<double>();
    }
    report["calibration_mean_nll"] = sum / static_cast<double>(calib_ids.size(0) * (calib_ids.size(1) - 1));
    std::vector<std::int32_t> flat(calib_ids.data_ptr<std::int64_t>(), calib_ids.data_ptr<std::int64_t>() + calib_ids.numel());
    storage::write_token_file(s.out / "calibration.tok", flat);
  }

  // ---- assembly: stream temporary shards into the final layout --------------------------------------
  storage::LlamaConfig out_cfg = cfg;
  out_cfg.quant = make_quant_config(s, norm_bias, norm_affine);
  out_cfg.attention_bias = any_attn_bias;
  out_cfg.mlp_bias = any_mlp_bias;
  std::vector<std::unique_ptr<storage::SafetensorsFile>> block_files, sidecar_files;
  for (int b = 0; b < model.num_blocks(); ++b) {
    block_files.push_back(std::make_unique<storage::SafetensorsFile>(tmp / ("block-" + std::to_string(b) + ".safetensors")));
    sidecar_files.push_back(std::make_unique<storage::SafetensorsFile>(tmp / ("sidecar-" + std::to_string(b) + ".safetensors")));
  }
  const storage::DType model_dtype = storage::from_scalar_type(worker::parse_compute_dtype(cfg.torch_dtype));
  std::vector<storage::TensorSpec> specs;
  std::map<std::string, std::function<at::Tensor()>> producers;
  auto add_global = [&](const std::string& name) {
    const auto& info = model.checkpoint().info(name);
    specs.push_back({name, info.dtype, info.shape});
    producers[name] = [&model, name] { return model.checkpoint().load(name); };
  };
  add_global("model.embed_tokens.weight");
  for (int b = 0; b < model.num_blocks(); ++b) {
    for (const auto& [suffix, shape] : partition::expected_block_tensors(out_cfg)) {
      const std::string name = partition::block_tensor_name(b, suffix);
      const storage::DType dt = model.checkpoint().contains(name) ? model.checkpoint().info(name).dtype : model_dtype;
      specs.push_back({name, dt, shape});
      const storage::SafetensorsFile* f = block_files[static_cast<std::size_t>(b)].get();
      const auto st = storage::to_scalar_type(dt);
      const auto shp = shape;
      // Biases a stock LLaMA with attention_bias/mlp_bias expects but the transforms did not create are 0.
      producers[name] = [f, name, st, shp] { return f->find(name) ? f->load(name).to(st) : at::zeros(shp, st); };
    }
  }
  add_global("model.norm.weight");
  if (!cfg.tie_word_embeddings) add_global("lm_head.weight");
  storage::CheckpointWriter model_writer(s.out, specs, s.shard_bytes);
  model_writer.write([&](const storage::TensorSpec& spec) { return producers.at(spec.name)(); });

  std::vector<storage::TensorSpec> side_specs;
  for (const auto& f : sidecar_files) {
    for (const auto& t : f->tensors()) side_specs.push_back({t.name, t.dtype, t.shape});
  }
  std::map<std::string, const storage::SafetensorsFile*> side_of;
  for (const auto& f : sidecar_files) for (const auto& t : f->tensors()) side_of[t.name] = f.get();
  storage::CheckpointWriter side_writer(s.out, side_specs, s.shard_bytes,
                                        {{"format", "pt"}, {"bits", std::to_string(s.wbits)},
                                         {"group_size", std::to_string(s.group_size)}, {"sym", s.sym ? "true" : "false"}},
                                        "quantization");
  side_writer.write([&](const storage::TensorSpec& spec) { return side_of.at(spec.name)->load(spec.name); });
  // A previous run into the same folder may have left shards of another layout; they would shadow or
  // contradict the new files, so those (and only those) are removed.
  std::set<std::string> written;
  for (const auto& f : model_writer.file_names()) written.insert(f);
  for (const auto& f : side_writer.file_names()) written.insert(f);
  static const std::regex ours(R"(^(model|quantization)(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$)");
  for (const auto& entry : fs::directory_iterator(s.out)) {
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, ours) && !written.count(name)) fs::remove(entry.path());
  }

  storage::write_llama_config(s.out, out_cfg);
  for (const char* f : kCarriedFiles) {
    if (fs::exists(s.model / f)) write_file_atomic(s.out / f, read_file(s.model / f));
  }
  if (!s.tokenizer.empty() && storage::find_model_tokenizer(s.out).empty()) {
    const std::string name = storage::load_tokenizer(s.tokenizer)->kind() == "sentencepiece" ? "tokenizer.model" : "tokenizer.bin";
    write_file_atomic(s.out / name, read_file(s.tokenizer));
  }
  write_file_atomic(s.out / "calibration_report.json", report.dump(2) + "\n");
  block_files.clear();
  sidecar_files.clear();
  fs::remove_all(tmp);
  QF_LOG(Info) << "wrote " << s.out.string() << " (" << worker::method_name(s.method) << " W" << s.wbits << "A" << s.abits
               << (s.group_size ? " g" + std::to_string(s.group_size) : "") << ") in "
               << coordinator::format_duration(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
}

}  // namespace qforge::jobs
