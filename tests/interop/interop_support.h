// The interop tier's access to Python: the interpreter with transformers, safetensors and
// compressed-tensors (the torch virtual environment; scripts/setup.sh installs them there) and the
// reference script tests/interop/hf_reference.py. Test-time only.
#pragma once

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge::test {

inline std::string interop_python() { return QFORGE_PYTHON; }

// Why the Python clients cannot run here ("" when they can).
inline std::string python_clients_missing() {
  static const std::string why = [] {
    const CommandResult r = run_command(shell_quote(interop_python()) +
                                        " -c 'import transformers, safetensors, compressed_tensors' 2>&1");
    return r.exit_code == 0 ? std::string() : interop_python() + " cannot import transformers/compressed_tensors: " + r.output;
  }();
  return why;
}

// Runs hf_reference.py with `args`; throws with its output when it fails.
inline std::string run_python(const std::string& args) {
  const CommandResult r = run_command(shell_quote(interop_python()) + " " +
                                      shell_quote(std::string(QFORGE_SOURCE_DIR) + "/tests/interop/hf_reference.py") + " " +
                                      args + " 2>&1");
  if (r.exit_code != 0) throw std::runtime_error("hf_reference.py " + args + " failed:\n" + r.output);
  return r.output;
}

// Runs the qforge binary with `args` at --log-level warn, stderr into the output.
inline CommandResult run_qforge(const std::string& args) {
  return run_command(qforge_binary() + " " + args + " --log-level warn 2>&1");
}

}  // namespace qforge::test

// Skipped with the reason where the Python clients are not installed, except under CI=true (a failure).
#define QF_REQUIRE_TRANSFORMERS()                                                   \
  do {                                                                              \
    const std::string qf_py_why_ = ::qforge::test::python_clients_missing();        \
    if (!qf_py_why_.empty()) {                                                      \
      if (::qforge::test::running_in_ci()) FAIL() << qf_py_why_;                    \
      GTEST_SKIP() << qf_py_why_;                                                   \
    }                                                                               \
  } while (0)
