// Commands that produce model or data files: import-llama2c, make-synthetic, tokenize.
#include <iostream>

#include "common/error.h"
#include "common/file_util.h"
#include "common/log.h"
#include "jobs/cli.h"
#include "jobs/synthetic_model.h"
#include "storage/llama2c.h"
#include "storage/text_data.h"
#include "storage/token_file.h"
#include "storage/tokenizer.h"

namespace qforge::jobs {

int run_import_llama2c(const Args& args) {
  po::options_description desc("import-llama2c options");
  add_common_options(desc);
  desc.add_options()
      ("in", po::value<std::string>()->required(), "llama2.c checkpoint (.bin, version 0 or 1)")
      ("out", po::value<std::string>()->required(), "output model folder (HF layout)")
      ("tokenizer", po::value<std::string>(), "tokenizer to copy into the folder (tokenizer.bin or tokenizer.model)");
  po::positional_options_description pos;
  pos.add("in", 1).add("out", 1);
  po::variables_map vm;
  if (!parse_args(args, "import-llama2c", "IN.bin OUT_DIR [--tokenizer PATH]", desc, vm, &pos)) return 0;
  apply_common_options(vm);
  fs::path tok = vm.count("tokenizer") ? fs::path(vm["tokenizer"].as<std::string>()) : fs::path();
  storage::import_llama2c(vm["in"].as<std::string>(), vm["out"].as<std::string>(), tok);
  QF_LOG(Info) << "wrote " << vm["out"].as<std::string>();
  return 0;
}

int run_make_synthetic(const Args& args) {
  std::string shapes_help = "model shape:";
  for (const auto& s : synthetic_shapes()) shapes_help += "\n  " + s.name + ": " + s.description;
  po::options_description desc("make-synthetic options");
  add_common_options(desc);
  desc.add_options()
      ("shape", po::value<std::string>()->default_value("tiny"), shapes_help.c_str())
      ("blocks", po::value<std::int64_t>()->default_value(0), "number of decoder blocks (0: the shape's own)")
      ("out", po::value<std::string>()->required(), "output model folder")
      ("shard-size", po::value<std::string>()->default_value("0"), "max bytes per shard, e.g. 2GB (0: one file)")
      ("dtype", po::value<std::string>()->default_value(""), "float32|float16|bfloat16 (default: per shape)")
      ("seed", po::value<std::uint64_t>()->default_value(0), "random seed");
  po::variables_map vm;
  if (!parse_args(args, "make-synthetic", "--shape 7b|70b|tiny|... --out DIR [options]", desc, vm)) return 0;
  apply_common_options(vm);
  SyntheticOptions o;
  o.shape = vm["shape"].as<std::string>();
  o.blocks = vm["blocks"].as<std::int64_t>();
  o.dtype = vm["dtype"].as<std::string>();
  o.shard_bytes = parse_size(vm["shard-size"].as<std::string>(), "--shard-size");
  o.seed = vm["seed"].as<std::uint64_t>();
  auto c = make_synthetic_model(vm["out"].as<std::string>(), o);
  QF_LOG(Info) << "wrote " << vm["out"].as<std::string>() << ": " << o.shape << ", " << c.num_hidden_layers << " blocks, "
               << c.total_parameters() << " parameters, " << c.torch_dtype;
  return 0;
}

int run_tokenize(const Args& args) {
  po::options_description desc("tokenize options");
  add_common_options(desc);
  desc.add_options()
      ("data", po::value<std::string>()->required(), "text, WikiText raw or C4 JSON-lines file")
      ("data-format", po::value<std::string>(), "text|wikitext|c4 (default: guessed)")
      ("tokenizer", po::value<std::string>()->required(), "tokenizer.model, tokenizer.bin or tokenizer.json")
      ("out", po::value<std::string>()->required(), "output token file")
      ("no-bos", po::bool_switch(), "do not prepend BOS");
  po::variables_map vm;
  if (!parse_args(args, "tokenize", "--data PATH --tokenizer PATH --out FILE", desc, vm)) return 0;
  apply_common_options(vm);
  const fs::path data = vm["data"].as<std::string>();
  auto format = vm.count("data-format") ? storage::parse_data_format(vm["data-format"].as<std::string>())
                                        : storage::guess_data_format(data);
  auto tok = storage::load_tokenizer(vm["tokenizer"].as<std::string>());
  const bool bos = !vm["no-bos"].as<bool>();
  std::vector<std::int32_t> ids;
  if (format == storage::DataFormat::kC4) {
    // Documents one after another, each with its own BOS, as C4 documents are tokenized separately.
    for (const auto& doc : storage::read_jsonl_texts(data)) {
      auto d = tok->encode(doc, bos);
      ids.insert(ids.end(), d.begin(), d.end());
    }
  } else if (format == storage::DataFormat::kTokens) {
    throw InputError(data.string(), "", "already a token file");
  } else {
    std::string text = read_file(data);
    if (format == storage::DataFormat::kWikitext) text = storage::wikitext_hf_join(text);
    ids = tok->encode(text, bos);
  }
  if (ids.empty()) throw InputError(data.string(), "", "empty dataset (no tokens)");
  storage::write_token_file(vm["out"].as<std::string>(), ids);
  QF_LOG(Info) << "wrote " << ids.size() << " tokens to " << vm["out"].as<std::string>();
  return 0;
}

}  // namespace qforge::jobs
