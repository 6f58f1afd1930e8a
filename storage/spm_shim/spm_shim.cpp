// A C interface to libsentencepiece, built as its own module and loaded with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND) by storage/sentencepiece_tokenizer.cpp.
//
// Why: Debian's libsentencepiece bundles a protobuf-lite and exports its symbols, while LibTorch links
// the system libprotobuf. Linked into one executable, sentencepiece's copies interpose libprotobuf's
// and the process crashes in libprotobuf's static initialisers before main(). Loaded locally with deep
// binding, sentencepiece resolves protobuf against its own copy and stays out of the global scope.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define QF_SPM_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
void copy_error(const std::string& msg, char* err, std::size_t errlen) {
  if (err && errlen) {
    std::strncpy(err, msg.c_str(), errlen - 1);
    err[errlen - 1] = '\0';
  }
}
}  // namespace

QF_SPM_EXPORT void* qf_spm_load(const char* bytes, std::size_t n, char* err, std::size_t errlen) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  auto status = p->LoadFromSerializedProto(std::string(bytes, n));
  if (!status.ok()) {
    copy_error(status.ToString(), err, errlen);
    delete p;
    return nullptr;
  }
  return p;
}

QF_SPM_EXPORT void qf_spm_free(void* handle) { delete static_cast<sentencepiece::SentencePieceProcessor*>(handle); }

QF_SPM_EXPORT int qf_spm_piece_size(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize(); }
QF_SPM_EXPORT int qf_spm_bos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->bos_id(); }
QF_SPM_EXPORT int qf_spm_eos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->eos_id(); }

// On success *out is a malloc'd array of *out_n ids (release with free()); returns 0.
QF_SPM_EXPORT int qf_spm_encode(void* h, const char* text, std::size_t n, int** out, std::size_t* out_n, char* err,
                                std::size_t errlen) {
  std::vector<int> ids;
  auto status = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(std::string(text, n), &ids);
  if (!status.ok()) {
    copy_error(status.ToString(), err, errlen);
    return 1;
  }
  *out_n = ids.size();
  *out = static_cast<int*>(std::malloc(sizeof(int) * (ids.size() + 1)));
  if (!*out) return 2;
  std::memcpy(*out, ids.data(), sizeof(int) * ids.size());
  return 0;
}

// On success *out is a malloc'd buffer of *out_n bytes (release with free()); returns 0.
QF_SPM_EXPORT int qf_spm_decode(void* h, const int* ids, std::size_t n, char** out, std::size_t* out_n, char* err,
                                std::size_t errlen) {
  std::string text;
  auto status = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(std::vector<int>(ids, ids + n), &text);
  if (!status.ok()) {
    copy_error(status.ToString(), err, errlen);
    return 1;
  }
  *out_n = text.size();
  *out = static_cast<char*>(std::malloc(text.size() + 1));
  if (!*out) return 2;
  std::memcpy(*out, text.data(), text.size());
  return 0;
}
