#include "worker/calibrator.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cmath>

#include "common/error.h"
#include "common/fault.h"
#include "common/log.h"
#include "coordinator/progress.h"

namespace qforge::worker {

at::Tensor map_batches(const at::Tensor& x, std::int64_t batch, const std::function<at::Tensor(const at::Tensor&)>& fn) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  for (std::int64_t i = 0; i < x.size(0); i += batch) parts.push_back(fn(x.slice(0, i, std::min(x.size(0), i + batch))));
  return at::cat(parts, 0);
}

BlockResult finalize_block(const BlockWeights& fp, const BlockTransforms& transforms, const WeightQuantSpec& spec) {
  at::NoGradGuard no_grad;
  BlockResult r;
  r.weights = transforms.transformed(fp);
  for (auto* t : {&r.weights.input_norm, &r.weights.post_norm, &r.weights.q_bias, &r.weights.k_bias,
                  &r.weights.v_bias, &r.weights.o_bias, &r.weights.gate_bias, &r.weights.up_bias,
                  &r.weights.down_bias, &r.weights.input_norm_bias, &r.weights.post_norm_bias,
                  &r.weights.input_norm_inverse, &r.weights.post_norm_inverse}) {
    if (t->defined()) *t = t->detach().to(at::kFloat).contiguous();
  }
  for (std::size_t i = 0; i < linear_names().size(); ++i) {
    at::Tensor& W = linear_weight(r.weights, i);
    W = W.detach().to(at::kFloat);
    ClipParams clip = transforms.clip(i);
    if (clip.defined()) clip = {clip.upper.detach(), clip.lower.detach()};
    WeightQParams qp = weight_qparams(W, spec, clip);
    QuantizedLinear q;
    q.codes = weight_codes(W, spec, qp);
    q.scales = qp.scale.to(at::kHalf).contiguous();
    q.zeros = qp.zero.to(at::kInt).contiguous();
    // Rebuilt from the stored fp16 scales and integer zeros: exactly what an exporter reproduces.
    W = dequantize_weight(q.codes, spec, {q.scales.to(at::kFloat), q.zeros.to(at::kFloat)});
    r.linears.push_back(std::move(q));
  }
  return r;
}

double team_mse(const storage::LlamaConfig& c, const BlockWeights& w, const at::Tensor& x, const at::Tensor& y,
                const RopeTables& rope, const ActQuantSpec& act, std::int64_t batch, TeamReducer* reducer,
                std::int64_t global_elements) {
  at::NoGradGuard no_grad;
  double sum = 0;
  for (std::int64_t i = 0; i < x.size(0); i += batch) {
    const std::int64_t j = std::min(x.size(0), i + batch);
    at::Tensor out = block_forward(c, w, x.slice(0, i, j), rope, act);
    sum += (out - y.slice(0, i, j)).pow(2).sum().item<double>();
  }
  if (reducer) {
    std::vector<at::Tensor> v{at::full({1}, sum, at::kDouble)};
    reducer->sum(v);
    sum = v[0].item<double>();
  }
  return sum / static_cast<double>(global_elements);
}

BlockTrainer::BlockTrainer(const storage::LlamaConfig& config, const BlockWeights& fp, const ActStats& stats,
                           const CalibOptions& options, const RopeTables& rope, TeamReducer* reducer)
    : config_(config), fp_(fp), options_(options), rope_(rope), reducer_(reducer), transforms_(config, fp, stats, options.transform, options.weights) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto group = [&](std::vector<at::Tensor> params, double lr) {
    if (params.empty()) return;
    auto opt = std::make_unique<torch::optim::AdamWOptions>(lr);
    opt->weight_decay(options_.weight_decay);  // LibTorch's AdamW defaults to 1e-2; the reference uses 0
    groups.emplace_back(std::move(params), std::move(opt));
  };
  group(transforms_.let_parameters(), options_.let_lr);
  group(transforms_.lwc_parameters(), options_.lwc_lr);
  if (!groups.empty()) {
    optimizer_ = std::make_unique<torch::optim::AdamW>(groups,
                                                       torch::optim::AdamWOptions(options_.let_lr).weight_decay(options_.weight_decay));
  }
}

BlockTrainer::~BlockTrainer() = default;

bool BlockTrainer::trainable() const { return optimizer_ != nullptr; }

void BlockTrainer::begin_epoch(int epoch) {
  epoch_ = epoch;
  steps_in_epoch_ = 0;
  transforms_.set_epoch(epoch, std::max(1, options_.epochs));
}

double BlockTrainer::step(const at::Tensor& x, const at::Tensor& y, const at::Tensor& y2, const std::string& label,
                          std::int64_t global_rows) {
  QF_CHECK(optimizer_, "nothing to train");
  fault_point("train_step");
  transforms_.truncate_small_scales();
  at::Tensor out = block_forward(config_, transforms_.fake_quantized(fp_), x, rope_, options_.acts);
  // Sum / global element count rather than mse_loss: partial losses of a team then add up to the
  // batch MSE, and so do their gradients.
  const double denom = static_cast<double>(global_rows < 0 ? x.size(0) : global_rows) * static_cast<double>(x.numel() / x.size(0));
  at::Tensor loss = (out - y).pow(2).sum() / denom;
  if (options_.aug_loss) loss = loss + (out - y2).pow(2).sum() / denom;
  optimizer_->zero_grad();
  loss.backward();
  double lv = loss.item<double>();
  if (reducer_) {
    // Gradients of every parameter in optimiser order (zeros where a parameter got none, so the
    // layout is equal on every rank), plus the loss for logging and the finiteness decision.
    std::vector<at::Tensor> parts;
    for (auto& group : optimizer_->param_groups()) {
      for (auto& p : group.params()) {
        if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
        parts.push_back(p.grad());
      }
    }
    parts.push_back(at::full({1}, lv, at::kDouble));
    reducer_->sum(parts);
    lv = parts.back().item<double>();
  }
  if (!std::isfinite(lv)) {
    // The reference drops into pdb here; a batch job must stop with a reason instead.
    throw InternalError(label + ": non-finite loss at epoch " + std::to_string(epoch_) + " step " +
                        std::to_string(steps_in_epoch_) + " (try a smaller --sf or learning rate)");
  }
  optimizer_->step();
  projections_ += transforms_.enforce_diagonal_dominance();
  ++steps_in_epoch_;
  return lv;
}

BlockResult calibrate_block(const storage::LlamaConfig& c, const BlockWeights& fp, const at::Tensor& x_q,
                            const at::Tensor& y_fp, const at::Tensor& y_fp2, const ActStats& stats,
                            const CalibOptions& o, const RopeTables& rope, const std::string& label,
                            TeamReducer* reducer, const DataSplit* split_in) {
  BlockTrainer trainer(c, fp, stats, o, rope, reducer);
  BlockTransforms& tr = trainer.transforms();
  const bool has_data = x_q.defined() && x_q.numel() > 0;
  const DataSplit split = split_in ? *split_in : DataSplit::single(has_data ? x_q.size(0) : 0, std::max<std::int64_t>(1, o.batch_size));
  const std::int64_t bs = split.local_batch;
  const std::int64_t global_elements = has_data ? split.global_samples * (x_q.numel() / x_q.size(0)) : 0;
  double initial = 0;
  if (has_data) initial = team_mse(c, tr.fake_quantized(fp), x_q, y_fp, rope, o.acts, bs, reducer, global_elements);

  std::vector<double> epoch_loss;
  if (has_data && o.epochs > 0 && trainer.trainable()) {
    const std::int64_t steps = split.global_samples / split.global_batch;
    QF_CHECK(steps > 0, "batch size larger than the number of calibration samples");
    auto start = std::chrono::steady_clock::now();
    for (int e = 0; e < o.epochs; ++e) {
      trainer.begin_epoch(e);
      double sum = 0;
      for (std::int64_t s = 0; s < steps; ++s) {
        auto rows = [&](const at::Tensor& t) { return t.defined() ? t.slice(0, s * bs, (s + 1) * bs) : t; };
        sum += trainer.step(rows(x_q), rows(y_fp), rows(y_fp2), label, split.global_batch);
      }
      epoch_loss.push_back(sum / static_cast<double>(steps));
      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      QF_LOG(Info) << label << " epoch " << (e + 1) << "/" << o.epochs << " loss " << epoch_loss.back() << " ("
                   << coordinator::format_duration(elapsed) << ", block ETA "
                   << coordinator::format_duration(coordinator::estimate_eta_seconds(e + 1, o.epochs, elapsed)) << ")";
    }
    // The fold uses the last epoch's mask, which is what training ended with.
    trainer.begin_epoch(o.epochs - 1);
  }
  BlockResult r = finalize_block(fp, tr, o.weights);
  r.epoch_loss = std::move(epoch_loss);
  r.initial_loss = initial;
  r.projections = trainer.projections();
  r.transform_state = tr.state();
  if (has_data) r.final_loss = team_mse(c, r.weights, x_q, y_fp, rope, o.acts, bs, reducer, global_elements);
  if (r.projections > 0) {
    QF_LOG(Warn) << label << ": restored strict diagonal dominance " << r.projections
                 << " times (off-diagonals shrunk to 0.99 of the diagonal)";
  }
  return r;
}

}  // namespace qforge::worker
