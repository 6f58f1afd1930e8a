#include "worker/llama_model.h"

#include "storage/export.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include "common/error.h"
#include "storage/output_folder.h"

namespace qforge::worker {

at::ScalarType parse_compute_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") return at::kHalf;
  throw InputError("--dtype", "", "unknown dtype '" + name + "' (float32|bfloat16|float16)");
}

void check_device_name(const std::string& name) {
  if (name == "cpu" || name == "auto" || name == "cuda") return;
  const std::string digits = name.rfind("cuda:", 0) == 0 ? name.substr(5) : "";
  if (!digits.empty() && digits.size() <= 4 && digits.find_first_not_of("0123456789") == std::string::npos) return;
  throw InputError("--device", "", "unknown device '" + name + "' (cpu|cuda|cuda:N|auto)");
}

at::Device parse_device(const std::string& name, int local_rank) {
  check_device_name(name);
  if (name == "cpu") return at::kCPU;
  const int gpus = at::hasCUDA() ? static_cast<int>(at::detail::getCUDAHooks().getNumGPUs()) : 0;
  if (name == "auto") return gpus > 0 ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % gpus)) : at::Device(at::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    const at::Device d(name);
    if (gpus == 0) throw InputError("--device", "", "'" + name + "' requested but this build/machine has no CUDA device");
    if (d.has_index() && d.index() >= gpus) {
      throw InputError("--device", "", "'" + name + "' requested but this machine has " + std::to_string(gpus) + " GPU(s)");
    }
    // Plain "cuda": this rank's GPU, as for auto (never "whatever device is current").
    return d.has_index() ? d : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % gpus));
  }
  return at::kCPU;  // unreachable: check_device_name accepted nothing else
}

partition::ModelIndex index_checkpoint(const storage::LlamaConfig& config, const storage::CheckpointReader& ckpt) {
  std::vector<partition::IndexedTensor> tensors;
  for (const auto& name : ckpt.names()) {
    const auto& info = ckpt.info(name);
    tensors.push_back({name, info.shape, storage::dtype_name(info.dtype), info.nbytes()});
  }
  return partition::ModelIndex(config, tensors, ckpt.root().string());
}

std::unique_ptr<storage::CheckpointReader> open_model_checkpoint(const fs::path& model_dir, const storage::LlamaConfig& config) {
  storage::verify_output_folder(model_dir);  // a qforge output must be complete and all its own
  auto ckpt = std::make_unique<storage::CheckpointReader>(model_dir);
  storage::install_dequantizing_view(*ckpt, config);  // exported GPTQ/compressed-tensors folders
  return ckpt;
}

LlamaModel::LlamaModel(const fs::path& model_dir, ModelOptions options)
    : dir_(model_dir), options_(options), config_(storage::read_llama_config(model_dir)),
      ckpt_(open_model_checkpoint(model_dir, config_)),
      index_(std::make_unique<partition::ModelIndex>(index_checkpoint(config_, *ckpt_))),
      cached_blocks_(static_cast<std::size_t>(config_.num_hidden_layers)) {}

const at::Tensor& LlamaModel::global(const std::string& name) const {
  auto it = globals_.find(name);
  if (it == globals_.end()) {
    it = globals_.emplace(name, ckpt_->load(name).to(options_.device, options_.dtype)).first;
  }
  return it->second;
}

at::Tensor LlamaModel::embed(const at::Tensor& ids) const {
  const at::Tensor& table = global("model.embed_tokens.weight");
  auto max_id = ids.max().item<std::int64_t>();
  auto min_id = ids.min().item<std::int64_t>();
  if (min_id < 0 || max_id >= config_.vocab_size) {
    throw InputError(dir_.string(), "vocab_size", "token id " + std::to_string(min_id < 0 ? min_id : max_id) +
                                                      " outside the model's vocabulary of " +
                                                      std::to_string(config_.vocab_size) + " (wrong tokenizer?)");
  }
  return at::embedding(table, ids.to(options_.device));
}

ActQuantSpec LlamaModel::act_quant(int i) const {
  ActQuantSpec spec;
  if (config_.quant) {
    spec.bits = config_.quant->activation_bits(i);
    spec.sym = config_.quant->act_sym;
    spec.heads = config_.quant->format.empty();  // an exported folder runs as its engines run it
  }
  return spec;
}

BlockWeights LlamaModel::block(int i) const {
  QF_CHECK(i >= 0 && i < num_blocks(), "block index out of range");
  auto& slot = cached_blocks_[static_cast<std::size_t>(i)];
  if (slot) return *slot;
  BlockWeights w = BlockWeights::load(*ckpt_, config_, i, options_.dtype, options_.device);
  if (options_.keep_weights) slot = w;
  return w;
}

std::uint64_t LlamaModel::blocks_bytes() const {
  std::int64_t params = 0;
  for (int i = 0; i < num_blocks(); ++i) params += index_->block_parameters(i);
  return static_cast<std::uint64_t>(params) * at::elementSize(options_.dtype);
}

at::Tensor LlamaModel::run_block(int i, const BlockWeights& w, const at::Tensor& x, const RopeTables& rope) const {
  return block_forward(config_, w, x, rope, act_quant(i));
}

at::Tensor LlamaModel::head(const at::Tensor& hidden) const {
  auto normed = rms_norm(hidden, global("model.norm.weight"), config_.rms_norm_eps);
  // Tied models use the embedding table as the head even if a file also carries an lm_head copy (as HF).
  const std::string head_name = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  return at::matmul(normed, global(head_name).t()).to(at::kFloat);
}

RopeTables LlamaModel::rope(std::int64_t seqlen) const { return make_rope_tables(config_, seqlen, options_.device); }

at::Tensor LlamaModel::decode(const at::Tensor& ids, std::vector<KvCache>& caches, const RopeTables& rope) const {
  if (caches.empty()) caches.resize(static_cast<std::size_t>(num_blocks()));
  at::Tensor x = embed(ids);
  for (int i = 0; i < num_blocks(); ++i) x = block_decode(config_, block(i), x, rope, caches[static_cast<std::size_t>(i)]);
  return head(x).select(1, 0);
}

at::Tensor LlamaModel::forward(const at::Tensor& ids) const {
  auto r = rope(ids.size(1));
  at::Tensor x = embed(ids);
  for (int i = 0; i < num_blocks(); ++i) x = run_block(i, x, r);
  return head(x);
}

}  // namespace qforge::worker
