// GPU memory as LibTorch's CUDA caching allocator counts it: the peak of the bytes held by live tensors on a
// device since the last reset (what a calibration step needs, not what the allocator has cached). On the
// CPU, or in a build without CUDA, it reads 0.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

namespace qforge::worker {

std::uint64_t device_peak_allocated_bytes(const c10::Device& device);
void reset_device_peak(const c10::Device& device);

}  // namespace qforge::worker
