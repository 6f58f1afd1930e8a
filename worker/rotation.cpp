#include "worker/rotation.h"

#include <ATen/ATen.h>

#include <map>

#include "common/error.h"
#include "partition/model_index.h"
#include "storage/hf_config.h"
#include "storage/safetensors.h"

namespace qforge::worker {

namespace fs = std::filesystem;

namespace {

// W [out, in] reading a norm's output: the norm weight g scales its input columns.
void fold_norm(at::Tensor& norm, const std::vector<at::Tensor*>& readers) {
  for (at::Tensor* w : readers) *w = *w * norm.unsqueeze(0);
  norm = at::ones_like(norm);
}

void rotate_readers(const std::vector<at::Tensor*>& readers, const at::Tensor& r) {
  for (at::Tensor* w : readers) *w = at::matmul(*w, r);
}

void rotate_writer(at::Tensor& w, at::Tensor& bias, const at::Tensor& r) {
  w = at::matmul(r.t(), w);
  if (bias.defined()) bias = at::matmul(bias, r);
}

// R2 on head h's d outputs of v_proj and the matching d inputs of o_proj.
void rotate_heads(const storage::LlamaConfig& c, BlockWeights& b, const at::Tensor& r2) {
  const std::int64_t d = c.head_dim, hidden = b.v.size(1);
  b.v = at::matmul(r2.t(), b.v.view({c.num_key_value_heads, d, hidden})).reshape({c.num_key_value_heads * d, hidden});
  if (b.v_bias.defined()) b.v_bias = at::matmul(b.v_bias.view({c.num_key_value_heads, d}), r2).reshape({-1});
  const std::int64_t out = b.o.size(0);
  b.o = at::matmul(b.o.view({out, c.num_attention_heads, d}), r2).reshape({out, c.num_attention_heads * d});
}

}  // namespace

void rotate_block(const storage::LlamaConfig& c, BlockWeights& b, const ModelRotations& r, int index) {
  const at::Tensor &r1 = r.r1, &r2 = r.r2;
  at::NoGradGuard no_grad;
  if (b.input_norm_bias.defined() || b.post_norm_bias.defined() || b.input_norm_inverse.defined() ||
      b.post_norm_inverse.defined()) {
    throw InputError("block " + std::to_string(index), "", "has faithful extras (RMSNorm bias or runtime inverse); "
                                                            "rotations apply to stock LLaMA models");
  }
  if (r1.defined()) {
    fold_norm(b.input_norm, {&b.q, &b.k, &b.v});
    fold_norm(b.post_norm, {&b.gate, &b.up});
    rotate_readers({&b.q, &b.k, &b.v, &b.gate, &b.up}, r1);
    rotate_writer(b.o, b.o_bias, r1);
    rotate_writer(b.down, b.down_bias, r1);
  }
  if (r2.defined()) {
    QF_CHECK(r2.size(0) == c.head_dim, "R2 must be head_dim x head_dim");
    rotate_heads(c, b, r2);
  }
  if (r.r4.defined()) {
    b.down = at::matmul(b.down, r.r4);
    b.down_rotation = r.r4;
  }
  if (r.r3.defined()) {
    QF_CHECK(r.r3.size(0) == c.head_dim, "R3 must be head_dim x head_dim");
    b.qk_rotation = r.r3;
  }
}

// The embedding E·R1 and the head with the final norm folded, times R1 (a tied head becomes its own).
void rotate_globals(at::Tensor& embed, at::Tensor& final_norm, at::Tensor& head, const at::Tensor& r1) {
  at::NoGradGuard no_grad;
  head = head.clone();
  fold_norm(final_norm, {&head});
  embed = at::matmul(embed, r1);
  rotate_readers({&head}, r1);
}

void rotate_model(const storage::LlamaConfig& c, ModelWeights& m, const ModelRotations& r) {
  for (std::size_t i = 0; i < m.blocks.size(); ++i) rotate_block(c, m.blocks[i], r, static_cast<int>(i));
  if (r.r1.defined()) rotate_globals(m.embed, m.final_norm, m.head, r.r1);
}

nlohmann::json write_rotated_model(const fs::path& model, const fs::path& out, RotationKind kind, std::uint64_t seed,
                                   bool online) {
  storage::LlamaConfig cfg = storage::read_llama_config(model);
  const storage::CheckpointReader ckpt(model);
  const Rotation r1 = make_rotation(cfg.hidden_size, kind, seed);
  const Rotation r2 = make_rotation(cfg.head_dim, kind, seed + 1);
  const Rotation r4 = online ? make_rotation(cfg.intermediate_size, kind, seed + 2) : Rotation{};
  const Rotation r3 = online ? make_rotation(cfg.head_dim, kind, seed + 3) : Rotation{};
  const ModelRotations rotations{r1.matrix, r2.matrix, r3.matrix, r4.matrix};
  const std::string head_name = cfg.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  at::Tensor embed = ckpt.load("model.embed_tokens.weight").to(at::kDouble);
  at::Tensor norm = ckpt.load("model.norm.weight").to(at::kDouble);
  at::Tensor head = ckpt.load(head_name).to(at::kDouble);
  rotate_globals(embed, norm, head, r1.matrix);
  std::map<std::string, at::Tensor> globals = {
      {"model.embed_tokens.weight", embed}, {"model.norm.weight", norm}, {"lm_head.weight", head}};
  if (online) {
    globals["model.down_proj_rotation"] = r4.matrix;
    globals["model.qk_rotation"] = r3.matrix;
  }
  std::vector<storage::TensorSpec> specs;
  for (const auto& [name, t] : globals) specs.push_back({name, storage::DType::kF32, t.sizes().vec()});
  std::map<std::string, std::pair<int, std::string>> block_of;  // tensor name -> (block, suffix)
  for (int b = 0; b < cfg.num_hidden_layers; ++b) {
    for (const auto& [suffix, shape] : partition::expected_block_tensors(cfg)) {
      specs.push_back({partition::block_tensor_name(b, suffix), storage::DType::kF32, shape});
      block_of[specs.back().name] = {b, suffix};
    }
  }
  int current = -1;
  BlockWeights block;
  fs::create_directories(out);
  storage::CheckpointWriter(out, specs, 0).write([&](const storage::TensorSpec& spec) {
    const auto g = globals.find(spec.name);
    if (g != globals.end()) return g->second.to(at::kFloat);
    const auto& [b, suffix] = block_of.at(spec.name);
    if (b != current) {  // tensors come in spec order: one block at a time
      current = b;
      block = BlockWeights::load(ckpt, cfg, current, at::kDouble, at::kCPU);
      rotate_block(cfg, block, rotations, current);
    }
    return block.tensor(suffix).to(at::kFloat);
  });
  cfg.tie_word_embeddings = false;
  cfg.down_proj_rotation = cfg.qk_rotation = online;
  cfg.torch_dtype = "float32";
  storage::write_llama_config(out, cfg);
  storage::copy_model_side_files(model, out);
  nlohmann::json record = {{"kind", rotation_kind_name(kind)}, {"seed", seed}, {"r1", r1.construction}, {"r2", r2.construction}};
  if (online) {
    record["r3"] = r3.construction + " (online, on Q and K after RoPE)";
    record["r4"] = r4.construction + " (online, on down_proj's input)";
  }
  return record;
}

}  // namespace qforge::worker
