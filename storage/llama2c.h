// llama2.c checkpoints -> HF-layout model folders.
//
// Version 0 ("legacy", e.g. stories260K.bin): 7 x int32 header dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; then float32 arrays token_embedding[vocab,dim], rms_att[L,dim],
// wq[L,dim,dim], wk[L,kv,dim], wv[L,kv,dim], wo[L,dim,dim], rms_ffn[L,dim], w1[L,hidden,dim],
// w2[L,dim,hidden], w3[L,hidden,dim], rms_final[dim], freq_cis_real[seq,hd/2], freq_cis_imag[seq,hd/2],
// and wcls[vocab,dim] only when vocab_size is negative (unshared classifier).
// Version 1 (export.py version1_export): u32 magic "ak42" (0x616b3432), i32 version 1, the same 7 ints,
// u8 shared_classifier, zero padding to 256 bytes; then rms_att, rms_ffn, rms_final, token_embedding,
// wq, wk, wv, wo, w1, w2, w3 and wcls when not shared.
//
// llama2.c applies RoPE to interleaved pairs (x[2i], x[2i+1]); HF rotates halves. q/k rows are
// permuted as HF's convert_llama_weights_to_hf does for Meta checkpoints:
// W.view(heads, head_dim/2, 2, dim).transpose(1, 2).reshape(heads*head_dim, dim).
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "storage/hf_config.h"

namespace qforge::storage {

namespace fs = std::filesystem;

struct Llama2cModel {
  int version = 0;
  LlamaConfig config;
  // HF names -> tensors (q/k already permuted), in HF order.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
};

// Reads and validates a llama2.c checkpoint (InputError naming the file and the header field or the
// size mismatch).
Llama2cModel read_llama2c(const fs::path& path);

// The permutation from interleaved-pair rotary layout to HF rotate_half layout, for q (heads) or k (kv heads).
at::Tensor permute_rotary_rows(const at::Tensor& w, std::int64_t heads);

// Writes config.json and model.safetensors (and copies `tokenizer` as tokenizer.bin or
// tokenizer.model when given) into out_dir.
void import_llama2c(const fs::path& in, const fs::path& out_dir, const fs::path& tokenizer = {});

}  // namespace qforge::storage
