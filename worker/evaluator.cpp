#include "worker/evaluator.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"

namespace qforge::worker {

namespace {

// Tokens per batch of windows when the model is resident: enough rows for the GEMMs to run at their
// full rate, few enough to keep a batch's activations small (`qforge eval --batch` on ref-6m, 2-core
// machine: batches of 1024, 2048, 4096, 8192 tokens took 4.48, 4.11, 4.09, 4.40 s; peak RSS grows with them).
constexpr std::int64_t kBatchTokens = 2048;
// Logits are made for at most this many bytes of rows at a time (fp32 [rows, vocab]).
constexpr std::uint64_t kLogitBytes = 32ull << 20;

std::int64_t clamp_count(std::uint64_t v, std::int64_t hi) {
  return std::max<std::int64_t>(1, std::min<std::int64_t>(hi, static_cast<std::int64_t>(std::min<std::uint64_t>(v, 1ull << 40))));
}

// Accumulates the scores of the predicted positions of a batch: hidden states x [B, T, H] of the model
// (xr of the reference, or undefined) and the ids [B, T]. The head runs over row chunks so that no more
// than kLogitBytes of logits exist at once.
void score_batch(const LlamaModel& model, const at::Tensor& x, const LlamaModel* reference, const at::Tensor& xr,
                 const at::Tensor& ids, WindowScores& s) {
  const std::int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  const at::Tensor rows = x.slice(1, 0, T - 1).reshape({B * (T - 1), H});
  const at::Tensor ref_rows = reference ? xr.slice(1, 0, T - 1).reshape({B * (T - 1), xr.size(2)}) : at::Tensor();
  const at::Tensor targets = ids.slice(1, 1, T).reshape({B * (T - 1), 1}).to(x.device());
  const std::int64_t n = rows.size(0);
  const std::int64_t step = clamp_count(kLogitBytes / (static_cast<std::uint64_t>(model.config().vocab_size) * 4), n);
  for (std::int64_t r0 = 0; r0 < n; r0 += step) {
    const std::int64_t r1 = std::min(n, r0 + step);
    const at::Tensor logits = model.head(rows.slice(0, r0, r1));  // [rows, V] fp32
    const at::Tensor target = targets.slice(0, r0, r1);
    if (!reference) {
      // -log p(target) = logsumexp(logits) - logits[target], without a [rows, V] log-softmax.
      s.sum_nll += (at::logsumexp(logits, 1) - logits.gather(1, target).squeeze(1)).sum().to(at::kDouble).item<double>();
      continue;
    }
    const at::Tensor logp = at::log_softmax(logits, -1);
    s.sum_nll -= logp.gather(1, target).sum().to(at::kDouble).item<double>();
    const at::Tensor ref_logp = at::log_softmax(reference->head(ref_rows.slice(0, r0, r1)), -1);
    // KL(ref || model) = sum_v p_ref (log p_ref - log p_model), accumulated in fp64.
    s.sum_kl += (ref_logp.exp() * (ref_logp - logp)).sum().to(at::kDouble).item<double>();
    s.top1_agree += ref_logp.argmax(-1).eq(logp.argmax(-1)).sum().item<std::int64_t>();
  }
  s.scored += n;
  s.windows += B;
}

// The models' blocks, all loaded once (resident plan) or none (each loaded when its turn comes).
struct ResidentBlocks {
  std::vector<BlockWeights> model, reference;
};

}  // namespace

std::uint64_t window_activation_bytes(const storage::LlamaConfig& c, std::int64_t seqlen, std::size_t elem) {
  const auto T = static_cast<std::uint64_t>(seqlen);
  // Residual stream, q/k/v/attention output, MLP intermediates (gate, up, product), and the fp32
  // attention scores and probabilities (the explicit attention a backend without flash attention falls
  // back to materialises them; they dominate for long windows).
  std::uint64_t stream = T * static_cast<std::uint64_t>(4 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim()) * elem;
  std::uint64_t mlp = T * static_cast<std::uint64_t>(3 * c.intermediate_size) * elem;
  std::uint64_t scores = 2 * T * T * static_cast<std::uint64_t>(c.num_attention_heads) * 4;
  return stream + mlp + scores;
}

ScoringPlan plan_scoring(std::uint64_t blocks_bytes, std::uint64_t one_block_bytes, std::uint64_t window_bytes,
                         std::int64_t windows, std::int64_t seqlen, const ScoringOptions& options) {
  ScoringPlan p;
  window_bytes = std::max<std::uint64_t>(window_bytes, 1);
  const std::int64_t wanted = options.batch_windows > 0 ? options.batch_windows : clamp_count(kBatchTokens / seqlen, windows);
  const std::int64_t batch = std::min(wanted, std::max<std::int64_t>(windows, 1));
  if (blocks_bytes + static_cast<std::uint64_t>(batch) * window_bytes <= options.memory_budget_bytes) {
    p.resident = true;
    p.batch = batch;
    return p;
  }
  // Block by block: one block resident, every window of a chunk through it before the next is loaded.
  const std::uint64_t left = options.memory_budget_bytes > one_block_bytes ? options.memory_budget_bytes - one_block_bytes : 0;
  p.batch = clamp_count(left / window_bytes, std::max<std::int64_t>(windows, 1));
  if (options.batch_windows > 0) p.batch = std::min(p.batch, options.batch_windows);
  return p;
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
  std::uint64_t all_blocks = model.blocks_bytes(), one_block = all_blocks / std::max(model.num_blocks(), 1);
  if (reference) {
    per_window = std::max(per_window, window_activation_bytes(reference->config(), T, elem));
    all_blocks += reference->blocks_bytes();
    one_block += reference->blocks_bytes() / std::max(reference->num_blocks(), 1);
  }
  const ScoringPlan plan = plan_scoring(all_blocks, one_block, per_window, n, T, options);
  QF_LOG(Info) << "eval plan: " << (plan.resident ? "all blocks resident (" : "one block at a time (weights ")
               << (all_blocks >> 20) << " MiB), " << plan.batch << " windows per pass, budget "
               << (options.memory_budget_bytes >> 20) << " MiB";
  ResidentBlocks resident;
  if (plan.resident) {
    for (int b = 0; b < model.num_blocks(); ++b) resident.model.push_back(model.block(b));
    for (int b = 0; reference && b < reference->num_blocks(); ++b) resident.reference.push_back(reference->block(b));
  }

  const int passes = model.num_blocks() + (reference ? reference->num_blocks() : 0);
  const std::int64_t batches = (n + plan.batch - 1) / plan.batch;
  ProgressMeter meter("eval", batches * passes, options.progress ? "tok" : "", options.progress ? 2.0 : 1e30);
  // Rate in tokens through the whole model per second: each block pass over a batch is 1/passes of it.
  const double tokens_per_step = static_cast<double>(std::min(plan.batch, n) * T) / passes;
  std::int64_t step = 0;
  auto hidden_states = [&](const LlamaModel& m, const std::vector<BlockWeights>& blocks, const at::Tensor& ids) {
    auto rope = m.rope(T);
    at::Tensor x = m.embed(ids);
    for (int b = 0; b < m.num_blocks(); ++b) {
      x = blocks.empty() ? m.run_block(b, x, rope) : m.run_block(b, blocks[static_cast<std::size_t>(b)], x, rope);
      ++step;
      meter.update(step, static_cast<double>(step) * tokens_per_step);
    }
    return x;
  };

  WindowScores s;
  s.plan = plan;
  at::NoGradGuard no_grad;
  for (std::int64_t c0 = 0; c0 < n; c0 += plan.batch) {
    const at::Tensor ids = windows.slice(0, c0, std::min(n, c0 + plan.batch));
    const at::Tensor x = hidden_states(model, resident.model, ids);
    const at::Tensor xr = reference ? hidden_states(*reference, resident.reference, ids) : at::Tensor();
    score_batch(model, x, reference, xr, ids, s);
  }
  return s;
}

}  // namespace qforge::worker
