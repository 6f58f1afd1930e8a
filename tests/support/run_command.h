// Runs a shell command for CLI tests and captures its exit code and combined output.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace qforge::test {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

CommandResult run_command(const std::string& command);
// Single-quotes a string for /bin/sh.
std::string shell_quote(const std::string& s);
// The start of a command line that runs the rest under `mpirun -np N`: root allowed through the
// environment, --bind-to none and oversubscription (ranks share 2 cores), and a timeout, so a hung
// launcher ends the test instead of stalling the run. `env` (VAR=value words) goes first.
std::string mpirun_prefix(int np, const std::string& env = "");
// Runs `qforge eval --log-level warn --json FLAGS`, expects exit 0 and returns the JSON object it
// printed last (an empty object if none).
nlohmann::json qforge_eval_json(const std::string& flags);

}  // namespace qforge::test
