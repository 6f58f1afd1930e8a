// Load benchmark: peak RSS while streaming a synthetic 7B-shaped checkpoint block by block.
//
//   bench_load [--model DIR] [--blocks N] [--seqlen T] [--threads K]
// Without --model it writes a seeded 7B-shaped checkpoint (fp16, N blocks, 1 GB shards) to a temp folder
// first and removes it afterwards. It then (1) reads every block's tensors one block at a time in their
// stored dtype, and (2) runs a [1, T] forward through every block in fp32, and prints the checkpoint size,
// the largest block and the peak RSS of each phase.
#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "bench/bench_common.h"
#include "common/host_memory.h"
#include "worker/threads.h"
#include "jobs/synthetic_model.h"
#include "worker/llama_model.h"

using namespace qforge;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  qforge::keep_freed_host_memory();  // as qforge itself runs
  fs::path model;
  std::int64_t blocks = 8, seqlen = 128;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--model") model = argv[i + 1];
    else if (a == "--blocks") blocks = std::stoll(argv[i + 1]);
    else if (a == "--seqlen") seqlen = std::stoll(argv[i + 1]);
    else if (a == "--threads") threads = std::stoi(argv[i + 1]);
  }
  threads = qforge::worker::configure_threads(threads);
  bool made = false;
  if (model.empty()) {
    model = fs::temp_directory_path() / ("qforge-bench-load-" + std::to_string(::getpid()));
    jobs::SyntheticOptions o;
    o.shape = "7b";
    o.blocks = blocks;
    o.shard_bytes = 1000ull * 1000 * 1000;
    auto t0 = std::chrono::steady_clock::now();
    jobs::make_synthetic_model(model, o);
    std::printf("wrote synthetic 7b-shaped checkpoint (%lld blocks) in %.1f s\n", static_cast<long long>(blocks),
                bench::seconds_since(t0));
    made = true;
  }

  bench::reset_peak_rss();
  const std::uint64_t rss0 = bench::proc_status_bytes("VmRSS");
  worker::ModelOptions opt;
  worker::LlamaModel m(model, opt);
  std::uint64_t ckpt_bytes = m.index().total_bytes(), largest_block = 0;
  for (int b = 0; b < m.num_blocks(); ++b) largest_block = std::max(largest_block, m.index().block_bytes(b));
  std::printf("checkpoint: %s, %d blocks, %zu shards, %.1f MiB total, largest block %.1f MiB (stored dtype)\n",
              model.c_str(), m.num_blocks(), m.checkpoint().shard_names().size(), bench::mib(ckpt_bytes),
              bench::mib(largest_block));
  std::printf("threads: %d\n", threads);

  // Phase 1: read every tensor of every block, one block resident at a time.
  auto t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < m.num_blocks(); ++b) {
    std::vector<at::Tensor> block;
    for (const auto& t : m.index().block(b)) block.push_back(m.checkpoint().load(t.name));
  }
  double read_s = bench::seconds_since(t0);
  std::uint64_t peak_read = bench::proc_status_bytes("VmHWM");
  std::printf("phase 1 (read all blocks, stored dtype): %.2f s, %.0f MiB/s, peak RSS %.1f MiB (%.1f MiB above start)\n",
              read_s, bench::mib(ckpt_bytes) / read_s, bench::mib(peak_read), bench::mib(peak_read - rss0));

  // Phase 2: a forward through every block in fp32 (weights converted on load).
  bench::reset_peak_rss();
  t0 = std::chrono::steady_clock::now();
  {
    at::NoGradGuard no_grad;
    auto rope = m.rope(seqlen);
    at::Tensor x = m.embed(at::randint(0, m.config().vocab_size, {1, seqlen}, at::kLong));
    for (int b = 0; b < m.num_blocks(); ++b) x = m.run_block(b, x, rope);
  }
  double fwd_s = bench::seconds_since(t0);
  std::uint64_t peak_fwd = bench::proc_status_bytes("VmHWM");
  std::printf("phase 2 (fp32 forward of 1x%lld tokens, block by block): %.2f s (%.2f s/block), peak RSS %.1f MiB\n",
              static_cast<long long>(seqlen), fwd_s, fwd_s / m.num_blocks(), bench::mib(peak_fwd));
  std::printf("peak RSS / checkpoint size: read %.3f, forward %.3f (a resident model would need >= 1.0; fp32 forward "
              "of one block needs ~2x its fp16 bytes plus the embedding table)\n",
              static_cast<double>(peak_read) / static_cast<double>(ckpt_bytes),
              static_cast<double>(peak_fwd) / static_cast<double>(ckpt_bytes));
  if (made) fs::remove_all(model);
  return 0;
}
