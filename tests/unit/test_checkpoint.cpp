// Whole checkpoints: shard planning, CheckpointWriter + CheckpointReader round trips (single file and
// sharded with an index), index validation, and that reading tensor by tensor keeps RSS flat.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/safetensors.h"
#include "tests/support/test_data.h"

namespace qforge::storage {
namespace {

using json = nlohmann::json;

void expect_input_error(const std::function<void()>& f, const std::string& file,
                        std::initializer_list<std::string> words) {
  try {
    f();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << "message does not name " << file << ": " << msg;
    for (const std::string& w : words) {
      EXPECT_NE(msg.find(w), std::string::npos) << "message lacks \"" << w << "\": " << msg;
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected InputError, nothing was thrown";
}

std::vector<std::string> dir_listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TensorSpec spec_of(const std::string& name, const at::Tensor& t) {
  return {name, from_scalar_type(t.scalar_type()), t.sizes().vec()};
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("checkpoint"); }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
};

// ---- plan_shards -------------------------------------------------------------------------------

std::vector<TensorSpec> u8_specs(std::initializer_list<std::int64_t> sizes) {
  std::vector<TensorSpec> specs;
  for (std::int64_t n : sizes) specs.push_back({"t" + std::to_string(specs.size()), DType::kU8, {n}});
  return specs;
}

using Plan = std::vector<std::vector<std::size_t>>;

TEST(PlanShards, ZeroLimitIsOneShard) {
  EXPECT_EQ(plan_shards(u8_specs({5, 500, 50}), 0), (Plan{{0, 1, 2}}));
}

TEST(PlanShards, NoTensorsNoShards) { EXPECT_TRUE(plan_shards({}, 100).empty()); }

TEST(PlanShards, GreedyInGivenOrder) {
  EXPECT_EQ(plan_shards(u8_specs({40, 50, 20, 90, 10, 10}), 100), (Plan{{0, 1}, {2}, {3, 4}, {5}}));
}

TEST(PlanShards, ExactFitStaysInShard) { EXPECT_EQ(plan_shards(u8_specs({60, 40, 1}), 100), (Plan{{0, 1}, {2}})); }

TEST(PlanShards, OversizedTensorGetsItsOwnShard) {
  EXPECT_EQ(plan_shards(u8_specs({30, 250, 30, 30, 101}), 100), (Plan{{0}, {1}, {2, 3}, {4}}));
}

TEST(PlanShards, CountsBytesNotElements) {
  std::vector<TensorSpec> specs{{"a", DType::kF32, {10, 2}}, {"b", DType::kI64, {3}}, {"c", DType::kBF16, {0}}};
  EXPECT_EQ(specs[0].nbytes(), 80u);
  EXPECT_EQ(specs[1].nbytes(), 24u);
  EXPECT_EQ(specs[2].nbytes(), 0u);
  EXPECT_EQ(plan_shards(specs, 100), (Plan{{0}, {1, 2}}));
}

// ---- CheckpointWriter + CheckpointReader ---------------------------------------------------------

class CheckpointRoundTrip : public TempDirTest {};

TEST_F(CheckpointRoundTrip, SingleFileHasNoIndex) {
  std::map<std::string, at::Tensor> tensors{{"a", at::randn({4, 4})}, {"b", at::arange(6, at::kLong)}};
  std::vector<TensorSpec> specs{spec_of("b", tensors["b"]), spec_of("a", tensors["a"])};
  CheckpointWriter w(dir_, specs, 0, {{"origin", "test"}});
  EXPECT_EQ(w.file_names(), std::vector<std::string>{"model.safetensors"});
  w.write([&](const TensorSpec& s) { return tensors.at(s.name); });
  EXPECT_EQ(dir_listing(dir_), std::vector<std::string>{"model.safetensors"});

  CheckpointReader r(dir_);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.shard_names(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(r.shard_of("a"), "model.safetensors");
  EXPECT_EQ(r.total_bytes(), 64u + 48u);
  EXPECT_EQ(r.metadata().at("origin"), "test");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  for (const auto& [name, t] : tensors) EXPECT_TRUE(r.load(name).equal(t)) << name;

  // The same file opened directly.
  CheckpointReader direct(dir_ / "model.safetensors");
  EXPECT_EQ(direct.names(), r.names());
  EXPECT_TRUE(direct.load("b").equal(tensors["b"]));
}

TEST_F(CheckpointRoundTrip, ShardedWithIndex) {
  at::manual_seed(1);
  // Bytes: a 40, b 400, c 600, d 1600 (> limit), e 500, f 14; limit 1000 -> [a b] [c] [d] [e f].
  const std::vector<std::pair<std::string, at::Tensor>> tensors{
      {"a", at::randn({10})},
      {"b", at::randn({10, 10})},
      {"c", at::randn({300}).to(at::kHalf)},
      {"d", at::randn({20, 20})},
      {"e", at::randint(-100, 100, {500}, at::kChar)},
      {"f", at::randn({7}).to(at::kBFloat16)}};
  std::vector<TensorSpec> specs;
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [n, t] : tensors) {
    specs.push_back(spec_of(n, t));
    by_name[n] = t;
  }
  CheckpointWriter w(dir_, specs, 1000);
  const std::vector<std::string> files{"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                       "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                       "model.safetensors.index.json"};
  EXPECT_EQ(w.file_names(), files);
  std::vector<std::string> produced;
  w.write([&](const TensorSpec& s) {
    produced.push_back(s.name);
    return by_name.at(s.name);
  });
  EXPECT_EQ(produced, (std::vector<std::string>{"a", "b", "c", "d", "e", "f"}));
  EXPECT_EQ(dir_listing(dir_), files);

  const std::string index_text = read_file(dir_ / "model.safetensors.index.json");
  EXPECT_EQ(index_text.rfind("{\n  \"metadata\": {\n    \"total_size\": 3154\n  },\n  \"weight_map\": {\n", 0), 0u)
      << index_text;
  EXPECT_EQ(index_text.back(), '\n');
  const json index = json::parse(index_text);
  EXPECT_EQ(index["metadata"]["total_size"], 3154);
  const json want_map = {{"a", files[0]}, {"b", files[0]}, {"c", files[1]},
                         {"d", files[2]}, {"e", files[3]}, {"f", files[3]}};
  EXPECT_EQ(index["weight_map"], want_map);
  // The oversized tensor is alone in its shard.
  EXPECT_EQ(SafetensorsFile(dir_ / files[2]).tensors().size(), 1u);

  CheckpointReader r(dir_);
  EXPECT_EQ(r.shard_names(), std::vector<std::string>(files.begin(), files.end() - 1));
  EXPECT_EQ(r.names(), (std::vector<std::string>{"a", "b", "c", "d", "e", "f"}));
  EXPECT_EQ(r.total_bytes(), 3154u);
  EXPECT_EQ(r.shard_of("d"), files[2]);
  EXPECT_EQ(r.info("c").dtype, DType::kF16);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  for (const auto& [n, t] : tensors) EXPECT_TRUE(r.load(n).equal(t)) << n;

  // The index can also be named directly.
  CheckpointReader via_index(dir_ / "model.safetensors.index.json");
  EXPECT_EQ(via_index.names(), r.names());
}

TEST_F(CheckpointRoundTrip, ProducerOutputIsMadeContiguous) {
  at::Tensor t = at::arange(20, at::kFloat).reshape({4, 5}).t();
  CheckpointWriter w(dir_, {spec_of("t", t)}, 0);
  w.write([&](const TensorSpec&) { return t; });
  EXPECT_TRUE(CheckpointReader(dir_).load("t").equal(t));
}

TEST_F(CheckpointRoundTrip, ProducerMismatchIsRefused) {
  CheckpointWriter w(dir_, {{"w", DType::kF32, {2, 3}}}, 0);
  EXPECT_THROW(w.write([](const TensorSpec&) { return at::zeros({2, 3}, at::kHalf); }), InternalError);
  EXPECT_THROW(w.write([](const TensorSpec&) { return at::zeros({3, 2}); }), InternalError);
  EXPECT_TRUE(dir_listing(dir_).empty());  // nothing half-written under a final name
}

TEST_F(CheckpointRoundTrip, EqualContentGivesIdenticalFiles) {
  std::vector<TensorSpec> specs{{"x", DType::kF32, {64}}, {"y", DType::kI32, {64}}, {"z", DType::kU8, {100}}};
  auto produce = [](const TensorSpec& s) { return at::ones(s.shape, at::TensorOptions().dtype(to_scalar_type(s.dtype))); };
  CheckpointWriter(dir_ / "one", specs, 600).write(produce);
  CheckpointWriter(dir_ / "two", specs, 600).write(produce);
  ASSERT_EQ(dir_listing(dir_ / "one"), dir_listing(dir_ / "two"));
  EXPECT_EQ(dir_listing(dir_ / "one").size(), 3u);
  for (const std::string& f : dir_listing(dir_ / "one")) {
    EXPECT_EQ(read_file(dir_ / "one" / f), read_file(dir_ / "two" / f)) << f;
  }
}

// ---- CheckpointReader errors --------------------------------------------------------------------

class CheckpointReaderErrors : public TempDirTest {
 protected:
  // Two shards s1 {a, b} and s2 {c} plus an index written from `weight_map`.
  fs::path sharded(const json& weight_map) {
    write_safetensors(dir_ / "s1.safetensors", {{"a", at::ones({2})}, {"b", at::ones({3})}});
    write_safetensors(dir_ / "s2.safetensors", {{"c", at::ones({4})}});
    const fs::path index = dir_ / "model.safetensors.index.json";
    write_file_atomic(index, json{{"metadata", {{"total_size", 36}}}, {"weight_map", weight_map}}.dump());
    return index;
  }
};

TEST_F(CheckpointReaderErrors, AcceptsValidHandWrittenIndex) {
  sharded({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  CheckpointReader r(dir_);
  EXPECT_EQ(r.shard_names(), (std::vector<std::string>{"s1.safetensors", "s2.safetensors"}));
  EXPECT_EQ(r.load("c").numel(), 4);
}

TEST_F(CheckpointReaderErrors, RejectsMissingPath) {
  const fs::path p = dir_ / "no_such_model";
  expect_input_error([&] { CheckpointReader r(p); }, p.string(), {"not found"});
}

TEST_F(CheckpointReaderErrors, RejectsFolderWithoutModel) {
  expect_input_error([&] { CheckpointReader r(dir_); }, dir_.string(),
                     {"no model.safetensors or model.safetensors.index.json"});
}

TEST_F(CheckpointReaderErrors, RejectsIndexWithMissingShard) {
  const fs::path index = sharded({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s3.safetensors"}});
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map.c", "s3.safetensors", "does not exist"});
}

TEST_F(CheckpointReaderErrors, RejectsIndexTensorNotInShard) {
  const fs::path index = sharded(
      {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}, {"ghost", "s2.safetensors"}});
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map.ghost", "not found in shard"});
}

TEST_F(CheckpointReaderErrors, RejectsShardTensorNotInIndex) {
  const fs::path index = sharded({{"a", "s1.safetensors"}, {"c", "s2.safetensors"}});
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map", "b", "not listed"});
}

TEST_F(CheckpointReaderErrors, RejectsTensorListedUnderTheWrongShard) {
  const fs::path index = sharded({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"c", "s2.safetensors"}});
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map"});
}

TEST_F(CheckpointReaderErrors, RejectsIndexWithoutWeightMapObject) {
  const fs::path index = dir_ / "model.safetensors.index.json";
  write_file_atomic(index, R"({"metadata": {}, "weight_map": ["a"]})");
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map", "object"});
  write_file_atomic(index, R"({"metadata": {}})");
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map", "missing"});
  write_file_atomic(index, R"({"weight_map": {"a": 3}})");
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map.a", "shard file name"});
}

TEST_F(CheckpointReaderErrors, RejectsIndexThatIsNotJson) {
  const fs::path index = dir_ / "model.safetensors.index.json";
  write_file_atomic(index, "{\"weight_map\": {");
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"JSON"});
}

TEST_F(CheckpointReaderErrors, RejectsIndexWithDuplicateTensor) {
  const fs::path index = dir_ / "model.safetensors.index.json";
  write_safetensors(dir_ / "s1.safetensors", {{"a", at::ones({2})}});
  write_file_atomic(index, R"({"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}})");
  expect_input_error([&] { CheckpointReader r(dir_); }, index.string(), {"weight_map.a", "duplicate"});
}

TEST_F(CheckpointReaderErrors, RejectsBadShardNamingTheShard) {
  sharded({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  write_file_atomic(dir_ / "s2.safetensors", "garbage!");
  expect_input_error([&] { CheckpointReader r(dir_); }, (dir_ / "s2.safetensors").string(), {"header"});
}

TEST_F(CheckpointReaderErrors, MissingTensorNamesCheckpointAndTensor) {
  write_safetensors(dir_ / "model.safetensors", {{"a", at::ones({2})}});
  CheckpointReader r(dir_);
  EXPECT_FALSE(r.contains("zz"));
  expect_input_error([&] { r.info("zz"); }, dir_.string(), {"zz", "missing tensor"});
  expect_input_error([&] { r.load("zz"); }, dir_.string(), {"zz", "missing tensor"});
  expect_input_error([&] { r.shard_of("zz"); }, dir_.string(), {"zz", "missing tensor"});
}

// ---- lazy loading keeps RSS flat -----------------------------------------------------------------

// Current resident set of this process in bytes (VmRSS), -1 if /proc is unavailable.
std::int64_t current_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

TEST_F(CheckpointRoundTrip, LazyLoadingKeepsRssFlat) {
  if (current_rss_bytes() < 0) GTEST_SKIP() << "/proc/self/status not available";
  constexpr std::int64_t kTensorElems = 16 << 20;  // 64 MiB of F32
  constexpr int kTensors = 24;                      // 1.5 GiB in all
  constexpr std::int64_t kMiB = 1 << 20;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < kTensors; ++i) {
    specs.push_back({"model.layers." + std::to_string(i / 4) + ".w" + std::to_string(i % 4), DType::kF32, {kTensorElems}});
  }
  const auto t0 = std::chrono::steady_clock::now();
  CheckpointWriter w(dir_, specs, 512 * kMiB);
  ASSERT_EQ(w.file_names().size(), 4u);  // 3 shards of 8 tensors, plus the index
  int index = 0;
  w.write([&](const TensorSpec& s) { return at::full(s.shape, static_cast<float>(index++)); });

  const std::int64_t before_open = current_rss_bytes();
  CheckpointReader r(dir_);
  const std::int64_t after_open = current_rss_bytes();
  EXPECT_LT(after_open - before_open, 50 * kMiB) << "opening read more than the headers";
  ASSERT_EQ(r.names().size(), static_cast<std::size_t>(kTensors));

  std::int64_t peak_growth = 0;
  std::uint64_t bytes_read = 0;
  for (int i = 0; i < kTensors; ++i) {
    const std::string& name = specs[i].name;
    at::Tensor t = r.load(name);
    bytes_read += static_cast<std::uint64_t>(t.nbytes());
    EXPECT_EQ(t.data_ptr<float>()[0], static_cast<float>(i)) << name;
    EXPECT_EQ(t.data_ptr<float>()[kTensorElems - 1], static_cast<float>(i)) << name;
    peak_growth = std::max(peak_growth, current_rss_bytes() - after_open);
  }
  const std::int64_t final_growth = current_rss_bytes() - after_open;
  EXPECT_EQ(bytes_read, static_cast<std::uint64_t>(kTensors) * kTensorElems * 4);
  EXPECT_LT(peak_growth, 300 * kMiB) << "RSS grew with the number of tensors read";
  EXPECT_LT(final_growth, 300 * kMiB);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  RecordProperty("rss_peak_growth_mib", static_cast<int>(peak_growth / kMiB));
  RecordProperty("seconds", static_cast<int>(seconds));
}

}  // namespace
}  // namespace qforge::storage
