// Fuzz target: the token-file parser (storage/token_file.h parse_token_file) on arbitrary bytes. Bad input
// must come back as qforge::InputError; anything else escaping, a crash or a sanitizer finding is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "storage/token_file.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    (void)qforge::storage::parse_token_file(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const qforge::InputError&) {
  }
  return 0;
}
