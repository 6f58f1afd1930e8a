#include "worker/gptq.h"

#include <ATen/ATen.h>

#include "common/error.h"

namespace qforge::worker {

namespace {

// Per column c: its group's scale and zero, as [out] columns of the [out, G] parameters.
struct ColumnGrid {
  at::Tensor scale, zero;  // [out, G] in the working dtype
  std::int64_t group_size;
  double qmax;
  std::pair<at::Tensor, at::Tensor> codes_and_values(const at::Tensor& w, std::int64_t column) const {
    const std::int64_t g = group_size > 0 ? column / group_size : 0;
    const at::Tensor s = scale.select(1, g), z = zero.select(1, g);
    const at::Tensor codes = at::clamp(at::round(w / s) + z, 0.0, qmax);
    return {codes, s * (codes - z)};
  }
};

// Upper Cholesky factor of (H + damping)⁻¹, with H's dead inputs made harmless (w's columns zeroed).
at::Tensor inverse_factor(at::Tensor h, at::Tensor& w, double damp, const std::string& label) {
  const at::Tensor dead = h.diagonal() == 0;
  h.diagonal().masked_fill_(dead, 1.0);
  w.index_put_({at::indexing::Slice(), dead}, 0.0);
  h.diagonal().add_(damp * h.diagonal().mean().item<double>());
  auto [l, info] = at::linalg_cholesky_ex(h);
  if (info.item<int>() != 0) {
    throw InternalError(label + ": the Hessian is not positive definite after damping; raise --gptq-damp");
  }
  return at::linalg_cholesky(at::cholesky_inverse(l), /*upper=*/true);
}

}  // namespace

void add_to_hessian(at::Tensor& h, const at::Tensor& x) {
  const at::Tensor rows = x.reshape({-1, x.size(-1)}).to(at::kFloat);
  h.add_(at::matmul(rows.t(), rows).to(h.scalar_type()), 2.0);
}

GptqResult gptq_quantize(const at::Tensor& w_in, const at::Tensor& h_in, const WeightQuantSpec& spec,
                         const WeightQParams& qp, const GptqOptions& o, const std::string& label) {
  at::NoGradGuard no_grad;
  const std::int64_t rows = w_in.size(0), cols = w_in.size(1);
  QF_CHECK(h_in.size(0) == cols && h_in.size(1) == cols, label + ": Hessian does not match the weight's columns");
  const auto dt = w_in.scalar_type();
  at::Tensor w = w_in.clone();
  at::Tensor h = h_in.to(dt).clone();
  at::Tensor perm;
  if (o.act_order) {
    perm = at::argsort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true);
    w = w.index_select(1, perm);
    h = h.index_select(0, perm).index_select(1, perm);
  }
  const at::Tensor u = inverse_factor(h, w, o.damp, label);
  const ColumnGrid grid{qp.scale.to(dt), qp.zero.to(dt), spec.group_size, static_cast<double>((1 << spec.bits) - 1)};
  at::Tensor q = at::zeros_like(w);
  at::Tensor codes = at::zeros({rows, cols}, w.options());
  const auto column_of = [&](std::int64_t i) { return o.act_order ? perm[i].item<std::int64_t>() : i; };
  for (std::int64_t i1 = 0; i1 < cols; i1 += o.block_size) {
    const std::int64_t i2 = std::min(cols, i1 + o.block_size), n = i2 - i1;
    at::Tensor w1 = w.slice(1, i1, i2).clone();
    at::Tensor err = at::zeros({rows, n}, w.options());
    const at::Tensor u1 = u.slice(0, i1, i2).slice(1, i1, i2);
    for (std::int64_t i = 0; i < n; ++i) {
      const at::Tensor col = w1.select(1, i);
      auto [c, v] = grid.codes_and_values(col, column_of(i1 + i));
      codes.select(1, i1 + i).copy_(c);
      q.select(1, i1 + i).copy_(v);
      const at::Tensor e = (col - v) / u1[i][i];
      w1.slice(1, i).sub_(at::outer(e, u1[i].slice(0, i)));
      err.select(1, i).copy_(e);
    }
    if (i2 < cols) w.slice(1, i2).sub_(at::matmul(err, u.slice(0, i1, i2).slice(1, i2)));
  }
  if (o.act_order) {
    const at::Tensor inverse = at::argsort(perm);
    q = q.index_select(1, inverse);
    codes = codes.index_select(1, inverse);
  }
  return {codes.to(at::kByte).contiguous(), q.contiguous()};
}

}  // namespace qforge::worker
