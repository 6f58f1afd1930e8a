// qforge eval: perplexity of a model on local data, optionally KL and top-1 agreement vs a reference.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "jobs/cli.h"
#include "jobs/eval_data.h"
#include "worker/evaluator.h"
#include "worker/llama_model.h"

namespace qforge::jobs {

int run_eval(const Args& args) {
  po::options_description desc("eval options");
  add_common_options(desc);
  desc.add_options()
      ("model", po::value<std::string>()->required(), "model folder (HF layout)")
      ("data", po::value<std::string>()->required(), "local data file")
      ("data-format", po::value<std::string>(), "text|wikitext|c4|tokens (default: guessed from the file)")
      ("tokenizer", po::value<std::string>(), "tokenizer.model or llama2.c tokenizer.bin (default: from the model folder)")
      ("seqlen", po::value<std::int64_t>()->default_value(0), "window length (default min(2048, max_position_embeddings))")
      ("reference", po::value<std::string>(), "reference model folder: also report KL(ref||model) and top-1 agreement")
      ("json", po::bool_switch(), "print one JSON object on stdout")
      ("dtype", po::value<std::string>()->default_value("float32"), "compute dtype: float32|bfloat16|float16")
      ("device", po::value<std::string>()->default_value("auto"), "cpu|cuda|cuda:N|auto (auto: the GPU if there is one)")
      ("c4-samples", po::value<std::int64_t>()->default_value(256), "c4: number of windows drawn")
      ("seed", po::value<std::uint64_t>()->default_value(0), "c4: random.seed for window sampling (GPTQ uses 0)")
      ("max-windows", po::value<std::int64_t>()->default_value(0), "evaluate only the first N windows (0: all)")
      ("memory-budget", po::value<std::string>()->default_value("2GiB"),
       "memory for weights and activations: the whole model stays loaded when it fits with a batch of windows, "
       "else blocks are loaded one at a time")
      ("batch", po::value<std::int64_t>()->default_value(0), "windows per pass (0: about 2048 tokens, or what the budget allows)");
  po::variables_map vm;
  if (!parse_args(args, "eval", "--model DIR --data PATH [options]", desc, vm)) return 0;
  apply_common_options(vm);

  worker::ModelOptions mopt;
  mopt.dtype = worker::parse_compute_dtype(vm["dtype"].as<std::string>());
  mopt.device = worker::parse_device(vm["device"].as<std::string>());
  const fs::path model_dir = vm["model"].as<std::string>();
  worker::LlamaModel model(model_dir, mopt);
  std::unique_ptr<worker::LlamaModel> reference;
  if (vm.count("reference")) reference = std::make_unique<worker::LlamaModel>(vm["reference"].as<std::string>(), mopt);

  EvalDataSpec spec;
  spec.path = vm["data"].as<std::string>();
  if (!fs::exists(spec.path)) throw InputError(spec.path.string(), "", "data file not found");
  spec.format = vm.count("data-format") ? storage::parse_data_format(vm["data-format"].as<std::string>())
                                        : storage::guess_data_format(spec.path);
  const std::int64_t max_pos = model.config().max_position_embeddings;
  spec.seqlen = vm["seqlen"].as<std::int64_t>();
  if (spec.seqlen == 0) spec.seqlen = std::min<std::int64_t>(2048, max_pos);
  if (spec.seqlen > max_pos) {
    throw InputError("--seqlen", "", std::to_string(spec.seqlen) + " is larger than the model supports (max_position_embeddings = " +
                                         std::to_string(max_pos) + " in " + (model_dir / "config.json").string() + ")");
  }
  spec.c4_samples = vm["c4-samples"].as<std::int64_t>();
  spec.seed = vm["seed"].as<std::uint64_t>();
  spec.max_windows = vm["max-windows"].as<std::int64_t>();

  std::unique_ptr<storage::Tokenizer> tokenizer;
  if (spec.format != storage::DataFormat::kTokens) {
    fs::path tok_path = vm.count("tokenizer") ? fs::path(vm["tokenizer"].as<std::string>()) : storage::find_model_tokenizer(model_dir);
    if (tok_path.empty()) {
      throw InputError("--tokenizer", "", "missing tokenizer: " + model_dir.string() +
                                              " has no tokenizer.model or tokenizer.bin; pass --tokenizer or use a token file");
    }
    tokenizer = storage::load_tokenizer(tok_path);
    if (tokenizer->vocab_size() > model.config().vocab_size) {
      throw InputError(tok_path.string(), "vocab_size", "tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                                                            " tokens but the model only " + std::to_string(model.config().vocab_size));
    }
  }
  EvalWindows data = load_eval_windows(spec, tokenizer.get());
  QF_LOG(Info) << "eval " << model_dir.string() << ": " << data.windows.size(0) << " windows of " << spec.seqlen
               << " tokens (" << storage::data_format_name(spec.format) << ", " << data.tokens << " tokens)";

  worker::ScoringOptions sopt;
  sopt.memory_budget_bytes = parse_size(vm["memory-budget"].as<std::string>(), "--memory-budget");
  sopt.batch_windows = vm["batch"].as<std::int64_t>();
  if (sopt.batch_windows < 0) throw InputError("--batch", "", "must be 0 (automatic) or a number of windows");
  worker::WindowScores s = worker::score_windows(model, data.windows, reference.get(), sopt);

  const double mean_nll = s.mean_nll();
  const double ppl = std::exp(mean_nll);
  nlohmann::ordered_json out;
  out["ppl"] = ppl;
  out["mean_nll"] = mean_nll;
  out["tokens"] = data.tokens;
  out["windows"] = s.windows;
  out["scored_tokens"] = s.scored;
  out["seqlen"] = spec.seqlen;
  out["data_format"] = storage::data_format_name(spec.format);
  out["plan"] = s.plan.resident ? "resident" : "block-by-block";
  out["batch"] = s.plan.batch;
  if (reference) {
    out["kl"] = s.sum_kl / static_cast<double>(s.scored);
    out["top1"] = static_cast<double>(s.top1_agree) / static_cast<double>(s.scored);
  }
  if (vm["json"].as<bool>()) {
    std::cout << out.dump() << "\n";
  } else {
    std::printf("perplexity  %.4f\nmean NLL    %.6f nats\ntokens      %lld (%lld windows of %lld, %lld scored)\n", ppl, mean_nll,
                static_cast<long long>(data.tokens), static_cast<long long>(s.windows), static_cast<long long>(spec.seqlen),
                static_cast<long long>(s.scored));
    if (reference) {
      std::printf("KL(ref||m)  %.6f nats/token\ntop-1 agree %.4f\n", out["kl"].get<double>(), out["top1"].get<double>());
    }
  }
  return 0;
}

}  // namespace qforge::jobs
