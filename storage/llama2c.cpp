#include "storage/llama2c.h"

#include <ATen/ATen.h>

#include <cstring>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/safetensors.h"
#include "storage/tokenizer.h"

namespace qforge::storage {

namespace {

constexpr std::uint32_t kMagicV1 = 0x616b3432;  // "ak42"
constexpr std::size_t kHeaderV1Bytes = 256;

// Sequential float32 reader over the mapped file with a bounds check per array.
class FloatCursor {
 public:
  FloatCursor(const MappedFile& map, std::uint64_t offset, std::string where)
      : map_(map), offset_(offset), where_(std::move(where)) {}

  at::Tensor take(std::vector<std::int64_t> shape, const std::string& what) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    std::uint64_t bytes = static_cast<std::uint64_t>(n) * 4;
    if (offset_ + bytes > map_.size()) {
      throw InputError(where_, what, "file ends inside this array (file is " + std::to_string(map_.size()) +
                                         " bytes; the header implies more)");
    }
    at::Tensor t = at::empty(shape, at::kFloat);
    std::memcpy(t.data_ptr(), map_.data() + offset_, bytes);
    offset_ += bytes;
    return t;
  }
  void skip(std::int64_t floats, const std::string& what) {
    std::uint64_t bytes = static_cast<std::uint64_t>(floats) * 4;
    if (offset_ + bytes > map_.size()) throw InputError(where_, what, "file ends inside this array");
    offset_ += bytes;
  }
  std::uint64_t offset() const { return offset_; }

 private:
  const MappedFile& map_;
  std::uint64_t offset_;
  std::string where_;
};

std::int32_t read_i32(const std::uint8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

at::Tensor permute_rotary_rows(const at::Tensor& w, std::int64_t heads) {
  const std::int64_t rows = w.size(0), dim = w.size(1), hd = rows / heads;
  return w.view({heads, hd / 2, 2, dim}).transpose(1, 2).reshape({rows, dim}).contiguous();
}

Llama2cModel read_llama2c(const fs::path& path) {
  const std::string where = path.string();
  if (!fs::exists(path)) throw InputError(where, "", "no such file");
  MappedFile map(path);
  if (map.size() < 28) throw InputError(where, "header", "file too short for a llama2.c header (" + std::to_string(map.size()) + " bytes)");

  Llama2cModel m;
  std::uint64_t header_end = 28;
  const std::uint8_t* h = map.data();
  std::uint32_t magic;
  std::memcpy(&magic, h, 4);
  bool shared = true;
  if (magic == kMagicV1) {
    if (map.size() < kHeaderV1Bytes) throw InputError(where, "header", "file too short for a version-1 header");
    m.version = read_i32(h + 4);
    if (m.version != 1) {
      throw InputError(where, "version", "unsupported llama2.c version " + std::to_string(m.version) +
                                             " (qforge reads version 0 and the fp32 version 1)");
    }
    h += 8;
    shared = map.data()[8 + 28] != 0;
    header_end = kHeaderV1Bytes;
  }
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  std::int64_t v[7];
  for (int i = 0; i < 7; ++i) v[i] = read_i32(h + 4 * i);
  if (m.version == 0) {
    shared = v[5] > 0;
    v[5] = v[5] < 0 ? -v[5] : v[5];
  }
  for (int i = 0; i < 7; ++i) {
    if (v[i] <= 0) throw InputError(where, std::string("header.") + names[i], "must be positive, got " + std::to_string(v[i]));
  }
  const std::int64_t dim = v[0], hidden = v[1], layers = v[2], heads = v[3], kv_heads = v[4], vocab = v[5], seq = v[6];
  if (dim % heads != 0) throw InputError(where, "header.n_heads", "does not divide dim");
  if (heads % kv_heads != 0) throw InputError(where, "header.n_kv_heads", "does not divide n_heads");
  const std::int64_t hd = dim / heads, kv = kv_heads * hd;
  if (hd % 2 != 0) throw InputError(where, "header.n_heads", "head size must be even");

  std::uint64_t floats = static_cast<std::uint64_t>(vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) + dim);
  if (m.version == 0) floats += static_cast<std::uint64_t>(seq * hd);  // freq_cis real + imag
  if (!shared) floats += static_cast<std::uint64_t>(vocab * dim);
  std::uint64_t expected = header_end + 4 * floats;
  if (map.size() != expected) {
    throw InputError(where, "size", "file is " + std::to_string(map.size()) + " bytes but the header (dim=" +
                                        std::to_string(dim) + ", n_layers=" + std::to_string(layers) + ", vocab=" +
                                        std::to_string(vocab) + (shared ? ", shared" : ", unshared") +
                                        " classifier) implies " + std::to_string(expected));
  }

  LlamaConfig& c = m.config;
  c.hidden_size = dim;
  c.intermediate_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hd;
  c.vocab_size = vocab;
  c.max_position_embeddings = seq;
  c.rms_norm_eps = 1e-5;  // llama2.c run.c
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = shared;
  c.torch_dtype = "float32";

  FloatCursor cur(map, header_end, where);
  auto per_layer = [&](std::vector<std::int64_t> shape, const char* what) {
    shape.insert(shape.begin(), layers);
    return cur.take(shape, what);
  };
  at::Tensor emb, rms_att, rms_ffn, rms_final, wq, wk, wv, wo, w1, w2, w3, wcls;
  if (m.version == 0) {
    emb = cur.take({vocab, dim}, "token_embedding");
    rms_att = per_layer({dim}, "rms_att");
    wq = per_layer({dim, dim}, "wq");
    wk = per_layer({kv, dim}, "wk");
    wv = per_layer({kv, dim}, "wv");
    wo = per_layer({dim, dim}, "wo");
    rms_ffn = per_layer({dim}, "rms_ffn");
    w1 = per_layer({hidden, dim}, "w1");
    w2 = per_layer({dim, hidden}, "w2");
    w3 = per_layer({hidden, dim}, "w3");
    rms_final = cur.take({dim}, "rms_final");
    cur.skip(seq * hd, "freq_cis");
  } else {
    rms_att = per_layer({dim}, "rms_att");
    rms_ffn = per_layer({dim}, "rms_ffn");
    rms_final = cur.take({dim}, "rms_final");
    emb = cur.take({vocab, dim}, "token_embedding");
    wq = per_layer({dim, dim}, "wq");
    wk = per_layer({kv, dim}, "wk");
    wv = per_layer({kv, dim}, "wv");
    wo = per_layer({dim, dim}, "wo");
    w1 = per_layer({hidden, dim}, "w1");
    w2 = per_layer({dim, hidden}, "w2");
    w3 = per_layer({hidden, dim}, "w3");
  }
  if (!shared) wcls = cur.take({vocab, dim}, "wcls");

  auto& t = m.tensors;
  t.emplace_back("model.embed_tokens.weight", emb);
  for (std::int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "input_layernorm.weight", rms_att[l].contiguous());
    t.emplace_back(p + "self_attn.q_proj.weight", permute_rotary_rows(wq[l], heads));
    t.emplace_back(p + "self_attn.k_proj.weight", permute_rotary_rows(wk[l], kv_heads));
    t.emplace_back(p + "self_attn.v_proj.weight", wv[l].contiguous());
    t.emplace_back(p + "self_attn.o_proj.weight", wo[l].contiguous());
    t.emplace_back(p + "post_attention_layernorm.weight", rms_ffn[l].contiguous());
    t.emplace_back(p + "mlp.gate_proj.weight", w1[l].contiguous());
    t.emplace_back(p + "mlp.up_proj.weight", w3[l].contiguous());
    t.emplace_back(p + "mlp.down_proj.weight", w2[l].contiguous());
  }
  t.emplace_back("model.norm.weight", rms_final);
  if (!shared) t.emplace_back("lm_head.weight", wcls);
  return m;
}

void import_llama2c(const fs::path& in, const fs::path& out_dir, const fs::path& tokenizer) {
  Llama2cModel m = read_llama2c(in);
  if (!tokenizer.empty() && !fs::exists(tokenizer)) throw InputError(tokenizer.string(), "", "tokenizer file not found");
  fs::create_directories(out_dir);
  write_safetensors(out_dir / "model.safetensors", m.tensors);
  write_llama_config(out_dir, m.config);
  if (!tokenizer.empty()) {
    // Validated by loading; named by kind so find_model_tokenizer picks it up from the folder.
    std::string name = load_tokenizer(tokenizer)->kind() == "sentencepiece" ? "tokenizer.model" : "tokenizer.bin";
    write_file_atomic(out_dir / name, read_file(tokenizer));
  }
}

}  // namespace qforge::storage
