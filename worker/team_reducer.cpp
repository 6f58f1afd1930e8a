#include "worker/team_reducer.h"

#include <ATen/ATen.h>

#include "common/error.h"

namespace qforge::worker {

void PackedTeamReducer::reduce(std::vector<at::Tensor>& tensors, Op op) {
  for (const auto& t : tensors) {
    QF_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "team reduction of an unsupported dtype");
  }
  if (team_size() == 1) return;
  at::NoGradGuard no_grad;
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    std::vector<std::size_t> idx;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (tensors[i].scalar_type() == dtype) idx.push_back(i);
    }
    if (idx.empty()) continue;
    std::vector<at::Tensor> flat;
    for (auto i : idx) flat.push_back(tensors[i].reshape({-1}));
    at::Tensor buf = at::cat(flat).contiguous();
    bytes_ += static_cast<std::uint64_t>(buf.numel() * buf.element_size());
    all_reduce(buf, op);
    std::int64_t off = 0;
    for (auto i : idx) {
      const std::int64_t n = tensors[i].numel();
      tensors[i].copy_(buf.slice(0, off, off + n).view(tensors[i].sizes()));
      off += n;
    }
  }
}

void MpiTeamReducer::all_reduce(at::Tensor& flat, Op op) {
  if (flat.scalar_type() == at::kFloat) {
    if (op == Op::kMax) {
      team_.all_reduce_max(flat.data_ptr<float>(), flat.numel(), timeout_, what_, poll_);
    } else {
      team_.all_reduce_sum(flat.data_ptr<float>(), flat.numel(), timeout_, what_, poll_);
    }
  } else {
    QF_CHECK(op == Op::kSum, "max all-reduce is only used for float statistics");
    team_.all_reduce_sum(flat.data_ptr<double>(), flat.numel(), timeout_, what_, poll_);
  }
}

class InProcessTeam::Member : public PackedTeamReducer {
 public:
  Member(InProcessTeam& team, int rank) : team_(team), rank_(rank) {}

 protected:
  int team_size() const override { return team_.size(); }
  void all_reduce(at::Tensor& flat, Op op) override { team_.all_reduce(rank_, flat, op == Op::kMax); }

 private:
  InProcessTeam& team_;
  const int rank_;
};

InProcessTeam::InProcessTeam(int size) : size_(size), slots_(static_cast<std::size_t>(size)) {
  QF_CHECK(size >= 1, "a team needs at least one member");
}

std::unique_ptr<PackedTeamReducer> InProcessTeam::member(int rank) {
  QF_CHECK(rank >= 0 && rank < size_, "team rank out of range");
  return std::make_unique<Member>(*this, rank);
}

void InProcessTeam::all_reduce(int rank, at::Tensor& flat, bool max) {
  std::unique_lock<std::mutex> lock(mutex_);
  // A member can only arrive for round n+1 after it copied round n's result, so the last arrival of
  // round n+1 never overwrites a result someone still has to read.
  slots_[static_cast<std::size_t>(rank)] = flat;
  const std::uint64_t round = generation_;
  if (++arrived_ == size_) {
    at::Tensor acc = slots_[0].clone();
    for (std::size_t r = 1; r < slots_.size(); ++r) {
      QF_CHECK(slots_[r].scalar_type() == acc.scalar_type() && slots_[r].numel() == acc.numel(),
               "team members reduced buffers of different layouts");
      if (max) {
        acc = at::maximum(acc, slots_[r]);
      } else {
        acc.add_(slots_[r]);
      }
    }
    result_ = acc;
    for (auto& s : slots_) s = at::Tensor();
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  } else {
    cv_.wait(lock, [&] { return generation_ != round; });
  }
  flat.copy_(result_);
}

}  // namespace qforge::worker
