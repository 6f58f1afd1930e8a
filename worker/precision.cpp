#include "worker/precision.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>

#include "common/error.h"

namespace qforge::worker {

ComputePrecision parse_compute_precision(const std::string& name) {
  if (name == "fp32") return ComputePrecision::kFp32;
  if (name == "bf16") return ComputePrecision::kBf16;
  if (name == "tf32") return ComputePrecision::kTf32;
  throw InputError("--compute-dtype", "", "unknown compute dtype '" + name + "' (fp32|bf16|tf32)");
}

const char* compute_precision_name(ComputePrecision p) {
  switch (p) {
    case ComputePrecision::kBf16: return "bf16";
    case ComputePrecision::kTf32: return "tf32";
    default: return "fp32";
  }
}

PrecisionScope::PrecisionScope(ComputePrecision p, const c10::Device& device) : autocast_device_(device.type()) {
  if (p == ComputePrecision::kBf16) {
    autocast_ = true;
    autocast_was_ = at::autocast::is_autocast_enabled(autocast_device_);
    autocast_dtype_was_ = at::autocast::get_autocast_dtype(autocast_device_);
    at::autocast::set_autocast_dtype(autocast_device_, at::kBFloat16);
    at::autocast::set_autocast_enabled(autocast_device_, true);
    at::autocast::increment_nesting();
  }
  if (p == ComputePrecision::kTf32 && device.is_cuda()) {
    tf32_ = true;
    tf32_was_ = at::globalContext().allowTF32CuBLAS();
    at::globalContext().setAllowTF32CuBLAS(true);
  }
}

PrecisionScope::~PrecisionScope() {
  if (autocast_) {
    // The autocast weight-cast cache lives until the outermost scope closes (as torch.autocast does).
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(autocast_device_, autocast_was_);
    at::autocast::set_autocast_dtype(autocast_device_, autocast_dtype_was_);
  }
  if (tf32_) at::globalContext().setAllowTF32CuBLAS(tf32_was_);
}

}  // namespace qforge::worker
