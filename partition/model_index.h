// The model index: every tensor of a checkpoint classified as global (embeddings, final norm, head)
// or as part of decoder block N, checked against the config. Pure: built from names and shapes, so
// it serves dry runs and plans without reading any weights.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/model_config.h"

namespace qforge::partition {

struct IndexedTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;  // safetensors name, e.g. "F32"
  std::uint64_t nbytes = 0;
};

// The tensors each block must have, by suffix after "model.layers.N.", with their expected shapes.
std::vector<std::pair<std::string, std::vector<std::int64_t>>> expected_block_tensors(const LlamaConfig& c);
// Global tensors the model must have (lm_head only when embeddings are not tied).
std::vector<std::pair<std::string, std::vector<std::int64_t>>> expected_global_tensors(const LlamaConfig& c);

std::string block_tensor_name(int block, const std::string& suffix);

class ModelIndex {
 public:
  // Throws InputError (naming `where` and the tensor) for a missing tensor, a shape that disagrees
  // with the config, or a tensor that belongs nowhere. Ignored: rotary_emb.inv_freq buffers.
  ModelIndex(const LlamaConfig& config, const std::vector<IndexedTensor>& tensors, const std::string& where);

  const LlamaConfig& config() const { return config_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  const std::vector<IndexedTensor>& block(int i) const { return blocks_.at(static_cast<std::size_t>(i)); }
  const std::vector<IndexedTensor>& globals() const { return globals_; }
  std::uint64_t block_bytes(int i) const;
  std::uint64_t total_bytes() const;
  // Parameters as the checkpoint holds them (a quantized folder's extra tensors, e.g. norm inverses, included).
  std::int64_t block_parameters(int i) const;
  std::int64_t total_parameters() const;
  // Tensors that were present but ignored (e.g. rotary buffers), for inspect.
  const std::vector<std::string>& ignored() const { return ignored_; }

 private:
  LlamaConfig config_;
  std::vector<std::vector<IndexedTensor>> blocks_;
  std::vector<IndexedTensor> globals_;
  std::vector<std::string> ignored_;
};

}  // namespace qforge::partition
