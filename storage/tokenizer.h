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
// - HF tokenizers `tokenizer.json` with a BPE model (storage/hf_json_tokenizer.cpp): byte-level BPE
//   (LLaMA-3, Qwen2/3, GPT-2) and SentencePiece-style BPE with byte fallback (LLaMA-2/Mistral converted),
//   added/special tokens, NFC and the other normalizers these families use, the post-processor's BOS.
// Other tokenizers are used through token files (storage/token_file.h) written by any tool.
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
  // The ids the model was trained on; with add_bos the BOS id comes first (tokenizer.json: the special
  // tokens its post-processor adds, none for Qwen).
  virtual std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const = 0;
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  // "sentencepiece", "llama2c" or "tokenizer.json".
  virtual std::string kind() const = 0;
};

// Loads by content: a tokenizer.json (JSON), a llama2.c tokenizer.bin or a SentencePiece model (detected
// by parsing, not by the file name). InputError naming the file when it is neither, missing or truncated.
std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& path);

// Finds the tokenizer of a model folder when none is given: tokenizer.model, tokenizer.bin, tokenizer.json.
// Returns an empty path when there is none.
fs::path find_model_tokenizer(const fs::path& model_dir);

}  // namespace qforge::storage
