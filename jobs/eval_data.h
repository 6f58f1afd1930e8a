// Evaluation data -> token windows, by the GPTQ-paper conventions
// (../shared/docs/formats-and-ecosystem.md §4.1):
// - text / wikitext / tokens: the whole text tokenized once with one BOS (token files are used as
//   stored), cut into non-overlapping windows of seqlen tokens, tail dropped;
// - c4: `random.seed(seed)`, then per sample draw documents (randint over the document list) until
//   one tokenizes (with BOS) to more than seqlen tokens, and take the window starting at
//   randint(0, len - seqlen - 1); windows are evaluated independently.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "storage/text_data.h"
#include "storage/tokenizer.h"

namespace qforge::jobs {

namespace fs = std::filesystem;

struct EvalDataSpec {
  fs::path path;
  storage::DataFormat format = storage::DataFormat::kText;
  std::int64_t seqlen = 0;
  std::int64_t c4_samples = 256;
  std::uint64_t seed = 0;
  std::int64_t max_windows = 0;  // 0 = all
};

struct EvalWindows {
  at::Tensor windows;        // int64 [N, seqlen]
  std::int64_t tokens = 0;   // tokens in the tokenized data (text formats) or drawn (c4)
};

// tokenizer may be null only for the tokens format. InputError for empty or too-short data.
EvalWindows load_eval_windows(const EvalDataSpec& spec, const storage::Tokenizer* tokenizer);

// Non-overlapping windows over one token stream, tail dropped.
at::Tensor cut_windows(const std::vector<std::int32_t>& ids, std::int64_t seqlen);

}  // namespace qforge::jobs
