// Teacher-forced scoring of token windows: NLL of tokens 1..seqlen-1 of each window given the window
// prefix (the GPTQ perplexity convention), and with a reference model the per-token KL(ref || model)
// and top-1 agreement (how llama.cpp reports quantization damage).
//
// Windows are processed in chunks sized to a memory budget; within a chunk every block is loaded
// once and applied to all windows of the chunk, so a model of any size runs with one block resident.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "worker/llama_model.h"

namespace qforge::worker {

struct WindowScores {
  double sum_nll = 0.0;       // natural log
  std::int64_t scored = 0;    // predicted tokens: windows * (seqlen - 1)
  std::int64_t windows = 0;
  double sum_kl = 0.0;        // with a reference only
  std::int64_t top1_agree = 0;
  double mean_nll() const { return scored ? sum_nll / static_cast<double>(scored) : 0.0; }
};

struct ScoringOptions {
  std::uint64_t memory_budget_bytes = 2ull << 30;  // activations of one chunk of windows
  bool progress = true;                            // progress line with ETA on stderr
};

// Peak activation bytes of one window of seqlen tokens through one block (incl. attention scores).
std::uint64_t window_activation_bytes(const storage::LlamaConfig& config, std::int64_t seqlen, std::size_t elem_size);

// windows: int64 [N, seqlen]. reference may be null; it must have the model's vocabulary.
WindowScores score_windows(const LlamaModel& model, const at::Tensor& windows, const LlamaModel* reference,
                           const ScoringOptions& options = {});

}  // namespace qforge::worker
