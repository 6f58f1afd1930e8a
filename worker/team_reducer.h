// TeamReducer over MPI: the data-parallel all-reduce of a team (gradients of the transform/clipping
// parameters every step, activation statistics, losses). Tensors are packed per dtype into one
// contiguous buffer in the order given, reduced with one non-blocking all-reduce, and unpacked: one
// message per step, a fixed summation order for a given team size, so runs are deterministic.
// Waits poll `poll` (the worker checks for a coordinator SHUTDOWN there) and give up after `timeout`.
// On GPUs the same seam takes an NCCL implementation (issue: GPU path).
#pragma once

#include <chrono>

#include "common/mpi_comm.h"
#include "worker/calibrator.h"

namespace qforge::worker {

class MpiTeamReducer : public TeamReducer {
 public:
  MpiTeamReducer(const MpiComm& team, std::chrono::duration<double> timeout, MpiComm::Poll poll, std::string what)
      : team_(team), timeout_(timeout), poll_(std::move(poll)), what_(std::move(what)) {}
  void sum(std::vector<at::Tensor>& tensors) override { reduce(tensors, false); }
  void max(std::vector<at::Tensor>& tensors) override { reduce(tensors, true); }
  std::uint64_t bytes_reduced() const { return bytes_; }

 private:
  void reduce(std::vector<at::Tensor>& tensors, bool max);
  const MpiComm& team_;
  std::chrono::duration<double> timeout_;
  MpiComm::Poll poll_;
  std::string what_;
  std::uint64_t bytes_ = 0;
};

}  // namespace qforge::worker
