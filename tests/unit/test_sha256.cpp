// SHA-256 against the FIPS 180-2 / NIST example vectors, incremental updates in uneven pieces, and the
// streamed file digest agreeing with the in-memory one.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "common/error.h"
#include "common/sha256.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

TEST(Sha256, EmptyString) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, Abc) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, TwoBlockMessage) {
  // 448 bits: the padding needs a second block.
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, OneMillionAInUnevenPieces) {
  const std::string chunk(1000, 'a');
  Sha256 h;
  std::size_t fed = 0, piece = 1;
  // Piece sizes 1, 2, ..., wrapping at 999: they straddle block boundaries in every alignment.
  while (fed < 1000000) {
    const std::size_t n = std::min({piece, std::size_t{1000000} - fed, chunk.size()});
    h.update(chunk.data(), n);
    fed += n;
    piece = piece % 999 + 1;
  }
  EXPECT_EQ(h.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // hex_digest resets, so the object can be reused.
  h.update("abc", 3);
  EXPECT_EQ(h.hex_digest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, PaddingBoundaryLengths) {
  // Lengths around 55/56/64 bytes exercise the one-block vs two-block padding split; compare the
  // byte-at-a-time digest with the one-shot digest.
  for (std::size_t len : {55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u}) {
    std::string s(len, 'x');
    Sha256 h;
    for (char ch : s) h.update(&ch, 1);
    EXPECT_EQ(h.hex_digest(), sha256_hex(s)) << len;
  }
  EXPECT_EQ(sha256_hex(std::string(64, 'a')), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

TEST(Sha256, FileMatchesInMemoryDigest) {
  const auto dir = test::make_temp_dir("sha256");
  // Larger than the 1 MiB read chunk, and not a multiple of it or of 64.
  std::string data;
  for (std::size_t i = 0; i < (std::size_t{1} << 20) + 12345; ++i) data.push_back(static_cast<char>((i * 131) % 251));
  const auto path = dir / "blob.bin";
  {
    std::ofstream out(path, std::ios::binary);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  EXPECT_EQ(sha256_file(path), sha256_hex(data));

  const auto empty = dir / "empty.bin";
  std::ofstream(empty).close();
  EXPECT_EQ(sha256_file(empty), sha256_hex(""));
}

TEST(Sha256, MissingFileNamesTheFile) {
  const auto path = test::make_temp_dir("sha256-missing") / "nope.bin";
  try {
    sha256_file(path);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nope.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(sha256_file(path.parent_path()), InputError);
}

}  // namespace
}  // namespace qforge
