// Tensor wrappers of the CUDA kernels (fake_quant.cu): check the inputs, allocate outputs on the input's
// device and launch on LibTorch's current stream for it. Without QFORGE_WITH_CUDA the same functions
// throw, so a CUDA tensor reaching the fused ops in a CPU-only build fails with a message, not a crash.
#include <ATen/ATen.h>

#include <string>

#include "common/error.h"
#include "worker/kernels/fake_quant.h"

#ifdef QFORGE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "worker/kernels/fake_quant_cuda.h"
#endif

namespace qforge::worker::kernels {

#ifdef QFORGE_WITH_CUDA

namespace {

void check_launch(cudaError_t err, const char* kernel) {
  if (err != cudaSuccess) throw InternalError(std::string(kernel) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

void check_cuda_fp32(const at::Tensor& t, const char* what) {
  QF_CHECK(t.is_cuda() && t.scalar_type() == at::kFloat && t.is_contiguous(),
           std::string(what) + " must be an fp32 contiguous CUDA tensor");
}

void check_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip) {
  check_cuda_fp32(w, "weights");
  QF_CHECK(w.dim() == 2 && w.size(0) > 0 && w.size(1) > 0, "weights must be non-empty [out, in]");
  QF_CHECK(spec.bits >= 2 && spec.bits <= 8, "weight bits must be 2..8");
  if (!clip.defined()) return;
  const std::int64_t groups = num_groups(w.size(1), spec.group_size);
  for (const at::Tensor* t : {&clip.upper, &clip.lower}) {
    QF_CHECK(t->defined(), "clip logits: upper and lower go together");
    check_cuda_fp32(*t, "clip logits");
    QF_CHECK(t->device() == w.device(), "clip logits must be on the weights' device");
    QF_CHECK(t->dim() == 2 && t->size(0) == w.size(0) && t->size(1) == groups, "clip logits must be [out, groups]");
  }
}

void check_act(const at::Tensor& x, const ActQuantSpec& spec) {
  check_cuda_fp32(x, "activations");
  QF_CHECK(x.dim() == 2 && x.size(1) > 0, "activations must be [rows, d] with d > 0");
  QF_CHECK(spec.bits >= 2 && spec.bits < 16, "activation bits must be 2..15");
}

void check_grad(const at::Tensor& grad, const at::Tensor& like) {
  check_cuda_fp32(grad, "the output gradient");
  QF_CHECK(grad.sizes() == like.sizes() && grad.device() == like.device(),
           "the output gradient must be shaped like the input, on its device");
}

cuda::WeightKernelSpec kernel_spec(const WeightQuantSpec& s) { return {s.bits, s.group_size, s.sym, s.deployable}; }
cuda::ActKernelSpec kernel_spec(const ActQuantSpec& s) { return {s.bits, s.sym}; }

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* mutable_data_or_null(at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

}  // namespace

bool built_with_cuda() { return true; }

at::Tensor fake_quant_weight_forward_cuda(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip) {
  check_weight(w, spec, clip);
  const c10::cuda::CUDAGuard guard(w.device());
  at::Tensor out = at::empty_like(w);
  check_launch(cuda::launch_fake_quant_weight_forward(w.data_ptr<float>(), data_or_null(clip.upper),
                                                      data_or_null(clip.lower), out.data_ptr<float>(), w.size(0),
                                                      w.size(1), kernel_spec(spec), at::cuda::getCurrentCUDAStream()),
               "fake_quant_weight_forward");
  return out;
}

WeightFakeQuantGrads fake_quant_weight_backward_cuda(const at::Tensor& grad_out, const at::Tensor& w,
                                                     const WeightQuantSpec& spec, const ClipParams& clip) {
  check_weight(w, spec, clip);
  check_grad(grad_out, w);
  const c10::cuda::CUDAGuard guard(w.device());
  WeightFakeQuantGrads g{at::empty_like(w), {}, {}};
  if (clip.defined()) g.upper = at::empty_like(clip.upper), g.lower = at::empty_like(clip.lower);
  check_launch(cuda::launch_fake_quant_weight_backward(
                   grad_out.data_ptr<float>(), w.data_ptr<float>(), data_or_null(clip.upper), data_or_null(clip.lower),
                   g.w.data_ptr<float>(), mutable_data_or_null(g.upper), mutable_data_or_null(g.lower), w.size(0),
                   w.size(1), kernel_spec(spec), at::cuda::getCurrentCUDAStream()),
               "fake_quant_weight_backward");
  return g;
}

at::Tensor fake_quant_act_forward_cuda(const at::Tensor& x, const ActQuantSpec& spec) {
  check_act(x, spec);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  check_launch(cuda::launch_fake_quant_act_forward(x.data_ptr<float>(), out.data_ptr<float>(), x.size(0), x.size(1),
                                                   kernel_spec(spec), at::cuda::getCurrentCUDAStream()),
               "fake_quant_act_forward");
  return out;
}

at::Tensor fake_quant_act_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const ActQuantSpec& spec) {
  check_act(x, spec);
  check_grad(grad_out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty_like(x);
  check_launch(cuda::launch_fake_quant_act_backward(grad_out.data_ptr<float>(), x.data_ptr<float>(),
                                                    grad_x.data_ptr<float>(), x.size(0), x.size(1), kernel_spec(spec),
                                                    at::cuda::getCurrentCUDAStream()),
               "fake_quant_act_backward");
  return grad_x;
}

#else  // no CUDA in this build

namespace {
[[noreturn]] void no_cuda(const char* op) {
  throw InternalError(std::string(op) +
                      " on a CUDA tensor: this qforge was built without CUDA (QFORGE_WITH_CUDA off: a LibTorch "
                      "without CUDA, or -DQFORGE_WITH_CUDA=OFF); quantize on the CPU or rebuild with CUDA");
}
}  // namespace

bool built_with_cuda() { return false; }

at::Tensor fake_quant_weight_forward_cuda(const at::Tensor&, const WeightQuantSpec&, const ClipParams&) {
  no_cuda("fused fake_quant_weight");
}
WeightFakeQuantGrads fake_quant_weight_backward_cuda(const at::Tensor&, const at::Tensor&, const WeightQuantSpec&,
                                                     const ClipParams&) {
  no_cuda("fused fake_quant_weight backward");
}
at::Tensor fake_quant_act_forward_cuda(const at::Tensor&, const ActQuantSpec&) { no_cuda("fused fake_quant_act"); }
at::Tensor fake_quant_act_backward_cuda(const at::Tensor&, const at::Tensor&, const ActQuantSpec&) {
  no_cuda("fused fake_quant_act backward");
}

#endif

}  // namespace qforge::worker::kernels
