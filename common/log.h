// Greppable log lines on stderr: "[2026-11-22T10:14:07][r3 worker][info] message".
//
// One event per line; the whole line is formatted first and written with one call, so lines from
// threads (heartbeats) or ranks sharing a terminal do not interleave mid-line.
#pragma once

#include <sstream>
#include <string>

namespace qforge {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kQuiet = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
// Parses "debug|info|warn|error|quiet"; throws InputError otherwise.
LogLevel parse_log_level(const std::string& name);
// Prefix identity; rank -1 means "not an MPI job" and is left out of the prefix.
void set_log_identity(int rank, const std::string& role);

class LogLine {
 public:
  explicit LogLine(LogLevel level) : level_(level) {}
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  template <typename T>
  LogLine& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace qforge

#define QF_LOG(level)                                                           \
  if (::qforge::LogLevel::k##level < ::qforge::log_level()) {                    \
  } else                                                                        \
    ::qforge::LogLine(::qforge::LogLevel::k##level)
