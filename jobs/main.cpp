// qforge entry point: pick the subcommand, run it, map errors to exit codes
// (0 ok, 2 bad input, 1 internal failure). One line on stderr per error.
#include <boost/program_options/errors.hpp>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

#include "common/error.h"
#include "common/host_memory.h"
#include "jobs/commands.h"

namespace {

void print_usage() {
  std::cout << "qforge " QFORGE_VERSION " - post-training quantization of LLaMA-family models\n\n"
            << "usage: qforge <command> [options]     (qforge <command> --help for its options)\n\ncommands:\n";
  for (const auto& c : qforge::jobs::commands()) std::printf("  %-16s %s\n", c.name, c.summary);
}

bool path_problem(const std::error_code& ec) {
  switch (ec.value()) {
    case ELOOP: case ENAMETOOLONG: case ENOENT: case ENOTDIR: case EISDIR: case EACCES: case EPERM: case EROFS:
    case EEXIST:
      return true;
    default:
      return false;
  }
}

}  // namespace

int main(int argc, char** argv) {
  qforge::keep_freed_host_memory();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_usage();
    return argc < 2 ? qforge::kExitBadInput : qforge::kExitOk;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version")) {
    std::cout << "qforge " QFORGE_VERSION "\n";
    return 0;
  }
  const std::string name = argv[1];
  qforge::jobs::Args args(argv + 2, argv + argc);
  for (const auto& c : qforge::jobs::commands()) {
    if (name != c.name) continue;
    try {
      return c.run(args);
    } catch (const qforge::Error& e) {
      std::cerr << "qforge " << name << ": error: " << e.what() << "\n";
      return e.exit_code();
    } catch (const boost::program_options::error& e) {
      std::cerr << "qforge " << name << ": error: " << e.what() << " (see qforge " << name << " --help)\n";
      return qforge::kExitBadInput;
    } catch (const std::filesystem::filesystem_error& e) {
      // A path the user gave that cannot be used (a link loop, a name too long, a missing or read-only
      // folder) is bad input; anything else the file system says (full, I/O error) is not.
      std::cerr << "qforge " << name << ": " << (path_problem(e.code()) ? "error: " : "internal error: ") << e.what() << "\n";
      return path_problem(e.code()) ? qforge::kExitBadInput : qforge::kExitInternal;
    } catch (const std::bad_alloc&) {
      std::cerr << "qforge " << name << ": error: out of memory\n";
      return qforge::kExitInternal;
    } catch (const std::exception& e) {
      std::cerr << "qforge " << name << ": internal error: " << e.what() << "\n";
      return qforge::kExitInternal;
    }
  }
  std::cerr << "qforge: error: unknown command '" << name << "' (see qforge --help)\n";
  return qforge::kExitBadInput;
}
