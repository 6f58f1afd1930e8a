// Fuzz target: the safetensors header parser (storage/safetensors_header.h) on arbitrary file bytes.
// Bad input must come back as qforge::InputError; anything else escaping (a JSON library exception, an
// overflow, a crash or a sanitizer finding) is a bug. A header that passes must describe tensors that
// tile the data buffer exactly, which is checked here independently of the parser.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "storage/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto h = qforge::storage::parse_safetensors_header(data, size, "fuzz");
    std::uint64_t at = 0;
    for (const auto& t : h.tensors) {
      if (t.begin != at || t.end < t.begin) std::abort();
      if (static_cast<std::uint64_t>(t.numel()) * qforge::storage::dtype_size(t.dtype) != t.nbytes()) std::abort();
      at = t.end;
    }
    if (h.data_offset + at != size) std::abort();
  } catch (const qforge::InputError&) {
  }
  return 0;
}
