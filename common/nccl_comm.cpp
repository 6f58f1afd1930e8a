#include "common/nccl_comm.h"

#if defined(QFORGE_WITH_NCCL)
#include <cstring>
#include <thread>

#include "common/error.h"

namespace qforge {

namespace {

void check_nccl(ncclResult_t r, const char* call) {
  if (r != ncclSuccess && r != ncclInProgress) {
    throw CommError(std::string(call) + " failed: " + ncclGetErrorString(r));
  }
}

void check_cuda(cudaError_t e, const char* call) {
  if (e != cudaSuccess) throw CommError(std::string(call) + " failed: " + cudaGetErrorString(e));
}

}  // namespace

NcclComm::NcclComm(const Transport& team, int cuda_device) : size_(team.size()), device_(cuda_device) {
  check_cuda(cudaSetDevice(cuda_device), "cudaSetDevice");
  ncclUniqueId id;
  std::string bytes;
  if (team.rank() == 0) {
    check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
  }
  bytes = team.broadcast(bytes, 0);
  QF_CHECK(bytes.size() == sizeof id, "NCCL unique id of the wrong size from the team's rank 0");
  std::memcpy(&id, bytes.data(), sizeof id);
  check_nccl(ncclCommInitRank(&comm_, size_, id, team.rank()), "ncclCommInitRank");
}

NcclComm::~NcclComm() {
  if (comm_ == nullptr) return;
  if (aborted_) return;  // ncclCommAbort already freed it
  ncclCommDestroy(comm_);
}

void NcclComm::all_reduce(void* data, std::int64_t n, bool is_double, Op op, cudaStream_t stream,
                          std::chrono::duration<double> timeout, const std::string& what, const Transport::Poll& poll) {
  QF_CHECK(!aborted_, what + ": the team's NCCL communicator was aborted earlier");
  if (size_ == 1 || n == 0) return;
  check_nccl(ncclAllReduce(data, data, static_cast<std::size_t>(n), is_double ? ncclFloat64 : ncclFloat32,
                           op == Op::kMax ? ncclMax : ncclSum, comm_, stream),
             "ncclAllReduce");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int spins = 0;; ++spins) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) check_cuda(q, "cudaStreamQuery after ncclAllReduce");
    ncclResult_t async = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
    if (async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(comm_);
      aborted_ = true;
      throw CommError(what + ": NCCL all-reduce failed: " + ncclGetErrorString(async));
    }
    if (poll) {
      try {
        poll();
      } catch (...) {
        // The job is ending with this collective in flight: abort, or destroying the communicator
        // would wait for peers that may never arrive.
        ncclCommAbort(comm_);
        aborted_ = true;
        throw;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ncclCommAbort(comm_);
      aborted_ = true;
      throw CommError(what + ": NCCL all-reduce over " + std::to_string(size_) + " ranks did not complete within " +
                     std::to_string(static_cast<int>(timeout.count())) + " s (a peer is stopped or gone)");
    }
    if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

std::string NcclComm::version() {
  int v = 0;
  ncclGetVersion(&v);
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

}  // namespace qforge
#endif
