// MPI ownership and the checked calls qforge makes.
//
// MpiSession owns MPI_Init_thread/MPI_Finalize (MPI_THREAD_MULTIPLE: the coordinator thread, the
// heartbeat thread and the worker's compute thread all talk MPI). MpiComm, the job's Transport
// (common/transport.h), is a move-only owner of a duplicated communicator with MPI_ERRORS_RETURN
// set, so a failed call comes back to us as an error code (turned into an exception naming the call,
// file:line and rank) instead of killing the job before the journal records why. Anything that can wait on a peer that may be gone is non-blocking
// with a deadline: a lost rank shows up as a timeout with context, never as a silent hang.
#pragma once

// The C API only: Open MPI's deprecated C++ bindings would need their own library at link time.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/transport.h"

namespace qforge {

[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);

#define QF_MPI_CHECK(call)                                                    \
  do {                                                                        \
    const int qf_mpi_rc_ = (call);                                            \
    if (qf_mpi_rc_ != MPI_SUCCESS) ::qforge::throw_mpi_error(qf_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);  // MPI_Init_thread(MULTIPLE); InternalError if not provided
  ~MpiSession();                          // MPI_Finalize unless abort() ran
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  // Ranks on this node and this rank's index among them (for one device per rank).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // Ends every rank of the job with `exit_code` (used when a peer is lost: MPI_Finalize would wait on it).
  [[noreturn]] static void abort(int exit_code);

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

// The Transport of a job's ranks (CommError for a failed call, naming it).
class MpiComm : public Transport {
 public:
  MpiComm() = default;
  // Duplicates `parent` and sets MPI_ERRORS_RETURN on the copy.
  static MpiComm duplicate(MPI_Comm parent);
  ~MpiComm() override;
  MpiComm(MpiComm&& other) noexcept;
  MpiComm& operator=(MpiComm&& other) noexcept;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  MPI_Comm get() const { return comm_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // Collective: ranks with equal color form a communicator, ordered by key.
  MpiComm split(int color, int key) const;

  void send(int dest, int tag, const std::string& bytes) const override;
  // Mprobe/Mrecv, so threads receiving on one communicator never take each other's message.
  std::optional<std::pair<int, std::string>> try_recv(int source, int tag) const override;
  // Non-blocking underneath (MPI_Iallreduce, then MPI_Test calling `poll` between tests).
  void all_reduce_sum(float* data, std::int64_t n, Timeout timeout, const std::string& what,
                      const Poll& poll = {}) const override;
  void all_reduce_sum(double* data, std::int64_t n, Timeout timeout, const std::string& what,
                      const Poll& poll = {}) const override;
  void all_reduce_max(float* data, std::int64_t n, Timeout timeout, const std::string& what,
                      const Poll& poll = {}) const override;
  std::string broadcast(const std::string& bytes, int root) const override;

 private:
  void all_reduce(void* data, std::int64_t n, MPI_Datatype type, MPI_Op op, Timeout timeout,
                  const std::string& what, const Poll& poll) const;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 0;
};

}  // namespace qforge
