// The single-process quantization job: calibration data -> block loop -> HF output folder.
//
// Block loop (algorithms.md §1.5): the FP stream X_fp and the quantized stream X_q start as the embedded
// calibration sequences; for each block: statistics and targets from the FP block (Y = block(X_fp),
// and block(X_q) with aug_loss), calibrate (calibrator.h), write the folded fake-quant weights and the
// integer codes/scales/zeros of that block to a temporary shard, then X_q = quantized block(X_q) and
// X_fp = Y. Only one block's weights are materialised at a time. Finally the output folder is assembled
// by streaming: model*.safetensors (fake-quant weights in the original dtype), config.json with a
// quantization_config, quantization*.safetensors (the sidecar: per linear `<name>.codes` U8 [out, in],
// `<name>.scales` F16 [out, G], `<name>.zeros` I32 [out, G]), calibration_report.json (per-block losses and
// the in-memory model's NLL on the calibration windows), calibration.tok (those windows) and the tokenizer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "jobs/calib_data.h"
#include "storage/quant_config.h"
#include "worker/recipes.h"

namespace qforge::jobs {

namespace fs = std::filesystem;

struct QuantizeSpec {
  fs::path model;
  fs::path out;
  worker::Method method = worker::Method::kRtn;
  int wbits = 4;
  int abits = 16;
  std::int64_t group_size = 0;
  bool sym = false;
  bool act_sym = false;
  bool faithful = false;
  std::map<int, storage::BitsOverride> overrides;
  CalibDataSpec calib;
  fs::path tokenizer;
  worker::Recipe recipe;
  std::int64_t batch_size = 1;
  bool fp64_matrices = false;
  std::uint64_t shard_bytes = 0;
};

// Runs the whole job; throws InputError for bad input, InternalError for failures.
void run_quantize_job(const QuantizeSpec& spec);

}  // namespace qforge::jobs
