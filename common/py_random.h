// CPython's `random` module generator (MT19937 with CPython's seeding), bit for bit.
//
// The GPTQ-paper protocols (C4 evaluation windows, calibration windows) are defined by
// `random.seed(s); random.randint(a, b)` in Python. Re-implementing the exact generator lets qforge
// draw the same windows as the published code for the same data, without Python.
#pragma once

#include <array>
#include <cstdint>

namespace qforge {

class PyRandom {
 public:
  // random.seed(n) for a non-negative integer n (CPython: init_by_array over n's 32-bit words).
  explicit PyRandom(std::uint64_t seed);
  // random.getrandbits(k), 0 < k <= 64.
  std::uint64_t getrandbits(int k);
  // random.randint(a, b): uniform in [a, b], by CPython's rejection sampling (_randbelow).
  std::int64_t randint(std::int64_t a, std::int64_t b);
  // random.random(): 53-bit float in [0, 1).
  double random();

 private:
  std::uint32_t next_u32();
  void init_genrand(std::uint32_t s);
  std::array<std::uint32_t, 624> mt_{};
  int index_ = 625;
};

}  // namespace qforge
