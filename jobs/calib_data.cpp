#include "jobs/calib_data.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "common/error.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/py_random.h"
#include "common/progress.h"
#include "jobs/eval_data.h"
#include "storage/token_file.h"

namespace qforge::jobs {

at::Tensor generate_sequences(const worker::LlamaModel& model, std::int64_t n, std::int64_t seqlen, std::uint64_t seed) {
  at::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor ids = at::full({n, 1}, model.config().bos_token_id, at::kLong);
  ProgressMeter meter("generate", seqlen - 1, "tok");
  std::vector<worker::KvCache> caches;
  const worker::RopeTables rope = model.rope(seqlen);
  for (std::int64_t t = 1; t < seqlen; ++t) {
    at::Tensor logits = model.decode(ids.slice(1, t - 1, t), caches, rope);  // [n, vocab], fp32
    at::Tensor probs = at::softmax(logits.to(at::kDouble), -1);
    at::Tensor next = at::multinomial(probs, 1, false, gen);
    ids = at::cat({ids, next.to(at::kLong)}, 1);
    meter.update(t, static_cast<double>(t * n));
  }
  return ids;
}

at::Tensor load_calibration(const CalibDataSpec& spec, const storage::Tokenizer* tokenizer, const worker::LlamaModel& model) {
  if (spec.nsamples < 1) throw InputError("--nsamples", "", "must be at least 1");
  if (spec.seqlen < 2) throw InputError("--calib-seqlen", "", "must be at least 2");
  if (spec.seqlen > model.config().max_position_embeddings) {
    throw InputError("--calib-seqlen", "", std::to_string(spec.seqlen) + " is larger than the model supports (max_position_embeddings = " +
                                               std::to_string(model.config().max_position_embeddings) + ")");
  }
  if (spec.source == kGenerateSource) {
    QF_LOG(Info) << "calibration: sampling " << spec.nsamples << " sequences of " << spec.seqlen << " tokens from the model (seed "
                 << spec.seed << ")";
    return generate_sequences(model, spec.nsamples, spec.seqlen, spec.seed);
  }
  const fs::path path = spec.source;
  if (!fs::exists(path)) throw InputError(path.string(), "", "calibration data file not found");
  const auto format = spec.format.empty() ? storage::guess_data_format(path) : storage::parse_data_format(spec.format);
  if (format != storage::DataFormat::kTokens && tokenizer == nullptr) {
    throw InputError("--tokenizer", "", "missing tokenizer for calibration text (give --tokenizer or use a token file)");
  }
  if (format == storage::DataFormat::kC4) {
    EvalDataSpec e;
    e.path = path;
    e.format = format;
    e.seqlen = spec.seqlen;
    e.c4_samples = spec.nsamples;
    e.seed = spec.seed;
    return load_eval_windows(e, tokenizer).windows;
  }
  std::vector<std::int32_t> ids;
  if (format == storage::DataFormat::kTokens) {
    ids = storage::read_token_file(path);
  } else {
    std::string text = read_file(path);
    if (format == storage::DataFormat::kWikitext) text = storage::wikitext_hf_join(text);
    if (text.empty()) throw InputError(path.string(), "", "empty dataset (the file has no text)");
    ids = tokenizer->encode(text, /*add_bos=*/true);
  }
  const auto len = static_cast<std::int64_t>(ids.size());
  const std::int64_t vocab = model.config().vocab_size;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw InputError(path.string(), "token " + std::to_string(i), "id " + std::to_string(ids[i]) +
                                                                       " outside the model's vocabulary 0.." + std::to_string(vocab - 1));
    }
  }
  if (len <= spec.seqlen) {
    throw InputError(path.string(), "", "only " + std::to_string(len) + " tokens; calibration windows of " +
                                            std::to_string(spec.seqlen) + " need more");
  }
  PyRandom rng(spec.seed);
  at::Tensor out = at::empty({spec.nsamples, spec.seqlen}, at::kLong);
  auto* p = out.data_ptr<std::int64_t>();
  for (std::int64_t s = 0; s < spec.nsamples; ++s) {
    const std::int64_t i = rng.randint(0, len - spec.seqlen - 1);
    for (std::int64_t t = 0; t < spec.seqlen; ++t) p[s * spec.seqlen + t] = ids[static_cast<std::size_t>(i + t)];
  }
  return out;
}

}  // namespace qforge::jobs
