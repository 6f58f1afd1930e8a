#include "tests/support/run_command.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>

#include <gtest/gtest.h>

#include "tests/support/test_data.h"

namespace qforge::test {

CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return r;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string mpirun_prefix(int np, const std::string& env) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 " + env +
         " timeout -k 10 300 mpirun --oversubscribe --bind-to none -np " + std::to_string(np) + " ";
}

nlohmann::json qforge_eval_json(const std::string& flags) {
  const auto r = run_command(qforge_binary() + " eval --log-level warn --json " + flags);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const auto pos = r.output.rfind('{');
  return pos == std::string::npos ? nlohmann::json::object() : nlohmann::json::parse(r.output.substr(pos));
}

}  // namespace qforge::test
