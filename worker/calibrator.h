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
  BlockTrainer(const storage::LlamaConfig& config, const BlockWeights& fp, const ActStats& stats,
               const CalibOptions& options, const RopeTables& rope);
  ~BlockTrainer();
  void begin_epoch(int epoch);
  // Forward with fake-quantized transformed weights and activation quantization, MSE to y (+ y2 with
  // aug_loss), backward, AdamW step, diagonal-dominance restoration. Returns the loss; throws
  // InternalError naming `label` on a non-finite loss.
  double step(const at::Tensor& x, const at::Tensor& y, const at::Tensor& y2, const std::string& label);
  BlockTransforms& transforms() { return transforms_; }
  std::int64_t projections() const { return projections_; }
  bool trainable() const;

 private:
  const storage::LlamaConfig& config_;
  const BlockWeights& fp_;
  CalibOptions options_;
  const RopeTables& rope_;
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
// are quantized. `label` names the block in logs and errors.
BlockResult calibrate_block(const storage::LlamaConfig& config, const BlockWeights& fp, const at::Tensor& x_q,
                            const at::Tensor& y_fp, const at::Tensor& y_fp2, const ActStats& stats,
                            const CalibOptions& options, const RopeTables& rope, const std::string& label);

// Folds `transforms` into `fp` and quantizes the seven linears (no gradient).
BlockResult finalize_block(const BlockWeights& fp, const BlockTransforms& transforms, const WeightQuantSpec& spec);

}  // namespace qforge::worker
