// The arithmetic of the calibration forward/backward (`--compute-dtype`). The trained parameters stay
// fp32 masters (or fp64 with --fp64-matrices) in every mode, and the fold of the affine matrices and
// their inverses into the weights happens outside the reduced-precision region, so only the block's
// activations and matrix products change precision:
//   fp32: IEEE fp32 everywhere (the reference numerics);
//   bf16: autocast to bfloat16 on the device (LibTorch's lists: matmuls and linears in bf16,
//         softmax/norm reductions in fp32), the loss in fp32;
//   tf32: fp32 tensors, cuBLAS/cuDNN matmuls with TF32 tensor cores (CUDA only; the CPU has no TF32,
//         so there it is fp32).
// Losses reported by the engine (initial/final/chain losses) and the activation streams it caches are
// always computed in fp32, so they compare across modes.
#pragma once

#include <c10/core/Device.h>

#include <string>

namespace qforge::worker {

enum class ComputePrecision { kFp32, kBf16, kTf32 };

// "fp32" | "bf16" | "tf32"; InputError naming --compute-dtype otherwise.
ComputePrecision parse_compute_precision(const std::string& name);
const char* compute_precision_name(ComputePrecision p);

// Enters `p` for computations on `device` in this thread and restores the previous state on exit
// (autocast is thread-local; the TF32 switch is process-wide, so a process calibrates with one mode).
class PrecisionScope {
 public:
  PrecisionScope(ComputePrecision p, const c10::Device& device);
  ~PrecisionScope();
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  c10::DeviceType autocast_device_ = c10::DeviceType::CPU;
  bool autocast_ = false, autocast_was_ = false;
  c10::ScalarType autocast_dtype_was_ = c10::ScalarType::Undefined;
  bool tf32_ = false, tf32_was_ = false;
};

}  // namespace qforge::worker
