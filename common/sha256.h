// SHA-256 digests of byte strings and files, computed by OpenSSL's libcrypto (EVP), which fingerprint
// inputs (model shards, calibration data) and results (unit shards, checkpoints), so a resumed job can
// tell whether the files it started from are still the same.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>

namespace qforge {

namespace fs = std::filesystem;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, std::size_t size);
  void update(const std::string& text) { update(text.data(), text.size()); }
  // Pads and finishes; lowercase 64-character hex. The object is reset afterwards, ready for reuse.
  std::string hex_digest();

 private:
  struct Context;
  std::unique_ptr<Context> ctx_;
};

std::string sha256_hex(const std::string& data);
// Streams the file in 1 MiB chunks; InputError naming the file if it cannot be opened or read.
std::string sha256_file(const fs::path& path);

}  // namespace qforge
