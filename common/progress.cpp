#include "common/progress.h"

#include "common/log.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace qforge {

double estimate_eta_seconds(std::int64_t done, std::int64_t total, double elapsed_seconds) {
  if (done <= 0 || total <= 0 || elapsed_seconds < 0) return -1.0;
  if (done >= total) return 0.0;
  return elapsed_seconds / static_cast<double>(done) * static_cast<double>(total - done);
}

std::string format_duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) return "?";
  long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm%02lds", s / 3600, (s / 60) % 60, s % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

ProgressMeter::ProgressMeter(std::string label, std::int64_t total, std::string unit, double interval_seconds)
    : label_(std::move(label)), total_(total), unit_(std::move(unit)), interval_(interval_seconds),
      start_(std::chrono::steady_clock::now()) {}

double ProgressMeter::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressMeter::update(std::int64_t done, double work) {
  if (log_level() > LogLevel::kInfo) return;  // progress is info; --log-level warn silences it
  double t = elapsed_seconds();
  bool last = done >= total_;
  if (t < interval_ && !printed_) return;  // short loops print nothing
  if (!last && t - last_print_ < interval_) return;
  last_print_ = t;
  printed_ = true;
  char line[256];
  double pct = total_ > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
  std::string rate;
  if (!unit_.empty() && t > 0) rate = " " + std::to_string(static_cast<long>(work / t)) + " " + unit_ + "/s";
  int n = std::snprintf(line, sizeof line, "%s %lld/%lld (%.1f%%)%s ETA %s\n", label_.c_str(),
                        static_cast<long long>(done), static_cast<long long>(total_), pct, rate.c_str(),
                        format_duration(estimate_eta_seconds(done, total_, t)).c_str());
  if (n > 0) {
    ssize_t ignored = ::write(STDERR_FILENO, line, static_cast<std::size_t>(std::min(n, 255)));
    (void)ignored;
  }
}

}  // namespace qforge
