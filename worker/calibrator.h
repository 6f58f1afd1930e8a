// Calibration of one block (algorithms.md §1.5): train the block's transforms and clipping so that the
// quantized block, fed the quantized-model stream, reproduces the FP block's output on the FP-model
// stream (MSE at the block output, optional aug_loss), then fold the transforms into the weights and
// quantize them for good.
//
// The result holds, per linear, the integer codes, fp16 scales and zero points, and the fake-quant
// weights rebuilt from exactly those numbers (so export loses nothing).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "worker/block_transforms.h"

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
