#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <mutex>

#include "common/error.h"

namespace qforge {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::mutex g_identity_mutex;
int g_rank = -1;
std::string g_role;

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
    default: return "quiet";
  }
}
}  // namespace

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

LogLevel parse_log_level(const std::string& name) {
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError, LogLevel::kQuiet}) {
    if (name == level_name(l)) return l;
  }
  throw InputError("--log-level", "", "unknown level '" + name + "' (debug|info|warn|error|quiet)");
}

void set_log_identity(int rank, const std::string& role) {
  std::lock_guard<std::mutex> lock(g_identity_mutex);
  g_rank = rank;
  g_role = role;
}

LogLine::~LogLine() {
  std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string who;
  {
    std::lock_guard<std::mutex> lock(g_identity_mutex);
    if (g_rank >= 0) who = "r" + std::to_string(g_rank) + (g_role.empty() ? "" : " " + g_role);
    else who = g_role;
  }
  std::string line = std::string("[") + stamp + "]" + (who.empty() ? "" : "[" + who + "]") + "[" +
                     level_name(level_) + "] " + stream_.str() + "\n";
  // One write(2) per line keeps concurrent writers from interleaving within a line.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace qforge
