// Evaluation throughput benchmark: tokens per second of `qforge eval`'s scoring loop.
//
//   bench_eval [--model DIR] [--seqlen T] [--windows N] [--threads K] [--dtype float32|bfloat16]
// Without --model it uses ../shared/data/models/ref-6m when present, else writes the synthetic "small"
// shape to a temp folder. Windows are random token ids (throughput does not depend on the text).
#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "bench/bench_common.h"
#include "common/host_memory.h"
#include "worker/threads.h"
#include "jobs/synthetic_model.h"
#include "worker/evaluator.h"
#include "worker/llama_model.h"

using namespace qforge;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  qforge::keep_freed_host_memory();  // as qforge itself runs
  fs::path model;
  std::int64_t seqlen = 256, windows = 32;
  int threads = 0;
  std::string dtype = "float32";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--model") model = argv[i + 1];
    else if (a == "--seqlen") seqlen = std::stoll(argv[i + 1]);
    else if (a == "--windows") windows = std::stoll(argv[i + 1]);
    else if (a == "--threads") threads = std::stoi(argv[i + 1]);
    else if (a == "--dtype") dtype = argv[i + 1];
  }
  threads = qforge::worker::configure_threads(threads);
  bool made = false;
  if (model.empty()) {
    fs::path shared = fs::path(QFORGE_BENCH_SOURCE_DIR) / ".." / "shared" / "data" / "models" / "ref-6m";
    if (fs::exists(shared / "model.safetensors")) {
      model = shared;
    } else {
      model = fs::temp_directory_path() / ("qforge-bench-eval-" + std::to_string(::getpid()));
      jobs::SyntheticOptions o;
      o.shape = "small";
      jobs::make_synthetic_model(model, o);
      made = true;
    }
  }
  worker::ModelOptions opt;
  opt.dtype = worker::parse_compute_dtype(dtype);
  worker::LlamaModel m(model, opt);
  seqlen = std::min(seqlen, m.config().max_position_embeddings);
  at::manual_seed(0);
  at::Tensor ids = at::randint(0, m.config().vocab_size, {windows, seqlen}, at::kLong);
  worker::ScoringOptions sopt;
  sopt.progress = false;
  worker::score_windows(m, ids.slice(0, 0, 1), nullptr, sopt);  // warm-up (allocator, page cache)
  auto t0 = std::chrono::steady_clock::now();
  auto s = worker::score_windows(m, ids, nullptr, sopt);
  double secs = bench::seconds_since(t0);
  const double tokens = static_cast<double>(windows * seqlen);
  std::printf("model %s (%lld params, %d blocks), dtype %s, threads %d\n", model.c_str(),
              static_cast<long long>(m.index().total_parameters()), m.num_blocks(), dtype.c_str(), threads);
  std::printf("eval: %lld windows x %lld tokens in %.2f s = %.0f tokens/s (%.1f GFLOP/s of 2*params*tokens)\n",
              static_cast<long long>(windows), static_cast<long long>(seqlen), secs, tokens / secs,
              2.0 * static_cast<double>(m.index().total_parameters()) * tokens / secs / 1e9);
  std::printf("(mean NLL on these random ids %.3f; not a quality figure)\n", s.mean_nll());
  if (made) fs::remove_all(model);
  return 0;
}
