// The concrete tokenizers behind load_tokenizer (storage/tokenizer.h). Private to qforge_storage:
// everything else goes through the Tokenizer interface.
#pragma once

#include <memory>
#include <string>

#include "storage/tokenizer.h"

namespace qforge::storage {

// Parses the bytes of a llama2.c tokenizer.bin. Throws InputError naming `source` (and the token index
// for a bad or truncated entry) when the bytes are not exactly one well-formed tokenizer.bin.
std::unique_ptr<Tokenizer> parse_llama2c_tokenizer(const std::string& bytes, const std::string& source);

// True when the header and first entry read like a llama2.c tokenizer.bin (sane max_token_length and
// first length). load_tokenizer uses it to report the llama2.c parse error (e.g. a truncated entry)
// rather than the generic "neither format" error when the file is clearly a damaged tokenizer.bin.
bool looks_like_llama2c_tokenizer(const std::string& bytes);

// Loads a serialized SentencePiece ModelProto (storage/sentencepiece_tokenizer.cpp). Returns nullptr
// when the bytes are not one, so the caller decides which error to report; throws InputError naming
// `source` for a real ModelProto qforge cannot run (not BPE, denormalization rules, broken pieces).
std::unique_ptr<Tokenizer> parse_sentencepiece_tokenizer(const std::string& bytes, const std::string& source);

// HF tokenizers' tokenizer.json (storage/hf_json_tokenizer.cpp); InputError naming the field it cannot run.
std::unique_ptr<Tokenizer> parse_hf_json_tokenizer(const std::string& bytes, const std::string& source);

}  // namespace qforge::storage
