// PyRandom against values printed by CPython 3.11 (`random.seed(s)` then the calls below).
#include <gtest/gtest.h>

#include "common/error.h"
#include "common/py_random.h"

namespace qforge {

TEST(PyRandom, RandintMatchesCPythonSeed0) {
  PyRandom r(0);
  std::vector<std::int64_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(r.randint(0, 999));
  EXPECT_EQ(got, (std::vector<std::int64_t>{864, 394, 776, 911, 430}));
  EXPECT_EQ(r.getrandbits(40), 283641720628ull);
}

TEST(PyRandom, LargeRangeAndFloatMatchCPythonSeed2) {
  PyRandom r(2);
  EXPECT_EQ(r.randint(0, 1000000000000LL), 948998941043LL);
  EXPECT_EQ(r.randint(0, 1000000000000LL), 936078791291LL);
  EXPECT_EQ(r.randint(0, 1000000000000LL), 99027134111LL);
  EXPECT_DOUBLE_EQ(r.random(), 0.08487199515892163);
}

TEST(PyRandom, MultiWordSeed) {
  PyRandom r((1ull << 40) + 5);
  std::vector<std::int64_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(r.randint(0, 3));
  EXPECT_EQ(got, (std::vector<std::int64_t>{2, 0, 0, 1, 0}));
}

TEST(PyRandom, EmptyRangeIsAnInputError) {
  PyRandom r(1);
  EXPECT_THROW(r.randint(5, 4), InputError);
}

}  // namespace qforge
