// Team reducers: the data-parallel all-reduce of a team (gradients of the transform/clipping
// parameters every step, activation statistics, losses). Tensors are packed per dtype into one
// contiguous buffer in the order given, reduced with one collective, and unpacked: one message per
// step per dtype.
//
// Three transports share that packing: MPI (the engine's ranks on CPUs), NCCL (the engine's ranks on
// GPUs: the buffer stays in device memory) and threads of one process standing in for ranks
// (InProcessTeam: tests, and any in-process team). TeamChannel picks the engine's transport.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common/mpi_comm.h"
#include "common/nccl_comm.h"
#include "worker/calibrator.h"

namespace qforge::worker {

// Packs fp32 and fp64 tensors into one flat buffer per dtype, on the transport's device, and hands
// each buffer to all_reduce(); the tensors may live on any device.
class PackedTeamReducer : public TeamReducer {
 public:
  void sum(std::vector<at::Tensor>& tensors) override { reduce(tensors, Op::kSum); }
  void max(std::vector<at::Tensor>& tensors) override { reduce(tensors, Op::kMax); }
  // Bytes handed to the collective so far (what a step costs on the wire, per rank).
  std::uint64_t bytes_reduced() const { return bytes_; }

 protected:
  enum class Op { kSum, kMax };
  virtual int team_size() const = 0;
  // Where the packed buffers live (the transport reads them there).
  virtual at::Device buffer_device() const { return at::kCPU; }
  // Reduces the contiguous fp32 or fp64 `flat` in place over the team.
  virtual void all_reduce(at::Tensor& flat, Op op) = 0;

 private:
  void reduce(std::vector<at::Tensor>& tensors, Op op);
  std::uint64_t bytes_ = 0;
};

// Over an MPI communicator. Waits poll `poll` (the worker checks for a coordinator SHUTDOWN there) and
// give up after `timeout`. The summation order is MPI's (fixed for a given team size and library), so
// runs are deterministic.
class MpiTeamReducer : public PackedTeamReducer {
 public:
  MpiTeamReducer(const MpiComm& team, std::chrono::duration<double> timeout, MpiComm::Poll poll, std::string what)
      : team_(team), timeout_(timeout), poll_(std::move(poll)), what_(std::move(what)) {}

 protected:
  int team_size() const override { return team_.size(); }
  void all_reduce(at::Tensor& flat, Op op) override;

 private:
  const MpiComm& team_;
  std::chrono::duration<double> timeout_;
  MpiComm::Poll poll_;
  std::string what_;
};

#if defined(QFORGE_WITH_NCCL)
// Over the team's NCCL communicator, on the GPU of `comm` (the current CUDA stream; the wait polls like
// the MPI one). The summation order is NCCL's (fixed for a team size, library and topology).
class NcclTeamReducer : public PackedTeamReducer {
 public:
  NcclTeamReducer(NcclComm& comm, std::chrono::duration<double> timeout, MpiComm::Poll poll, std::string what)
      : comm_(comm), timeout_(timeout), poll_(std::move(poll)), what_(std::move(what)) {}

 protected:
  int team_size() const override { return comm_.size(); }
  at::Device buffer_device() const override;
  void all_reduce(at::Tensor& flat, Op op) override;

 private:
  NcclComm& comm_;
  std::chrono::duration<double> timeout_;
  MpiComm::Poll poll_;
  std::string what_;
};
#endif

// The collectives of one engine team as this rank computes: NCCL when the rank's device is a GPU and
// qforge was built with NCCL, MPI otherwise. The NCCL communicator is created by the first reducer()
// (collective: every team member asks for its first unit's reducer together) and kept for the job.
class TeamChannel {
 public:
  TeamChannel(const MpiComm& team, const at::Device& device);
  ~TeamChannel();
  std::unique_ptr<PackedTeamReducer> reducer(std::chrono::duration<double> timeout, MpiComm::Poll poll, std::string what);

 private:
  const MpiComm& team_;
  const at::Device device_;
  bool nccl_wanted_ = false;
#if defined(QFORGE_WITH_NCCL)
  std::unique_ptr<NcclComm> nccl_;
#endif
};

// A team whose ranks are threads of this process. member(r) is rank r's reducer; every member must
// call the same collectives in the same order from its own thread. The last member to arrive combines
// the buffers in rank order (0 + 1 + ... + K-1) and every member receives the result.
class InProcessTeam {
 public:
  explicit InProcessTeam(int size);
  int size() const { return size_; }
  std::unique_ptr<PackedTeamReducer> member(int rank);

 private:
  class Member;
  void all_reduce(int rank, at::Tensor& flat, bool max);
  const int size_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<at::Tensor> slots_;
  at::Tensor result_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
};

}  // namespace qforge::worker
