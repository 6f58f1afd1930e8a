#include "common/transport.h"

#include <algorithm>
#include <cstring>

namespace qforge {

class InProcessNetwork::Endpoint : public Transport {
 public:
  Endpoint(InProcessNetwork& net, int rank) : net_(net), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return net_.size_; }
  void send(int dest, int tag, const std::string& bytes) const override { net_.post(rank_, dest, tag, bytes); }
  std::optional<std::pair<int, std::string>> try_recv(int source, int tag) const override {
    return net_.take(rank_, source, tag);
  }
  void all_reduce_sum(float* d, std::int64_t n, Timeout t, const std::string& w, const Poll& p) const override {
    reduce(d, n, t, w, p, [](float a, float b) { return a + b; });
  }
  void all_reduce_sum(double* d, std::int64_t n, Timeout t, const std::string& w, const Poll& p) const override {
    reduce(d, n, t, w, p, [](double a, double b) { return a + b; });
  }
  void all_reduce_max(float* d, std::int64_t n, Timeout t, const std::string& w, const Poll& p) const override {
    // As MPI_MAX and at::maximum: a NaN anywhere wins.
    reduce(d, n, t, w, p, [](float a, float b) { return (a != a || b != b) ? a + b : std::max(a, b); });
  }
  std::string broadcast(const std::string& bytes, int root) const override {
    // Every rank but the root contributes nothing; concatenation in rank order is then the root's bytes.
    return net_.collective(rank_, rank_ == root ? bytes : std::string(), [](std::string& acc, const std::string& c) { acc += c; },
                           std::chrono::hours(24), "broadcast", {});
  }

 private:
  template <typename T, typename Op>
  void reduce(T* data, std::int64_t n, Timeout timeout, const std::string& what, const Poll& poll, Op op) const {
    if (net_.size_ == 1) return;
    std::string mine(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n) * sizeof(T));
    const std::string out = net_.collective(
        rank_, std::move(mine),
        [op](std::string& acc, const std::string& c) {
          QF_CHECK(acc.size() == c.size(), "ranks all-reduced buffers of different sizes");
          T* a = reinterpret_cast<T*>(acc.data());
          const T* b = reinterpret_cast<const T*>(c.data());
          for (std::size_t i = 0; i < acc.size() / sizeof(T); ++i) a[i] = op(a[i], b[i]);
        },
        timeout, what, poll);
    std::memcpy(data, out.data(), out.size());
  }

  InProcessNetwork& net_;
  const int rank_;
};

InProcessNetwork::InProcessNetwork(int size)
    : size_(size), queues_(static_cast<std::size_t>(size)), disconnected_(static_cast<std::size_t>(size), false),
      slots_(static_cast<std::size_t>(size)) {
  QF_CHECK(size >= 1, "a network needs at least one rank");
  for (int r = 0; r < size; ++r) endpoints_.push_back(std::make_unique<Endpoint>(*this, r));
}

InProcessNetwork::~InProcessNetwork() = default;

const Transport& InProcessNetwork::endpoint(int rank) const {
  QF_CHECK(rank >= 0 && rank < size_, "rank " + std::to_string(rank) + " outside the network");
  return *endpoints_[static_cast<std::size_t>(rank)];
}

void InProcessNetwork::disconnect(int rank) {
  std::lock_guard<std::mutex> lock(mutex_);
  disconnected_.at(static_cast<std::size_t>(rank)) = true;
  queues_[static_cast<std::size_t>(rank)].clear();
}

void InProcessNetwork::post(int source, int dest, int tag, const std::string& bytes) {
  if (dest < 0 || dest >= size_) throw CommError("send to rank " + std::to_string(dest) + " outside the network");
  std::lock_guard<std::mutex> lock(mutex_);
  if (disconnected_[static_cast<std::size_t>(source)] || disconnected_[static_cast<std::size_t>(dest)]) return;
  queues_[static_cast<std::size_t>(dest)].push_back({source, tag, bytes});
}

std::optional<std::pair<int, std::string>> InProcessNetwork::take(int dest, int source, int tag) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& q = queues_[static_cast<std::size_t>(dest)];
  for (auto it = q.begin(); it != q.end(); ++it) {
    if (it->tag != tag || (source != Transport::kAnySource && it->source != source)) continue;
    std::pair<int, std::string> out{it->source, std::move(it->bytes)};
    q.erase(it);
    return out;
  }
  return std::nullopt;
}

std::string InProcessNetwork::collective(int rank, std::string contribution, const Combine& combine,
                                         Transport::Timeout timeout, const std::string& what, const Transport::Poll& poll) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
  std::unique_lock<std::mutex> lock(mutex_);
  // A rank can only arrive for round n+1 after it took round n's result, so the last arrival of round
  // n+1 never overwrites a result someone still has to read.
  slots_[static_cast<std::size_t>(rank)] = std::move(contribution);
  const std::uint64_t round = generation_;
  if (++arrived_ == size_) {
    std::string acc = std::move(*slots_[0]);
    for (std::size_t r = 1; r < slots_.size(); ++r) combine(acc, *slots_[r]);
    result_ = std::move(acc);
    for (auto& s : slots_) s.reset();
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return result_;
  }
  while (generation_ == round) {
    cv_.wait_for(lock, std::chrono::milliseconds(1));
    if (generation_ != round) break;
    if (std::chrono::steady_clock::now() > deadline) {
      throw CommError(what + ": all-reduce over " + std::to_string(size_) + " ranks did not complete within " +
                      std::to_string(static_cast<int>(timeout.count())) + " s (a peer is stopped or gone)");
    }
    if (poll) {
      lock.unlock();
      poll();
      lock.lock();
    }
  }
  return result_;
}

}  // namespace qforge
