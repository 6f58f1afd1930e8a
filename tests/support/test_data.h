// Locating ../shared/data for tests. Tests that need it call QF_REQUIRE_DATA(path): when the file is
// missing the test is skipped with a message, except under CI=true where absence is a failure.
#pragma once

#include <gtest/gtest.h>

#include <map>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace qforge::test {

// QFORGE_SHARED_DATA if set, else <source root>/../shared/data.
inline std::filesystem::path shared_data() {
  if (const char* env = std::getenv("QFORGE_SHARED_DATA")) return env;
  return std::filesystem::path(QFORGE_SOURCE_DIR) / ".." / "shared" / "data";
}

inline bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

// Path of the built qforge executable, for tests of the command line.
inline std::string qforge_binary() { return QFORGE_BINARY; }

// Whole-file byte helpers for tests that build or damage files by hand.
inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A fresh empty directory under the build tree's temp area, removed by the caller if it wants.
std::filesystem::path make_temp_dir(const std::string& tag);

// sha256 of every regular file directly in `dir`, by file name: "this output folder equals that one".
std::map<std::string, std::string> file_digests(const std::filesystem::path& dir);

// Why CUDA tests cannot run in this process ("" when they can): a build without CUDA, or no device.
std::string cuda_unavailable_reason();

}  // namespace qforge::test

// The gpu tier's first line: skipped (counted by ctest, with the reason) where CUDA cannot run.
#define QF_REQUIRE_CUDA()                                                               \
  do {                                                                                  \
    const std::string qf_cuda_why_ = ::qforge::test::cuda_unavailable_reason();         \
    if (!qf_cuda_why_.empty()) GTEST_SKIP() << qf_cuda_why_;                            \
  } while (0)

#define QF_REQUIRE_DATA(path)                                                            \
  do {                                                                                   \
    if (!std::filesystem::exists(path)) {                                                \
      if (::qforge::test::running_in_ci()) FAIL() << "missing test data under CI: " << (path); \
      GTEST_SKIP() << "test data not found (skipping): " << (path);                      \
    }                                                                                    \
  } while (0)
