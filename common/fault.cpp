#include "common/fault.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "common/error.h"

namespace qforge {

namespace {

struct FaultSpec {
  bool active = false;
  std::string point;
  std::string action = "kill";
  int count = 1;
};

FaultSpec g_fault;
std::atomic<int> g_hits{0};

}  // namespace

void configure_fault_injection(int rank) {
  const char* env = std::getenv("QFORGE_FAULT");
  if (!env || !*env) return;
  std::vector<std::string> parts;
  std::stringstream ss(env);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  if (parts.size() < 2 || parts.size() > 4) throw InputError("QFORGE_FAULT", "", "expected <point>:<rank>[:kill|stop|throw|usr1[:<count>]]");
  if (std::stoi(parts[1]) != rank) return;
  g_fault.active = true;
  g_fault.point = parts[0];
  if (parts.size() > 2) g_fault.action = parts[2];
  if (parts.size() > 3) g_fault.count = std::stoi(parts[3]);
  if (g_fault.action != "kill" && g_fault.action != "stop" && g_fault.action != "throw" && g_fault.action != "usr1") {
    throw InputError("QFORGE_FAULT", "action", "must be kill, stop, throw or usr1");
  }
}

void fault_point(const char* point) {
  if (!g_fault.active || g_fault.point != point) return;
  if (++g_hits != g_fault.count) return;
  std::fprintf(stderr, "qforge: QFORGE_FAULT: %s of pid %d at %s\n", g_fault.action.c_str(), static_cast<int>(getpid()), point);
  std::fflush(stderr);
  if (g_fault.action == "throw") throw InternalError(std::string("injected fault at ") + point);
  ::kill(getpid(), g_fault.action == "stop" ? SIGSTOP : g_fault.action == "usr1" ? SIGUSR1 : SIGKILL);
}

}  // namespace qforge
