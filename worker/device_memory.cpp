#include "worker/device_memory.h"

#ifdef QFORGE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace qforge::worker {

std::uint64_t device_peak_allocated_bytes(const c10::Device& device) {
#ifdef QFORGE_WITH_CUDA
  if (device.is_cuda()) {
    // Bytes allocated to tensors, aggregated over the small- and large-block pools.
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return static_cast<std::uint64_t>(
        stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak);
  }
#endif
  (void)device;
  return 0;
}

void reset_device_peak(const c10::Device& device) {
#ifdef QFORGE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
#endif
  (void)device;
}

}  // namespace qforge::worker
