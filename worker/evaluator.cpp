#include "worker/evaluator.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/error.h"
#include "common/progress.h"

namespace qforge::worker {

std::uint64_t window_activation_bytes(const storage::LlamaConfig& c, std::int64_t seqlen, std::size_t elem) {
  const auto T = static_cast<std::uint64_t>(seqlen);
  // Residual stream, q/k/v/attention output, MLP intermediates (gate, up, product), and the fp32
  // attention scores and probabilities, which dominate for long windows.
  std::uint64_t stream = T * static_cast<std::uint64_t>(4 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim()) * elem;
  std::uint64_t mlp = T * static_cast<std::uint64_t>(3 * c.intermediate_size) * elem;
  std::uint64_t scores = 2 * T * T * static_cast<std::uint64_t>(c.num_attention_heads) * 4;
  return stream + mlp + scores;
}

WindowScores score_windows(const LlamaModel& model, const at::Tensor& windows, const LlamaModel* reference,
                           const ScoringOptions& options) {
  QF_CHECK(windows.dim() == 2 && windows.scalar_type() == at::kLong, "windows must be int64 [N, seqlen]");
  const std::int64_t n = windows.size(0), T = windows.size(1);
  QF_CHECK(T >= 2, "windows need at least two tokens");
  if (reference && reference->config().vocab_size != model.config().vocab_size) {
    throw InputError(reference->dir().string(), "vocab_size",
                     "reference vocabulary (" + std::to_string(reference->config().vocab_size) +
                         ") differs from the model's (" + std::to_string(model.config().vocab_size) + ")");
  }
  const std::size_t elem = at::elementSize(model.options().dtype);
  std::uint64_t per_window = window_activation_bytes(model.config(), T, elem);
  if (reference) per_window = std::max(per_window, window_activation_bytes(reference->config(), T, elem));
  const std::int64_t chunk = std::max<std::int64_t>(
      1, std::min<std::int64_t>(n, static_cast<std::int64_t>(options.memory_budget_bytes / std::max<std::uint64_t>(per_window, 1))));

  const int passes = model.num_blocks() + (reference ? reference->num_blocks() : 0);
  const std::int64_t chunks = (n + chunk - 1) / chunk;
  ProgressMeter meter("eval", chunks * passes, options.progress ? "tok" : "", options.progress ? 2.0 : 1e30);

  // Rate in tokens through the whole model per second: each block pass over a chunk is 1/passes of it.
  const double tokens_per_step = static_cast<double>(std::min(chunk, n) * T) / passes;
  auto hidden_states = [&](const LlamaModel& m, const at::Tensor& ids, std::int64_t& step) {
    auto rope = m.rope(T);
    at::Tensor x = m.embed(ids);
    for (int b = 0; b < m.num_blocks(); ++b) {
      x = m.run_block(b, x, rope);
      ++step;
      meter.update(step, static_cast<double>(step) * tokens_per_step);
    }
    return x;
  };

  WindowScores s;
  at::NoGradGuard no_grad;
  std::int64_t step = 0;
  for (std::int64_t c0 = 0; c0 < n; c0 += chunk) {
    const std::int64_t c1 = std::min(n, c0 + chunk);
    at::Tensor ids = windows.slice(0, c0, c1);
    at::Tensor x = hidden_states(model, ids, step);
    at::Tensor xr = reference ? hidden_states(*reference, ids, step) : at::Tensor();
    // The head is applied one window at a time: [T, vocab] fp32 logits per window is the largest
    // tensor of evaluation for big vocabularies.
    for (std::int64_t w = 0; w < c1 - c0; ++w) {
      at::Tensor logp = at::log_softmax(model.head(x[w].unsqueeze(0))[0].slice(0, 0, T - 1), -1);  // [T-1, V]
      at::Tensor target = ids[w].slice(0, 1, T).to(logp.device());
      s.sum_nll -= logp.gather(1, target.unsqueeze(1)).sum().item<double>();
      if (reference) {
        at::Tensor ref_logp = at::log_softmax(reference->head(xr[w].unsqueeze(0))[0].slice(0, 0, T - 1), -1);
        // KL(ref || model) = sum_v p_ref (log p_ref - log p_model), accumulated in fp64.
        s.sum_kl += (ref_logp.exp() * (ref_logp - logp)).sum().to(at::kDouble).item<double>();
        s.top1_agree += ref_logp.argmax(-1).eq(logp.argmax(-1)).sum().item<std::int64_t>();
      }
    }
    s.scored += (c1 - c0) * (T - 1);
    s.windows += c1 - c0;
  }
  return s;
}

}  // namespace qforge::worker
