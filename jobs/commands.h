// The qforge subcommands. Each takes its arguments after the command name and returns an exit code;
// errors are thrown (common/error.h) and turned into exit codes by main.cpp.
#pragma once

#include <string>
#include <vector>

namespace qforge::jobs {

using Args = std::vector<std::string>;

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const Args& args);
};

// All commands, in the order `qforge --help` lists them.
const std::vector<Command>& commands();

int run_quantize(const Args& args);
int run_eval(const Args& args);
int run_status(const Args& args);
int run_submit(const Args& args);
int run_export(const Args& args);
int run_inspect(const Args& args);
int run_import_llama2c(const Args& args);
int run_make_synthetic(const Args& args);
int run_tokenize(const Args& args);

}  // namespace qforge::jobs
