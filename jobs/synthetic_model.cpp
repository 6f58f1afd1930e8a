#include "jobs/synthetic_model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <functional>

#include "common/error.h"
#include "common/file_util.h"
#include "partition/model_index.h"
#include "storage/safetensors.h"

namespace qforge::jobs {

namespace {

storage::LlamaConfig shape_config(std::int64_t hidden, std::int64_t inter, std::int64_t layers, std::int64_t heads,
                                  std::int64_t kv_heads, std::int64_t vocab, std::int64_t max_pos, double theta = 10000.0) {
  storage::LlamaConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = max_pos;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = theta;
  return c;
}

// FNV-1a of the name mixed with the seed: a stable per-tensor generator seed.
std::uint64_t tensor_seed(std::uint64_t seed, const std::string& name) {
  std::uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char ch : name) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

const std::vector<SyntheticShape>& synthetic_shapes() {
  static const std::vector<SyntheticShape> shapes = [] {
    std::vector<SyntheticShape> s;
    s.push_back({"tiny", "hidden 64, 4 blocks, GQA 4/2, vocab 512 (the quickstart demo model)",
                 shape_config(64, 176, 4, 4, 2, 512, 256), "float32"});
    s.push_back({"small", "hidden 256, 6 blocks, GQA 8/4, vocab 4096 (ref-6m-like)",
                 shape_config(256, 768, 6, 8, 4, 4096, 512), "float32"});
    s.push_back({"7b", "Llama-2-7B: hidden 4096, inter 11008, 32 blocks, 32 heads, vocab 32000",
                 shape_config(4096, 11008, 32, 32, 32, 32000, 4096), "float16"});
    s.push_back({"13b", "Llama-2-13B: hidden 5120, inter 13824, 40 blocks, 40 heads",
                 shape_config(5120, 13824, 40, 40, 40, 32000, 4096), "float16"});
    s.push_back({"70b", "Llama-2-70B: hidden 8192, inter 28672, 80 blocks, GQA 64/8",
                 shape_config(8192, 28672, 80, 64, 8, 32000, 4096), "float16"});
    storage::LlamaConfig l3 = shape_config(4096, 14336, 32, 32, 8, 128256, 131072, 500000.0);
    l3.rope_scaling.type = "llama3";
    l3.rope_scaling.factor = 8.0;
    l3.rope_scaling.original_max_position_embeddings = 8192;
    l3.bos_token_id = 128000;
    l3.eos_token_id = 128001;
    s.push_back({"llama3-8b", "Llama-3.1-8B: hidden 4096, inter 14336, 32 blocks, GQA 32/8, vocab 128256, llama3 rope",
                 l3, "bfloat16"});
    return s;
  }();
  return shapes;
}

const SyntheticShape& find_synthetic_shape(const std::string& name) {
  std::string known;
  for (const auto& s : synthetic_shapes()) {
    if (s.name == name) return s;
    known += (known.empty() ? "" : ", ") + s.name;
  }
  throw InputError("--shape", "", "unknown shape '" + name + "' (known: " + known + ")");
}

void write_byte_tokenizer(const fs::path& path, std::int64_t vocab_size) {
  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    pieces.emplace_back(buf);
  }
  for (char ch = 32; ch < 127; ++ch) pieces.emplace_back(1, ch);
  if (static_cast<std::int64_t>(pieces.size()) > vocab_size) {
    throw InputError("--vocab", "", "a byte-level tokenizer needs at least " + std::to_string(pieces.size()) + " tokens");
  }
  // Filler pieces start with a character no text piece can merge into, so they are never produced.
  for (std::int64_t i = static_cast<std::int64_t>(pieces.size()); i < vocab_size; ++i) {
    pieces.push_back("<extra_" + std::to_string(i) + ">");
  }
  std::string out;
  auto put = [&](const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); };
  std::int32_t max_len = 0;
  for (const auto& p : pieces) max_len = std::max<std::int32_t>(max_len, static_cast<std::int32_t>(p.size()));
  put(&max_len, 4);
  for (const auto& p : pieces) {
    float score = 0.0f;
    std::int32_t len = static_cast<std::int32_t>(p.size());
    put(&score, 4);
    put(&len, 4);
    put(p.data(), p.size());
  }
  write_file_atomic(path, out);
}

storage::LlamaConfig make_synthetic_model(const fs::path& out, const SyntheticOptions& o) {
  const SyntheticShape& shape = find_synthetic_shape(o.shape);
  storage::LlamaConfig c = shape.config;
  if (o.blocks < 0) throw InputError("--blocks", "", "must be positive");
  if (o.blocks > 0) c.num_hidden_layers = o.blocks;
  c.torch_dtype = o.dtype.empty() ? shape.default_dtype : o.dtype;
  at::ScalarType dtype = c.torch_dtype == "float32" ? at::kFloat : c.torch_dtype == "float16" ? at::kHalf
                         : c.torch_dtype == "bfloat16" ? at::kBFloat16
                         : throw InputError("--dtype", "", "unknown dtype '" + c.torch_dtype + "' (float32|float16|bfloat16)");
  const storage::DType st = storage::from_scalar_type(dtype);

  std::vector<storage::TensorSpec> specs;
  auto add = [&](const std::string& name, const std::vector<std::int64_t>& shape_) { specs.push_back({name, st, shape_}); };
  const auto globals = partition::expected_global_tensors(c);
  add(globals[0].first, globals[0].second);  // embeddings first, as HF orders them
  for (int b = 0; b < c.num_hidden_layers; ++b) {
    for (const auto& [suffix, sh] : partition::expected_block_tensors(c)) add(partition::block_tensor_name(b, suffix), sh);
  }
  for (std::size_t i = 1; i < globals.size(); ++i) add(globals[i].first, globals[i].second);

  fs::create_directories(out);
  storage::CheckpointWriter writer(out, specs, o.shard_bytes);
  writer.write([&](const storage::TensorSpec& spec) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(tensor_seed(o.seed, spec.name));
    at::Tensor t;
    const bool is_norm = spec.shape.size() == 1 && spec.name.find("norm") != std::string::npos;
    if (is_norm) {
      t = 1.0 + 0.1 * at::randn(spec.shape, gen, at::TensorOptions().dtype(at::kFloat));
    } else if (spec.shape.size() == 1) {
      t = 0.02 * at::randn(spec.shape, gen, at::TensorOptions().dtype(at::kFloat));  // biases
    } else {
      // HF initializer_range 0.02 for every matrix.
      t = at::randn(spec.shape, gen, at::TensorOptions().dtype(at::kFloat)).mul_(0.02);
    }
    return t.to(dtype).contiguous();
  });
  storage::write_llama_config(out, c);
  if (o.write_tokenizer && c.vocab_size >= 355) write_byte_tokenizer(out / "tokenizer.bin", c.vocab_size);
  return c;
}

}  // namespace qforge::jobs
