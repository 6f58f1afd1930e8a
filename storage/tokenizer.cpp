#include "storage/tokenizer.h"

#include <system_error>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/tokenizer_backends.h"

namespace qforge::storage {

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& path) {
  const std::string source = path.string();
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError(source, "", "tokenizer file not found");
  if (fs::is_directory(path, ec)) throw InputError(source, "", "is a directory, not a tokenizer file");
  const std::string bytes = read_file(path);
  if (bytes.empty()) throw InputError(source, "", "empty file: not a tokenizer.json, SentencePiece model or llama2.c tokenizer.bin");
  const auto first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{') return parse_hf_json_tokenizer(bytes, source);  // JSON

  // The llama2.c format has no magic, but its structure (entries ending exactly at EOF, every length
  // within max_token_length) is strict enough that a SentencePiece protobuf never passes it, so it is
  // tried first and its precise error kept for when the file is clearly a damaged tokenizer.bin.
  try {
    return parse_llama2c_tokenizer(bytes, source);
  } catch (const InputError&) {
    if (auto sp = parse_sentencepiece_tokenizer(bytes, source)) return sp;
    if (looks_like_llama2c_tokenizer(bytes)) throw;
  }
  throw InputError(source + ": not a tokenizer.json, SentencePiece model or llama2.c tokenizer.bin");
}

fs::path find_model_tokenizer(const fs::path& model_dir) {
  for (const char* name : {"tokenizer.model", "tokenizer.bin", "tokenizer.json"}) {
    fs::path candidate = model_dir / name;
    std::error_code ec;
    if (fs::is_regular_file(candidate, ec)) return candidate;
  }
  return {};
}

}  // namespace qforge::storage
