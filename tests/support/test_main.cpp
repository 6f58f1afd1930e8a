// main() of every test executable. The suite's thread knob: ctest pins QFORGE_THREADS=1 (and the
// OpenMP/BLAS counts) for every test, which overrides the caller's environment; QFORGE_TEST_THREADS=N,
// which ctest passes through untouched, replaces those pins with N for this process and for every
// qforge it starts. The count applied is printed, so a run's log proves what it used.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "worker/threads.h"

namespace {

class ThreadKnob : public ::testing::Environment {
 public:
  void SetUp() override {
    if (const char* n = std::getenv("QFORGE_TEST_THREADS"); n && *n) {
      for (const char* var : {"QFORGE_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}) {
        ::setenv(var, n, 1);
      }
    }
    const int applied = qforge::worker::configure_threads(0);
    std::fprintf(stderr, "[qforge tests] %d compute thread(s)\n", applied);
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new ThreadKnob);
  return RUN_ALL_TESTS();
}
