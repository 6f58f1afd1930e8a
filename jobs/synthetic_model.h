// Seeded random LLaMA checkpoints with real shapes, for measuring memory and speed on large models
// without downloading any. Each tensor is drawn from its own generator seeded by (seed, tensor name),
// so the bytes do not depend on shard layout or generation order.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "storage/hf_config.h"

namespace qforge::jobs {

namespace fs = std::filesystem;

struct SyntheticShape {
  std::string name;
  std::string description;
  storage::LlamaConfig config;
  std::string default_dtype;  // float32 for the small shapes, float16 for the large ones (as published)
};

const std::vector<SyntheticShape>& synthetic_shapes();
// InputError listing the known shapes.
const SyntheticShape& find_synthetic_shape(const std::string& name);

struct SyntheticOptions {
  std::string shape = "tiny";
  std::int64_t blocks = 0;          // 0: the shape's own layer count
  std::string dtype;                // empty: shape default
  std::uint64_t shard_bytes = 0;    // 0: one file
  std::uint64_t seed = 0;
  bool write_tokenizer = true;      // a byte-level llama2.c tokenizer.bin so text evaluation works
};

// Writes config.json, the (sharded) safetensors checkpoint and tokenizer.bin into out.
// Returns the config written.
storage::LlamaConfig make_synthetic_model(const fs::path& out, const SyntheticOptions& options);

// A byte-level llama2.c tokenizer of exactly vocab_size tokens (>= 355): <unk>, <s>, </s>, the 256
// byte-fallback tokens, the 95 printable ASCII characters, then unreachable filler pieces.
void write_byte_tokenizer(const fs::path& path, std::int64_t vocab_size);

}  // namespace qforge::jobs
