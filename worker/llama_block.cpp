#include "worker/llama_block.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>


#include "common/error.h"
#include "partition/model_index.h"

namespace qforge::worker {

namespace {

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::linear(x, w, b) : at::matmul(x, w.t());
}

at::Tensor load_tensor(const storage::CheckpointReader& ckpt, int block, const std::string& suffix,
                       at::ScalarType dtype, const at::Device& device) {
  return ckpt.load(partition::block_tensor_name(block, suffix)).to(device, dtype);
}

}  // namespace

const at::Tensor& BlockWeights::tensor(const std::string& suffix) const {
  const std::pair<const char*, const at::Tensor*> table[] = {
      {"input_layernorm.weight", &input_norm}, {"post_attention_layernorm.weight", &post_norm},
      {"self_attn.q_proj.weight", &q},         {"self_attn.k_proj.weight", &k},
      {"self_attn.v_proj.weight", &v},         {"self_attn.o_proj.weight", &o},
      {"mlp.gate_proj.weight", &gate},         {"mlp.up_proj.weight", &up},
      {"mlp.down_proj.weight", &down},         {"self_attn.q_proj.bias", &q_bias},
      {"self_attn.k_proj.bias", &k_bias},      {"self_attn.v_proj.bias", &v_bias},
      {"self_attn.o_proj.bias", &o_bias},      {"mlp.gate_proj.bias", &gate_bias},
      {"mlp.up_proj.bias", &up_bias},          {"mlp.down_proj.bias", &down_bias},
      {"input_layernorm.bias", &input_norm_bias}, {"post_attention_layernorm.bias", &post_norm_bias},
      {"input_layernorm.affine_inverse", &input_norm_inverse},
      {"post_attention_layernorm.affine_inverse", &post_norm_inverse},
      {"self_attn.q_norm.weight", &q_norm},    {"self_attn.k_norm.weight", &k_norm},
  };
  for (const auto& [name, t] : table) {
    if (suffix == name) return *t;
  }
  throw InternalError("no block tensor named '" + suffix + "'");
}

BlockWeights BlockWeights::load(const storage::CheckpointReader& ckpt, const storage::LlamaConfig& c, int index,
                                at::ScalarType dtype, const at::Device& device) {
  auto get = [&](const std::string& suffix) { return load_tensor(ckpt, index, suffix, dtype, device); };
  BlockWeights w;
  w.input_norm = get("input_layernorm.weight");
  w.post_norm = get("post_attention_layernorm.weight");
  w.q = get("self_attn.q_proj.weight");
  w.k = get("self_attn.k_proj.weight");
  w.v = get("self_attn.v_proj.weight");
  w.o = get("self_attn.o_proj.weight");
  w.gate = get("mlp.gate_proj.weight");
  w.up = get("mlp.up_proj.weight");
  w.down = get("mlp.down_proj.weight");
  if (c.qkv_bias) {
    w.q_bias = get("self_attn.q_proj.bias");
    w.k_bias = get("self_attn.k_proj.bias");
    w.v_bias = get("self_attn.v_proj.bias");
  }
  if (c.o_bias) w.o_bias = get("self_attn.o_proj.bias");
  if (c.qk_norm) {
    w.q_norm = get("self_attn.q_norm.weight");
    w.k_norm = get("self_attn.k_norm.weight");
  }
  if (c.quant && c.quant->norm_bias) {
    w.input_norm_bias = get("input_layernorm.bias");
    w.post_norm_bias = get("post_attention_layernorm.bias");
  }
  if (c.down_proj_rotation) w.down_rotation = ckpt.load("model.down_proj_rotation").to(device, dtype);
  if (c.qk_rotation) w.qk_rotation = ckpt.load("model.qk_rotation").to(device, dtype);
  if (c.quant && c.quant->norm_affine) {
    w.input_norm_inverse = get("input_layernorm.affine_inverse");
    w.post_norm_inverse = get("post_attention_layernorm.affine_inverse");
  }
  if (c.mlp_bias) {
    w.gate_bias = get("mlp.gate_proj.bias");
    w.up_bias = get("mlp.up_proj.bias");
    w.down_bias = get("mlp.down_proj.bias");
  }
  return w;
}

BlockWeights BlockWeights::random(const storage::LlamaConfig& c, at::ScalarType dtype, double weight_std,
                                  double norm_std) {
  auto mat = [&](std::int64_t o, std::int64_t i) { return (at::randn({o, i}, at::kDouble) * weight_std).to(dtype); };
  BlockWeights w;
  w.input_norm = (1 + norm_std * at::randn({c.hidden_size}, at::kDouble)).to(dtype);
  w.post_norm = (1 + norm_std * at::randn({c.hidden_size}, at::kDouble)).to(dtype);
  w.q = mat(c.q_dim(), c.hidden_size);
  w.k = mat(c.kv_dim(), c.hidden_size);
  w.v = mat(c.kv_dim(), c.hidden_size);
  w.o = mat(c.hidden_size, c.q_dim());
  w.gate = mat(c.intermediate_size, c.hidden_size);
  w.up = mat(c.intermediate_size, c.hidden_size);
  w.down = mat(c.hidden_size, c.intermediate_size);
  if (c.qk_norm) {
    w.q_norm = (1 + norm_std * at::randn({c.head_dim}, at::kDouble)).to(dtype);
    w.k_norm = (1 + norm_std * at::randn({c.head_dim}, at::kDouble)).to(dtype);
  }
  return w;
}

// Every tensor of a block, for what applies to all of them alike.
template <typename W, typename F>
static void for_each_tensor(W& w, F&& f) {
  for (auto* t : {&w.input_norm, &w.post_norm, &w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down, &w.q_bias, &w.k_bias,
                  &w.v_bias, &w.o_bias, &w.gate_bias, &w.up_bias, &w.down_bias, &w.input_norm_bias, &w.post_norm_bias,
                  &w.input_norm_inverse, &w.post_norm_inverse, &w.q_norm, &w.k_norm, &w.down_rotation, &w.qk_rotation}) {
    if (t->defined()) f(*t);
  }
}

std::uint64_t BlockWeights::nbytes() const {
  std::uint64_t n = 0;
  for_each_tensor(*this, [&](const at::Tensor& t) { n += static_cast<std::uint64_t>(t.nbytes()); });
  return n;
}

BlockWeights BlockWeights::to(const at::Device& device) const {
  BlockWeights out = *this;
  for_each_tensor(out, [&](at::Tensor& t) { t = t.to(device); });
  return out;
}

// Half-precision activations are normalised and soft-maxed in fp32 (as HF does); fp32 and fp64 stay as
// they are, which keeps fp64 equivalence checks exact.
static at::ScalarType at_least_float(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto xf = x.to(at_least_float(x.scalar_type()));
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  auto normed = (xf * at::rsqrt(var + eps)).to(x.scalar_type());
  return weight * normed;
}

at::Tensor block_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& inverse,
                      double eps) {
  at::Tensor n = rms_norm(x, weight, eps);
  if (bias.defined()) n = n + bias;
  if (inverse.defined()) n = at::matmul(n, inverse);
  return n;
}

// Qwen3's per-head RMSNorm over head_dim of x [B, T, heads, d]; x itself when the model has none.
static at::Tensor head_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return weight.defined() ? rms_norm(x, weight, eps) : x;
}

// [T, T] true where query i may attend to key j: j <= i and i - j < window (transformers' sliding window).
static at::Tensor window_mask(std::int64_t T, std::int64_t window, const at::Device& device) {
  const at::Tensor i = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(1);
  const at::Tensor j = i.transpose(0, 1);
  return (j <= i) & ((i - j) < window);
}

at::Tensor block_forward(const storage::LlamaConfig& c, const BlockWeights& w, const at::Tensor& x,
                         const RopeTables& rope, const ActQuantSpec& act, BlockTaps* taps) {
  const std::int64_t B = x.size(0), T = x.size(1);
  const std::int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
  auto aq = [&](const at::Tensor& t) { return fake_quant_act(t, act); };
  auto aq_heads = [&](const at::Tensor& t) { return act.heads ? aq(t) : t; };

  auto n1 = aq(block_norm(x, w.input_norm, w.input_norm_bias, w.input_norm_inverse, c.rms_norm_eps));
  // Q and K after RoPE, and V, are quantized per (token, head) over head_dim. Both happen in the
  // linears' [B, T, heads, d] layout, where those rows are contiguous (no copies), and only then are
  // the heads moved in front for attention.
  const auto per_token = RopeLayout::kTokensHeads;
  // R3 (online, when the model has one) rotates each head's q and k alike after RoPE, before they are quantized.
  auto r3 = [&](const at::Tensor& t) { return w.qk_rotation.defined() ? at::matmul(t, w.qk_rotation.to(t.scalar_type())) : t; };
  auto q = aq_heads(r3(apply_rope(head_norm(linear(n1, w.q, w.q_bias).view({B, T, nh, d}), w.q_norm, c.rms_norm_eps), rope, 0,
                            per_token)))
               .transpose(1, 2);
  auto k = aq_heads(r3(apply_rope(head_norm(linear(n1, w.k, w.k_bias).view({B, T, nkv, d}), w.k_norm, c.rms_norm_eps), rope,
                            0, per_token)))
               .transpose(1, 2);
  auto v = aq_heads(linear(n1, w.v, w.v_bias).view({B, T, nkv, d})).transpose(1, 2);
  // Causal softmax(q kᵀ / √d) v, KV head j serving query heads [j*g, (j+1)*g): the fused kernel (flash
  // attention on CPU and GPU) skips the masked half and never materialises the [T, T] scores, 2-7x faster
  // than the explicit form forward and backward (same values to ~1e-6: an online softmax sums in blocks).
  // A sliding window shorter than the sequence needs an explicit mask.
  const bool windowed = c.sliding_window > 0 && T > c.sliding_window;
  const std::optional<at::Tensor> mask = windowed ? std::optional<at::Tensor>(window_mask(T, c.sliding_window, x.device()))
                                                  : std::nullopt;
  auto attn = at::scaled_dot_product_attention(q, k, v, mask, 0.0, /*is_causal=*/!windowed, std::nullopt,
                                               /*enable_gqa=*/nkv != nh)
                  .transpose(1, 2)
                  .reshape({B, T, nh * d});
  auto h = x + linear(aq(attn), w.o, w.o_bias);
  if (taps) {
    taps->qkv_input = n1;
    taps->o_input = attn;
  }

  auto n2 = aq(block_norm(h, w.post_norm, w.post_norm_bias, w.post_norm_inverse, c.rms_norm_eps));
  if (taps) taps->fc1_input = n2;
  auto mlp = at::silu(linear(n2, w.gate, w.gate_bias)) * linear(n2, w.up, w.up_bias);
  if (w.down_rotation.defined()) mlp = at::matmul(mlp, w.down_rotation.to(mlp.scalar_type()));  // R4, online
  mlp = aq(mlp);
  if (taps) taps->down_input = mlp;
  return h + linear(mlp, w.down, w.down_bias);
}

at::Tensor block_decode(const storage::LlamaConfig& c, const BlockWeights& w, const at::Tensor& x,
                        const RopeTables& rope, KvCache& cache) {
  const std::int64_t B = x.size(0), pos = cache.length();
  const std::int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
  auto n1 = block_norm(x, w.input_norm, w.input_norm_bias, w.input_norm_inverse, c.rms_norm_eps);
  auto q = apply_rope(head_norm(linear(n1, w.q, w.q_bias).view({B, 1, nh, d}), w.q_norm, c.rms_norm_eps).transpose(1, 2),
                      rope, pos);
  auto k = apply_rope(head_norm(linear(n1, w.k, w.k_bias).view({B, 1, nkv, d}), w.k_norm, c.rms_norm_eps).transpose(1, 2),
                      rope, pos);
  auto v = linear(n1, w.v, w.v_bias).view({B, 1, nkv, d}).transpose(1, 2);
  cache.k = cache.k.defined() ? at::cat({cache.k, k}, 2) : k;
  cache.v = cache.v.defined() ? at::cat({cache.v, v}, 2) : v;
  // With a sliding window only the last sliding_window positions are attended to (the cache keeps all,
  // so positions stay absolute).
  const std::int64_t total = cache.length(), g = nh / nkv;
  const std::int64_t T = c.sliding_window > 0 ? std::min(total, c.sliding_window) : total;
  auto keys = cache.k.narrow(2, total - T, T).unsqueeze(2).expand({B, nkv, g, T, d}).reshape({B, nh, T, d});
  auto vals = cache.v.narrow(2, total - T, T).unsqueeze(2).expand({B, nkv, g, T, d}).reshape({B, nh, T, d});
  auto scores = at::matmul(q, keys.transpose(2, 3)) / std::sqrt(static_cast<double>(d));  // all earlier positions
  auto probs = at::softmax(scores, -1, at_least_float(scores.scalar_type())).to(q.scalar_type());
  auto attn = at::matmul(probs, vals).transpose(1, 2).reshape({B, 1, nh * d});
  auto h = x + linear(attn, w.o, w.o_bias);
  auto n2 = block_norm(h, w.post_norm, w.post_norm_bias, w.post_norm_inverse, c.rms_norm_eps);
  auto mlp = at::silu(linear(n2, w.gate, w.gate_bias)) * linear(n2, w.up, w.up_bias);
  if (w.down_rotation.defined()) mlp = at::matmul(mlp, w.down_rotation.to(mlp.scalar_type()));  // R4: down is W·R4
  return h + linear(mlp, w.down, w.down_bias);  // (R3 is skipped here: nothing is quantized and q·kᵀ is unchanged)
}

}  // namespace qforge::worker
