// A LLaMA model read from an HF folder and run block by block.
//
// Only the block being computed is materialised (unless keep_weights is set for small models that
// are run many times, e.g. greedy generation); embeddings and the head are loaded on first use and
// kept. Activations flow between blocks as [batch, seqlen, hidden] tensors, which is the shape every
// later stage (calibration, caching, distribution) works on.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "partition/model_index.h"
#include "storage/hf_config.h"
#include "storage/safetensors.h"
#include "worker/llama_block.h"
#include "worker/rope.h"

namespace qforge::worker {

namespace fs = std::filesystem;

struct ModelOptions {
  at::ScalarType dtype = at::kFloat;  // activation and weight dtype for compute
  at::Device device = at::kCPU;
  bool keep_weights = false;          // cache every block after first use
};

// "float32" | "bfloat16" | "float16" -> scalar type; InputError otherwise.
at::ScalarType parse_compute_dtype(const std::string& name);
// "cpu" | "cuda" | "cuda:N" | "auto"; InputError when CUDA is asked for but unavailable or N is not a
// device of this machine. "cuda" is the GPU of this rank (local_rank modulo the GPUs on the node);
// "auto" is that GPU when there is one, else the CPU.
at::Device parse_device(const std::string& name, int local_rank = 0);
// The spelling check of parse_device alone (no device is looked for: `qforge submit` validates on a
// login node without GPUs); InputError naming --device.
void check_device_name(const std::string& name);

// Builds the model index of a checkpoint (names, shapes, dtypes; no weights read).
// The model's checkpoint as blocks see it: exported GPTQ/compressed-tensors folders show their packed
// linears as fp32 `.weight` tensors, dequantized when loaded.
std::unique_ptr<storage::CheckpointReader> open_model_checkpoint(const fs::path& model_dir, const storage::LlamaConfig& config);
partition::ModelIndex index_checkpoint(const storage::LlamaConfig& config, const storage::CheckpointReader& ckpt);

class LlamaModel {
 public:
  LlamaModel(const fs::path& model_dir, ModelOptions options = {});

  const storage::LlamaConfig& config() const { return config_; }
  const storage::CheckpointReader& checkpoint() const { return *ckpt_; }
  const partition::ModelIndex& index() const { return *index_; }
  const ModelOptions& options() const { return options_; }
  const fs::path& dir() const { return dir_; }
  int num_blocks() const { return static_cast<int>(config_.num_hidden_layers); }

  // ids: int64 [batch, seqlen] -> [batch, seqlen, hidden] in the compute dtype.
  at::Tensor embed(const at::Tensor& ids) const;
  // The recorded activation quantization of block i (off for unquantized models): quantized models
  // evaluate with the activation quantization they were calibrated with.
  ActQuantSpec act_quant(int i) const;
  // Block i's weights in the compute dtype on the device: the kept copy with keep_weights, else a fresh load.
  BlockWeights block(int i) const;
  // Bytes of all blocks' weights in the compute dtype (what keeping them all resident costs).
  std::uint64_t blocks_bytes() const;
  // Runs block i with its weights w (block(i)), or loads them first.
  at::Tensor run_block(int i, const BlockWeights& w, const at::Tensor& x, const RopeTables& rope) const;
  at::Tensor run_block(int i, const at::Tensor& x, const RopeTables& rope) const { return run_block(i, block(i), x, rope); }
  // Final RMSNorm and lm_head; logits in fp32: [batch, seqlen, vocab].
  at::Tensor head(const at::Tensor& hidden) const;
  // Whole forward, block by block: ids [batch, seqlen] -> fp32 logits.
  at::Tensor forward(const at::Tensor& ids) const;
  RopeTables rope(std::int64_t seqlen) const;
  // One decoding step: ids [batch, 1] at position caches[0].length() -> fp32 logits [batch, vocab].
  // `caches` holds one KvCache per block (resized on first use).
  at::Tensor decode(const at::Tensor& ids, std::vector<KvCache>& caches, const RopeTables& rope) const;

 private:
  const at::Tensor& global(const std::string& name) const;

  fs::path dir_;
  ModelOptions options_;
  storage::LlamaConfig config_;
  std::unique_ptr<storage::CheckpointReader> ckpt_;
  std::unique_ptr<partition::ModelIndex> index_;
  mutable std::vector<std::optional<BlockWeights>> cached_blocks_;
  mutable std::map<std::string, at::Tensor> globals_;
};

}  // namespace qforge::worker
