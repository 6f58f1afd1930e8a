// Calibration of one block (algorithms.md §1.5): train the block's transforms and clipping so that the
// quantized block, fed the quantized-model stream, reproduces the FP block's output on the FP-model
// stream (MSE at the block output, optional aug_loss), then fold the transforms into the weights and
// quantize them for good.
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

namespace torch::optim {
class Optimizer;
}

namespace qforge::worker {

// Combines per-rank partial results across a data-parallel team, in a fixed order (so a run is
// deterministic for a given team size). The one-rank implementation does nothing; the engine's MPI
// implementation is worker/team_reducer.h.
class TeamReducer {
 public:
  virtual ~TeamReducer() = default;
  // In-place element-wise sums / maxima over the team; every rank passes tensors of equal shapes and
  // dtypes in the same order.
  virtual void sum(std::vector<at::Tensor>& tensors) = 0;
  virtual void max(std::vector<at::Tensor>& tensors) = 0;
};

class LocalReducer : public TeamReducer {
 public:
  void sum(std::vector<at::Tensor>&) override {}
  void max(std::vector<at::Tensor>&) override {}
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
  double let_lr = 5e-3;
  double lwc_lr = 1e-2;
  double weight_decay = 0.0;
  bool aug_loss = false;
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

// One block's optimisation state: transforms, clipping and the AdamW optimiser (two parameter groups,
// transforms at let_lr and clipping at lwc_lr, weight decay 0). step() is one optimiser step on one
// batch; calibrate_block drives it over epochs, benchmarks drive it directly.
class BlockTrainer {
 public:
  // `reducer` (may be null: one rank) all-reduces gradients and the loss after every backward pass.
  BlockTrainer(const storage::LlamaConfig& config, const BlockWeights& fp, const ActStats& stats,
               const CalibOptions& options, const RopeTables& rope, TeamReducer* reducer = nullptr);
  ~BlockTrainer();
  void begin_epoch(int epoch);
  // Forward with fake-quantized transformed weights and activation quantization, squared error to y
  // (+ y2 with aug_loss) divided by the elements of the GLOBAL batch (`global_rows` sequences; this
  // rank holds x.size(0) of them), backward, gradient all-reduce, AdamW step, diagonal-dominance
  // restoration. Summed over the team this is exactly the MSE of the whole batch and its gradient.
  // Returns the team's loss; throws InternalError naming `label` on a non-finite loss (on every rank
  // alike, since the check follows the all-reduce).
  double step(const at::Tensor& x, const at::Tensor& y, const at::Tensor& y2, const std::string& label,
              std::int64_t global_rows = -1);
  BlockTransforms& transforms() { return transforms_; }
  std::int64_t projections() const { return projections_; }
  bool trainable() const;

 private:
  const storage::LlamaConfig& config_;
  const BlockWeights& fp_;
  CalibOptions options_;
  const RopeTables& rope_;
  TeamReducer* reducer_;
  BlockTransforms transforms_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::int64_t projections_ = 0;
  int epoch_ = 0;
  std::int64_t steps_in_epoch_ = 0;
};

// Runs `fn` over [n, L, H] in batches of `batch` sequences under no_grad and concatenates.
at::Tensor map_batches(const at::Tensor& x, std::int64_t batch, const std::function<at::Tensor(const at::Tensor&)>& fn);

// x_q: quantized-stream inputs [n, L, H]; y_fp: FP block outputs on the FP stream; y_fp2: FP block on
// x_q (only with aug_loss). Without training (RTN, or epochs = 0) x_q may be empty: only the weights
// are quantized. `label` names the block in logs and errors. With a team, the tensors hold this
// rank's rows laid out as `split` says, `stats` must already be the team's maxima, and every rank
// returns the same result (losses are team-wide).
BlockResult calibrate_block(const storage::LlamaConfig& config, const BlockWeights& fp, const at::Tensor& x_q,
                            const at::Tensor& y_fp, const at::Tensor& y_fp2, const ActStats& stats,
                            const CalibOptions& options, const RopeTables& rope, const std::string& label,
                            TeamReducer* reducer = nullptr, const DataSplit* split = nullptr);

// Team-wide mean squared error of block(x) against y over all rows (this rank's partial sum reduced).
double team_mse(const storage::LlamaConfig& config, const BlockWeights& w, const at::Tensor& x, const at::Tensor& y,
                const RopeTables& rope, const ActQuantSpec& act, std::int64_t batch, TeamReducer* reducer,
                std::int64_t global_elements);

// Folds `transforms` into `fp` and quantizes the seven linears (no gradient).
BlockResult finalize_block(const BlockWeights& fp, const BlockTransforms& transforms, const WeightQuantSpec& spec);

}  // namespace qforge::worker
