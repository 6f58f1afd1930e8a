#include "tests/support/one_step.h"

#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <sstream>

#include "partition/sample_split.h"
#include "tests/support/small_model.h"

namespace qforge::test {

namespace {

StepOutcome step_on(const OneStepProblem& p, const at::Tensor& rows, std::int64_t global_rows, worker::TeamReducer* reducer) {
  const std::vector<worker::BlockWeights> fp{p.fp};  // the trainer keeps a reference
  worker::UnitTrainer trainer(p.config, fp, {p.stats}, {p.options}, p.rope, reducer);
  trainer.begin_epoch(0);
  StepOutcome out;
  at::Tensor x = p.x.index_select(0, rows), y = p.y.index_select(0, rows);
  out.loss = trainer.step(x, y, y, "one-step", global_rows);
  for (const auto& g : trainer.gradients()) out.gradients.push_back(g.defined() ? g.detach().clone() : g);
  return out;
}

double unit_roundoff(at::ScalarType t) {
  return t == at::kDouble ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
}

double gamma(int m, double u) { return m * u / (1.0 - m * u); }

}  // namespace

OneStepProblem::OneStepProblem() : config(small_llama_config(4, 2)) {
  at::manual_seed(20261204);
  constexpr std::int64_t kLen = 16;
  fp = worker::BlockWeights::random(config, at::kFloat, 0.2, 0.1);
  x = at::randn({kOneStepSamples, kLen, config.hidden_size});
  rope = worker::make_rope_tables(config, kLen, at::kCPU);
  y = worker::accumulate_act_stats(config, fp, x, rope, stats).detach();
  options.transform.method = worker::Method::kAffineQuant;
  options.transform.let = true;
  options.transform.lwc = true;
  options.weights.bits = 4;
  options.acts.bits = 4;
  options.aug_loss = true;
  options.epochs = 1;
  options.batch_size = kOneStepSamples;
  options.micro_batch = 1;
}

StepOutcome one_step(const OneStepProblem& p, int team_size, int rank, worker::TeamReducer* reducer) {
  const auto ids = partition::team_rows(kOneStepSamples, kOneStepSamples, team_size, rank);
  return step_on(p, at::tensor(ids, at::kLong), kOneStepSamples, reducer);
}

StepOutcome one_sample_share(const OneStepProblem& p, std::int64_t k) {
  return step_on(p, at::tensor(std::vector<std::int64_t>{k}, at::kLong), kOneStepSamples, nullptr);
}

std::vector<StepOutcome> sample_shares(const OneStepProblem& p) {
  std::vector<StepOutcome> s;
  for (std::int64_t k = 0; k < kOneStepSamples; ++k) s.push_back(one_sample_share(p, k));
  return s;
}

OneComputeThread::OneComputeThread() : before_(at::get_num_threads()) { at::set_num_threads(1); }
OneComputeThread::~OneComputeThread() { at::set_num_threads(before_); }

std::string compare_steps(const StepOutcome& team, const StepOutcome& single, const std::vector<StepOutcome>& shares) {
  std::ostringstream why;
  const int n = static_cast<int>(shares.size());
  double loss_abs = 0;
  for (const auto& s : shares) loss_abs += std::fabs(s.loss);
  const double loss_bound = 2 * gamma(n - 1, unit_roundoff(at::kDouble)) * loss_abs;
  if (!(std::fabs(team.loss - single.loss) <= loss_bound)) {
    why << "loss " << team.loss << " vs " << single.loss << " (bound " << loss_bound << "); ";
  }
  if (team.gradients.size() != single.gradients.size()) return "different parameter counts";
  for (std::size_t i = 0; i < single.gradients.size(); ++i) {
    const at::Tensor& a = team.gradients[i];
    const at::Tensor& b = single.gradients[i];
    if (!a.defined() || !b.defined()) {
      if (a.defined() != b.defined() && (a.defined() ? a : b).abs().max().item<double>() != 0) {
        why << "parameter " << i << " has a gradient in one team only; ";
      }
      continue;
    }
    at::Tensor abs_sum = at::zeros_like(b, at::kDouble);
    for (const auto& s : shares) {
      if (s.gradients[i].defined()) abs_sum += s.gradients[i].to(at::kDouble).abs();
    }
    const at::Tensor bound = 2 * gamma(n - 1, unit_roundoff(b.scalar_type())) * abs_sum;
    const at::Tensor excess = (a.to(at::kDouble) - b.to(at::kDouble)).abs() - bound;
    const double worst = excess.max().item<double>();
    if (worst > 0) {
      const auto at_idx = excess.reshape({-1}).argmax().item<std::int64_t>();
      why << "parameter " << i << " element " << at_idx << ": team " << a.reshape({-1})[at_idx].item<double>()
          << " vs one rank " << b.reshape({-1})[at_idx].item<double>() << " exceeds the bound "
          << bound.reshape({-1})[at_idx].item<double>() << "; ";
    }
  }
  return why.str();
}

}  // namespace qforge::test
