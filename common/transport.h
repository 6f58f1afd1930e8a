// What the engine needs from a communicator, and nothing more: tagged byte messages (the protocol of
// common/protocol.h), the all-reduces of a team, and a start-up broadcast. Two implementations:
// MpiComm (common/mpi_comm.h: the job's ranks are processes) and InProcessNetwork below (the ranks are
// threads of one process: the coordinator, workers and team reductions run in one test, the way
// PyTorch tests c10d process groups with a store and threads).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace qforge {

// A transfer failed or a peer did not answer in time.
class CommError : public InternalError {
 public:
  using InternalError::InternalError;
};

// The job was told to stop (coordinator SHUTDOWN) while this rank was waiting on a peer.
class JobAborted : public InternalError {
 public:
  using InternalError::InternalError;
  bool abort = false;  // rank 0 will abort the job: do not finalize
};

class Transport {
 public:
  static constexpr int kAnySource = -1;
  // Called between tests of a pending collective (may throw, e.g. JobAborted).
  using Poll = std::function<void()>;
  using Timeout = std::chrono::duration<double>;

  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Point-to-point byte messages; payloads are opaque here.
  virtual void send(int dest, int tag, const std::string& bytes) const = 0;
  // Non-blocking: the source rank and payload of one waiting message with `tag` from `source`
  // (kAnySource allowed), in the order that source sent them.
  virtual std::optional<std::pair<int, std::string>> try_recv(int source, int tag) const = 0;
  // In-place all-reduces over every rank; wait polling `poll`, CommError naming `what` after `timeout`.
  virtual void all_reduce_sum(float* data, std::int64_t n, Timeout timeout, const std::string& what,
                              const Poll& poll = {}) const = 0;
  virtual void all_reduce_sum(double* data, std::int64_t n, Timeout timeout, const std::string& what,
                              const Poll& poll = {}) const = 0;
  virtual void all_reduce_max(float* data, std::int64_t n, Timeout timeout, const std::string& what,
                              const Poll& poll = {}) const = 0;
  // `root`'s bytes on every rank (blocking: start-up only, before any peer can be lost).
  virtual std::string broadcast(const std::string& bytes, int root) const = 0;
};

// `size` ranks that are threads of this process; endpoint(r) is rank r's Transport. Messages are queued
// per destination; a collective is complete when every rank has called it, and the last to arrive
// combines the contributions in rank order (0, 1, ..., size-1), so results are deterministic. A rank
// can be cut off (disconnect): its messages are dropped and it receives nothing, as if its process had
// died, which is how tests lose a worker.
class InProcessNetwork {
 public:
  explicit InProcessNetwork(int size);
  ~InProcessNetwork();
  InProcessNetwork(const InProcessNetwork&) = delete;
  InProcessNetwork& operator=(const InProcessNetwork&) = delete;
  int size() const { return size_; }
  const Transport& endpoint(int rank) const;
  void disconnect(int rank);

 private:
  class Endpoint;
  struct Envelope {
    int source, tag;
    std::string bytes;
  };
  void post(int source, int dest, int tag, const std::string& bytes);
  std::optional<std::pair<int, std::string>> take(int dest, int source, int tag);
  // One collective: contributions as bytes, combined by `combine(acc, contribution)` in rank order.
  using Combine = std::function<void(std::string& acc, const std::string& contribution)>;
  std::string collective(int rank, std::string contribution, const Combine& combine, Transport::Timeout timeout,
                         const std::string& what, const Transport::Poll& poll);

  const int size_;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::deque<Envelope>> queues_;  // by destination
  std::vector<bool> disconnected_;
  // The collective in progress: contributions by rank, then the combined result for everyone.
  std::vector<std::optional<std::string>> slots_;
  std::string result_;
  int arrived_ = 0, collected_ = 0;
  std::uint64_t generation_ = 0;
};

}  // namespace qforge
