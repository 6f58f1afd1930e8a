// One optimiser step of a small AffineQuant W4A4 block (LET with the q/k matrix, LWC, aug loss) on a
// global batch of kOneStepSamples sequences, taken by any rank of a team of any size. Shared by the
// in-process team test (tests/unit/test_team_step.cpp) and the mpirun test's probe program, so both
// compare the same computation.
//
// Every rank runs the same per-sample micro-batches (micro_batch 1), so the per-sample forward and
// backward passes are the same computation whatever the team; only the order in which the per-sample
// gradients are added differs (autograd accumulation on a rank, then the team reduction).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "storage/hf_config.h"
#include "worker/block_transforms.h"
#include "worker/calibrator.h"
#include "worker/rope.h"

namespace qforge::test {

inline constexpr std::int64_t kOneStepSamples = 5;  // uneven on 3 ranks: 2 + 2 + 1

struct OneStepProblem {
  storage::LlamaConfig config;
  worker::BlockWeights fp;
  worker::ActStats stats;  // over all samples: what a team has after its max all-reduce
  worker::CalibOptions options;
  worker::RopeTables rope;
  at::Tensor x, y;  // [kOneStepSamples, L, H]: inputs and FP targets (y also the aug-loss target)
  OneStepProblem();
};

struct StepOutcome {
  double loss = 0.0;
  std::vector<at::Tensor> gradients;  // optimiser order, after the team reduction
};

// One step by team rank `rank` of `team_size` on its rows of the global batch (partition::team_rows),
// reducing through `reducer` (nullptr: a team of one).
StepOutcome one_step(const OneStepProblem& p, int team_size, int rank, worker::TeamReducer* reducer);

// One step of a team of one on sample `k` alone, normalised by the global batch: that sample's share
// of the team's loss and gradient.
StepOutcome one_sample_share(const OneStepProblem& p, std::int64_t k);
// Every sample's share, in sample order.
std::vector<StepOutcome> sample_shares(const OneStepProblem& p);

// The per-sample work must be the same computation in every team, so the comparisons run with one
// compute thread (the thread count changes ATen's reduction order; it is not what is under test).
// Pins it for the object's life and restores the count before.
class OneComputeThread {
 public:
  OneComputeThread();
  ~OneComputeThread();
  OneComputeThread(const OneComputeThread&) = delete;
  OneComputeThread& operator=(const OneComputeThread&) = delete;

 private:
  int before_;
};

// Compares a team's step with a team of one's. Both add the same n per-sample terms t_k in a different
// order, so each is within γ_{n-1}·Σ|t_k| of the exact sum (recursive summation, γ_m = m·u/(1−m·u),
// u the unit roundoff of the dtype): they may differ by 2·γ_{n-1}·Σ|t_k| element by element and no more.
// Returns "" when every element and the loss are within that bound, else a description of the worst
// violation.
std::string compare_steps(const StepOutcome& team, const StepOutcome& single, const std::vector<StepOutcome>& shares);

}  // namespace qforge::test
