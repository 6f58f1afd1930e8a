#include "worker/llama_block.h"

#include <ATen/ATen.h>

#include <limits>

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
  if (c.attention_bias) {
    w.q_bias = get("self_attn.q_proj.bias");
    w.k_bias = get("self_attn.k_proj.bias");
    w.v_bias = get("self_attn.v_proj.bias");
    w.o_bias = get("self_attn.o_proj.bias");
  }
  if (c.mlp_bias) {
    w.gate_bias = get("mlp.gate_proj.bias");
    w.up_bias = get("mlp.up_proj.bias");
    w.down_bias = get("mlp.down_proj.bias");
  }
  return w;
}

std::uint64_t BlockWeights::nbytes() const {
  std::uint64_t n = 0;
  for (const at::Tensor* t : {&input_norm, &post_norm, &q, &k, &v, &o, &gate, &up, &down, &q_bias, &k_bias, &v_bias,
                              &o_bias, &gate_bias, &up_bias, &down_bias}) {
    if (t->defined()) n += static_cast<std::uint64_t>(t->nbytes());
  }
  return n;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto xf = x.to(at::kFloat);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  auto normed = (xf * at::rsqrt(var + eps)).to(x.scalar_type());
  return weight * normed;
}

at::Tensor block_forward(const storage::LlamaConfig& c, const BlockWeights& w, const at::Tensor& x,
                         const RopeTables& rope) {
  const std::int64_t B = x.size(0), T = x.size(1);
  const std::int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;

  auto n1 = rms_norm(x, w.input_norm, c.rms_norm_eps);
  auto q = linear(n1, w.q, w.q_bias).view({B, T, nh, d}).transpose(1, 2);
  auto k = linear(n1, w.k, w.k_bias).view({B, T, nkv, d}).transpose(1, 2);
  auto v = linear(n1, w.v, w.v_bias).view({B, T, nkv, d}).transpose(1, 2);
  q = apply_rope(q, rope);
  k = apply_rope(k, rope);
  if (nkv != nh) {
    // repeat_kv: KV head j serves query heads [j*g, (j+1)*g).
    const std::int64_t g = nh / nkv;
    k = k.unsqueeze(2).expand({B, nkv, g, T, d}).reshape({B, nh, T, d});
    v = v.unsqueeze(2).expand({B, nkv, g, T, d}).reshape({B, nh, T, d});
  }
  auto scores = at::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(d));
  auto mask = at::ones({T, T}, x.options().dtype(at::kBool)).triu(1);
  scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  auto attn = at::matmul(probs, v).transpose(1, 2).reshape({B, T, nh * d});
  auto h = x + linear(attn, w.o, w.o_bias);

  auto n2 = rms_norm(h, w.post_norm, c.rms_norm_eps);
  auto mlp = at::silu(linear(n2, w.gate, w.gate_bias)) * linear(n2, w.up, w.up_bias);
  return h + linear(mlp, w.down, w.down_bias);
}

}  // namespace qforge::worker
