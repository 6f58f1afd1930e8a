// The LibTorch forward against independent references:
// - stories260K (GQA 8/4): llama2.c import, then greedy continuation from BOS (exact ids) and the
//   per-story NLL of the 5 TinyStories samples (within 1e-4 nats) from reference_outputs.json, which
//   an independent NumPy float32 llama2.c-semantics implementation produced;
// - aidreams260K (MHA 4/4): greedy continuation ids;
// - the imported tensors equal the separately converted stories260K-hf checkpoint.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "storage/llama2c.h"
#include "storage/safetensors.h"
#include "tests/support/test_data.h"
#include "worker/llama_model.h"

namespace qforge {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

json read_json(const fs::path& p) { return json::parse(read_file(p)); }

at::Tensor ids_tensor(const std::vector<std::int64_t>& ids) {
  return at::tensor(ids, at::kLong).unsqueeze(0);
}

std::vector<std::int64_t> greedy(const worker::LlamaModel& model, std::vector<std::int64_t> ids, int steps) {
  at::NoGradGuard no_grad;
  for (int s = 0; s < steps; ++s) {
    at::Tensor logits = model.forward(ids_tensor(ids));
    ids.push_back(logits[0][-1].argmax().item<std::int64_t>());
  }
  return ids;
}

// Imports a llama2.c model once per test binary run into a temp folder.
fs::path imported(const std::string& name) {
  static std::map<std::string, fs::path> done;
  auto it = done.find(name);
  if (it != done.end()) return it->second;
  fs::path out = test::make_temp_dir("import-" + name);
  storage::import_llama2c(test::shared_data() / "models" / name / (name + ".bin"), out);
  done[name] = out;
  return out;
}

TEST(Llama2cImport, Stories260KEqualsHfConversion) {
  const fs::path bin = test::shared_data() / "models/stories260K/stories260K.bin";
  const fs::path hf = test::shared_data() / "models/stories260K-hf/model.safetensors";
  QF_REQUIRE_DATA(bin);
  QF_REQUIRE_DATA(hf);
  storage::CheckpointReader ours(imported("stories260K"));
  storage::CheckpointReader theirs(hf);
  ASSERT_EQ(ours.names(), theirs.names());
  for (const auto& name : theirs.names()) {
    at::Tensor a = ours.load(name), b = theirs.load(name);
    ASSERT_EQ(a.sizes(), b.sizes()) << name;
    EXPECT_LE((a - b).abs().max().item<double>(), 1e-6) << name;
  }
  auto config = storage::read_llama_config(imported("stories260K"));
  EXPECT_EQ(config.num_key_value_heads, 4);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.max_position_embeddings, 512);
}

TEST(Llama2cImport, PermutationMovesInterleavedPairsToHalves) {
  // One head of size 4 over dim 1: rows (x0, x1, x2, x3) in interleaved pairs (0,1), (2,3) must become
  // rotate_half layout (x0, x2, x1, x3) so that pair i is (i, i + d/2).
  at::Tensor w = at::arange(4, at::kFloat).view({4, 1});
  at::Tensor p = storage::permute_rotary_rows(w, 1);
  EXPECT_TRUE(at::equal(p.view({4}), at::tensor({0.f, 2.f, 1.f, 3.f})));
}

TEST(ModelForward, Stories260KGreedyMatchesReference) {
  const fs::path ref = test::shared_data() / "models/stories260K/reference_outputs.json";
  QF_REQUIRE_DATA(ref);
  json j = read_json(ref);
  auto expected = j["greedy_from_bos"]["ids_including_bos"].get<std::vector<std::int64_t>>();
  worker::ModelOptions opt;
  opt.keep_weights = true;
  worker::LlamaModel model(imported("stories260K"), opt);
  auto got = greedy(model, {1}, static_cast<int>(expected.size()) - 1);
  EXPECT_EQ(got, expected);
}

TEST(ModelForward, Stories260KHfFolderGreedyMatchesReference) {
  // The same check through the separately converted HF folder (no import involved).
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  const fs::path ref = test::shared_data() / "models/stories260K/reference_outputs.json";
  QF_REQUIRE_DATA(dir / "model.safetensors");
  QF_REQUIRE_DATA(ref);
  auto expected = read_json(ref)["greedy_from_bos"]["ids_including_bos"].get<std::vector<std::int64_t>>();
  worker::ModelOptions opt;
  opt.keep_weights = true;
  worker::LlamaModel model(dir, opt);
  expected.resize(65);
  EXPECT_EQ(greedy(model, {1}, 64), expected);
}

TEST(ModelForward, Stories260KPerStoryLossWithin1e4) {
  const fs::path ref = test::shared_data() / "models/stories260K/reference_outputs.json";
  QF_REQUIRE_DATA(ref);
  json j = read_json(ref)["tinystories_sample_nll"];
  worker::LlamaModel model(imported("stories260K"));
  at::NoGradGuard no_grad;
  double total = 0;
  std::int64_t predicted = 0;
  for (const auto& story : j["stories"]) {
    auto ids = story["ids"].get<std::vector<std::int64_t>>();
    at::Tensor logp = at::log_softmax(model.forward(ids_tensor(ids))[0], -1);
    const auto n = static_cast<std::int64_t>(ids.size());
    at::Tensor target = at::tensor(std::vector<std::int64_t>(ids.begin() + 1, ids.end()), at::kLong);
    double sum_nll = -logp.slice(0, 0, n - 1).gather(1, target.unsqueeze(1)).sum().item<double>();
    EXPECT_NEAR(sum_nll / static_cast<double>(n - 1), story["mean_nll"].get<double>(), 1e-4);
    total += sum_nll;
    predicted += n - 1;
  }
  EXPECT_EQ(predicted, j["n_predicted_tokens"].get<std::int64_t>());
  EXPECT_NEAR(total / static_cast<double>(predicted), j["overall_mean_nll"].get<double>(), 1e-4);
}

TEST(ModelForward, Aidreams260KMhaGreedyMatchesReference) {
  const fs::path ref = test::shared_data() / "models/aidreams260K/reference_outputs.json";
  QF_REQUIRE_DATA(ref);
  json j = read_json(ref);
  auto expected = j["greedy_from_bos"]["ids_including_bos"].get<std::vector<std::int64_t>>();
  worker::ModelOptions opt;
  opt.keep_weights = true;
  worker::LlamaModel model(imported("aidreams260K"), opt);
  EXPECT_EQ(model.config().num_key_value_heads, model.config().num_attention_heads);
  EXPECT_EQ(greedy(model, {1}, static_cast<int>(expected.size()) - 1), expected);
}

TEST(ModelForward, BlockByBlockEqualsResidentWeights) {
  // Streaming blocks from disk and keeping them resident must give identical logits.
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  QF_REQUIRE_DATA(dir / "model.safetensors");
  worker::ModelOptions keep;
  keep.keep_weights = true;
  worker::LlamaModel streamed(dir), resident(dir, keep);
  at::Tensor ids = at::randint(0, 512, {2, 33}, at::kLong);
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(streamed.forward(ids), resident.forward(ids)));
}

}  // namespace
}  // namespace qforge

namespace qforge {
namespace {

TEST(ModelForward, KvCacheDecodeEqualsFullForward) {
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  QF_REQUIRE_DATA(dir / "model.safetensors");
  worker::ModelOptions keep;
  keep.keep_weights = true;
  worker::LlamaModel m(dir, keep);
  at::manual_seed(9);
  at::Tensor ids = at::randint(3, 512, {2, 24}, at::kLong);
  at::NoGradGuard no_grad;
  at::Tensor full = m.forward(ids);  // [2, 24, vocab]
  std::vector<worker::KvCache> caches;
  auto rope = m.rope(24);
  for (std::int64_t t = 0; t < 24; ++t) {
    at::Tensor step = m.decode(ids.slice(1, t, t + 1), caches, rope);
    EXPECT_LT((step - full.select(1, t)).abs().max().item<double>(), 1e-4) << "position " << t;
  }
}

}  // namespace
}  // namespace qforge
