#include "worker/calibrator.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cmath>
#include <map>

#include "common/error.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/progress.h"

namespace qforge::worker {

at::Tensor map_batches(const at::Tensor& x, std::int64_t batch, const std::function<at::Tensor(const at::Tensor&)>& fn) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  for (std::int64_t i = 0; i < x.size(0); i += batch) parts.push_back(fn(x.slice(0, i, std::min(x.size(0), i + batch))));
  return at::cat(parts, 0);
}

namespace {

// `fp` with `transforms` folded in, every tensor detached fp32 (what gets quantized).
BlockWeights folded_weights(const BlockWeights& fp, const BlockTransforms& transforms) {
  BlockWeights w = transforms.transformed(fp);
  for (auto* t : {&w.input_norm, &w.post_norm, &w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias, &w.gate_bias, &w.up_bias,
                  &w.down_bias, &w.input_norm_bias, &w.post_norm_bias, &w.input_norm_inverse, &w.post_norm_inverse}) {
    if (t->defined()) *t = t->detach().to(at::kFloat).contiguous();
  }
  for (std::size_t i = 0; i < linear_names().size(); ++i) linear_weight(w, i) = linear_weight(w, i).detach().to(at::kFloat);
  return w;
}

// Linear i's grid: min/max of the folded weight, within the learned clipping when there is one.
WeightQParams grid_of(const BlockWeights& w, const BlockTransforms& transforms, std::size_t i, const WeightQuantSpec& spec) {
  ClipParams clip = transforms.clip(i);
  if (clip.defined()) clip = {clip.upper.detach(), clip.lower.detach()};
  return weight_qparams(linear_weight(w, i), spec, clip);
}

// Stores `codes` on grid `qp` and replaces the weight by their dequantization from the stored fp16
// scales and integer zeros: exactly what an exporter reproduces.
QuantizedLinear store(at::Tensor& weight, const at::Tensor& codes, const WeightQuantSpec& spec, const WeightQParams& qp) {
  QuantizedLinear q;
  q.codes = codes;
  q.scales = qp.scale.to(at::kHalf).contiguous();
  q.zeros = qp.zero.to(at::kInt).contiguous();
  weight = dequantize_weight(q.codes, spec, {q.scales.to(at::kFloat), q.zeros.to(at::kFloat)});
  return q;
}

// GPTQ's "true sequential" order inside a block: each stage's linears share one input, which is taken
// from a forward with the earlier stages already quantized.
const std::vector<std::vector<std::size_t>>& gptq_stages() {
  static const std::vector<std::vector<std::size_t>> stages = {{0, 1, 2}, {3}, {4, 5}, {6}};  // q k v | o | gate up | down
  return stages;
}

// The input the stage's linears see in the deployed model (activation fake-quantization included).
at::Tensor stage_input(std::size_t stage, const BlockTaps& taps, const ActQuantSpec& acts) {
  switch (stage) {
    case 0: return taps.qkv_input;
    case 1: return fake_quant_act(taps.o_input, acts);
    case 2: return taps.fc1_input;
    default: return taps.down_input;
  }
}

}  // namespace

BlockResult finalize_block(const BlockWeights& fp, const BlockTransforms& transforms, const WeightQuantSpec& spec) {
  at::NoGradGuard no_grad;
  BlockResult r;
  r.weights = folded_weights(fp, transforms);
  for (std::size_t i = 0; i < linear_names().size(); ++i) {
    at::Tensor& W = linear_weight(r.weights, i);
    const WeightQParams qp = grid_of(r.weights, transforms, i, spec);
    r.linears.push_back(store(W, weight_codes(W, spec, qp), spec, qp));
  }
  return r;
}

BlockResult finalize_block_gptq(const storage::LlamaConfig& c, const BlockWeights& fp, const BlockTransforms& transforms,
                                const CalibOptions& o, const at::Tensor& x, const RopeTables& rope, std::int64_t batch,
                                TeamReducer* reducer, const std::string& label) {
  at::NoGradGuard no_grad;
  BlockResult r;
  r.weights = folded_weights(fp, transforms);
  r.linears.resize(linear_names().size());
  for (std::size_t stage = 0; stage < gptq_stages().size(); ++stage) {
    const auto& members = gptq_stages()[stage];
    const std::int64_t in = linear_weight(r.weights, members.front()).size(1);
    std::vector<at::Tensor> h{at::zeros({in, in}, at::kFloat)};
    for (std::int64_t s = 0; s < x.size(0); s += batch) {
      BlockTaps taps;
      block_forward(c, r.weights, x.slice(0, s, s + batch), rope, o.acts, &taps);
      add_to_hessian(h[0], stage_input(stage, taps, o.acts));
    }
    if (reducer) reducer->sum(h);  // the team's samples, summed in a fixed order: every rank gets the same codes
    for (std::size_t i : members) {
      at::Tensor& W = linear_weight(r.weights, i);
      const WeightQParams qp = grid_of(r.weights, transforms, i, o.weights);
      const GptqResult g = gptq_quantize(W, h[0], o.weights, qp, o.gptq, label + " " + linear_names()[i]);
      r.linears[i] = store(W, g.codes, o.weights, qp);
    }
  }
  return r;
}

at::Tensor chain_forward(const storage::LlamaConfig& c, const std::vector<BlockWeights>& blocks, const at::Tensor& x,
                         const RopeTables& rope, const std::vector<ActQuantSpec>& acts) {
  at::Tensor h = x;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    h = acts.empty() ? block_forward(c, blocks[i], h, rope) : block_forward(c, blocks[i], h, rope, acts[i]);
  }
  return h;
}

namespace {

// Sums `values` over the team (in place; nothing without a reducer).
void team_sum(std::vector<double>& values, TeamReducer* reducer) {
  if (!reducer) return;
  std::vector<at::Tensor> v{at::tensor(values, at::kDouble)};
  reducer->sum(v);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = v[0][static_cast<std::int64_t>(i)].item<double>();
}

std::vector<ActQuantSpec> act_specs(const std::vector<CalibOptions>& options) {
  std::vector<ActQuantSpec> a;
  for (const auto& o : options) a.push_back(o.acts);
  return a;
}

}  // namespace

double team_mse(const storage::LlamaConfig& c, const std::vector<BlockWeights>& w, const at::Tensor& x, const at::Tensor& y,
                const RopeTables& rope, const std::vector<ActQuantSpec>& act, std::int64_t batch, TeamReducer* reducer,
                std::int64_t global_elements) {
  at::NoGradGuard no_grad;
  std::vector<double> sum{0.0};
  for (std::int64_t i = 0; i < x.size(0); i += batch) {
    const std::int64_t j = std::min(x.size(0), i + batch);
    at::Tensor out = chain_forward(c, w, x.slice(0, i, j), rope, act);
    sum[0] += (out - y.slice(0, i, j)).pow(2).sum().item<double>();
  }
  team_sum(sum, reducer);
  return sum[0] / static_cast<double>(global_elements);
}

std::vector<ChainLoss> chain_losses(const storage::LlamaConfig& c, const std::vector<BlockWeights>& fp,
                                    const std::vector<BlockWeights>& q, const at::Tensor& x_fp, const at::Tensor& x_q,
                                    const RopeTables& rope, const std::vector<ActQuantSpec>& acts, std::int64_t batch,
                                    TeamReducer* reducer, std::int64_t global_elements, at::Tensor* quantized_output,
                                    const at::Tensor& y_fp) {
  at::NoGradGuard no_grad;
  const std::size_t n = fp.size();
  std::vector<double> sums(2 * n, 0.0);  // [sse_0, energy_0, sse_1, ...]
  std::vector<at::Tensor> outputs;
  for (std::int64_t i = 0; i < x_fp.size(0); i += batch) {
    const std::int64_t j = std::min(x_fp.size(0), i + batch);
    at::Tensor hf = x_fp.slice(0, i, j), hq = x_q.slice(0, i, j);
    for (std::size_t b = 0; b < n; ++b) {
      hf = b + 1 == n && y_fp.defined() ? y_fp.slice(0, i, j) : block_forward(c, fp[b], hf, rope);
      hq = block_forward(c, q[b], hq, rope, acts[b]);
      sums[2 * b] += (hq - hf).pow(2).sum().item<double>();
      sums[2 * b + 1] += hf.pow(2).sum().item<double>();
    }
    if (quantized_output) outputs.push_back(hq);
  }
  if (quantized_output) *quantized_output = at::cat(outputs, 0);
  team_sum(sums, reducer);
  std::vector<ChainLoss> out(n);
  for (std::size_t b = 0; b < n; ++b) {
    out[b] = {sums[2 * b] / static_cast<double>(global_elements), sums[2 * b + 1] / static_cast<double>(global_elements)};
  }
  return out;
}

UnitTrainer::UnitTrainer(const storage::LlamaConfig& config, const std::vector<BlockWeights>& fp,
                         const std::vector<ActStats>& stats, const std::vector<CalibOptions>& options,
                         const RopeTables& rope, TeamReducer* reducer)
    : config_(config), fp_(fp), options_(options), rope_(rope), reducer_(reducer) {
  QF_CHECK(!fp.empty() && fp.size() == stats.size() && fp.size() == options.size(), "a unit needs weights, stats and options per block");
  for (std::size_t b = 0; b < fp.size(); ++b) {
    transforms_.emplace_back(config, fp[b], stats[b], options[b].transform, options[b].weights);
  }
  // One optimiser over the union of the blocks' parameters: every transform, then every clipping, in
  // block order (so one rank's gradient layout equals every other's, and a one-block unit is exactly
  // the block-wise optimiser).
  std::vector<at::Tensor> let, lwc;
  for (const auto& t : transforms_) {
    for (auto& p : t.let_parameters()) let.push_back(p);
    for (auto& p : t.lwc_parameters()) lwc.push_back(p);
  }
  const CalibOptions& o = options_.front();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto group = [&](std::vector<at::Tensor> params, double lr) {
    if (params.empty()) return;
    auto opt = std::make_unique<torch::optim::AdamWOptions>(lr);
    opt->weight_decay(o.weight_decay);  // LibTorch's AdamW defaults to 1e-2; the reference uses 0
    groups.emplace_back(std::move(params), std::move(opt));
  };
  group(std::move(let), o.let_lr);
  group(std::move(lwc), o.lwc_lr);
  if (!groups.empty()) {
    optimizer_ = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(o.let_lr).weight_decay(o.weight_decay));
  }
}

UnitTrainer::~UnitTrainer() = default;

bool UnitTrainer::trainable() const { return optimizer_ != nullptr; }

void UnitTrainer::begin_epoch(int epoch) {
  epoch_ = epoch;
  steps_in_epoch_ = 0;
  for (auto& t : transforms_) t.set_epoch(epoch, std::max(1, options_.front().epochs));
}

std::vector<BlockWeights> UnitTrainer::fake_quantized() const {
  std::vector<BlockWeights> out;
  for (std::size_t b = 0; b < transforms_.size(); ++b) out.push_back(transforms_[b].fake_quantized(fp_[b]));
  return out;
}

double UnitTrainer::step(const at::Tensor& x, const at::Tensor& y, const at::Tensor& y2, const std::string& label,
                         std::int64_t global_rows, bool* stop_vote) {
  QF_CHECK(optimizer_, "nothing to train");
  fault_point("train_step");
  for (auto& t : transforms_) t.truncate_small_scales();
  // Sum / global element count rather than mse_loss: partial losses of a team (and of micro-batches)
  // then add up to the batch MSE, and so do their gradients.
  const std::int64_t rows = x.size(0);
  const double per_row = rows > 0 ? static_cast<double>(x.numel() / rows) : 0.0;
  const double denom = static_cast<double>(global_rows < 0 ? rows : global_rows) * per_row;
  const std::int64_t micro = options_.front().micro_batch > 0 ? options_.front().micro_batch : std::max<std::int64_t>(1, rows);
  const std::vector<ActQuantSpec> acts = act_specs(options_);
  optimizer_->zero_grad();
  double lv = 0.0;
  for (std::int64_t i = 0; i < rows; i += micro) {
    auto part = [&](const at::Tensor& t) { return t.defined() ? t.slice(0, i, std::min(rows, i + micro)) : t; };
    // The fake-quantized weights are rebuilt per micro-batch: each backward consumes its own graph.
    // They are built before the precision scope: the fold of the affine matrices and their inverses
    // stays in the masters' precision whatever --compute-dtype says.
    const std::vector<BlockWeights> weights = fake_quantized();
    const PrecisionScope precision(options_.front().precision, x.device());
    at::Tensor out = chain_forward(config_, weights, part(x), rope_, acts).to(at::kFloat);
    at::Tensor loss = (out - part(y)).pow(2).sum() / denom;
    if (options_.front().aug_loss) loss = loss + (out - part(y2)).pow(2).sum() / denom;
    loss.backward();
    lv += loss.item<double>();
  }
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
    parts.push_back(at::full({1}, stop_vote && *stop_vote ? 1.0 : 0.0, at::kDouble));
    reducer_->sum(parts);
    if (stop_vote) *stop_vote = parts.back().item<double>() > 0;
    lv = parts[parts.size() - 2].item<double>();
  }
  if (!std::isfinite(lv)) {
    // The reference drops into pdb here; a batch job must stop with a reason instead.
    throw InternalError(label + ": non-finite loss at epoch " + std::to_string(epoch_) + " step " +
                        std::to_string(steps_in_epoch_) + " (try a smaller --sf or learning rate)");
  }
  optimizer_->step();
  for (auto& t : transforms_) projections_ += t.enforce_diagonal_dominance();
  ++steps_in_epoch_;
  return lv;
}

std::vector<at::Tensor> UnitTrainer::gradients() const {
  std::vector<at::Tensor> out;
  if (!optimizer_) return out;
  for (const auto& group : optimizer_->param_groups()) {
    for (const auto& p : group.params()) out.push_back(p.grad());
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> UnitTrainer::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (std::size_t b = 0; b < transforms_.size(); ++b) {
    for (auto& [name, t] : transforms_[b].state()) out.emplace_back("b" + std::to_string(b) + "." + name, t);
  }
  if (optimizer_) {
    std::size_t k = 0;
    for (const auto& group : optimizer_->param_groups()) {
      for (const auto& p : group.params()) {
        const std::string key = "adamw." + std::to_string(k++);
        const auto it = optimizer_->state().find(p.unsafeGetTensorImpl());
        if (it == optimizer_->state().end()) continue;  // before the first step
        const auto& st = static_cast<const torch::optim::AdamWParamState&>(*it->second);
        out.emplace_back(key + ".exp_avg", st.exp_avg().detach().clone());
        out.emplace_back(key + ".exp_avg_sq", st.exp_avg_sq().detach().clone());
        out.emplace_back(key + ".step", at::full({1}, st.step(), at::kLong));
      }
    }
  }
  out.emplace_back("trainer.projections", at::full({1}, projections_, at::kLong));
  return out;
}

void UnitTrainer::load_state(const std::vector<std::pair<std::string, at::Tensor>>& state) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  auto take = [&](const std::string& name) {
    const auto it = by_name.find(name);
    QF_CHECK(it != by_name.end(), "checkpoint lacks " + name);
    return it->second;
  };
  for (std::size_t b = 0; b < transforms_.size(); ++b) {
    std::vector<std::pair<std::string, at::Tensor>> mine;
    for (auto& [name, t] : transforms_[b].state()) mine.emplace_back(name, take("b" + std::to_string(b) + "." + name));
    transforms_[b].load_state(mine);
  }
  if (optimizer_) {
    std::size_t k = 0;
    for (const auto& group : optimizer_->param_groups()) {
      for (const auto& p : group.params()) {
        const std::string key = "adamw." + std::to_string(k++);
        if (!by_name.count(key + ".step")) continue;
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(take(key + ".step").item<std::int64_t>());
        st->exp_avg(take(key + ".exp_avg").to(p.device(), /*non_blocking=*/false, /*copy=*/true));
        st->exp_avg_sq(take(key + ".exp_avg_sq").to(p.device(), /*non_blocking=*/false, /*copy=*/true));
        optimizer_->state()[p.unsafeGetTensorImpl()] = std::move(st);
      }
    }
  }
  projections_ = take("trainer.projections").item<std::int64_t>();
}

UnitResult calibrate_unit(const storage::LlamaConfig& c, const std::vector<BlockWeights>& fp, const at::Tensor& x_q,
                          const at::Tensor& y_fp, const at::Tensor& y_fp2, const std::vector<ActStats>& stats,
                          const std::vector<CalibOptions>& options, const RopeTables& rope, const std::string& label,
                          TeamReducer* reducer, const DataSplit* split_in, const StopControl* stop, FinalLoss final_loss) {
  UnitTrainer trainer(c, fp, stats, options, rope, reducer);
  const CalibOptions& o = options.front();
  const std::vector<ActQuantSpec> acts = act_specs(options);
  const bool has_data = x_q.defined() && x_q.numel() > 0;
  const DataSplit split = split_in ? *split_in : DataSplit::single(has_data ? x_q.size(0) : 0, std::max<std::int64_t>(1, o.batch_size));
  const std::int64_t bs = split.local_batch;
  const std::int64_t global_elements = has_data ? split.global_samples * (x_q.numel() / x_q.size(0)) : 0;
  UnitResult r;
  if (has_data) r.initial_loss = team_mse(c, trainer.fake_quantized(), x_q, y_fp, rope, acts, bs, reducer, global_elements);

  if (has_data && o.epochs > 0 && trainer.trainable()) {
    const std::int64_t steps = split.global_samples / split.global_batch;
    QF_CHECK(steps > 0, "batch size larger than the number of calibration samples");
    auto start = std::chrono::steady_clock::now();
    int first_epoch = 0;
    std::int64_t first_step = 0;
    double first_sum = 0;
    if (stop && stop->resume) {
      // Computed above from the fresh initialisation, so initial_loss is what the first attempt reported.
      trainer.load_state(stop->resume->state);
      r.epoch_loss = stop->resume->epoch_loss;
      first_epoch = stop->resume->epoch;
      first_step = stop->resume->step;
      first_sum = stop->resume->epoch_sum;
      QF_LOG(Warn) << label << " resumes at epoch " << (first_epoch + 1) << " step " << first_step << " from its checkpoint";
    }
    for (int e = first_epoch; e < o.epochs; ++e) {
      trainer.begin_epoch(e);
      double sum = e == first_epoch ? first_sum : 0;
      for (std::int64_t s = e == first_epoch ? first_step : 0; s < steps; ++s) {
        auto rows = [&](const at::Tensor& t) { return t.defined() ? t.slice(0, s * bs, (s + 1) * bs) : t; };
        bool vote = stop && stop->requested && stop->requested();
        sum += trainer.step(rows(x_q), rows(y_fp), rows(y_fp2), label, split.global_batch, &vote);
        if (vote) {
          UnitCheckpoint ck;
          ck.epoch = e;
          ck.step = s + 1;
          ck.epoch_sum = sum;
          ck.epoch_loss = r.epoch_loss;
          ck.state = trainer.state();
          throw UnitStopped(std::move(ck));
        }
      }
      r.epoch_loss.push_back(sum / static_cast<double>(steps));
      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      QF_LOG(Info) << label << " epoch " << (e + 1) << "/" << o.epochs << " loss " << r.epoch_loss.back() << " ("
                   << format_duration(elapsed) << ", unit ETA "
                   << format_duration(estimate_eta_seconds(e + 1, o.epochs, elapsed)) << ")";
    }
    // The fold uses the last epoch's mask, which is what training ended with.
    trainer.begin_epoch(o.epochs - 1);
  }
  std::vector<BlockWeights> folded;
  at::Tensor x_block = x_q;  // GPTQ: the quantized stream into block b, through the blocks already quantized
  for (int b = 0; b < trainer.blocks(); ++b) {
    const CalibOptions& ob = options[static_cast<std::size_t>(b)];
    QF_CHECK(!ob.gptq.enabled || has_data, label + ": GPTQ rounding needs the unit's calibration inputs");
    BlockResult br = ob.gptq.enabled
                         ? finalize_block_gptq(c, fp[static_cast<std::size_t>(b)], trainer.transforms(b), ob, x_block, rope, bs,
                                               reducer, label + " block " + std::to_string(b))
                         : finalize_block(fp[static_cast<std::size_t>(b)], trainer.transforms(b), ob.weights);
    if (ob.gptq.enabled && b + 1 < trainer.blocks()) {
      x_block = map_batches(x_block, bs, [&](const at::Tensor& x) { return block_forward(c, br.weights, x, rope, ob.acts); });
    }
    br.transform_state = trainer.transforms(b).state();
    folded.push_back(br.weights);
    r.blocks.push_back(std::move(br));
  }
  r.projections = trainer.projections();
  if (has_data && final_loss == FinalLoss::kMeasure) r.final_loss = team_mse(c, folded, x_q, y_fp, rope, acts, bs, reducer, global_elements);
  if (r.projections > 0) {
    QF_LOG(Warn) << label << ": restored strict diagonal dominance " << r.projections
                 << " times (off-diagonals shrunk to 0.99 of the diagonal)";
  }
  return r;
}

BlockResult calibrate_block(const storage::LlamaConfig& c, const BlockWeights& fp, const at::Tensor& x_q,
                            const at::Tensor& y_fp, const at::Tensor& y_fp2, const ActStats& stats,
                            const CalibOptions& o, const RopeTables& rope, const std::string& label,
                            TeamReducer* reducer, const DataSplit* split) {
  UnitResult u = calibrate_unit(c, {fp}, x_q, y_fp, y_fp2, {stats}, {o}, rope, label, reducer, split);
  BlockResult r = std::move(u.blocks.front());
  r.epoch_loss = std::move(u.epoch_loss);
  r.initial_loss = u.initial_loss;
  r.final_loss = u.final_loss;
  r.projections = u.projections;
  return r;
}

ProbeResult probe_block(const storage::LlamaConfig& c, const BlockWeights& fp, const at::Tensor& x_fp, CalibOptions o,
                        int epochs, const RopeTables& rope, const std::string& label) {
  QF_CHECK(x_fp.defined() && x_fp.size(0) > 0, "a probe needs FP-stream inputs");
  o.epochs = epochs;
  o.batch_size = std::min<std::int64_t>(std::max<std::int64_t>(1, o.batch_size), x_fp.size(0));
  ActStats stats;
  const at::Tensor y = map_batches(x_fp, o.batch_size, [&](const at::Tensor& x) { return accumulate_act_stats(c, fp, x, rope, stats); });
  // On FP inputs the FP block on the "quantized" stream is the target itself.
  const BlockResult r = calibrate_block(c, fp, x_fp, y, o.aug_loss ? y : at::Tensor(), stats, o, rope, label);
  ProbeResult p;
  p.loss = r.final_loss;
  p.energy = y.pow(2).mean().item<double>();
  if (!std::isfinite(p.loss) || !std::isfinite(p.energy)) {
    throw InternalError(label + ": non-finite reconstruction loss (" + std::to_string(p.loss) + ") or output energy (" +
                        std::to_string(p.energy) + "); the block's FP output overflows or the recipe diverges");
  }
  p.normalized = p.energy > 0 ? p.loss / p.energy : 0.0;
  p.epoch_loss = r.epoch_loss;
  return p;
}

}  // namespace qforge::worker
