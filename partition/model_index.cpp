#include "partition/model_index.h"

#include <numeric>
#include <regex>
#include <set>
#include <sstream>

#include "common/error.h"

namespace qforge::partition {

using Shape = std::vector<std::int64_t>;

static std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (std::size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

std::string block_tensor_name(int block, const std::string& suffix) {
  return "model.layers." + std::to_string(block) + "." + suffix;
}

std::vector<std::pair<std::string, Shape>> expected_block_tensors(const LlamaConfig& c) {
  const std::int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  std::vector<std::pair<std::string, Shape>> out = {
      {"input_layernorm.weight", {h}},
      {"self_attn.q_proj.weight", {q, h}},
      {"self_attn.k_proj.weight", {kv, h}},
      {"self_attn.v_proj.weight", {kv, h}},
      {"self_attn.o_proj.weight", {h, q}},
      {"post_attention_layernorm.weight", {h}},
      {"mlp.gate_proj.weight", {f, h}},
      {"mlp.up_proj.weight", {f, h}},
      {"mlp.down_proj.weight", {h, f}},
  };
  if (c.qkv_bias) {
    out.push_back({"self_attn.q_proj.bias", {q}});
    out.push_back({"self_attn.k_proj.bias", {kv}});
    out.push_back({"self_attn.v_proj.bias", {kv}});
  }
  if (c.o_bias) out.push_back({"self_attn.o_proj.bias", {h}});
  if (c.qk_norm) {
    out.push_back({"self_attn.q_norm.weight", {c.head_dim}});
    out.push_back({"self_attn.k_norm.weight", {c.head_dim}});
  }
  if (c.quant && c.quant->norm_bias) {
    out.push_back({"input_layernorm.bias", {h}});
    out.push_back({"post_attention_layernorm.bias", {h}});
  }
  if (c.quant && c.quant->norm_affine) {
    out.push_back({"input_layernorm.affine_inverse", {h, h}});
    out.push_back({"post_attention_layernorm.affine_inverse", {h, h}});
  }
  if (c.mlp_bias) {
    out.push_back({"mlp.gate_proj.bias", {f}});
    out.push_back({"mlp.up_proj.bias", {f}});
    out.push_back({"mlp.down_proj.bias", {h}});
  }
  return out;
}

std::vector<std::pair<std::string, Shape>> expected_global_tensors(const LlamaConfig& c) {
  std::vector<std::pair<std::string, Shape>> out = {
      {"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}},
      {"model.norm.weight", {c.hidden_size}},
  };
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
  if (c.down_proj_rotation) out.push_back({"model.down_proj_rotation", {c.intermediate_size, c.intermediate_size}});
  if (c.qk_rotation) out.push_back({"model.qk_rotation", {c.head_dim, c.head_dim}});
  return out;
}

ModelIndex::ModelIndex(const LlamaConfig& config, const std::vector<IndexedTensor>& tensors,
                       const std::string& where)
    : config_(config), blocks_(static_cast<std::size_t>(config.num_hidden_layers)) {
  std::map<std::string, const IndexedTensor*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  std::set<std::string> used;

  auto take = [&](const std::string& name, const Shape& shape) -> IndexedTensor {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw InputError(where, name, "missing tensor (required by config.json)");
    if (it->second->shape != shape) {
      throw InputError(where, name,
                       "shape " + shape_str(it->second->shape) + " does not match config.json (expected " +
                           shape_str(shape) + ")");
    }
    used.insert(name);
    return *it->second;
  };

  for (const auto& [name, shape] : expected_global_tensors(config)) globals_.push_back(take(name, shape));
  // A tied checkpoint may still carry an lm_head copy; accept it when it has the embedding's shape.
  if (config.tie_word_embeddings && by_name.count("lm_head.weight")) {
    globals_.push_back(take("lm_head.weight", {config.vocab_size, config.hidden_size}));
  }
  const auto expected = expected_block_tensors(config);
  for (int b = 0; b < config.num_hidden_layers; ++b) {
    for (const auto& [suffix, shape] : expected) blocks_[b].push_back(take(block_tensor_name(b, suffix), shape));
  }
  static const std::regex rotary(R"(^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$)");
  for (const auto& t : tensors) {
    if (used.count(t.name)) continue;
    if (std::regex_match(t.name, rotary)) {
      ignored_.push_back(t.name);
      continue;
    }
    throw InputError(where, t.name, "unexpected tensor (not part of a " + config.architecture + " with this config.json)");
  }
}

std::uint64_t ModelIndex::block_bytes(int i) const {
  std::uint64_t n = 0;
  for (const auto& t : block(i)) n += t.nbytes;
  return n;
}

std::uint64_t ModelIndex::total_bytes() const {
  std::uint64_t n = 0;
  for (const auto& t : globals_) n += t.nbytes;
  for (int i = 0; i < num_blocks(); ++i) n += block_bytes(i);
  return n;
}

namespace {

std::int64_t parameters(const std::vector<IndexedTensor>& tensors) {
  std::int64_t n = 0;
  for (const auto& t : tensors) {
    n += std::accumulate(t.shape.begin(), t.shape.end(), std::int64_t{1}, std::multiplies<std::int64_t>());
  }
  return n;
}

}  // namespace

std::int64_t ModelIndex::block_parameters(int i) const { return parameters(block(i)); }

std::int64_t ModelIndex::total_parameters() const {
  std::int64_t n = parameters(globals_);
  for (int i = 0; i < num_blocks(); ++i) n += block_parameters(i);
  return n;
}

}  // namespace qforge::partition
