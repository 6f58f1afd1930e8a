#include "storage/safetensors_header.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "common/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors header lengths are little-endian");

namespace qforge::storage {

using json = nlohmann::json;

namespace {

// Offset of the first byte that is not well-formed UTF-8 (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF), or npos. nlohmann only checks bytes inside strings and reports them as a
// generic parse error; this gives the user a precise message for any byte of the header.
std::size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

// Remembers the keys of every open object during a callback parse, because nlohmann silently keeps
// the last of two equal keys and a duplicated tensor name would otherwise go unnoticed.
class DuplicateKeyCheck {
 public:
  bool on_event(json::parse_event_t event, const json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: {
        std::string path;
        if (!stack_.empty()) path = stack_.back().path.empty() ? last_key_ : stack_.back().path + "." + last_key_;
        stack_.push_back({std::move(path), {}});
        break;
      }
      case json::parse_event_t::object_end:
        if (!stack_.empty()) stack_.pop_back();
        break;
      case json::parse_event_t::key: {
        last_key_ = parsed.get<std::string>();
        if (!stack_.empty() && !stack_.back().keys.insert(last_key_).second && duplicate_.empty()) {
          duplicate_ = stack_.back().path.empty() ? last_key_ : stack_.back().path + "." + last_key_;
        }
        break;
      }
      default:
        break;
    }
    return true;
  }
  // Dotted path of the first duplicated key, empty when there was none.
  const std::string& duplicate() const { return duplicate_; }

 private:
  struct Level {
    std::string path;
    std::set<std::string> keys;
  };
  std::vector<Level> stack_;
  std::string last_key_;
  std::string duplicate_;
};

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// A JSON value that is a non-negative integer (nlohmann types those as number_unsigned).
bool as_u64(const json& v, std::uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  *out = v.get<std::uint64_t>();
  return true;
}

}  // namespace

namespace detail {

json parse_json_strict(std::string_view text, const std::string& where, const std::string& field) {
  if (std::size_t bad = find_invalid_utf8(text); bad != std::string_view::npos) {
    throw InputError(where, field, "not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  DuplicateKeyCheck dups;
  json value;
  try {
    value = json::parse(text.begin(), text.end(),
                        [&dups](int, json::parse_event_t event, json& parsed) { return dups.on_event(event, parsed); });
  } catch (const json::exception& e) {
    throw InputError(where, field, std::string("not valid JSON: ") + e.what());
  }
  if (!dups.duplicate().empty()) throw InputError(where, dups.duplicate(), "duplicate key");
  return value;
}

}  // namespace detail

// ---- TensorInfo ----------------------------------------------------------------------------------

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;  // validated not to overflow when the header was read
  return n;
}

namespace {

TensorInfo parse_entry(const std::string& file, const std::string& name, const json& entry,
                       std::uint64_t buffer_size) {
  if (!entry.is_object()) throw InputError(file, name, "entry must be an object with dtype, shape, data_offsets");
  for (const auto& item : entry.items()) {
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets") {
      throw InputError(file, name + "." + item.key(), "unknown field");
    }
  }
  TensorInfo t;
  t.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) throw InputError(file, name + ".dtype", "missing");
  if (!dtype_it->is_string()) throw InputError(file, name + ".dtype", "must be a string");
  const std::string dtype_text = dtype_it->get<std::string>();
  if (!parse_dtype(dtype_text, &t.dtype)) {
    throw InputError(file, name + ".dtype",
                     "unsupported dtype \"" + dtype_text + "\" (qforge reads F32, F16, BF16, I64, I32, I8, U8)");
  }

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) throw InputError(file, name + ".shape", "missing");
  if (!shape_it->is_array()) throw InputError(file, name + ".shape", "must be an array");
  std::uint64_t numel = 1;
  for (const json& d : *shape_it) {
    std::uint64_t dim = 0;
    if (!as_u64(d, &dim) || dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw InputError(file, name + ".shape", "entries must be non-negative integers, got " + d.dump());
    }
    if (__builtin_mul_overflow(numel, dim, &numel)) {
      throw InputError(file, name + ".shape", "element count overflows 64 bits: " + shape_it->dump());
    }
    t.shape.push_back(static_cast<std::int64_t>(dim));
  }
  std::uint64_t expected_bytes = 0;
  if (numel > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
      __builtin_mul_overflow(numel, static_cast<std::uint64_t>(dtype_size(t.dtype)), &expected_bytes)) {
    throw InputError(file, name + ".shape", "byte size overflows 64 bits: " + shape_it->dump());
  }

  auto off_it = entry.find("data_offsets");
  if (off_it == entry.end()) throw InputError(file, name + ".data_offsets", "missing");
  if (!off_it->is_array() || off_it->size() != 2 || !as_u64((*off_it)[0], &t.begin) ||
      !as_u64((*off_it)[1], &t.end)) {
    throw InputError(file, name + ".data_offsets", "must be two non-negative integers [begin, end], got " +
                                                        off_it->dump());
  }
  if (t.begin > t.end) throw InputError(file, name + ".data_offsets", "begin > end in " + off_it->dump());
  if (t.end > buffer_size) {
    throw InputError(file, name + ".data_offsets",
                     "end " + std::to_string(t.end) + " is past the end of the data buffer (" +
                         std::to_string(buffer_size) + " bytes)");
  }
  if (t.end - t.begin != expected_bytes) {
    throw InputError(file, name + ".data_offsets",
                     "span of " + std::to_string(t.end - t.begin) + " bytes does not match shape " +
                         shape_it->dump() + " x " + dtype_text + " = " + std::to_string(expected_bytes) + " bytes");
  }
  return t;
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const json& meta) {
  if (!meta.is_object()) throw InputError(file, "__metadata__", "must be an object of strings");
  std::map<std::string, std::string> out;
  for (const auto& item : meta.items()) {
    if (!item.value().is_string()) {
      throw InputError(file, "__metadata__." + item.key(), "must be a string, got " + item.value().dump());
    }
    out[item.key()] = item.value().get<std::string>();
  }
  return out;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const std::uint8_t* data, std::uint64_t size, const std::string& file) {
  SafetensorsHeader h;
  if (size == 0) throw InputError(file, "", "empty file (not a safetensors file)");
  if (size < 8) throw InputError(file, "header", "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  const std::uint64_t header_len = read_u64_le(data);
  if (header_len > kMaxHeaderBytes) {
    throw InputError(file, "header", "header length " + std::to_string(header_len) + " exceeds the limit of " +
                                         std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (header_len > size - 8) {
    throw InputError(file, "header", "header length " + std::to_string(header_len) + " is larger than the file (" +
                                         std::to_string(size) + " bytes)");
  }
  h.data_offset = 8 + header_len;
  const std::uint64_t buffer_size = size - h.data_offset;

  const std::string_view text(reinterpret_cast<const char*>(data) + 8, header_len);
  // The format requires the object to start right at byte 8 (only trailing padding is allowed).
  if (text.empty() || text.front() != '{') {
    throw InputError(file, "header", "must be a JSON object starting with '{' at byte 8");
  }
  const json header = detail::parse_json_strict(text, file, "header");
  if (!header.is_object()) throw InputError(file, "header", "top-level JSON value must be an object");

  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") {
      h.metadata = parse_metadata(file, item.value());
    } else {
      h.tensors.push_back(parse_entry(file, item.key(), item.value(), buffer_size));
    }
  }

  // Buffer order; equal begins only happen with empty tensors, ordered by name for determinism.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  std::uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : h.tensors) {
    if (t.begin < covered) {
      throw InputError(file, t.name + ".data_offsets",
                       "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ") overlaps tensor " +
                           (prev ? prev->name : std::string("?")));
    }
    if (t.begin > covered) {
      throw InputError(file, t.name + ".data_offsets",
                       "hole of " + std::to_string(t.begin - covered) + " bytes before this tensor (after " +
                           (prev ? "tensor " + prev->name : std::string("the start of the buffer")) + ")");
    }
    covered = t.end;
    prev = &t;
  }
  if (covered != buffer_size) {
    throw InputError(file, "data buffer",
                     std::to_string(buffer_size - covered) + " trailing bytes after the last tensor (buffer is " +
                         std::to_string(buffer_size) + " bytes, tensors cover " + std::to_string(covered) + ")");
  }
  return h;
}

}  // namespace qforge::storage
