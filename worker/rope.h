// Rotary position embedding, HF convention: rotate_half over the two halves of each head
// (pairs (i, i + d/2)), with rope_scaling types default, linear, dynamic (NTK) and llama3.
#pragma once

#include <ATen/core/Tensor.h>

#include "storage/hf_config.h"

namespace qforge::worker {

// Inverse frequencies [head_dim/2] in fp32 after the scaling rule of the config, for a run over
// `seqlen` positions (only the dynamic type depends on it).
at::Tensor rope_inv_freq(const storage::LlamaConfig& config, std::int64_t seqlen);

struct RopeTables {
  at::Tensor cos;  // [seqlen, head_dim], fp32
  at::Tensor sin;
};

RopeTables make_rope_tables(const storage::LlamaConfig& config, std::int64_t seqlen, const at::Device& device);

// Where the positions are in a 4-d tensor: [batch, heads, seqlen, head_dim] (HF's layout) or
// [batch, seqlen, heads, head_dim] (a linear's output viewed per head, before any transpose).
enum class RopeLayout { kHeadsTokens, kTokensHeads };

// x at positions offset..offset+seqlen-1; returns x*cos + rotate_half(x)*sin in x's dtype (the product
// is formed in x's dtype as HF does). Each element's value does not depend on the layout.
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rope, std::int64_t offset = 0,
                      RopeLayout layout = RopeLayout::kHeadsTokens);

}  // namespace qforge::worker
