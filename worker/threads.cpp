#include "worker/threads.h"

#include <dlfcn.h>

#include <ATen/Parallel.h>
#include <cstdlib>
#include <string>
#include <thread>

#include "common/error.h"

namespace qforge::worker {

int configure_threads(int threads) {
  if (threads <= 0) {
    if (const char* env = std::getenv("QFORGE_THREADS")) {
      try {
        threads = std::stoi(env);
      } catch (const std::exception&) {
        throw InputError("QFORGE_THREADS", "", std::string("not an integer: '") + env + "'");
      }
      if (threads <= 0) throw InputError("QFORGE_THREADS", "", "must be positive");
    } else {
      threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    }
  }
  at::set_num_threads(threads);  // LibTorch's intra-op pool, OpenMP and MKL (the PyPI LibTorch's BLAS)
  // An OpenBLAS in the process (a LibTorch built against it) keeps a pool of its own, separate from
  // OpenMP's; it is set through its own entry point when the library is present.
  using SetThreads = void (*)(int);
  if (auto fn = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(threads);
  return threads;
}

}  // namespace qforge::worker
