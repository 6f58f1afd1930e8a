#include "worker/team_reducer.h"

#include <ATen/ATen.h>

#include "common/error.h"
#include "common/log.h"

#if defined(QFORGE_WITH_NCCL)
#include <ATen/cuda/CUDAContext.h>
#endif

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
    for (auto i : idx) flat.push_back(tensors[i].reshape({-1}).to(buffer_device()));
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

void TransportTeamReducer::all_reduce(at::Tensor& flat, Op op) {
  QF_CHECK(flat.is_cpu(), "the transport team reducer reduces host buffers");
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

#if defined(QFORGE_WITH_NCCL)
at::Device NcclTeamReducer::buffer_device() const { return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(comm_.device())); }

void NcclTeamReducer::all_reduce(at::Tensor& flat, Op op) {
  QF_CHECK(flat.is_cuda() && flat.is_contiguous(), "the NCCL team reducer reduces contiguous device buffers");
  QF_CHECK(op == Op::kSum || flat.scalar_type() == at::kFloat, "max all-reduce is only used for float statistics");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(comm_.device())).stream();
  comm_.all_reduce(flat.data_ptr(), flat.numel(), flat.scalar_type() == at::kDouble,
                   op == Op::kMax ? NcclComm::Op::kMax : NcclComm::Op::kSum, stream, timeout_, what_, poll_);
}
#endif

TeamChannel::TeamChannel(const Transport& team, const at::Device& device) : team_(team), device_(device) {
#if defined(QFORGE_WITH_NCCL)
  nccl_wanted_ = device.is_cuda() && team.size() > 1;
#endif
}

TeamChannel::~TeamChannel() = default;

std::unique_ptr<PackedTeamReducer> TeamChannel::reducer(std::chrono::duration<double> timeout, Transport::Poll poll,
                                                        std::string what) {
#if defined(QFORGE_WITH_NCCL)
  if (nccl_wanted_) {
    if (!nccl_) {
      nccl_ = std::make_unique<NcclComm>(team_, device_.index());
      QF_LOG(Info) << "team of " << team_.size() << " reduces over NCCL " << NcclComm::version() << " on " << device_.str();
    }
    return std::make_unique<NcclTeamReducer>(*nccl_, timeout, std::move(poll), std::move(what));
  }
#endif
  return std::make_unique<TransportTeamReducer>(team_, timeout, std::move(poll), std::move(what));
}

}  // namespace qforge::worker
