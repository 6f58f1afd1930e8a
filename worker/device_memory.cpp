#include "worker/device_memory.h"

#ifdef QFORGE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace qforge::worker {

namespace {

#ifdef QFORGE_WITH_CUDA
// Bytes allocated to tensors, aggregated over the small- and large-block pools.
c10::CachingAllocator::Stat allocated(const c10::Device& device) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
  return stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
}
#endif

}  // namespace

std::uint64_t device_allocated_bytes(const c10::Device& device) {
#ifdef QFORGE_WITH_CUDA
  if (device.is_cuda()) return static_cast<std::uint64_t>(allocated(device).current);
#endif
  (void)device;
  return 0;
}

std::uint64_t device_peak_allocated_bytes(const c10::Device& device) {
#ifdef QFORGE_WITH_CUDA
  if (device.is_cuda()) return static_cast<std::uint64_t>(allocated(device).peak);
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
