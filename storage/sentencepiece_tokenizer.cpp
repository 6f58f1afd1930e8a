// SentencePiece tokenizer.model through libsentencepiece: the ids are exactly those of the Python
// sentencepiece package (and of HF LlamaTokenizer in its legacy mode), which is what the reference
// perplexities were measured with, for every model type the library supports.
//
// libsentencepiece is reached through a small C module loaded with dlopen(RTLD_LOCAL | RTLD_DEEPBIND):
// spm_shim/spm_shim.cpp explains the protobuf clash that makes direct linking crash next to LibTorch.
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/error.h"
#include "storage/tokenizer_backends.h"

namespace qforge::storage {

namespace {

namespace fs = std::filesystem;

struct SpmApi {
  void* (*load)(const char*, std::size_t, char*, std::size_t) = nullptr;
  void (*free_handle)(void*) = nullptr;
  int (*piece_size)(void*) = nullptr;
  int (*bos_id)(void*) = nullptr;
  int (*eos_id)(void*) = nullptr;
  int (*encode)(void*, const char*, std::size_t, int**, std::size_t*, char*, std::size_t) = nullptr;
  int (*decode)(void*, const int*, std::size_t, char**, std::size_t*, char*, std::size_t) = nullptr;
};

// Candidate locations: $QFORGE_SPM_MODULE, next to the running executable, the build tree.
std::vector<fs::path> module_candidates() {
  std::vector<fs::path> out;
  if (const char* env = std::getenv("QFORGE_SPM_MODULE")) out.emplace_back(env);
  char exe[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    fs::path dir = fs::path(exe).parent_path();
    out.push_back(dir / "libqforge_spm.so");
    out.push_back(dir / ".." / "lib" / "libqforge_spm.so");
  }
  out.emplace_back(QFORGE_SPM_MODULE);
  return out;
}

const SpmApi& spm_api() {
  static SpmApi api;
  static std::string load_error;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = nullptr;
    for (const auto& p : module_candidates()) {
      if (!fs::exists(p)) continue;
      lib = ::dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (lib) break;
      load_error = ::dlerror();
    }
    if (!lib) {
      if (load_error.empty()) load_error = "libqforge_spm.so not found next to the qforge executable";
      return;
    }
    auto sym = [&](const char* name) { return ::dlsym(lib, name); };
    api.load = reinterpret_cast<decltype(api.load)>(sym("qf_spm_load"));
    api.free_handle = reinterpret_cast<decltype(api.free_handle)>(sym("qf_spm_free"));
    api.piece_size = reinterpret_cast<decltype(api.piece_size)>(sym("qf_spm_piece_size"));
    api.bos_id = reinterpret_cast<decltype(api.bos_id)>(sym("qf_spm_bos_id"));
    api.eos_id = reinterpret_cast<decltype(api.eos_id)>(sym("qf_spm_eos_id"));
    api.encode = reinterpret_cast<decltype(api.encode)>(sym("qf_spm_encode"));
    api.decode = reinterpret_cast<decltype(api.decode)>(sym("qf_spm_decode"));
    if (!api.load || !api.free_handle || !api.piece_size || !api.bos_id || !api.eos_id || !api.encode || !api.decode) {
      api.load = nullptr;
      load_error = "libqforge_spm.so lacks its entry points";
    }
  });
  if (!api.load) throw InternalError("SentencePiece support unavailable: " + load_error);
  return api;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(void* handle, std::string source) : handle_(handle), source_(std::move(source)) {}
  ~SentencePieceTokenizer() override { spm_api().free_handle(handle_); }
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const override {
    int* raw = nullptr;
    std::size_t n = 0;
    char err[512] = {0};
    if (spm_api().encode(handle_, text.data(), text.size(), &raw, &n, err, sizeof err) != 0) {
      throw InternalError(source_ + ": SentencePiece encode failed: " + err);
    }
    std::unique_ptr<int, decltype(&std::free)> owned(raw, &std::free);
    std::vector<std::int32_t> ids;
    ids.reserve(n + 1);
    if (add_bos) {
      if (bos_id() < 0) throw InputError(source_, "bos_id", "the SentencePiece model has no BOS piece");
      ids.push_back(bos_id());
    }
    ids.insert(ids.end(), raw, raw + n);
    return ids;
  }

  std::string decode(const std::vector<std::int32_t>& ids) const override {
    const int n = vocab_size();
    for (std::int32_t id : ids) {
      // libsentencepiece reports out-of-range ids as an error status; naming the id helps more.
      if (id < 0 || id >= n) {
        throw InputError(source_, "decode", "token id " + std::to_string(id) + " outside 0.." + std::to_string(n - 1));
      }
    }
    std::vector<int> pieces(ids.begin(), ids.end());
    char* raw = nullptr;
    std::size_t len = 0;
    char err[512] = {0};
    if (spm_api().decode(handle_, pieces.data(), pieces.size(), &raw, &len, err, sizeof err) != 0) {
      throw InternalError(source_ + ": SentencePiece decode failed: " + err);
    }
    std::unique_ptr<char, decltype(&std::free)> owned(raw, &std::free);
    return std::string(raw, len);
  }

  int vocab_size() const override { return spm_api().piece_size(handle_); }
  int bos_id() const override { return spm_api().bos_id(handle_); }
  int eos_id() const override { return spm_api().eos_id(handle_); }
  std::string kind() const override { return "sentencepiece"; }

 private:
  void* handle_;
  std::string source_;
};

}  // namespace

std::unique_ptr<Tokenizer> parse_sentencepiece_tokenizer(const std::string& bytes, const std::string& source) {
  const SpmApi& api = spm_api();
  char err[512] = {0};
  void* handle = api.load(bytes.data(), bytes.size(), err, sizeof err);
  if (!handle) return nullptr;
  auto tok = std::make_unique<SentencePieceTokenizer>(handle, source);
  // An arbitrary byte string can occasionally parse as a protobuf; a model with no pieces is not one.
  if (tok->vocab_size() <= 0) return nullptr;
  return tok;
}

}  // namespace qforge::storage
