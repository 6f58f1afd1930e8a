// Teacher-forced scoring of token windows: NLL of tokens 1..seqlen-1 of each window given the window
// prefix (the GPTQ perplexity convention), and with a reference model the per-token KL(ref || model)
// and top-1 agreement (how llama.cpp reports quantization damage).
//
// Two plans, chosen from the model's size and the memory budget (plan_scoring):
//  - resident: every block is loaded once and batches of windows (~2048 tokens) go through the whole
//    model, the fast way whenever weights + one batch's activations fit the budget;
//  - block by block: one block resident at a time, every window of a chunk (as many as the budget's
//    activations allow) through it before the next block is loaded, so a model of any size runs.
// Either way the logits exist for a bounded number of rows at a time, never for all windows.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "worker/llama_model.h"

namespace qforge::worker {

struct ScoringPlan {
  bool resident = false;   // all blocks loaded once; else one at a time
  std::int64_t batch = 1;  // windows per pass through a block
};

struct WindowScores {
  double sum_nll = 0.0;       // natural log
  std::int64_t scored = 0;    // predicted tokens: windows * (seqlen - 1)
  std::int64_t windows = 0;
  double sum_kl = 0.0;        // with a reference only
  std::int64_t top1_agree = 0;
  ScoringPlan plan;           // how the windows went through the model
  double mean_nll() const { return scored ? sum_nll / static_cast<double>(scored) : 0.0; }
};

struct ScoringOptions {
  std::uint64_t memory_budget_bytes = 2ull << 30;  // resident weights + activations of one batch of windows
  std::int64_t batch_windows = 0;                  // windows per pass; 0: ~2048 tokens (resident) or the budget's
  bool progress = true;                            // progress line with ETA on stderr
};

// blocks_bytes: all blocks' weights (of the model and any reference); one_block_bytes: one of each;
// window_bytes: window_activation_bytes. Resident when blocks_bytes + batch x window_bytes fit the budget.
ScoringPlan plan_scoring(std::uint64_t blocks_bytes, std::uint64_t one_block_bytes, std::uint64_t window_bytes,
                         std::int64_t windows, std::int64_t seqlen, const ScoringOptions& options);

// Peak activation bytes of one window of seqlen tokens through one block (incl. attention scores).
std::uint64_t window_activation_bytes(const storage::LlamaConfig& config, std::int64_t seqlen, std::size_t elem_size);

// windows: int64 [N, seqlen]. reference may be null; it must have the model's vocabulary.
WindowScores score_windows(const LlamaModel& model, const at::Tensor& windows, const LlamaModel* reference,
                           const ScoringOptions& options = {});

}  // namespace qforge::worker
