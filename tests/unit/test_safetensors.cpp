// safetensors single files: write/read round trips for every supported dtype, byte-exact output, and
// one test per way a header or buffer can be malformed (each must be an InputError naming the file
// and the offending field).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>

#include "common/error.h"
#include "storage/safetensors.h"
#include "tests/support/test_data.h"

namespace qforge::storage {
namespace {

std::string le64(std::uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return out;
}

using test::read_bytes;
using test::write_bytes;

// [u64 header length][header][data], with the length overridable to forge bad files.
std::string raw_file(const std::string& header, const std::string& data,
                     std::optional<std::uint64_t> header_len = std::nullopt) {
  return le64(header_len.value_or(header.size())) + header + data;
}

// `"name":{"dtype":..,"shape":..,"data_offsets":[b,e]}` for hand-written headers.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, std::uint64_t begin,
                  std::uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Runs f and checks it throws InputError whose message names `file` and contains every word.
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

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("safetensors"); }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
};

// ---- round trips -------------------------------------------------------------------------------------

class SafetensorsRoundTrip : public TempDirTest {
 protected:
  // Writes the tensors, reads them back and checks dtype, shape, info and values.
  void round_trip(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
    const fs::path p = dir_ / "rt.safetensors";
    write_safetensors(p, tensors);
    SafetensorsFile f(p);
    ASSERT_EQ(f.tensors().size(), tensors.size());
    EXPECT_EQ(f.data_offset() % 8, 0u);
    for (const auto& [name, want] : tensors) {
      const TensorInfo& info = f.info(name);
      EXPECT_EQ(info.dtype, from_scalar_type(want.scalar_type())) << name;
      EXPECT_EQ(info.shape, want.sizes().vec()) << name;
      EXPECT_EQ(info.numel(), want.numel()) << name;
      EXPECT_EQ(info.nbytes(), static_cast<std::uint64_t>(want.nbytes())) << name;
      at::Tensor got = f.load(name);
      EXPECT_EQ(got.scalar_type(), want.scalar_type()) << name;
      EXPECT_EQ(got.sizes(), want.sizes()) << name;
      EXPECT_TRUE(got.equal(want)) << name;
    }
  }
  // A matrix, a 0-d scalar and an empty tensor of one dtype.
  void round_trip_dtype(const at::Tensor& matrix) {
    const auto opts = matrix.options();
    round_trip({{"matrix", matrix},
                {"scalar", matrix.flatten()[matrix.numel() - 1].clone()},
                {"empty", at::empty({0, 3}, opts)}});
  }
};

TEST_F(SafetensorsRoundTrip, F32) { round_trip_dtype(at::randn({5, 7})); }
TEST_F(SafetensorsRoundTrip, F16) { round_trip_dtype(at::randn({4, 9}).to(at::kHalf)); }
TEST_F(SafetensorsRoundTrip, BF16) { round_trip_dtype(at::randn({3, 6}).to(at::kBFloat16)); }
TEST_F(SafetensorsRoundTrip, I64) {
  round_trip_dtype(at::arange(-6, 6, at::kLong).mul(std::int64_t{1} << 40).reshape({3, 4}));
}
TEST_F(SafetensorsRoundTrip, I32) { round_trip_dtype(at::arange(-10, 10, at::kInt).mul(100000).reshape({4, 5})); }
TEST_F(SafetensorsRoundTrip, I8) { round_trip_dtype(at::arange(-128, 128, at::kShort).to(at::kChar).reshape({16, 16})); }
TEST_F(SafetensorsRoundTrip, U8) { round_trip_dtype(at::arange(0, 256, at::kShort).to(at::kByte).reshape({8, 32})); }

TEST_F(SafetensorsRoundTrip, MixedDTypesInOneFile) {
  round_trip({{"b", at::randn({3}).to(at::kBFloat16)},  // odd byte sizes: later tensors are not aligned
              {"a", at::arange(5, at::kLong)},
              {"c", at::ones({1, 1, 1}, at::kByte)}});
}

TEST_F(SafetensorsRoundTrip, NonContiguousInputIsWrittenRowMajor) {
  at::Tensor t = at::arange(12, at::kFloat).reshape({3, 4}).t();
  ASSERT_FALSE(t.is_contiguous());
  const fs::path p = dir_ / "nc.safetensors";
  write_safetensors(p, {{"t", t}});
  EXPECT_TRUE(SafetensorsFile(p).load("t").equal(t));
}

TEST_F(SafetensorsRoundTrip, LoadedTensorOutlivesTheFile) {
  const fs::path p = dir_ / "own.safetensors";
  at::Tensor want = at::randn({64, 64});
  write_safetensors(p, {{"w", want}});
  at::Tensor got;
  {
    SafetensorsFile f(p);
    got = f.load("w");
  }
  fs::remove(p);
  EXPECT_TRUE(got.equal(want));
}

TEST_F(SafetensorsRoundTrip, Metadata) {
  const fs::path p = dir_ / "meta.safetensors";
  write_safetensors(p, {{"w", at::ones({2})}}, {{"quant", "w4g128"}, {"note", "ünïcode ✓"}});
  SafetensorsFile f(p);
  const std::map<std::string, std::string> want{{"format", "pt"}, {"quant", "w4g128"}, {"note", "ünïcode ✓"}};
  EXPECT_EQ(f.metadata(), want);

  const fs::path q = dir_ / "meta_tf.safetensors";
  write_safetensors(q, {{"w", at::ones({2})}}, {{"format", "tf"}});
  EXPECT_EQ(SafetensorsFile(q).metadata().at("format"), "tf");
}

TEST_F(SafetensorsRoundTrip, NoTensors) {
  const fs::path p = dir_ / "none.safetensors";
  write_safetensors(p, {});
  SafetensorsFile f(p);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.metadata().at("format"), "pt");
}

// ---- writer output -----------------------------------------------------------------------------

class SafetensorsWriter : public TempDirTest {};

TEST_F(SafetensorsWriter, ExactBytesForASmallFile) {
  const fs::path p = dir_ / "golden.safetensors";
  write_safetensors(p, {{"b", at::tensor({1.0f, 2.0f})}, {"a", at::tensor({7}, at::kByte)}});
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"a":{"data_offsets":[8,9],"dtype":"U8","shape":[1]},)"
      R"("b":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}})";
  std::string header = json + std::string((8 - json.size() % 8) % 8, ' ');
  const float floats[2] = {1.0f, 2.0f};
  std::string data(reinterpret_cast<const char*>(floats), sizeof(floats));
  data.push_back('\x07');
  EXPECT_EQ(read_bytes(p), raw_file(header, data));
}

TEST_F(SafetensorsWriter, EqualContentGivesIdenticalBytes) {
  at::manual_seed(3);
  const std::vector<std::pair<std::string, at::Tensor>> tensors{
      {"z.weight", at::randn({17, 5})}, {"a.bias", at::randn({5}).to(at::kHalf)}, {"ids", at::arange(9, at::kLong)}};
  fs::create_directories(dir_ / "x");
  write_safetensors(dir_ / "one.safetensors", tensors, {{"k", "v"}});
  write_safetensors(dir_ / "x" / "two.safetensors", tensors, {{"k", "v"}});
  const std::string one = read_bytes(dir_ / "one.safetensors");
  EXPECT_FALSE(one.empty());
  EXPECT_EQ(one, read_bytes(dir_ / "x" / "two.safetensors"));
  std::uint64_t n = 0;
  std::memcpy(&n, one.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_TRUE(one[8 + n - 1] == ' ' || one[8 + n - 1] == '}');
}

TEST_F(SafetensorsWriter, LeavesNoTemporaryFiles) {
  write_safetensors(dir_ / "a.safetensors", {{"w", at::ones({3})}});
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"a.safetensors"});
}

// ---- reader validation -------------------------------------------------------------------------

class SafetensorsReader : public TempDirTest {
 protected:
  // Writes `bytes` as bad.safetensors and expects opening it to fail naming the file and `words`.
  void expect_rejected(const std::string& bytes, std::initializer_list<std::string> words) {
    const fs::path p = dir_ / "bad.safetensors";
    write_bytes(p, bytes);
    expect_input_error([&] { SafetensorsFile f(p); }, p.string(), words);
  }
  static std::string f32_data(int n) { return std::string(static_cast<std::size_t>(4 * n), '\x01'); }
};

TEST_F(SafetensorsReader, AcceptsHandWrittenFileWithSpacePadding) {
  const fs::path p = dir_ / "ok.safetensors";
  const std::string header = "{" + entry("w", "F32", "[2]", 0, 8) + "," + entry("e", "I8", "[0]", 8, 8) + "}   \x20";
  write_bytes(p, raw_file(header, f32_data(2)));
  SafetensorsFile f(p);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "w");  // buffer order: w [0,8) then e [8,8)
  EXPECT_EQ(f.data_offset(), 8 + header.size());
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.load("e").numel(), 0);
}

TEST_F(SafetensorsReader, ReadsSharedStories260K) {
  const fs::path p = test::shared_data() / "models" / "stories260K-hf" / "model.safetensors";
  QF_REQUIRE_DATA(p);
  SafetensorsFile f(p);
  EXPECT_EQ(f.tensors().size(), 47u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorInfo& emb = f.info("model.embed_tokens.weight");
  EXPECT_EQ(emb.dtype, DType::kF32);
  EXPECT_EQ(emb.shape, (std::vector<std::int64_t>{512, 64}));
  at::Tensor t = f.load("model.embed_tokens.weight");
  EXPECT_TRUE(t.isfinite().all().item<bool>());
}

TEST_F(SafetensorsReader, RejectsEmptyFile) { expect_rejected("", {"empty"}); }

TEST_F(SafetensorsReader, RejectsFileShorterThan8Bytes) { expect_rejected(std::string("\x02\0\0\0", 4), {"header", "shorter"}); }

TEST_F(SafetensorsReader, RejectsHeaderLengthLargerThanFile) {
  expect_rejected(raw_file("{}", "", 4096), {"header", "larger than the file"});
}

TEST_F(SafetensorsReader, RejectsHeaderLengthOverLimit) {
  expect_rejected(raw_file("{}", "", kMaxHeaderBytes + 1), {"header", "limit"});
}

TEST_F(SafetensorsReader, RejectsHeaderThatIsNotJson) {
  expect_rejected(raw_file("{\"w\": nope}", ""), {"header", "JSON"});
}

TEST_F(SafetensorsReader, RejectsJunkAfterTheJsonObject) {
  expect_rejected(raw_file("{}  x", ""), {"header", "JSON"});
}

TEST_F(SafetensorsReader, RejectsHeaderThatIsNotAnObject) {
  expect_rejected(raw_file("[1, 2]  ", ""), {"header", "object"});
}

TEST_F(SafetensorsReader, RejectsInvalidUtf8InString) {
  expect_rejected(raw_file("{\"__metadata__\":{\"k\":\"\xC3\x28\"}}", ""), {"header", "UTF-8"});
}

TEST_F(SafetensorsReader, RejectsOverlongUtf8) {
  expect_rejected(raw_file("{\"__metadata__\":{\"k\":\"\xC0\xAF\"}}", ""), {"header", "UTF-8"});
}

TEST_F(SafetensorsReader, RejectsUnknownDtype) {
  expect_rejected(raw_file("{" + entry("w", "F64", "[1]", 0, 8) + "}", std::string(8, '\0')),
                  {"w.dtype", "unsupported dtype", "F64"});
}

TEST_F(SafetensorsReader, RejectsNegativeShapeEntry) {
  expect_rejected(raw_file("{" + entry("w", "F32", "[2,-1]", 0, 8) + "}", f32_data(2)), {"w.shape", "non-negative"});
}

TEST_F(SafetensorsReader, RejectsFractionalShapeEntry) {
  expect_rejected(raw_file("{" + entry("w", "F32", "[2.0]", 0, 8) + "}", f32_data(2)), {"w.shape"});
}

TEST_F(SafetensorsReader, RejectsShapeProductOverflow) {
  expect_rejected(raw_file("{" + entry("w", "F32", "[4294967296,4294967296,2]", 0, 8) + "}", f32_data(2)),
                  {"w.shape", "overflow"});
}

TEST_F(SafetensorsReader, RejectsByteSizeOverflow) {
  // 2^62 elements fit in 64 bits, 2^62 * 4 bytes do not.
  expect_rejected(raw_file("{" + entry("w", "F32", "[4611686018427387904]", 0, 8) + "}", f32_data(2)),
                  {"w.shape", "overflow"});
}

TEST_F(SafetensorsReader, RejectsOffsetsPastTheEnd) {
  expect_rejected(raw_file("{" + entry("w", "F32", "[4]", 0, 16) + "}", f32_data(2)), {"w.data_offsets", "past the end"});
}

TEST_F(SafetensorsReader, RejectsBeginAfterEnd) {
  expect_rejected(raw_file("{" + entry("w", "F32", "[0]", 8, 4) + "}", f32_data(2)), {"w.data_offsets", "begin > end"});
}

TEST_F(SafetensorsReader, RejectsMalformedOffsets) {
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", f32_data(2)),
                  {"w.data_offsets", "two non-negative integers"});
}

TEST_F(SafetensorsReader, RejectsOverlappingOffsets) {
  expect_rejected(raw_file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}", f32_data(3)),
                  {"b.data_offsets", "overlaps", "a"});
}

TEST_F(SafetensorsReader, RejectsHoleBetweenTensors) {
  expect_rejected(raw_file("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}", f32_data(3)),
                  {"b.data_offsets", "hole"});
}

TEST_F(SafetensorsReader, RejectsHoleAtTheStart) {
  expect_rejected(raw_file("{" + entry("a", "F32", "[1]", 4, 8) + "}", f32_data(2)), {"a.data_offsets", "hole"});
}

TEST_F(SafetensorsReader, RejectsSizeMismatch) {
  expect_rejected(raw_file("{" + entry("w", "F16", "[3]", 0, 8) + "}", f32_data(2)),
                  {"w.data_offsets", "does not match shape"});
}

TEST_F(SafetensorsReader, RejectsTrailingBytesAfterBuffer) {
  expect_rejected(raw_file("{" + entry("w", "F32", "[2]", 0, 8) + "}", f32_data(3)), {"data buffer", "trailing"});
}

TEST_F(SafetensorsReader, RejectsDuplicateTensorNames) {
  expect_rejected(raw_file("{" + entry("w", "F32", "[1]", 0, 4) + "," + entry("w", "F32", "[1]", 4, 8) + "}", f32_data(2)),
                  {"w", "duplicate"});
}

TEST_F(SafetensorsReader, RejectsDuplicateFieldInsideEntry) {
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}})", f32_data(1)),
                  {"w.dtype", "duplicate"});
}

TEST_F(SafetensorsReader, RejectsMissingField) {
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", f32_data(1)), {"w.shape", "missing"});
}

TEST_F(SafetensorsReader, RejectsUnknownField) {
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", f32_data(1)),
                  {"w.x", "unknown field"});
}

TEST_F(SafetensorsReader, RejectsNonStringMetadata) {
  expect_rejected(raw_file(R"({"__metadata__":{"format":"pt","n":3}})", ""), {"__metadata__.n", "string"});
}

TEST_F(SafetensorsReader, MissingTensorViaInfoAndLoad) {
  const fs::path p = dir_ / "one.safetensors";
  write_safetensors(p, {{"present", at::ones({2})}});
  SafetensorsFile f(p);
  EXPECT_EQ(f.find("absent"), nullptr);
  expect_input_error([&] { f.info("absent"); }, p.string(), {"absent", "missing tensor"});
  expect_input_error([&] { f.load("absent"); }, p.string(), {"absent", "missing tensor"});
}

TEST_F(SafetensorsReader, RejectsMissingFileAndDirectory) {
  const fs::path p = dir_ / "nope.safetensors";
  expect_input_error([&] { SafetensorsFile f(p); }, p.string(), {"cannot open"});
  expect_input_error([&] { SafetensorsFile f(dir_); }, dir_.string(), {"not a regular file"});
}

}  // namespace
}  // namespace qforge::storage
