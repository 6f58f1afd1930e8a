// The differentiable fused ops: autograd Functions whose forward and backward call the CUDA kernels for
// CUDA tensors and the CPU twins for CPU tensors. Dtype and shape conversions stay outside the Functions,
// as ordinary differentiable ops, so the cores only ever see fp32 contiguous tensors.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

#include "common/error.h"
#include "worker/kernels/fake_quant.h"

namespace qforge::worker {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class FakeQuantWeightFn : public torch::autograd::Function<FakeQuantWeightFn> {
 public:
  // The clip logits are optional tensors: autograd Functions reject undefined Tensor inputs.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, const std::optional<at::Tensor>& upper_in,
                            const std::optional<at::Tensor>& lower_in, std::int64_t bits, std::int64_t group_size,
                            bool sym, bool deployable, bool backward) {
    const at::Tensor upper = upper_in.value_or(at::Tensor()), lower = lower_in.value_or(at::Tensor());
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["sym"] = sym;
    ctx->saved_data["deployable"] = deployable;
    const WeightQuantSpec spec{static_cast<int>(bits), group_size, sym, deployable};
    if (w.is_cuda()) {
      ctx->save_for_backward({w, upper, lower});
      return kernels::fake_quant_weight_forward_cuda(w, spec, {upper, lower});
    }
    // The CPU backward reuses the groups' extrema (two fewer passes over W, which dominate it).
    kernels::WeightGroupStats stats;
    at::Tensor out = kernels::fake_quant_weight_forward_cpu(w, spec, {upper, lower}, backward ? &stats : nullptr);
    ctx->save_for_backward({w, upper, lower, stats.extrema, stats.positions});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const WeightQuantSpec spec{static_cast<int>(ctx->saved_data["bits"].toInt()), ctx->saved_data["group_size"].toInt(),
                               ctx->saved_data["sym"].toBool(), ctx->saved_data["deployable"].toBool()};
    const ClipParams clip{saved[1], saved[2]};
    const at::Tensor grad = grad_outputs[0].to(at::kFloat).contiguous();
    const kernels::WeightGroupStats stats = saved[0].is_cuda() ? kernels::WeightGroupStats{} : kernels::WeightGroupStats{saved[3], saved[4]};
    QF_CHECK(saved[0].is_cuda() || stats.extrema.defined(), "fake-quant backward without the forward's group statistics");
    const kernels::WeightFakeQuantGrads g = saved[0].is_cuda()
                                                ? kernels::fake_quant_weight_backward_cuda(grad, saved[0], spec, clip)
                                                : kernels::fake_quant_weight_backward_cpu(grad, saved[0], spec, clip, &stats);
    return {g.w, g.upper, g.lower, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class FakeQuantActFn : public torch::autograd::Function<FakeQuantActFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, std::int64_t bits, bool sym) {
    ctx->save_for_backward({x});
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["sym"] = sym;
    const ActQuantSpec spec{static_cast<int>(bits), sym};
    return x.is_cuda() ? kernels::fake_quant_act_forward_cuda(x, spec) : kernels::fake_quant_act_forward_cpu(x, spec);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const ActQuantSpec spec{static_cast<int>(ctx->saved_data["bits"].toInt()), ctx->saved_data["sym"].toBool()};
    const at::Tensor grad = grad_outputs[0].to(at::kFloat).contiguous();
    at::Tensor gx = x.is_cuda() ? kernels::fake_quant_act_backward_cuda(grad, x, spec)
                                : kernels::fake_quant_act_backward_cpu(grad, x, spec);
    return {gx, at::Tensor(), at::Tensor()};
  }
};

at::Tensor fp32_contiguous(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

}  // namespace

at::Tensor fused_fake_quant_weight(const at::Tensor& w, const WeightQuantSpec& spec, const ClipParams& clip) {
  if (!spec.enabled()) return w;
  QF_CHECK(w.dim() == 2, "weights must be [out, in]");
  QF_CHECK(!clip.defined() || clip.lower.defined(), "clip logits: upper and lower go together");
  std::optional<at::Tensor> upper, lower;
  if (clip.defined()) upper = fp32_contiguous(clip.upper), lower = fp32_contiguous(clip.lower);
  // Whether autograd will call the backward (which then needs the forward's group statistics).
  const bool backward = at::GradMode::is_enabled() && (w.requires_grad() || (clip.defined() && (clip.upper.requires_grad() ||
                                                                                                 clip.lower.requires_grad())));
  const at::Tensor out = FakeQuantWeightFn::apply(fp32_contiguous(w), upper, lower, static_cast<std::int64_t>(spec.bits),
                                                  spec.group_size, spec.sym, spec.deployable, backward);
  return out.to(w.scalar_type());
}

at::Tensor fused_fake_quant_act(const at::Tensor& x, const ActQuantSpec& spec) {
  if (!spec.enabled()) return x;
  QF_CHECK(x.dim() >= 1 && x.size(-1) > 0, "activations need a non-empty last dimension");
  const at::Tensor rows = fp32_contiguous(x).view({-1, x.size(-1)});
  const at::Tensor out = FakeQuantActFn::apply(rows, static_cast<std::int64_t>(spec.bits), spec.sym);
  return out.view(x.sizes()).to(x.scalar_type());
}

}  // namespace qforge::worker
