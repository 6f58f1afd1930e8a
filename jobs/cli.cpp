#include "jobs/cli.h"

#include <cmath>
#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "common/log.h"
#include "worker/threads.h"

namespace qforge::jobs {

namespace {

std::string format_number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

}  // namespace

void add_common_options(po::options_description& desc) {
  desc.add_options()
      ("help,h", "show this help")
      ("threads", po::value<int>()->default_value(0), "compute threads (0: QFORGE_THREADS or all cores)")
      ("log-level", po::value<std::string>()->default_value("info"), "debug|info|warn|error|quiet");
}

bool parse_args(const Args& args, const std::string& command, const std::string& usage, po::options_description& desc,
                po::variables_map& vm, const po::positional_options_description* positional) {
  po::command_line_parser parser(args);
  parser.options(desc);
  if (positional) parser.positional(*positional);
  po::store(parser.run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: qforge " << command << " " << usage << "\n\n" << desc << "\n";
    return false;
  }
  po::notify(vm);
  return true;
}

void apply_common_options(const po::variables_map& vm) {
  set_log_level(parse_log_level(vm["log-level"].as<std::string>()));
  worker::configure_threads(static_cast<int>(count_at_least(vm, "threads", 0)));
}

double number_in(const po::variables_map& vm, const std::string& flag, double lo, double hi, bool lo_open) {
  const double v = vm[flag].as<double>();
  if (!std::isfinite(v) || v < lo || (lo_open && v == lo) || v > hi) {
    std::string range = std::string(lo_open ? "(" : "[") + format_number(lo) + ", " + format_number(hi) + "]";
    if (std::isinf(hi)) range = lo_open ? "> " + format_number(lo) : ">= " + format_number(lo);
    throw InputError("--" + flag, "", "'" + format_number(v) + "' is not a finite number " + range);
  }
  return v;
}

std::int64_t count_at_least(const po::variables_map& vm, const std::string& flag, std::int64_t lo) {
  const po::variable_value& x = vm[flag];
  const std::int64_t v = x.value().type() == typeid(int) ? x.as<int>() : x.as<std::int64_t>();
  if (v < lo) throw InputError("--" + flag, "", "must be >= " + std::to_string(lo) + " (got " + std::to_string(v) + ")");
  return v;
}

std::uint64_t parse_size(const std::string& text, const std::string& option) {
  std::size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw InputError(option, "", "cannot parse size '" + text + "'");
  }
  std::string unit = text.substr(pos);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB") mult = 1e3;
  else if (unit == "M" || unit == "MB") mult = 1e6;
  else if (unit == "G" || unit == "GB") mult = 1e9;
  else if (unit == "T" || unit == "TB") mult = 1e12;
  else if (unit == "KIB") mult = 1024.0;
  else if (unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
  else throw InputError(option, "", "unknown size unit in '" + text + "' (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
  if (!(value >= 0) || !std::isfinite(value)) throw InputError(option, "", "size must be non-negative: '" + text + "'");
  return static_cast<std::uint64_t>(std::llround(value * mult));
}

}  // namespace qforge::jobs
