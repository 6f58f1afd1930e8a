// Calibration-step benchmark: one optimiser step of block reconstruction (transform + fake-quantize
// weights, quantized forward, MSE, backward, AdamW) on a synthetic LLaMA block of real shape.
//
//   bench_calib_step [--shape 7b|70b|405b|small] [--seqlen T] [--steps K] [--method affinequant|omniquant]
//                    [--wbits 4] [--abits 4] [--threads N] [--device cpu|cuda|cuda:N|auto]
//                    [--compute-dtype fp32|bf16|tf32] [--profile TRACE.json]
// Prints ms per step, tokens/s, achieved GFLOP/s (6 x block params x tokens for the linears, plus
// attention) against a GEMM of the block's largest shape measured in the same run on the same device
// and in the same precision, and the projected seconds per block for the paper recipe (128 x 2048
// tokens, 20 epochs) and for the model of that shape (7b: 32 blocks, 70b: 80, 405b: 126). The last line
// is the same as one JSON object (for scripts/device-check.sh).
// Also: the peak GPU memory of a step (LibTorch's allocator, tensors only), and the step's rate against a
// bf16 GEMM measured here too (the GPU issue's goal: >= 50% of it; 8192^3 on a GPU, the block's shape on a
// CPU). --profile: one extra step under LibTorch's Kineto profiler: the GPU kernels and copies by device
// time (the host<->device share apart) or the CPU ops, printed and in the JSON, and the chrome://tracing file.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "bench/bench_common.h"
#include "bench/op_profile.h"
#include "common/host_memory.h"
#include "worker/threads.h"
#include "worker/calibrator.h"
#include "worker/device_memory.h"
#include "worker/llama_model.h"
#include "worker/precision.h"

using namespace qforge;

namespace {

// FLOP/s of a bf16 GEMM on `device`: 8192^3 on a GPU (the anchor the GPU issue measures against), the
// block's [T, H] x [H, I] on a CPU (where 8192^3 would take minutes).
double bf16_gemm_rate(const at::Device& device, std::int64_t t, std::int64_t h, std::int64_t i) {
  if (device.is_cuda()) t = h = i = 8192;
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(device);
  const at::Tensor a = at::randn({t, h}, opts), b = at::randn({h, i}, opts);
  at::matmul(a, b).sum().item<double>();  // warm-up
  const int reps = device.is_cuda() ? 10 : 2;
  const auto t0 = std::chrono::steady_clock::now();
  at::Tensor acc = at::zeros({}, opts.dtype(at::kFloat));
  for (int r = 0; r < reps; ++r) acc = acc + at::matmul(a, b)[0][0];
  acc.item<double>();
  return 2.0 * t * h * i * reps / bench::seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  qforge::keep_freed_host_memory();  // as qforge itself runs
  std::string shape = "7b", method = "affinequant", device_name = "cpu", precision_name = "fp32", profile;
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
    else if (a == "--device") device_name = argv[i + 1];
    else if (a == "--compute-dtype") precision_name = argv[i + 1];
    else if (a == "--profile") profile = argv[i + 1];
  }
  threads = qforge::worker::configure_threads(threads);
  nlohmann::json j = {{"hidden_size", 4096}, {"intermediate_size", 11008}, {"num_hidden_layers", 1},
                      {"num_attention_heads", 32}, {"num_key_value_heads", 32}, {"vocab_size", 32000},
                      {"max_position_embeddings", 4096}};
  if (shape == "70b") j.update({{"hidden_size", 8192}, {"intermediate_size", 28672}, {"num_attention_heads", 64}, {"num_key_value_heads", 8}});
  if (shape == "405b") j.update({{"hidden_size", 16384}, {"intermediate_size", 53248}, {"num_attention_heads", 128}, {"num_key_value_heads", 8}});
  if (shape == "small") j.update({{"hidden_size", 256}, {"intermediate_size", 768}, {"num_attention_heads", 8}, {"num_key_value_heads", 4}});
  auto c = storage::parse_llama_config(j, "bench");

  const at::Device device = worker::parse_device(device_name);
  const worker::ComputePrecision precision = worker::parse_compute_precision(precision_name);
  // Drawn on the CPU (the same numbers on every device), then moved.
  at::manual_seed(0);
  worker::BlockWeights fp = worker::BlockWeights::random(c, at::kFloat, 0.02, 0.0).to(device);
  at::Tensor x = at::randn({1, seqlen, c.hidden_size}).to(device);
  auto rope = worker::make_rope_tables(c, seqlen, device);
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
  o.precision = precision;
  const std::vector<worker::BlockWeights> unit{fp};
  worker::UnitTrainer trainer(c, unit, {stats}, {o}, rope);
  trainer.begin_epoch(10);
  trainer.step(x, y, {}, "bench");  // warm-up

  worker::reset_device_peak(device);
  auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t s = 0; s < steps; ++s) trainer.step(x, y, {}, "bench");
  const double step_s = bench::seconds_since(t0) / static_cast<double>(steps);
  const double peak_mib = bench::mib(worker::device_peak_allocated_bytes(device));
  bench::OpProfile ops;
  if (!profile.empty()) ops = bench::profile_ops([&] { trainer.step(x, y, {}, "bench"); }, device.is_cuda(), profile);

  // Reference rate: a GEMM of the block's largest shape, [T, H] x [H, I], in the same process, on the
  // same device and in the step's precision (bf16 under autocast, TF32 when allowed). Each step ends
  // in a host read of its loss, so it is timed complete; the GEMMs end in one too.
  at::Tensor a = at::randn({seqlen, c.hidden_size}).to(device), b = at::randn({c.hidden_size, c.intermediate_size}).to(device);
  const int reps = 5;
  double gemm_flops = 0;
  {
    const worker::PrecisionScope scope(precision, device);
    at::matmul(a, b).sum().item<double>();
    t0 = std::chrono::steady_clock::now();
    at::Tensor acc = at::zeros({}, a.options());
    for (int i = 0; i < reps; ++i) acc = acc + at::matmul(a, b)[0][0];
    acc.item<double>();
    gemm_flops = 2.0 * seqlen * c.hidden_size * c.intermediate_size * reps / bench::seconds_since(t0);
  }
  const double bf16_flops = bf16_gemm_rate(device, seqlen, c.hidden_size, c.intermediate_size);

  const double params = static_cast<double>(c.block_parameters());
  const double attn = 4.0 * seqlen * seqlen * c.q_dim();  // QK^T and PV, forward
  const double step_flops = 6.0 * params * seqlen + 3.0 * attn;
  const double paper_steps = 128.0 * 2048.0 / static_cast<double>(seqlen) * 20.0;
  std::printf("shape %s (hidden %lld, inter %lld, heads %lld/%lld, %.0fM block params), %s W%dA%d, seqlen %lld, threads %d, "
              "device %s, compute %s\n",
              shape.c_str(), (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.num_attention_heads,
              (long long)c.num_key_value_heads, params / 1e6, method.c_str(), wbits, abits, (long long)seqlen, threads,
              device.str().c_str(), precision_name.c_str());
  std::printf("calibration step: %.1f ms/step, %.0f tokens/s, %.1f GFLOP/s = %.1f%% of the %s GEMM rate measured here (%.1f GFLOP/s)\n",
              step_s * 1e3, seqlen / step_s, step_flops / step_s / 1e9, 100.0 * step_flops / step_s / gemm_flops,
              precision_name.c_str(), gemm_flops / 1e9);
  // The model this block shape belongs to: LLaMA-2-7B 32 blocks, LLaMA-2/3-70B 80, LLaMA-3.1-405B 126.
  const int model_blocks = shape == "70b" ? 80 : shape == "405b" ? 126 : 32;
  const double model_h = model_blocks * paper_steps * step_s / 3600;
  std::printf("projected per block for 128 x 2048 tokens x 20 epochs (at this seqlen's rate): %.0f s (%.1f h); "
              "x%d blocks = %.1f h on one device\n", paper_steps * step_s, paper_steps * step_s / 3600, model_blocks, model_h);
  std::printf("against the bf16 GEMM measured here (%.1f GFLOP/s): %.1f%%; peak device memory of a step %.0f MiB\n",
              bf16_flops / 1e9, 100.0 * step_flops / step_s / bf16_flops, peak_mib);
  if (!profile.empty()) bench::print_op_profile(ops, 15, step_s * 1e3);
  nlohmann::json figures = {{"shape", shape}, {"device", device.str()}, {"compute_dtype", precision_name},
                                  {"seqlen", seqlen}, {"steps", steps}, {"ms_per_step", step_s * 1e3},
                                  {"tokens_per_s", seqlen / step_s}, {"step_gflops", step_flops / step_s / 1e9},
                                  {"gemm_gflops", gemm_flops / 1e9}, {"fraction_of_gemm", step_flops / step_s / gemm_flops},
                                  {"paper_block_s", paper_steps * step_s}, {"model_blocks", model_blocks}, {"paper_model_h", model_h},
                                  {"bf16_gemm_gflops", bf16_flops / 1e9},
                                  {"fraction_of_bf16_gemm", step_flops / step_s / bf16_flops},
                                  {"peak_device_mib", peak_mib}};
  if (!profile.empty()) figures["profile"] = ops.to_json(12);
  std::printf("%s\n", figures.dump().c_str());
  return 0;
}
