// Fake quantization alone, fused (worker/kernels: the CPU twin on a CPU, the CUDA kernel on a GPU) against
// the unfused ATen expressions of worker/quantizer.cpp, forward and forward + backward, for the weights and
// activations of one block of a real shape. Prints ms per call and the ratio fused / unfused.
//
//   bench_fake_quant [--shape small|7b] [--tokens 256] [--reps 10] [--threads N] [--device cpu|cuda]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "common/host_memory.h"
#include "worker/kernels/fake_quant.h"
#include "worker/quantizer.h"

using namespace qforge;
using namespace qforge::worker;

namespace {

struct Args {
  std::string shape = "small", device = "cpu";
  std::int64_t tokens = 256;
  int reps = 10, threads = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--shape") a.shape = v;
    else if (k == "--tokens") a.tokens = std::stoll(v);
    else if (k == "--reps") a.reps = std::stoi(v);
    else if (k == "--threads") a.threads = std::stoi(v);
    else if (k == "--device") a.device = v;
    else throw std::runtime_error("unknown option " + k);
  }
  if (a.shape != "small" && a.shape != "7b") throw std::runtime_error("--shape small|7b");
  return a;
}

double time_ms(const at::Device& device, int reps, const std::function<void()>& f) {
  f();  // warm-up
  if (device.is_cuda()) at::zeros({1}, at::TensorOptions(device)).item<float>();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  if (device.is_cuda()) at::zeros({1}, at::TensorOptions(device)).item<float>();
  return bench::seconds_since(t0) * 1e3 / reps;
}

// Forward, and forward + backward into the input (and the clip logits), of one fake-quant function.
void row(const char* what, const at::Device& device, int reps, const std::vector<at::Tensor>& leaves,
         const std::function<at::Tensor()>& unfused, const std::function<at::Tensor()>& fused) {
  auto fwd = [&](const std::function<at::Tensor()>& f) {
    return time_ms(device, reps, [&] {
      at::NoGradGuard g;
      f();
    });
  };
  auto both = [&](const std::function<at::Tensor()>& f) {
    return time_ms(device, reps, [&] {
      f().backward(at::ones_like(leaves[0]));
      for (const auto& l : leaves) l.mutable_grad().reset();
    });
  };
  const double uf = fwd(unfused), ff = fwd(fused), ub = both(unfused), fb = both(fused);
  std::printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", what, uf, ff, ff / uf, ub, fb, fb / ub);
}

}  // namespace

int main(int argc, char** argv) {
  qforge::keep_freed_host_memory();  // as qforge itself runs
  const Args a = parse(argc, argv);
  if (a.threads > 0) at::set_num_threads(a.threads);
  const at::Device device(a.device);
  const std::int64_t h = a.shape == "7b" ? 4096 : 256, inter = a.shape == "7b" ? 11008 : 768;
  at::manual_seed(0);
  auto opts = at::TensorOptions(device).dtype(at::kFloat);
  std::printf("fake quantization, %s block shape, %lld tokens, %d threads, %s: ms per call\n\n", a.shape.c_str(),
              static_cast<long long>(a.tokens), at::get_num_threads(), a.device.c_str());
  std::printf("| tensor | fwd unfused | fwd fused | ratio | fwd+bwd unfused | fwd+bwd fused | ratio |\n|---|---|---|---|---|---|---|\n");
  WeightQuantSpec ws;  // W4 per channel, deployable, with clipping: the calibration default
  for (auto [name, o, i] : {std::tuple<const char*, std::int64_t, std::int64_t>{"weight [H, H]", h, h},
                            {"weight [I, H]", inter, h}, {"weight [H, I]", h, inter}}) {
    at::Tensor w = (at::randn({o, i}, opts) * 0.02).requires_grad_(true);
    ClipParams clip{at::full({o, 1}, 4.0, opts).requires_grad_(true), at::full({o, 1}, 4.0, opts).requires_grad_(true)};
    const std::string label = std::string(name) + " W4 LWC";
    row(label.c_str(), device, a.reps, {w, clip.upper, clip.lower}, [&] { return unfused_fake_quant_weight(w, ws, clip); },
        [&] { return fused_fake_quant_weight(w, ws, clip); });
  }
  ActQuantSpec as{4, false};
  for (auto [name, d] : {std::pair<const char*, std::int64_t>{"activation [T, H] A4", h}, {"activation [T, I] A4", inter}}) {
    at::Tensor x = at::randn({a.tokens, d}, opts).requires_grad_(true);
    row(name, device, a.reps, {x}, [&] { return unfused_fake_quant_act(x, as); }, [&] { return fused_fake_quant_act(x, as); });
  }
  return 0;
}
