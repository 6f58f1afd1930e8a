// Shared command-line plumbing for the subcommands (Boost.Program_options).
#pragma once

#include <boost/program_options.hpp>

#include <cstdint>
#include <string>

#include "jobs/commands.h"

namespace qforge::jobs {

namespace po = boost::program_options;

// Options every command has: --help, --threads, --log-level.
void add_common_options(po::options_description& desc);

// Parses args into vm. Returns false when --help was given (usage already printed to stdout).
// Unknown options and bad values throw po::error (exit 2 in main).
bool parse_args(const Args& args, const std::string& command, const std::string& usage, po::options_description& desc,
                po::variables_map& vm, const po::positional_options_description* positional = nullptr);

// Applies --threads and --log-level.
void apply_common_options(const po::variables_map& vm);

// The value of a numeric option, refused (InputError naming `flag`, exit 2) unless finite and within
// [lo, hi]; `lo_open`: lo itself excluded. Every numeric option passes through one of these, so its valid
// range is written once, where it is read.
double number_in(const po::variables_map& vm, const std::string& flag, double lo, double hi, bool lo_open = false);
std::int64_t count_at_least(const po::variables_map& vm, const std::string& flag, std::int64_t lo);

// "2GB", "500MiB", "1.5G", "4096" -> bytes (decimal units KB/MB/GB/TB, binary KiB/MiB/GiB/TiB).
std::uint64_t parse_size(const std::string& text, const std::string& option);

}  // namespace qforge::jobs
