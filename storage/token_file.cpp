#include "storage/token_file.h"

#include <cstring>
#include <fstream>
#include <string>

#include "common/error.h"
#include "common/file_util.h"

namespace qforge::storage {

namespace {

constexpr char kMagic[8] = {'Q', 'F', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr std::uint32_t kVersion = 1;
constexpr std::uint32_t kIdBytes = 4;
constexpr std::size_t kHeaderBytes = 24;

// Explicit little-endian (de)serialization, so the format does not depend on the host byte order.
std::uint64_t read_le(const std::string& bytes, std::size_t offset, int width) {
  std::uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[offset + static_cast<std::size_t>(i)]);
  return v;
}

void append_le(std::string* out, std::uint64_t v, int width) {
  for (int i = 0; i < width; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

}  // namespace

bool is_token_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  char head[sizeof kMagic];
  if (!in.read(head, sizeof head)) return false;
  return std::memcmp(head, kMagic, sizeof kMagic) == 0;
}

std::vector<std::int32_t> read_token_file(const fs::path& path) { return parse_token_file(read_file(path), path.string()); }

std::vector<std::int32_t> parse_token_file(const std::string& bytes, const std::string& source) {
  if (bytes.size() < kHeaderBytes) {
    throw InputError(source, "header", "file is " + std::to_string(bytes.size()) + " bytes, shorter than the " +
                                           std::to_string(kHeaderBytes) + "-byte token-file header");
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    throw InputError(source, "magic", "not a qforge token file (expected \"QFTOKENS\")");
  }
  const auto version = read_le(bytes, 8, 4);
  if (version != kVersion) {
    throw InputError(source, "version", "unsupported version " + std::to_string(version) + " (expected 1)");
  }
  const auto id_bytes = read_le(bytes, 12, 4);
  if (id_bytes != kIdBytes) {
    throw InputError(source, "bytes per id", std::to_string(id_bytes) + " (expected 4: int32 ids)");
  }
  const std::uint64_t count = read_le(bytes, 16, 8);
  const std::uint64_t payload = bytes.size() - kHeaderBytes;
  // Compare without computing 4 * count, which can overflow for a corrupt count.
  if (payload % kIdBytes != 0 || payload / kIdBytes != count) {
    throw InputError(source, "count",
                     std::to_string(count) + " ids declared, so the file must be " + std::to_string(kHeaderBytes) +
                         " + 4 x count bytes, but it is " + std::to_string(bytes.size()) + " bytes");
  }
  std::vector<std::int32_t> ids(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<std::int32_t>(static_cast<std::uint32_t>(read_le(bytes, kHeaderBytes + 4 * i, 4)));
  }
  return ids;
}

void write_token_file(const fs::path& path, const std::vector<std::int32_t>& ids) {
  std::string out;
  out.reserve(kHeaderBytes + 4 * ids.size());
  out.append(kMagic, sizeof kMagic);
  append_le(&out, kVersion, 4);
  append_le(&out, kIdBytes, 4);
  append_le(&out, ids.size(), 8);
  for (std::int32_t id : ids) append_le(&out, static_cast<std::uint32_t>(id), 4);
  write_file_atomic(path, out);
}

}  // namespace qforge::storage
