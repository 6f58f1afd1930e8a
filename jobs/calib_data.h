// Calibration sequences: N windows of L tokens drawn with a seed, by the GPTQ/OmniQuant convention
// (algorithms.md §1.7): the whole text tokenized once (one BOS), then `random.seed(seed)` and for each
// sample `i = randint(0, len - L - 1)`, window ids[i : i + L] (CPython's generator, bit for bit).
// C4 JSON lines: per sample, random documents until one has more than L tokens, then a random window.
// "model:generate": sequences sampled from the FP model itself (BOS-started, temperature 1, seeded),
// for models without calibration text.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "storage/text_data.h"
#include "storage/tokenizer.h"
#include "worker/llama_model.h"

namespace qforge::jobs {

struct CalibDataSpec {
  std::string source;                 // a file path or "model:generate"
  std::string format;                 // text|wikitext|c4|tokens, empty = guessed
  std::int64_t nsamples = 128;
  std::int64_t seqlen = 2048;
  std::uint64_t seed = 2;
};

constexpr const char* kGenerateSource = "model:generate";

// tokenizer may be null for token files and model:generate; model is used only by model:generate.
at::Tensor load_calibration(const CalibDataSpec& spec, const storage::Tokenizer* tokenizer, const worker::LlamaModel& model);

// Samples n sequences of `seqlen` tokens from the model (BOS first), deterministic for a seed.
at::Tensor generate_sequences(const worker::LlamaModel& model, std::int64_t n, std::int64_t seqlen, std::uint64_t seed);

}  // namespace qforge::jobs
