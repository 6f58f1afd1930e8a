// qforge eval: perplexity of a model on local data, optionally KL and top-1 agreement vs a reference.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "jobs/cli.h"
#include "jobs/eval_data.h"
#include "worker/evaluator.h"
#include "worker/llama_model.h"

namespace qforge::jobs {

namespace {

void add_eval_options(po::options_description& desc) {
  add_common_options(desc);
  desc.add_options()
      ("model", po::value<std::vector<std::string>>()->required()->composing(),
       "model folder (HF layout); repeat to compare several on the same windows in one table")
      ("data", po::value<std::string>()->required(), "local data file")
      ("data-format", po::value<std::string>(), "text|wikitext|c4|tokens (default: guessed from the file)")
      ("tokenizer", po::value<std::string>(), "tokenizer.model or llama2.c tokenizer.bin (default: from the first model's folder)")
      ("seqlen", po::value<std::int64_t>()->default_value(0), "window length (default min(2048, max_position_embeddings))")
      ("reference", po::value<std::string>(), "reference model folder: also report KL(ref||model) and top-1 agreement")
      ("json", po::bool_switch(), "print JSON on stdout (one object; with several models {\"results\": [...]})")
      ("dtype", po::value<std::string>()->default_value("float32"), "compute dtype: float32|bfloat16|float16")
      ("device", po::value<std::string>()->default_value("auto"), "cpu|cuda|cuda:N|auto (auto: the GPU if there is one)")
      ("c4-samples", po::value<std::int64_t>()->default_value(256), "c4: number of windows drawn")
      ("seed", po::value<std::uint64_t>()->default_value(0), "c4: random.seed for window sampling (GPTQ uses 0)")
      ("max-windows", po::value<std::int64_t>()->default_value(0), "evaluate only the first N windows (0: all)")
      ("memory-budget", po::value<std::string>()->default_value("2GiB"),
       "memory for weights and activations: the whole model stays loaded when it fits with a batch of windows, "
       "else blocks are loaded one at a time")
      ("batch", po::value<std::int64_t>()->default_value(0), "windows per pass (0: about 2048 tokens, or what the budget allows)");
}

// The windows every model is scored on (spec.seqlen set), tokenized once (with the first model's
// tokenizer unless given).
EvalWindows load_windows(const po::variables_map& vm, const fs::path& first_model, EvalDataSpec& spec,
                         std::unique_ptr<storage::Tokenizer>& tokenizer) {
  spec.path = vm["data"].as<std::string>();
  if (!fs::exists(spec.path)) throw InputError(spec.path.string(), "", "data file not found");
  spec.format = vm.count("data-format") ? storage::parse_data_format(vm["data-format"].as<std::string>())
                                        : storage::guess_data_format(spec.path);
  spec.c4_samples = count_at_least(vm, "c4-samples", 1);
  spec.seed = vm["seed"].as<std::uint64_t>();
  spec.max_windows = count_at_least(vm, "max-windows", 0);
  if (spec.format != storage::DataFormat::kTokens) {
    fs::path tok_path = vm.count("tokenizer") ? fs::path(vm["tokenizer"].as<std::string>()) : storage::find_model_tokenizer(first_model);
    if (tok_path.empty()) {
      throw InputError("--tokenizer", "", "missing tokenizer: " + first_model.string() +
                                              " has no tokenizer.model, tokenizer.bin or tokenizer.json; pass --tokenizer or use a token file");
    }
    tokenizer = storage::load_tokenizer(tok_path);
  }
  return load_eval_windows(spec, tokenizer.get());
}

// Every model must take the windows: the length within its positions, the tokens within its vocabulary.
void check_model_fits(const fs::path& dir, const storage::LlamaConfig& cfg, const EvalDataSpec& spec,
                      const storage::Tokenizer* tokenizer) {
  if (spec.seqlen > cfg.max_position_embeddings) {
    throw InputError("--seqlen", "", std::to_string(spec.seqlen) + " is larger than the model supports (max_position_embeddings = " +
                                         std::to_string(cfg.max_position_embeddings) + " in " + (dir / "config.json").string() + ")");
  }
  if (tokenizer && tokenizer->vocab_size() > cfg.vocab_size) {
    throw InputError((dir / "config.json").string(), "vocab_size", "the tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                                                                       " tokens but the model only " + std::to_string(cfg.vocab_size));
  }
}

nlohmann::ordered_json score_model(const fs::path& dir, const worker::ModelOptions& mopt, const EvalWindows& data,
                                   std::int64_t seqlen, const worker::LlamaModel* reference, const worker::ScoringOptions& sopt) {
  const worker::LlamaModel model(dir, mopt);
  QF_LOG(Info) << "eval " << dir.string() << ": " << data.windows.size(0) << " windows of " << seqlen << " tokens";
  const worker::WindowScores s = worker::score_windows(model, data.windows, reference, sopt);
  if (!std::isfinite(s.mean_nll()) || (reference && !std::isfinite(s.sum_kl))) {
    throw InternalError(dir.string() + ": the mean NLL" + (reference ? std::string(" or KL") : std::string()) +
                        " is not finite (the logits overflow in this --dtype, or the model is damaged)");
  }
  nlohmann::ordered_json out;
  out["model"] = dir.string();
  out["ppl"] = std::exp(s.mean_nll());
  out["mean_nll"] = s.mean_nll();
  out["tokens"] = data.tokens;
  out["windows"] = s.windows;
  out["scored_tokens"] = s.scored;
  out["seqlen"] = seqlen;
  out["plan"] = s.plan.resident ? "resident" : "block-by-block";
  out["batch"] = s.plan.batch;
  if (reference) {
    out["kl"] = s.sum_kl / static_cast<double>(s.scored);
    out["top1"] = static_cast<double>(s.top1_agree) / static_cast<double>(s.scored);
  }
  return out;
}

void print_one(const nlohmann::ordered_json& r) {
  std::printf("perplexity  %.4f\nmean NLL    %.6f nats\ntokens      %lld (%lld windows of %lld, %lld scored)\n",
              r["ppl"].get<double>(), r["mean_nll"].get<double>(), static_cast<long long>(r["tokens"].get<std::int64_t>()),
              static_cast<long long>(r["windows"].get<std::int64_t>()), static_cast<long long>(r["seqlen"].get<std::int64_t>()),
              static_cast<long long>(r["scored_tokens"].get<std::int64_t>()));
  if (r.contains("kl")) std::printf("KL(ref||m)  %.6f nats/token\ntop-1 agree %.4f\n", r["kl"].get<double>(), r["top1"].get<double>());
}

// One row per model, on the same windows.
void print_table(const std::vector<nlohmann::ordered_json>& rows) {
  std::size_t width = 5;
  for (const auto& r : rows) width = std::max(width, r["model"].get<std::string>().size());
  const bool kl = rows.front().contains("kl");
  std::printf("%-*s %12s %12s%s\n", static_cast<int>(width), "model", "perplexity", "mean NLL", kl ? "   KL(ref||m)    top-1" : "");
  for (const auto& r : rows) {
    std::printf("%-*s %12.4f %12.6f", static_cast<int>(width), r["model"].get<std::string>().c_str(), r["ppl"].get<double>(),
                r["mean_nll"].get<double>());
    if (kl) std::printf(" %12.6f %8.4f", r["kl"].get<double>(), r["top1"].get<double>());
    std::printf("\n");
  }
  std::printf("(%lld windows of %lld tokens, %lld scored per model)\n", static_cast<long long>(rows.front()["windows"].get<std::int64_t>()),
              static_cast<long long>(rows.front()["seqlen"].get<std::int64_t>()),
              static_cast<long long>(rows.front()["scored_tokens"].get<std::int64_t>()));
}

}  // namespace

int run_eval(const Args& args) {
  po::options_description desc("eval options");
  add_eval_options(desc);
  po::variables_map vm;
  if (!parse_args(args, "eval", "--model DIR [--model DIR ...] --data PATH [options]", desc, vm)) return 0;
  apply_common_options(vm);
  worker::ModelOptions mopt;
  mopt.dtype = worker::parse_compute_dtype(vm["dtype"].as<std::string>());
  mopt.device = worker::parse_device(vm["device"].as<std::string>());
  worker::ScoringOptions sopt;
  sopt.memory_budget_bytes = parse_size(vm["memory-budget"].as<std::string>(), "--memory-budget");
  sopt.batch_windows = count_at_least(vm, "batch", 0);  // 0: automatic

  // Every model is checked before any is scored: a typo in the last one fails in seconds, not after hours.
  std::vector<fs::path> models;
  std::vector<storage::LlamaConfig> configs;
  for (const auto& m : vm["model"].as<std::vector<std::string>>()) {
    models.emplace_back(m);
    configs.push_back(storage::read_llama_config(m));
    worker::index_checkpoint(configs.back(), *worker::open_model_checkpoint(m, configs.back()));  // headers: shapes, sizes
  }
  EvalDataSpec spec;
  spec.seqlen = count_at_least(vm, "seqlen", 0);
  if (spec.seqlen == 0) spec.seqlen = std::min<std::int64_t>(2048, configs.front().max_position_embeddings);
  for (std::size_t i = 0; i < models.size(); ++i) check_model_fits(models[i], configs[i], spec, nullptr);
  std::unique_ptr<storage::Tokenizer> tokenizer;
  const EvalWindows data = load_windows(vm, models.front(), spec, tokenizer);
  const std::int64_t lowest = data.windows.min().item<std::int64_t>(), highest = data.windows.max().item<std::int64_t>();
  for (std::size_t i = 0; i < models.size(); ++i) {
    check_model_fits(models[i], configs[i], spec, tokenizer.get());
    if (lowest < 0 || highest >= configs[i].vocab_size) {
      throw InputError(spec.path.string(), "", "token ids " + std::to_string(lowest) + ".." + std::to_string(highest) +
                                                   " do not fit the vocabulary of " + models[i].string() + " (" +
                                                   std::to_string(configs[i].vocab_size) + " tokens)");
    }
  }
  std::unique_ptr<worker::LlamaModel> reference;
  if (vm.count("reference")) reference = std::make_unique<worker::LlamaModel>(vm["reference"].as<std::string>(), mopt);

  std::vector<nlohmann::ordered_json> rows;
  for (const auto& m : models) {
    rows.push_back(score_model(m, mopt, data, spec.seqlen, reference.get(), sopt));
    rows.back()["data_format"] = storage::data_format_name(spec.format);
  }
  if (vm["json"].as<bool>()) {
    std::cout << (rows.size() == 1 ? rows.front().dump() : nlohmann::ordered_json{{"results", rows}}.dump()) << "\n";
  } else if (rows.size() == 1) {
    print_one(rows.front());
  } else {
    print_table(rows);
  }
  return 0;
}

}  // namespace qforge::jobs
