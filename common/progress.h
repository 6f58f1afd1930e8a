// Progress and ETA for long-running loops (evaluation windows today; units of a job later).
//
// Policy only: the meter is a pure function of (done, total, elapsed); printing is the caller's.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace qforge {

// Seconds remaining at the average rate so far; negative when not yet estimable.
double estimate_eta_seconds(std::int64_t done, std::int64_t total, double elapsed_seconds);
// "1h02m03s", "4m05s", "12s", or "?" for a negative value.
std::string format_duration(double seconds);

// Prints "<label> 12/137 (8.8%) 1234 tok/s ETA 1m05s" to stderr at most once per interval, and always
// for the last item; silent when the whole loop finishes within the first interval.
class ProgressMeter {
 public:
  ProgressMeter(std::string label, std::int64_t total, std::string unit = "", double interval_seconds = 2.0);
  // Marks `done` items finished; `work` is the cumulative amount of work (e.g. tokens) for the rate.
  void update(std::int64_t done, double work = 0.0);
  double elapsed_seconds() const;

 private:
  std::string label_;
  std::int64_t total_;
  std::string unit_;
  double interval_;
  std::chrono::steady_clock::time_point start_;
  double last_print_ = 0.0;
  bool printed_ = false;
};

}  // namespace qforge
