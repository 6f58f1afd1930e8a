#include "tests/support/test_data.h"

#include <unistd.h>

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <atomic>

#include "common/sha256.h"

namespace qforge::test {

std::filesystem::path make_temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto dir = std::filesystem::temp_directory_path() /
             ("qforge-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::map<std::string, std::string> file_digests(const std::filesystem::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().filename().string()] = sha256_file(e.path());
  }
  return out;
}

std::string cuda_unavailable_reason() {
#if !defined(QFORGE_WITH_CUDA)
  return "no CUDA: qforge was built without it (its LibTorch has none)";
#else
  if (!at::hasCUDA()) return "no CUDA device: LibTorch finds no CUDA driver or GPU on this machine";
  if (at::detail::getCUDAHooks().getNumGPUs() == 0) return "no CUDA device: none visible to this process";
  return "";
#endif
}

}  // namespace qforge::test
