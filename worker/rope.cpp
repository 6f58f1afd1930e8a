#include "worker/rope.h"

#include <cmath>

#include "common/error.h"

namespace qforge::worker {

at::Tensor rope_inv_freq(const storage::LlamaConfig& c, std::int64_t seqlen) {
  const std::int64_t d = c.head_dim;
  double base = c.rope_theta;
  const auto& s = c.rope_scaling;
  if (s.type == "dynamic" && seqlen > c.max_position_embeddings) {
    // HF _compute_dynamic_ntk_parameters: grow the base once the sequence exceeds the trained length.
    double ratio = s.factor * static_cast<double>(seqlen) / static_cast<double>(c.max_position_embeddings) - (s.factor - 1.0);
    base = base * std::pow(ratio, static_cast<double>(d) / static_cast<double>(d - 2));
  }
  auto idx = at::arange(0, d, 2, at::kDouble);
  at::Tensor inv = 1.0 / at::pow(base, idx / static_cast<double>(d));
  if (s.type == "linear") {
    // Positions divided by the factor == frequencies divided by it.
    inv = inv / s.factor;
  } else if (s.type == "llama3") {
    // HF _compute_llama3_parameters: long wavelengths scaled by 1/factor, short ones kept, smooth between.
    const double low_wavelen = static_cast<double>(s.original_max_position_embeddings) / s.low_freq_factor;
    const double high_wavelen = static_cast<double>(s.original_max_position_embeddings) / s.high_freq_factor;
    auto wavelen = 2.0 * M_PI / inv;
    auto scaled = at::where(wavelen > low_wavelen, inv / s.factor, inv);
    auto smooth = (static_cast<double>(s.original_max_position_embeddings) / wavelen - s.low_freq_factor) /
                  (s.high_freq_factor - s.low_freq_factor);
    auto smoothed = (1.0 - smooth) * scaled / s.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv = at::where(medium, smoothed, scaled);
  }
  return inv.to(at::kFloat);
}

RopeTables make_rope_tables(const storage::LlamaConfig& c, std::int64_t seqlen, const at::Device& device) {
  auto inv = rope_inv_freq(c, seqlen);
  auto t = at::arange(seqlen, at::kFloat);
  auto freqs = at::outer(t, inv);               // [T, d/2]
  auto emb = at::cat({freqs, freqs}, -1);        // [T, d]
  return {emb.cos().to(device), emb.sin().to(device)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rope, std::int64_t offset, RopeLayout layout) {
  QF_CHECK(x.dim() == 4, "rope expects a 4-d tensor");
  const bool tokens_major = layout == RopeLayout::kTokensHeads;
  const std::int64_t T = x.size(tokens_major ? 1 : 2), d = x.size(3);
  QF_CHECK(rope.cos.size(0) >= offset + T && rope.cos.size(1) == d, "rope table too small");
  auto cos = rope.cos.narrow(0, offset, T).to(x.scalar_type());
  auto sin = rope.sin.narrow(0, offset, T).to(x.scalar_type());
  if (tokens_major) cos = cos.unsqueeze(1), sin = sin.unsqueeze(1);  // [T, 1, d]: the same for every head
  auto x1 = x.narrow(-1, 0, d / 2);
  auto x2 = x.narrow(-1, d / 2, d / 2);
  auto rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

}  // namespace qforge::worker
