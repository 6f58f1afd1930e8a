// SHA-256 (FIPS 180-4), written out here so checkpoint and job-directory digests need no OpenSSL.
// Used to fingerprint inputs (model shards, calibration data) so a resumed job can tell whether the
// files it started from are still the same.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace qforge {

namespace fs = std::filesystem;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  void update(const std::string& text) { update(text.data(), text.size()); }
  // Pads and finishes; lowercase 64-character hex. The object is reset afterwards, ready for reuse.
  std::string hex_digest();

 private:
  void compress(const std::uint8_t* block);
  void reset();

  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> buffer_;
  std::size_t buffered_ = 0;
  std::uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const std::string& data);
// Streams the file in 1 MiB chunks; InputError naming the file if it cannot be opened or read.
std::string sha256_file(const fs::path& path);

}  // namespace qforge
