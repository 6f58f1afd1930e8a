// One run of a function under LibTorch's Kineto profiler, summarised where it says what to optimise: on a GPU,
// the device time of every kernel and copy, by name (with the host->device and device->host copies apart, the
// transfer share the GPU issue asks for); on a CPU, the ATen ops by inclusive time (nested ops count in
// their parents too). The full chrome://tracing file is written beside it.
#pragma once

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qforge::bench {

struct OpProfile {
  struct Row {
    std::string name;
    int count = 0;
    double ms = 0;
  };
  bool device = false;   // rows are GPU kernels/copies (true) or CPU ops (false)
  std::vector<Row> rows;  // by time, largest first
  double busy_ms = 0;     // sum of the GPU events' time (device), of the top-level CPU ops' time (cpu)
  double h2d_ms = 0, d2h_ms = 0;

  nlohmann::json to_json(std::size_t top) const {
    nlohmann::json r = nlohmann::json::array();
    for (std::size_t i = 0; i < rows.size() && i < top; ++i) r.push_back({{"name", rows[i].name}, {"count", rows[i].count}, {"ms", rows[i].ms}});
    return {{"device", device}, {"busy_ms", busy_ms}, {"h2d_ms", h2d_ms}, {"d2h_ms", d2h_ms}, {"top", r}};
  }
};

inline OpProfile profile_ops(const std::function<void()>& fn, bool cuda, const std::string& trace_path) {
  namespace prof = torch::profiler::impl;
  namespace ap = torch::autograd::profiler;
  std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
  if (cuda) activities.insert(prof::ActivityType::CUDA);
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  ap::prepareProfiler(config, activities);
  ap::enableProfiler(config, activities);
  fn();
  std::unique_ptr<ap::ProfilerResult> result = ap::disableProfiler();
  OpProfile out;
  out.device = cuda;
  std::vector<const ap::KinetoEvent*> events;
  for (const ap::KinetoEvent& e : result->events()) events.push_back(&e);
  std::sort(events.begin(), events.end(), [](const auto* a, const auto* b) { return a->startNs() < b->startNs(); });
  std::map<std::string, OpProfile::Row> by_name;
  std::uint64_t cpu_end = 0;  // top-level CPU ops: those starting after the previous top-level one ended
  for (const ap::KinetoEvent* event : events) {
    const ap::KinetoEvent& e = *event;
    const bool on_device = e.deviceType() == c10::DeviceType::CUDA;
    if (on_device != cuda) continue;
    const double ms = static_cast<double>(e.durationNs()) / 1e6;
    std::string name = e.name();
    if (name.size() > 96) name = name.substr(0, 93) + "...";
    OpProfile::Row& row = by_name[name];
    row.name = name;
    row.count += 1;
    row.ms += ms;
    if (on_device) {
      out.busy_ms += ms;
      if (name.find("HtoD") != std::string::npos) out.h2d_ms += ms;
      if (name.find("DtoH") != std::string::npos) out.d2h_ms += ms;
    } else if (e.startNs() >= cpu_end) {
      out.busy_ms += ms;
      cpu_end = e.endNs();
    }
  }
  for (auto& [name, row] : by_name) out.rows.push_back(row);
  std::sort(out.rows.begin(), out.rows.end(), [](const auto& a, const auto& b) { return a.ms > b.ms; });
  if (!trace_path.empty()) result->save(trace_path);
  return out;
}

inline void print_op_profile(const OpProfile& p, std::size_t top, double step_ms) {
  std::printf("profile of one step (%s): %.1f ms busy of a %.1f ms step; host->device copies %.2f ms, "
              "device->host %.2f ms (%.1f%% of the step)\n",
              p.device ? "GPU kernels and copies, device time" : "CPU ops, inclusive time", p.busy_ms, step_ms,
              p.h2d_ms, p.d2h_ms, 100.0 * (p.h2d_ms + p.d2h_ms) / step_ms);
  for (std::size_t i = 0; i < p.rows.size() && i < top; ++i) {
    std::printf("  %9.2f ms %5.1f%% %6d x  %s\n", p.rows[i].ms, 100.0 * p.rows[i].ms / step_ms, p.rows[i].count,
                p.rows[i].name.c_str());
  }
}

}  // namespace qforge::bench
