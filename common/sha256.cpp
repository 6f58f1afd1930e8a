#include "common/sha256.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "common/error.h"

namespace qforge {

// The EVP context, owned (EVP_MD_CTX is opaque: it has no stack form).
struct Sha256::Context {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ~Context() { EVP_MD_CTX_free(md); }
  void init() { QF_CHECK(md != nullptr && EVP_DigestInit_ex(md, EVP_sha256(), nullptr) == 1, "OpenSSL: SHA-256 init failed"); }
};

Sha256::Sha256() : ctx_(std::make_unique<Context>()) { ctx_->init(); }
Sha256::~Sha256() = default;

void Sha256::update(const void* data, std::size_t size) {
  if (size > 0) QF_CHECK(EVP_DigestUpdate(ctx_->md, data, size) == 1, "OpenSSL: SHA-256 update failed");
}

std::string Sha256::hex_digest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  QF_CHECK(EVP_DigestFinal_ex(ctx_->md, digest, &n) == 1 && n == 32, "OpenSSL: SHA-256 final failed");
  static const char* kHex = "0123456789abcdef";
  std::string out(64, '0');
  for (unsigned int i = 0; i < n; ++i) out[2 * i] = kHex[digest[i] >> 4], out[2 * i + 1] = kHex[digest[i] & 15];
  ctx_->init();
  return out;
}

std::string sha256_hex(const std::string& data) {
  Sha256 h;
  h.update(data);
  return h.hex_digest();
}

std::string sha256_file(const fs::path& path) {
  // An ifstream opens a directory without error and then reads nothing: refuse it explicitly.
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw InputError(path.string(), "", "is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string(), "", std::string("cannot open file: ") + std::strerror(errno));
  Sha256 h;
  std::vector<char> chunk(std::size_t{1} << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    h.update(chunk.data(), static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad()) throw InputError(path.string(), "", "read failed");
  return h.hex_digest();
}

}  // namespace qforge
