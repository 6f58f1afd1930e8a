// The safetensors header (layout: storage/safetensors.h), parsed and validated from bytes in memory.
// Plain C++ without LibTorch, so the header parser builds alone as a fuzz target (fuzz/).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "storage/dtype.h"

namespace qforge::storage {

// Headers larger than this are refused before being read (safetensors' MAX_HEADER_SIZE).
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // offset in the data buffer
  std::uint64_t end = 0;
  std::int64_t numel() const;
  std::uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in buffer order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_offset = 0;  // 8 + N
};

// Checks the whole file's bytes [data, data + size): at least 8 bytes; header length within
// kMaxHeaderBytes and the file; header well-formed UTF-8 JSON with an object at the top level that
// starts at byte 8; each entry has exactly the fields dtype, shape, data_offsets, a supported dtype, a
// shape of non-negative ints whose product does not overflow, and data_offsets [b, e] with b <= e, e
// within the buffer, e - b == numel * itemsize; entries sorted by offset neither overlap nor leave
// holes, and the buffer ends exactly at the end of the file; __metadata__ (optional) maps strings to
// strings; no duplicate names. Violations throw InputError naming `file` and the field.
SafetensorsHeader parse_safetensors_header(const std::uint8_t* data, std::uint64_t size, const std::string& file);

namespace detail {
// Parses JSON text from a file, refusing invalid UTF-8 and duplicate keys at any depth (nlohmann
// would silently keep the last one). Errors are InputError(where, field or the duplicated key's
// dotted path, ...). Shared by the safetensors header and the shard index parsers.
nlohmann::json parse_json_strict(std::string_view text, const std::string& where, const std::string& field);
}  // namespace detail

}  // namespace qforge::storage
