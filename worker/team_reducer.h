// Team reducers: the data-parallel all-reduce of a team (gradients of the transform/clipping
// parameters every step, activation statistics, losses). Tensors are packed per dtype into one
// contiguous buffer in the order given, reduced with one collective, and unpacked: one message per
// step per dtype.
//
// Two reducers share that packing: over a Transport (common/transport.h: MPI for the engine's ranks on
// CPUs, threads of one process in tests) and over NCCL (the engine's ranks on GPUs: the buffer stays in
// device memory). TeamChannel picks the engine's.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/transport.h"
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

// Over a Transport, on host buffers. Waits poll `poll` (the worker checks for a coordinator SHUTDOWN
// there) and give up after `timeout`. The summation order is the transport's (MPI's is fixed for a given
// team size and library; the in-process one adds in rank order), so runs are deterministic.
class TransportTeamReducer : public PackedTeamReducer {
 public:
  TransportTeamReducer(const Transport& team, std::chrono::duration<double> timeout, Transport::Poll poll, std::string what)
      : team_(team), timeout_(timeout), poll_(std::move(poll)), what_(std::move(what)) {}

 protected:
  int team_size() const override { return team_.size(); }
  void all_reduce(at::Tensor& flat, Op op) override;

 private:
  const Transport& team_;
  std::chrono::duration<double> timeout_;
  Transport::Poll poll_;
  std::string what_;
};

#if defined(QFORGE_WITH_NCCL)
// Over the team's NCCL communicator, on the GPU of `comm` (the current CUDA stream; the wait polls like
// the MPI one). The summation order is NCCL's (fixed for a team size, library and topology).
class NcclTeamReducer : public PackedTeamReducer {
 public:
  NcclTeamReducer(NcclComm& comm, std::chrono::duration<double> timeout, Transport::Poll poll, std::string what)
      : comm_(comm), timeout_(timeout), poll_(std::move(poll)), what_(std::move(what)) {}

 protected:
  int team_size() const override { return comm_.size(); }
  at::Device buffer_device() const override;
  void all_reduce(at::Tensor& flat, Op op) override;

 private:
  NcclComm& comm_;
  std::chrono::duration<double> timeout_;
  Transport::Poll poll_;
  std::string what_;
};
#endif

// The collectives of one engine team as this rank computes: NCCL when the rank's device is a GPU and
// qforge was built with NCCL, the team's Transport otherwise. The NCCL communicator is created by the first reducer()
// (collective: every team member asks for its first unit's reducer together) and kept for the job.
class TeamChannel {
 public:
  TeamChannel(const Transport& team, const at::Device& device);
  ~TeamChannel();
  std::unique_ptr<PackedTeamReducer> reducer(std::chrono::duration<double> timeout, Transport::Poll poll, std::string what);

 private:
  const Transport& team_;
  const at::Device device_;
  bool nccl_wanted_ = false;
#if defined(QFORGE_WITH_NCCL)
  std::unique_ptr<NcclComm> nccl_;
#endif
};

}  // namespace qforge::worker
