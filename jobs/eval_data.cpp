#include "jobs/eval_data.h"

#include <ATen/ATen.h>

#include "common/error.h"
#include "common/file_util.h"
#include "common/py_random.h"
#include "storage/token_file.h"

namespace qforge::jobs {

at::Tensor cut_windows(const std::vector<std::int32_t>& ids, std::int64_t seqlen) {
  const std::int64_t n = static_cast<std::int64_t>(ids.size()) / seqlen;
  at::Tensor all = at::empty({n * seqlen}, at::kLong);
  auto* p = all.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n * seqlen; ++i) p[i] = ids[static_cast<std::size_t>(i)];
  return all.view({n, seqlen});
}

static EvalWindows c4_windows(const EvalDataSpec& spec, const storage::Tokenizer& tok) {
  const auto docs = storage::read_jsonl_texts(spec.path);
  if (docs.empty()) throw InputError(spec.path.string(), "", "empty dataset (no documents)");
  // Tokenize lazily and remember: the sampling loop revisits documents, and a clear error is needed
  // when no document is long enough (the Python loop would spin forever).
  std::vector<std::vector<std::int32_t>> cache(docs.size());
  std::vector<bool> done(docs.size(), false);
  auto encoded = [&](std::size_t i) -> const std::vector<std::int32_t>& {
    if (!done[i]) {
      cache[i] = tok.encode(docs[i], /*add_bos=*/true);
      done[i] = true;
    }
    return cache[i];
  };
  bool any_long = false;
  for (std::size_t i = 0; i < docs.size() && !any_long; ++i) any_long = static_cast<std::int64_t>(encoded(i).size()) > spec.seqlen;
  if (!any_long) {
    throw InputError(spec.path.string(), "", "no document has more than seqlen=" + std::to_string(spec.seqlen) + " tokens");
  }
  PyRandom rng(spec.seed);
  const std::int64_t n = spec.c4_samples;
  at::Tensor windows = at::empty({n, spec.seqlen}, at::kLong);
  auto* p = windows.data_ptr<std::int64_t>();
  for (std::int64_t s = 0; s < n; ++s) {
    const std::vector<std::int32_t>* ids = nullptr;
    while (true) {
      auto i = static_cast<std::size_t>(rng.randint(0, static_cast<std::int64_t>(docs.size()) - 1));
      ids = &encoded(i);
      // GPTQ accepts len >= seqlen and then calls randint(0, len - seqlen - 1), which fails for
      // len == seqlen; requiring len > seqlen draws the same windows wherever Python succeeds.
      if (static_cast<std::int64_t>(ids->size()) > spec.seqlen) break;
    }
    auto start = rng.randint(0, static_cast<std::int64_t>(ids->size()) - spec.seqlen - 1);
    for (std::int64_t t = 0; t < spec.seqlen; ++t) p[s * spec.seqlen + t] = (*ids)[static_cast<std::size_t>(start + t)];
  }
  return {windows, n * spec.seqlen};
}

EvalWindows load_eval_windows(const EvalDataSpec& spec, const storage::Tokenizer* tokenizer) {
  if (!fs::exists(spec.path)) throw InputError(spec.path.string(), "", "data file not found");
  if (spec.seqlen < 2) throw InputError("--seqlen", "", "must be at least 2");
  if (spec.format != storage::DataFormat::kTokens && tokenizer == nullptr) {
    throw InputError("--tokenizer", "", "missing tokenizer: give --tokenizer, put tokenizer.model, tokenizer.bin or tokenizer.json in the "
                                        "model folder, or use a pre-tokenized --data-format tokens file");
  }
  EvalWindows out;
  if (spec.format == storage::DataFormat::kC4) {
    if (spec.c4_samples < 1) throw InputError("--c4-samples", "", "must be at least 1");
    out = c4_windows(spec, *tokenizer);
  } else {
    std::vector<std::int32_t> ids;
    if (spec.format == storage::DataFormat::kTokens) {
      ids = storage::read_token_file(spec.path);
    } else {
      std::string text = read_file(spec.path);
      if (spec.format == storage::DataFormat::kWikitext) text = storage::wikitext_hf_join(text);
      if (text.empty()) throw InputError(spec.path.string(), "", "empty dataset (the file has no text)");
      ids = tokenizer->encode(text, /*add_bos=*/true);
    }
    if (ids.empty()) throw InputError(spec.path.string(), "", "empty dataset (no tokens)");
    if (static_cast<std::int64_t>(ids.size()) < spec.seqlen) {
      throw InputError(spec.path.string(), "", "only " + std::to_string(ids.size()) + " tokens, fewer than one window of seqlen=" +
                                                   std::to_string(spec.seqlen));
    }
    out.tokens = static_cast<std::int64_t>(ids.size());
    out.windows = cut_windows(ids, spec.seqlen);
  }
  if (spec.max_windows > 0 && out.windows.size(0) > spec.max_windows) out.windows = out.windows.slice(0, 0, spec.max_windows);
  return out;
}

}  // namespace qforge::jobs
