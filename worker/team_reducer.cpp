#include "worker/team_reducer.h"

#include <ATen/ATen.h>

namespace qforge::worker {

void MpiTeamReducer::reduce(std::vector<at::Tensor>& tensors, bool max) {
  if (team_.size() == 1) return;
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
    if (dtype == at::kFloat) {
      if (max) {
        team_.all_reduce_max(buf.data_ptr<float>(), buf.numel(), timeout_, what_, poll_);
      } else {
        team_.all_reduce_sum(buf.data_ptr<float>(), buf.numel(), timeout_, what_, poll_);
      }
    } else {
      QF_CHECK(!max, "max all-reduce is only used for float statistics");
      team_.all_reduce_sum(buf.data_ptr<double>(), buf.numel(), timeout_, what_, poll_);
    }
    std::int64_t off = 0;
    for (auto i : idx) {
      const std::int64_t n = tensors[i].numel();
      tensors[i].copy_(buf.slice(0, off, off + n).view(tensors[i].sizes()));
      off += n;
    }
  }
  for (const auto& t : tensors) {
    QF_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "team reduction of an unsupported dtype");
  }
}

}  // namespace qforge::worker
