#include "common/error.h"

namespace qforge {

static std::string join_where(const std::string& where, const std::string& field, const std::string& what) {
  std::string out = where;
  if (!field.empty()) out += (out.empty() ? "" : ": ") + field;
  out += (out.empty() ? "" : ": ") + what;
  return out;
}

InputError::InputError(const std::string& where, const std::string& field, const std::string& what)
    : Error(join_where(where, field, what)) {}

void throw_check_failure(const char* cond, const char* file, int line, const std::string& msg) {
  throw InternalError(std::string("internal check failed: ") + cond + " (" + file + ":" + std::to_string(line) +
                      ")" + (msg.empty() ? "" : ": " + msg));
}

}  // namespace qforge
