// Fuzz target: the journal parser (storage/journal.h parse_journal) on arbitrary bytes. Bad input must
// come back as qforge::InputError; anything else escaping (a JSON library exception, std::out_of_range,
// a crash or a sanitizer finding) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "storage/journal.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto replay = qforge::storage::parse_journal(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& r : replay.records) (void)r.dump();
  } catch (const qforge::InputError&) {
  }
  return 0;
}
