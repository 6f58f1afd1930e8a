// Runs a shell command for CLI tests and captures its exit code and combined output.
#pragma once

#include <string>

namespace qforge::test {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

CommandResult run_command(const std::string& command);
// Single-quotes a string for /bin/sh.
std::string shell_quote(const std::string& s);

}  // namespace qforge::test
