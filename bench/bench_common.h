// Small helpers shared by the benchmarks: memory readings from /proc and wall-clock timing.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

namespace qforge::bench {

// A field of /proc/self/status in bytes (VmRSS: current resident set, VmHWM: peak).
inline std::uint64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1)) * 1024;
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux >= 4.0), so a phase's peak can be read on its own.
inline void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline double mib(std::uint64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); }

}  // namespace qforge::bench
