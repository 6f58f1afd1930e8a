// Tokenizers qforge can run itself, and the pre-tokenized token file for everything else.
//
// - SentencePiece `tokenizer.model` (LLaMA-1/2 and models trained like them): BPE models, with byte
//   fallback and precompiled normalization rules (identity, nmt_nfkc, ...). qforge reads the ModelProto
//   and encodes/decodes itself with libsentencepiece 0.1.97's results, because Debian's
//   libsentencepiece cannot be loaded next to LibTorch (clashing protobuf copies; see
//   storage/sentencepiece_tokenizer.cpp).
// - llama2.c `tokenizer.bin`: int32 max_token_length, then per token: float32 score, int32 byte length,
//   the bytes. Encoding follows llama2.c run.c encode(): optional BOS, a dummy-prefix " " token when the
//   text is non-empty, one vocabulary lookup per UTF-8 code point with byte fallback (id = byte + 3),
//   then repeatedly merge the adjacent pair whose concatenation is in the vocabulary with the highest
//   score (leftmost on ties).
// Models whose tokenizer qforge cannot run (HF tokenizer.json BPE, e.g. LLaMA-3) are used through token
// files (storage/token_file.h) written by any tool.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace qforge::storage {

namespace fs = std::filesystem;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // The ids the model was trained on; with add_bos the BOS id comes first.
  virtual std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const = 0;
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  // "sentencepiece" or "llama2c".
  virtual std::string kind() const = 0;
};

// Loads by content: a llama2.c tokenizer.bin or a SentencePiece model (detected by parsing, not by
// the file name). InputError naming the file when it is neither, missing or truncated.
std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& path);

// Finds the tokenizer of a model folder when none is given: tokenizer.model, then tokenizer.bin.
// Returns an empty path when there is none.
fs::path find_model_tokenizer(const fs::path& model_dir);

}  // namespace qforge::storage
