#include "common/py_random.h"

#include <vector>

#include "common/error.h"

namespace qforge {

// Constants and algorithms from Matsumoto & Nishimura's reference mt19937ar.c, which CPython's
// _randommodule.c uses unchanged.
void PyRandom::init_genrand(std::uint32_t s) {
  mt_[0] = s;
  for (int i = 1; i < 624; ++i) {
    mt_[i] = 1812433253u * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<std::uint32_t>(i);
  }
  index_ = 624;
}

PyRandom::PyRandom(std::uint64_t seed) {
  // CPython splits abs(seed) into little-endian 32-bit words; zero becomes the single word 0.
  std::vector<std::uint32_t> key;
  if (seed == 0) key.push_back(0);
  while (seed != 0) {
    key.push_back(static_cast<std::uint32_t>(seed & 0xffffffffu));
    seed >>= 32;
  }
  init_genrand(19650218u);
  const int n = 624;
  int i = 1, j = 0;
  int k = n > static_cast<int>(key.size()) ? n : static_cast<int>(key.size());
  for (; k; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<std::uint32_t>(j);
    ++i;
    ++j;
    if (i >= n) {
      mt_[0] = mt_[n - 1];
      i = 1;
    }
    if (j >= static_cast<int>(key.size())) j = 0;
  }
  for (k = n - 1; k; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<std::uint32_t>(i);
    ++i;
    if (i >= n) {
      mt_[0] = mt_[n - 1];
      i = 1;
    }
  }
  mt_[0] = 0x80000000u;
  index_ = 624;
}

std::uint32_t PyRandom::next_u32() {
  static const std::uint32_t mag01[2] = {0x0u, 0x9908b0dfu};
  const int n = 624, m = 397;
  if (index_ >= n) {
    int kk = 0;
    std::uint32_t y;
    for (; kk < n - m; ++kk) {
      y = (mt_[kk] & 0x80000000u) | (mt_[kk + 1] & 0x7fffffffu);
      mt_[kk] = mt_[kk + m] ^ (y >> 1) ^ mag01[y & 1u];
    }
    for (; kk < n - 1; ++kk) {
      y = (mt_[kk] & 0x80000000u) | (mt_[kk + 1] & 0x7fffffffu);
      mt_[kk] = mt_[kk + (m - n)] ^ (y >> 1) ^ mag01[y & 1u];
    }
    y = (mt_[n - 1] & 0x80000000u) | (mt_[0] & 0x7fffffffu);
    mt_[n - 1] = mt_[m - 1] ^ (y >> 1) ^ mag01[y & 1u];
    index_ = 0;
  }
  std::uint32_t y = mt_[index_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

std::uint64_t PyRandom::getrandbits(int k) {
  QF_CHECK(k > 0 && k <= 64, "getrandbits k out of range");
  if (k <= 32) return next_u32() >> (32 - k);
  // CPython fills 32-bit words least significant first; the last word is shifted down.
  std::uint64_t lo = next_u32();
  std::uint64_t hi = next_u32() >> (64 - k);
  return lo | (hi << 32);
}

std::int64_t PyRandom::randint(std::int64_t a, std::int64_t b) {
  if (b < a) throw InputError("randint", "", "empty range (" + std::to_string(a) + ", " + std::to_string(b) + ")");
  std::uint64_t n = static_cast<std::uint64_t>(b - a) + 1;
  int k = 0;
  for (std::uint64_t t = n; t; t >>= 1) ++k;  // n.bit_length()
  std::uint64_t r = getrandbits(k);
  while (r >= n) r = getrandbits(k);
  return a + static_cast<std::int64_t>(r);
}

double PyRandom::random() {
  std::uint32_t a = next_u32() >> 5, b = next_u32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

}  // namespace qforge
