// HDF5 activation cache: round trips (fp32 exact, bf16 equal to round_to_cache_dtype), gathering by
// global sample id across slice files, the refusals (missing id, id in two files, mismatched meta,
// truncated or foreign files) and the layout promises of storage/FORMAT.md (chunk per sample, no
// temporary left behind).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include <ATen/ATen.h>
#include <hdf5.h>

#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.h"
#include "storage/activation_cache.h"
#include "tests/support/test_data.h"

namespace qforge::storage {
namespace {

constexpr std::int64_t kT = 4;
constexpr std::int64_t kH = 8;

ActivationSliceMeta test_meta(CacheDType dtype = CacheDType::kF32) {
  ActivationSliceMeta m;
  m.model_fingerprint = "0123456789abcdef";
  m.job_fingerprint = "fedcba9876543210";
  m.boundary = 3;
  m.stream = "q";
  m.total_samples = 16;
  m.tokens = kT;
  m.hidden = kH;
  m.dtype = dtype;
  return m;
}

// Rows whose values encode their sample id, plus noise, so a misplaced row cannot go unnoticed.
at::Tensor rows_for(const std::vector<std::int64_t>& ids, std::uint64_t seed = 1) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({static_cast<std::int64_t>(ids.size()), kT, kH});
  for (std::size_t i = 0; i < ids.size(); ++i) x[static_cast<std::int64_t>(i)] += 10.0 * static_cast<double>(ids[i]);
  return x;
}

using test::read_bytes;
using test::write_bytes;

// Runs f and checks it throws InputError whose message contains every word.
void expect_input_error(const std::function<void()>& f, std::initializer_list<std::string> words) {
  try {
    f();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const std::string& w : words) EXPECT_NE(msg.find(w), std::string::npos) << "message lacks \"" << w << "\": " << msg;
    return;
  } catch (const std::exception& e) {
    FAIL() << "expected InputError, got: " << e.what();
  }
  FAIL() << "expected InputError, nothing thrown";
}

// Each test gets a fresh directory, removed afterwards.
class ActivationCache : public ::testing::Test {
 protected:
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  const fs::path dir = test::make_temp_dir("actcache");
};

TEST_F(ActivationCache, ParsesCacheDType) {
  EXPECT_EQ(parse_cache_dtype("fp32"), CacheDType::kF32);
  EXPECT_EQ(parse_cache_dtype("bf16"), CacheDType::kBF16);
  EXPECT_STREQ(cache_dtype_name(CacheDType::kBF16), "bf16");
  expect_input_error([] { parse_cache_dtype("fp16"); }, {"--cache-dtype", "fp16"});
}

TEST_F(ActivationCache, Fp32RoundTripIsExact) {
  const std::vector<std::int64_t> ids = {9, 2, 14};
  const at::Tensor x = rows_for(ids);
  const fs::path file = dir / "b3.q.r0.h5";
  EXPECT_GT(write_activation_slice(file, test_meta(), ids, x), 0u);

  const ActivationSliceInfo info = read_activation_slice_info(file, test_meta());
  EXPECT_EQ(info.sample_ids, ids);
  EXPECT_EQ(info.meta.model_fingerprint, "0123456789abcdef");
  EXPECT_EQ(info.meta.total_samples, 16);
  const at::Tensor back = read_activation_rows({file}, test_meta(), ids);
  EXPECT_TRUE(at::equal(back, x));
}

// Issue 18, case 5: one flipped bit in a slice's data used to give a silently different model. Every
// sample's chunk carries a checksum; the damaged row is refused naming the file, the others still read.
TEST_F(ActivationCache, AFlippedBitInTheDataIsRefusedNamingTheFile) {
  const std::vector<std::int64_t> ids = {4, 5};
  at::Tensor x = at::full({2, kT, kH}, 1234.5f);
  x[1].fill_(-2.25f);
  const fs::path file = dir / "b3.q.r0.h5";
  write_activation_slice(file, test_meta(), ids, x);
  std::string bytes = read_bytes(file);
  const float marker = 1234.5f;
  const std::size_t at = bytes.find(std::string(reinterpret_cast<const char*>(&marker), 4));
  ASSERT_NE(at, std::string::npos);
  bytes[at + 1] ^= 0x01;  // a value of sample 4 changes by about 1e-4: plausible, and wrong
  write_bytes(file, bytes);
  expect_input_error([&] { read_activation_rows({file}, test_meta(), {4}); }, {file.string(), "checksum"});
  EXPECT_TRUE(at::equal(read_activation_rows({file}, test_meta(), {5}), x.slice(0, 1, 2)));
}

TEST_F(ActivationCache, Bf16RoundTripEqualsRounding) {
  const std::vector<std::int64_t> ids = {0, 1, 2, 3};
  const at::Tensor x = rows_for(ids);
  const fs::path file = dir / "b3.q.r0.h5";
  write_activation_slice(file, test_meta(CacheDType::kBF16), ids, x);
  const at::Tensor back = read_activation_rows({file}, test_meta(CacheDType::kBF16), ids);
  EXPECT_EQ(back.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(back, round_to_cache_dtype(x, CacheDType::kBF16)));
  EXPECT_FALSE(at::equal(back, x));  // it really is stored at bf16 precision
  // Half the bytes of fp32 per element.
  std::uint64_t bytes = 0;
  read_activation_rows({file}, test_meta(CacheDType::kBF16), {1}, &bytes);
  EXPECT_EQ(bytes, static_cast<std::uint64_t>(kT * kH * 2));
}

TEST_F(ActivationCache, GathersAcrossFilesInRequestedOrder) {
  const std::vector<std::int64_t> ids_a = {5, 1, 7, 11};
  const std::vector<std::int64_t> ids_b = {0, 3, 2};
  const at::Tensor xa = rows_for(ids_a, 1);
  const at::Tensor xb = rows_for(ids_b, 2);
  const fs::path fa = dir / "a.h5";
  const fs::path fb = dir / "b.h5";
  write_activation_slice(fa, test_meta(), ids_a, xa);
  write_activation_slice(fb, test_meta(), ids_b, xb);

  // Scrambled, plus a run (7, 11: rows 2, 3 of a.h5 at consecutive output positions).
  const std::vector<std::int64_t> want = {2, 7, 11, 0, 5, 3};
  const at::Tensor got = read_activation_rows({fa, fb}, test_meta(), want);
  ASSERT_EQ(got.sizes(), (std::vector<std::int64_t>{6, kT, kH}));
  const std::vector<at::Tensor> expected = {xb[2], xa[2], xa[3], xb[0], xa[0], xb[1]};
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(at::equal(got[static_cast<std::int64_t>(i)], expected[i])) << "row for id " << want[i];
  }
}

TEST_F(ActivationCache, MissingIdIsInputError) {
  const fs::path file = dir / "a.h5";
  write_activation_slice(file, test_meta(), {1, 2}, rows_for({1, 2}));
  expect_input_error([&] { read_activation_rows({file}, test_meta(), {2, 6}); }, {"sample id 6", "a.h5"});
}

TEST_F(ActivationCache, IdInTwoFilesNamesBoth) {
  const fs::path fa = dir / "first.h5";
  const fs::path fb = dir / "second.h5";
  write_activation_slice(fa, test_meta(), {1, 2}, rows_for({1, 2}));
  write_activation_slice(fb, test_meta(), {3, 2}, rows_for({3, 2}));
  expect_input_error([&] { read_activation_rows({fa, fb}, test_meta(), {1, 2}); },
                     {"first.h5", "second.h5", "sample id 2"});
}

TEST_F(ActivationCache, MismatchedMetaNamesField) {
  const fs::path file = dir / "a.h5";
  write_activation_slice(file, test_meta(), {1}, rows_for({1}));

  ActivationSliceMeta other = test_meta();
  other.model_fingerprint = "deadbeef";
  expect_input_error([&] { read_activation_slice_info(file, other); }, {file.string(), "model_fingerprint", "deadbeef"});
  other = test_meta();
  other.boundary = 4;
  expect_input_error([&] { read_activation_slice_info(file, other); }, {file.string(), "boundary"});
  other = test_meta();
  other.stream = "fp";
  expect_input_error([&] { read_activation_rows({file}, other, {1}); }, {file.string(), "stream"});
  other = test_meta();
  other.dtype = CacheDType::kBF16;
  expect_input_error([&] { read_activation_slice_info(file, other); }, {file.string(), "dtype"});
  other = test_meta();
  other.hidden = kH * 2;
  expect_input_error([&] { read_activation_slice_info(file, other); }, {file.string(), "hidden"});
}

TEST_F(ActivationCache, TruncatedFileIsInputError) {
  const fs::path file = dir / "a.h5";
  write_activation_slice(file, test_meta(), {1, 2, 3}, rows_for({1, 2, 3}));
  const std::string bytes = read_bytes(file);
  const fs::path cut = dir / "cut.h5";
  write_bytes(cut, bytes.substr(0, bytes.size() / 2));
  expect_input_error([&] { read_activation_slice_info(cut, test_meta()); }, {cut.string()});
  expect_input_error([&] { read_activation_rows({cut}, test_meta(), {1}); }, {cut.string()});
}

TEST_F(ActivationCache, ForeignFilesAreInputErrors) {
  const fs::path text = dir / "notes.h5";
  write_bytes(text, "this is not an HDF5 file\n");
  expect_input_error([&] { read_activation_slice_info(text, test_meta()); }, {text.string(), "not an HDF5 file"});
  expect_input_error([&] { read_activation_slice_info(dir / "absent.h5", test_meta()); }, {"absent.h5"});

  // A valid HDF5 file that is not an activation cache.
  const fs::path other = dir / "other.h5";
  const hid_t fid = H5Fcreate(other.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(fid, 0);
  ASSERT_GE(H5Fclose(fid), 0);
  expect_input_error([&] { read_activation_slice_info(other, test_meta()); }, {other.string(), "format", "missing"});
}

TEST_F(ActivationCache, LeavesNoTemporaryAndEmptySliceWorks) {
  const fs::path file = dir / "a.h5";
  const std::uint64_t size = write_activation_slice(file, test_meta(), {4, 8}, rows_for({4, 8}));
  const fs::path empty = dir / "empty.h5";
  write_activation_slice(empty, test_meta(), {}, at::empty({0, kT, kH}));
  EXPECT_EQ(size, fs::file_size(file));
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }
  EXPECT_TRUE(read_activation_slice_info(empty, test_meta()).sample_ids.empty());
  const at::Tensor got = read_activation_rows({empty, file}, test_meta(), {8});
  EXPECT_EQ(got.size(0), 1);
}

TEST_F(ActivationCache, OneChunkPerSample) {
  const fs::path file = dir / "a.h5";
  write_activation_slice(file, test_meta(CacheDType::kBF16), {1, 2, 3}, rows_for({1, 2, 3}));
  const hid_t fid = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(fid, 0);
  const hid_t dset = H5Dopen2(fid, "/activations", H5P_DEFAULT);
  ASSERT_GE(dset, 0);
  const hid_t dcpl = H5Dget_create_plist(dset);
  ASSERT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED);
  hsize_t chunk[3] = {0, 0, 0};
  ASSERT_EQ(H5Pget_chunk(dcpl, 3, chunk), 3);
  EXPECT_EQ(chunk[0], 1u);
  EXPECT_EQ(chunk[1], static_cast<hsize_t>(kT));
  EXPECT_EQ(chunk[2], static_cast<hsize_t>(kH));
  // The checksum and nothing else (no compression).
  ASSERT_EQ(H5Pget_nfilters(dcpl), 1);
  unsigned flags = 0;
  std::size_t nelmts = 0;
  EXPECT_EQ(H5Pget_filter2(dcpl, 0, &flags, &nelmts, nullptr, 0, nullptr, nullptr), H5Z_FILTER_FLETCHER32);
  H5Pclose(dcpl);
  H5Dclose(dset);
  H5Fclose(fid);
}

TEST_F(ActivationCache, CountsBytesReadPerRow) {
  const fs::path file = dir / "a.h5";
  const std::vector<std::int64_t> ids = {0, 1, 2, 3, 4, 5};
  write_activation_slice(file, test_meta(), ids, rows_for(ids));
  std::uint64_t two = 0;
  read_activation_rows({file}, test_meta(), {4, 1}, &two);
  std::uint64_t four = 0;
  read_activation_rows({file}, test_meta(), {0, 1, 2, 5}, &four);
  EXPECT_EQ(two, static_cast<std::uint64_t>(2 * kT * kH * 4));
  EXPECT_EQ(four, 2 * two);
}

}  // namespace
}  // namespace qforge::storage
