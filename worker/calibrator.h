// Calibration of one unit (algorithms.md §1.5; a unit is one block, or several for MRECG joint
// reconstruction, §4.6): train the unit's transforms and clipping so that the quantized unit, fed the
// quantized-model stream, reproduces the FP unit's output on the FP-model stream (MSE at the unit
// output, optional aug_loss), then fold the transforms into each block's weights and quantize them.
//
// The result holds, per linear, the integer codes, fp16 scales and zero points, and the fake-quant
// weights rebuilt from exactly those numbers (so export loses nothing).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "worker/block_transforms.h"
#include "worker/gptq.h"
#include "worker/precision.h"

namespace torch::optim {
class Optimizer;
}

namespace qforge::worker {

// Combines per-rank partial results across a data-parallel team, in a fixed order (so a run is
// deterministic for a given team size). No reducer (nullptr) means a team of one; the MPI and
// in-process implementations are in worker/team_reducer.h.
class TeamReducer {
 public:
  virtual ~TeamReducer() = default;
  // In-place element-wise sums / maxima over the team; every rank passes tensors of equal shapes and
  // dtypes in the same order.
  virtual void sum(std::vector<at::Tensor>& tensors) = 0;
  virtual void max(std::vector<at::Tensor>& tensors) = 0;
};

// How this rank's rows relate to the team's. A team splits every optimiser step's global batch of
// `global_batch` sequences; this rank holds `local_batch` of them per step, stored step by step at the
// front of its tensors, followed by its share of the samples that fill no whole step.
struct DataSplit {
  std::int64_t global_samples = 0;
  std::int64_t global_batch = 1;
  std::int64_t local_batch = 1;
  static DataSplit single(std::int64_t samples, std::int64_t batch) { return {samples, batch, batch}; }
};

struct CalibOptions {
  TransformOptions transform;
  WeightQuantSpec weights;
  ActQuantSpec acts;
  int epochs = 0;
  std::int64_t batch_size = 1;   // sequences per optimiser step
  // Sequences per forward/backward inside a step, gradients accumulated (0: this rank's whole share at
  // once). The step is the same sum either way; only the summation order and peak memory change.
  std::int64_t micro_batch = 0;
  // Arithmetic of the training forward/backward (worker/precision.h); the parameters stay fp32 masters.
  ComputePrecision precision = ComputePrecision::kFp32;
  double let_lr = 5e-3;
  double lwc_lr = 1e-2;
  double weight_decay = 0.0;
  bool aug_loss = false;
  GptqOptions gptq;  // codes by GPTQ on the final grid (after training and folding) instead of nearest
};

struct QuantizedLinear {
  at::Tensor codes;   // uint8 [out, in]
  at::Tensor scales;  // fp16 [out, G]
  at::Tensor zeros;   // int32 [out, G]
};

struct BlockResult {
  BlockWeights weights;                 // folded and fake-quantized (fp32)
  std::vector<QuantizedLinear> linears; // in linear_names() order
  std::vector<double> epoch_loss;       // mean training loss per epoch
  double initial_loss = 0.0;            // MSE of the untrained quantized block (all samples)
  double final_loss = 0.0;              // MSE of the folded, quantized block (all samples)
  std::int64_t projections = 0;         // rows restored to diagonal dominance
  std::vector<std::pair<std::string, at::Tensor>> transform_state;  // trained transforms and clipping
};

// A unit's optimisation state: one or more consecutive blocks trained as one (MRECG joint units,
// algorithms.md §4.6): the union of every block's transforms and clipping under one AdamW optimiser
// (two parameter groups, all transforms at let_lr and all clipping at lwc_lr, weight decay 0), the
// blocks chained with activation quantization and ONE loss at the unit output. A one-block unit is the
// plain block-wise case. Unit-wide settings (epochs, batch, learning rates, aug_loss) come from the
// first block's options; weight and activation quantization are per block (per-block overrides).
// step() is one optimiser step on one batch; calibrate_unit drives it over epochs, benchmarks directly.
class UnitTrainer {
 public:
  // `fp`, `options` and `stats` hold one entry per block; `fp` must outlive the trainer. `reducer`
  // (may be null: one rank) all-reduces gradients and the loss after every backward pass.
  UnitTrainer(const storage::LlamaConfig& config, const std::vector<BlockWeights>& fp, const std::vector<ActStats>& stats,
              const std::vector<CalibOptions>& options, const RopeTables& rope, TeamReducer* reducer = nullptr);
  ~UnitTrainer();
  // Rebuilds every block's masks for epoch e together (AffineQuant's gradual band, §2.3).
  void begin_epoch(int epoch);
  // Forward through every block with fake-quantized transformed weights and activation quantization,
  // squared error to y (+ y2 with aug_loss) divided by the elements of the GLOBAL batch (`global_rows`
  // sequences; this rank holds x.size(0) of them), backward, gradient all-reduce, AdamW step,
  // diagonal-dominance restoration. Summed over the team this is exactly the MSE of the whole batch
  // and its gradient. Returns the team's loss; throws InternalError naming `label` on a non-finite
  // loss (on every rank alike, since the check follows the all-reduce).
  // `stop_vote` (optional): this rank's wish to stop after this step; on return, whether any rank of the
  // team wished it (summed inside the step's all-reduce, so every rank decides alike at the same step).
  double step(const at::Tensor& x, const at::Tensor& y, const at::Tensor& y2, const std::string& label,
              std::int64_t global_rows = -1, bool* stop_vote = nullptr);
  // Everything the rest of training depends on, named: every block's transforms and clipping
  // ("b<i>.<name>"), the AdamW moments and step counts in optimiser order ("adamw.<k>.exp_avg",
  // ".exp_avg_sq", ".step") and the projection count. load_state() restores it in place.
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& state);
  int blocks() const { return static_cast<int>(transforms_.size()); }
  BlockTransforms& transforms(int block) { return transforms_.at(static_cast<std::size_t>(block)); }
  // Every block's fake-quantized weights (differentiable).
  std::vector<BlockWeights> fake_quantized() const;
  std::int64_t projections() const { return projections_; }
  bool trainable() const;
  // The gradient of every trained parameter in optimiser order as the last step() left it (after the
  // team all-reduce; undefined where a parameter got none without a team).
  std::vector<at::Tensor> gradients() const;

 private:
  const storage::LlamaConfig& config_;
  const std::vector<BlockWeights>& fp_;
  std::vector<CalibOptions> options_;
  const RopeTables& rope_;
  TeamReducer* reducer_;
  std::vector<BlockTransforms> transforms_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::int64_t projections_ = 0;
  int epoch_ = 0;
  std::int64_t steps_in_epoch_ = 0;
};

// Runs `fn` over [n, L, H] in batches of `batch` sequences under no_grad and concatenates.
at::Tensor map_batches(const at::Tensor& x, std::int64_t batch, const std::function<at::Tensor(const at::Tensor&)>& fn);

// The blocks of a unit applied in order (no gradient), block i with activation spec acts[i] (empty:
// no activation quantization).
at::Tensor chain_forward(const storage::LlamaConfig& config, const std::vector<BlockWeights>& blocks, const at::Tensor& x,
                         const RopeTables& rope, const std::vector<ActQuantSpec>& acts = {});

// A mid-unit checkpoint: where training stopped and the trainer's state there. Continuing from it
// gives the same result, bit for bit, as never stopping (the data and its order are the same).
struct UnitCheckpoint {
  int epoch = 0;                    // epoch to continue (0-based)
  std::int64_t step = 0;            // optimiser steps of that epoch already done
  double epoch_sum = 0;             // sum of their losses
  std::vector<double> epoch_loss;   // finished epochs' mean losses
  std::vector<std::pair<std::string, at::Tensor>> state;  // UnitTrainer::state()
};

// Stop control for calibrate_unit: `requested` is polled before every optimiser step (this rank's
// view; the team agrees through the step's all-reduce) and `resume` continues a checkpoint.
struct StopControl {
  std::function<bool()> requested;
  const UnitCheckpoint* resume = nullptr;
};

// Thrown by calibrate_unit when the team agreed to stop: the checkpoint after the last step taken.
class UnitStopped : public std::exception {
 public:
  explicit UnitStopped(UnitCheckpoint c) : checkpoint(std::move(c)) {}
  const char* what() const noexcept override { return "unit stopped at a checkpoint"; }
  UnitCheckpoint checkpoint;
};

struct UnitResult {
  std::vector<BlockResult> blocks;      // per block: folded and quantized (losses live here, below)
  std::vector<double> epoch_loss;       // mean training loss per epoch (unit output)
  double initial_loss = 0.0;            // unit-output MSE of the untrained quantized unit (all samples)
  double final_loss = 0.0;              // unit-output MSE of the folded, quantized unit (all samples)
  std::int64_t projections = 0;         // rows restored to diagonal dominance
};

// What calibrate_unit measures after training: the folded unit's MSE on all samples (final_loss), or
// nothing, when the caller measures the unit's output itself (the engine's chain_losses pass, which also
// yields the next quantized stream, gives the same number: one forward instead of two).
enum class FinalLoss { kMeasure, kCallerMeasures };

// x_q: quantized-stream inputs [n, L, H] of the unit's first block; y_fp: FP unit outputs on the FP
// stream; y_fp2: FP unit on x_q (only with aug_loss). Without training (RTN, or epochs = 0) x_q may be
// empty: only the weights are quantized. `label` names the unit in logs and errors. With a team, the
// tensors hold this rank's rows laid out as `split` says, every block's `stats` must already be the
// team's maxima, and every rank returns the same result (losses are team-wide).
UnitResult calibrate_unit(const storage::LlamaConfig& config, const std::vector<BlockWeights>& fp, const at::Tensor& x_q,
                          const at::Tensor& y_fp, const at::Tensor& y_fp2, const std::vector<ActStats>& stats,
                          const std::vector<CalibOptions>& options, const RopeTables& rope, const std::string& label,
                          TeamReducer* reducer = nullptr, const DataSplit* split = nullptr,
                          const StopControl* stop = nullptr, FinalLoss final_loss = FinalLoss::kMeasure);

// calibrate_unit for a unit of one block; the result carries the unit's losses.
BlockResult calibrate_block(const storage::LlamaConfig& config, const BlockWeights& fp, const at::Tensor& x_q,
                            const at::Tensor& y_fp, const at::Tensor& y_fp2, const ActStats& stats,
                            const CalibOptions& options, const RopeTables& rope, const std::string& label,
                            TeamReducer* reducer = nullptr, const DataSplit* split = nullptr);

// Team-wide mean squared error of the unit `blocks`(x) against y over all rows (this rank's partial
// sum reduced).
double team_mse(const storage::LlamaConfig& config, const std::vector<BlockWeights>& blocks, const at::Tensor& x,
                const at::Tensor& y, const RopeTables& rope, const std::vector<ActQuantSpec>& acts, std::int64_t batch,
                TeamReducer* reducer, std::int64_t global_elements);

// The oscillation curve inside a unit: for every block i, the team-wide MSE between the quantized
// chain (on x_q, with activation quantization) and the FP chain (on x_fp) at block i's output, and the
// FP output's mean energy mean(y_fp,i²), so loss / energy is the normalised loss ℓ_i of algorithms.md §4.6.
// `quantized_output` (optional) receives the quantized chain's output on x_q, which the same pass computes
// (the sequential engine's next quantized stream), so it is not run twice. y_fp (optional) is the FP
// chain's output on x_fp, already known to the caller: the last FP block is then not run again (a unit of
// one block runs no FP block at all). The last MSE is calibrate_unit's final_loss, bit for bit.
struct ChainLoss {
  double mse = 0.0;
  double energy = 0.0;
  double normalized() const { return energy > 0 ? mse / energy : 0.0; }
};
std::vector<ChainLoss> chain_losses(const storage::LlamaConfig& config, const std::vector<BlockWeights>& fp,
                                    const std::vector<BlockWeights>& quantized, const at::Tensor& x_fp,
                                    const at::Tensor& x_q, const RopeTables& rope, const std::vector<ActQuantSpec>& acts,
                                    std::int64_t batch, TeamReducer* reducer, std::int64_t global_elements,
                                    at::Tensor* quantized_output = nullptr, const at::Tensor& y_fp = {});

// Data-dependent module capacity (MRECG, algorithms.md §4.2/§4.6) of one block from a probe on FP-stream
// inputs x_fp: the block is calibrated with `epochs` epochs (0: the method's initialisation only,
// forward only) and its folded, quantized output compared with the FP output. A larger normalised loss
// means a smaller capacity. Probing on FP inputs (not the quantized stream) measures the block alone,
// so every block's probe is independent and probes run in parallel.
struct ProbeResult {
  double loss = 0.0;        // MSE of the quantized block's output against the FP block's
  double energy = 0.0;      // mean(y_fp²)
  double normalized = 0.0;  // loss / energy: ℓ_i
  std::vector<double> epoch_loss;
};
ProbeResult probe_block(const storage::LlamaConfig& config, const BlockWeights& fp, const at::Tensor& x_fp,
                        CalibOptions options, int epochs, const RopeTables& rope, const std::string& label);

// Folds `transforms` into `fp` and quantizes the seven linears (no gradient).
BlockResult finalize_block(const BlockWeights& fp, const BlockTransforms& transforms, const WeightQuantSpec& spec);
// The same grid with GPTQ's codes (worker/gptq.h): the Hessian of each linear from its inputs in the
// deployed block on x (this rank's rows of the quantized stream into the block, summed over the team by
// `reducer`), in true-sequential order (q/k/v, then o, then gate/up, then down, each stage's inputs
// computed with the earlier stages quantized), activation fake-quantization included.
BlockResult finalize_block_gptq(const storage::LlamaConfig& config, const BlockWeights& fp, const BlockTransforms& transforms,
                                const CalibOptions& options, const at::Tensor& x, const RopeTables& rope,
                                std::int64_t batch, TeamReducer* reducer, const std::string& label);

}  // namespace qforge::worker
