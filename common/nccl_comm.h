// RAII NCCL communicator of one team, on this rank's GPU (the GPU path's counterpart of MpiComm's
// all-reduce). The unique id is made by the team's rank 0 and broadcast over the team's Transport
// (c10d's ProcessGroupNCCL does the same through its store). Compiled only with
// QFORGE_WITH_NCCL; the NCCL linked is the one the torch wheel loads (CMakeLists.txt), so a process
// never holds two NCCLs.
//
// Collectives are enqueued on a CUDA stream and then waited for by polling, like MpiComm's: `poll`
// runs between checks (the worker's SHUTDOWN check may throw), and after `timeout` the communicator
// is aborted (ncclCommAbort: a hung peer cannot keep this rank's GPU work stuck) and CommError is thrown.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/transport.h"

#if defined(QFORGE_WITH_NCCL)
#include <cuda_runtime_api.h>
#include <nccl.h>

namespace qforge {

class NcclComm {
 public:
  // Collective over `team`: every member calls it with its own CUDA device index.
  NcclComm(const Transport& team, int cuda_device);
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int size() const { return size_; }
  int device() const { return device_; }
  enum class Op { kSum, kMax };
  // In place over the team; `data` is device memory of `n` fp32 or fp64 values (`is_double`).
  void all_reduce(void* data, std::int64_t n, bool is_double, Op op, cudaStream_t stream,
                  std::chrono::duration<double> timeout, const std::string& what, const Transport::Poll& poll);
  // NCCL's version as "major.minor.patch" (of the library loaded, not the header).
  static std::string version();

 private:
  ncclComm_t comm_ = nullptr;
  int size_ = 0, device_ = 0;
  bool aborted_ = false;
};

}  // namespace qforge
#endif
