// Calibration-step benchmark: one optimiser step of block reconstruction (transform + fake-quantize
// weights, quantized forward, MSE, backward, AdamW) on a synthetic LLaMA block of real shape.
//
//   bench_calib_step [--shape 7b|70b|small] [--seqlen T] [--steps K] [--method affinequant|omniquant]
//                    [--wbits 4] [--abits 4] [--threads N]
// Prints ms per step, tokens/s, achieved GFLOP/s (6 x block params x tokens for the linears, plus
// attention) against an fp32 GEMM measured in the same run, and the projected seconds per block for the
// paper recipe (128 x 2048 tokens, 20 epochs). CPU only here: LibTorch 1.13 from Debian has no CUDA.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "bench/bench_common.h"
#include "common/threads.h"
#include "worker/calibrator.h"

using namespace qforge;

int main(int argc, char** argv) {
  std::string shape = "7b", method = "affinequant";
  std::int64_t seqlen = 256, steps = 3;
  int wbits = 4, abits = 4, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--shape") shape = argv[i + 1];
    else if (a == "--seqlen") seqlen = std::stoll(argv[i + 1]);
    else if (a == "--steps") steps = std::stoll(argv[i + 1]);
    else if (a == "--method") method = argv[i + 1];
    else if (a == "--wbits") wbits = std::stoi(argv[i + 1]);
    else if (a == "--abits") abits = std::stoi(argv[i + 1]);
    else if (a == "--threads") threads = std::stoi(argv[i + 1]);
  }
  threads = configure_threads(threads);
  nlohmann::json j = {{"hidden_size", 4096}, {"intermediate_size", 11008}, {"num_hidden_layers", 1},
                      {"num_attention_heads", 32}, {"num_key_value_heads", 32}, {"vocab_size", 32000},
                      {"max_position_embeddings", 4096}};
  if (shape == "70b") j.update({{"hidden_size", 8192}, {"intermediate_size", 28672}, {"num_attention_heads", 64}, {"num_key_value_heads", 8}});
  if (shape == "small") j.update({{"hidden_size", 256}, {"intermediate_size", 768}, {"num_attention_heads", 8}, {"num_key_value_heads", 4}});
  auto c = storage::parse_llama_config(j, "bench");

  at::manual_seed(0);
  worker::BlockWeights fp = worker::BlockWeights::random(c, at::kFloat, 0.02, 0.0);
  at::Tensor x = at::randn({1, seqlen, c.hidden_size});
  auto rope = worker::make_rope_tables(c, seqlen, at::kCPU);
  worker::ActStats stats;
  worker::accumulate_act_stats(c, fp, x, rope, stats);
  at::Tensor y;
  {
    at::NoGradGuard ng;
    y = worker::block_forward(c, fp, x, rope);
  }
  worker::CalibOptions o;
  o.transform.method = worker::parse_method(method);
  o.transform.let = true;
  o.transform.lwc = true;
  o.weights.bits = wbits;
  o.acts.bits = abits;
  o.epochs = 20;
  const std::vector<worker::BlockWeights> unit{fp};
  worker::UnitTrainer trainer(c, unit, {stats}, {o}, rope);
  trainer.begin_epoch(10);
  trainer.step(x, y, {}, "bench");  // warm-up

  auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t s = 0; s < steps; ++s) trainer.step(x, y, {}, "bench");
  const double step_s = bench::seconds_since(t0) / static_cast<double>(steps);

  // Reference rate: fp32 GEMM of the block's largest shape, [T, H] x [H, I], in the same process.
  at::Tensor a = at::randn({seqlen, c.hidden_size}), b = at::randn({c.hidden_size, c.intermediate_size});
  at::matmul(a, b);
  t0 = std::chrono::steady_clock::now();
  const int reps = 5;
  for (int i = 0; i < reps; ++i) at::matmul(a, b);
  const double gemm_flops = 2.0 * seqlen * c.hidden_size * c.intermediate_size * reps / bench::seconds_since(t0);

  const double params = static_cast<double>(c.block_parameters());
  const double attn = 4.0 * seqlen * seqlen * c.q_dim();  // QK^T and PV, forward
  const double step_flops = 6.0 * params * seqlen + 3.0 * attn;
  const double paper_steps = 128.0 * 2048.0 / static_cast<double>(seqlen) * 20.0;
  std::printf("shape %s (hidden %lld, inter %lld, heads %lld/%lld, %.0fM block params), %s W%dA%d, seqlen %lld, threads %d\n",
              shape.c_str(), (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.num_attention_heads,
              (long long)c.num_key_value_heads, params / 1e6, method.c_str(), wbits, abits, (long long)seqlen, threads);
  std::printf("calibration step: %.1f ms/step, %.0f tokens/s, %.1f GFLOP/s = %.1f%% of the fp32 GEMM rate measured here (%.1f GFLOP/s)\n",
              step_s * 1e3, seqlen / step_s, step_flops / step_s / 1e9, 100.0 * step_flops / step_s / gemm_flops, gemm_flops / 1e9);
  std::printf("projected per block for 128 x 2048 tokens x 20 epochs (at this seqlen's rate): %.0f s (%.1f h); "
              "x32 blocks = %.1f h\n", paper_steps * step_s, paper_steps * step_s / 3600, 32 * paper_steps * step_s / 3600);
  return 0;
}
