// qforge inspect: what a model folder holds, read from headers only (no weights are loaded).
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/strings.h"
#include "jobs/cli.h"
#include "storage/hf_config.h"
#include "storage/safetensors.h"
#include "storage/tokenizer.h"
#include "worker/llama_model.h"

namespace qforge::jobs {

namespace fs = std::filesystem;

namespace {

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// The model's shape, size and files, from config.json and the safetensors headers.
nlohmann::ordered_json model_summary(const fs::path& dir, const storage::LlamaConfig& config,
                                     const storage::CheckpointReader& ckpt, const partition::ModelIndex& index) {
  std::map<std::string, std::uint64_t> dtype_bytes;
  for (const auto& name : ckpt.names()) dtype_bytes[storage::dtype_name(ckpt.info(name).dtype)] += ckpt.info(name).nbytes();
  nlohmann::ordered_json j;
  j["model"] = dir.string();
  j["architecture"] = config.architecture;
  j["hidden_size"] = config.hidden_size;
  j["intermediate_size"] = config.intermediate_size;
  j["num_hidden_layers"] = config.num_hidden_layers;
  j["num_attention_heads"] = config.num_attention_heads;
  j["num_key_value_heads"] = config.num_key_value_heads;
  j["head_dim"] = config.head_dim;
  j["vocab_size"] = config.vocab_size;
  j["max_position_embeddings"] = config.max_position_embeddings;
  j["rope_theta"] = config.rope_theta;
  j["rope_scaling"] = config.rope_scaling.type;
  j["tie_word_embeddings"] = config.tie_word_embeddings;
  j["parameters"] = index.total_parameters();
  j["bytes"] = index.total_bytes();
  j["dtypes"] = dtype_bytes;
  j["shards"] = ckpt.shard_names();
  const fs::path tok = storage::find_model_tokenizer(dir);
  j["tokenizer"] = tok.empty() ? "" : tok.filename().string();
  if (config.raw.contains("quantization_config")) j["quantization_config"] = config.raw["quantization_config"];
  if (!ckpt.metadata().empty()) j["safetensors_metadata"] = ckpt.metadata();
  return j;
}

// The tensors of the blocks `which` names: all | none | N.
nlohmann::ordered_json block_listing(const partition::ModelIndex& index, const std::string& which) {
  int first = 0, last = index.num_blocks() - 1;
  if (which == "none") {
    last = -1;
  } else if (which != "all") {
    try {
      first = last = std::stoi(which);
    } catch (const std::exception&) {
      throw InputError("--blocks", "", "'" + which + "' is not all, none or a block number");
    }
  }
  nlohmann::ordered_json blocks = nlohmann::json::array();
  for (int b = first; b <= last && b < index.num_blocks(); ++b) {
    nlohmann::ordered_json blk;
    blk["block"] = b;
    blk["bytes"] = index.block_bytes(b);
    for (const auto& t : index.block(b)) {
      nlohmann::ordered_json tj;
      tj["name"] = t.name;
      tj["shape"] = t.shape;
      tj["dtype"] = t.dtype;
      blk["tensors"].push_back(tj);
    }
    blocks.push_back(blk);
  }
  return blocks;
}

void print_summary(const nlohmann::ordered_json& j, const nlohmann::ordered_json& blocks) {
  const auto i64 = [&](const char* k) { return static_cast<long long>(j[k].get<std::int64_t>()); };
  std::printf("model         %s\narchitecture  %s\n", j["model"].get<std::string>().c_str(), j["architecture"].get<std::string>().c_str());
  std::printf("shape         hidden %lld, intermediate %lld, %lld blocks, %lld heads / %lld kv heads (head_dim %lld)%s\n",
              i64("hidden_size"), i64("intermediate_size"), i64("num_hidden_layers"), i64("num_attention_heads"),
              i64("num_key_value_heads"), i64("head_dim"), i64("num_key_value_heads") < i64("num_attention_heads") ? " GQA" : "");
  std::printf("vocab         %lld%s, context %lld, rope theta %g (%s)\n", i64("vocab_size"),
              j["tie_word_embeddings"].get<bool>() ? " (tied head)" : "", i64("max_position_embeddings"),
              j["rope_theta"].get<double>(), j["rope_scaling"].get<std::string>().c_str());
  std::printf("parameters    %lld (%s)\n", i64("parameters"), format_bytes(j["bytes"].get<double>()).c_str());
  std::string dts;
  for (const auto& [d, b] : j["dtypes"].items()) dts += (dts.empty() ? "" : ", ") + d + " " + format_bytes(b.get<double>());
  std::printf("dtypes        %s\n", dts.c_str());
  std::printf("shards        %zu:", j["shards"].size());
  for (const auto& s : j["shards"]) std::printf(" %s", s.get<std::string>().c_str());
  const std::string tok = j["tokenizer"];
  std::printf("\ntokenizer     %s\n", tok.empty() ? "(none in folder)" : tok.c_str());
  if (j.contains("quantization_config")) std::printf("quantization  %s\n", j["quantization_config"].dump().c_str());
  else std::printf("quantization  none\n");
  for (const auto& blk : blocks) {
    std::printf("block %d (%s)\n", blk["block"].get<int>(), format_bytes(blk["bytes"].get<double>()).c_str());
    for (const auto& t : blk["tensors"]) {
      std::printf("  %-52s %-6s %s\n", t["name"].get<std::string>().c_str(), t["dtype"].get<std::string>().c_str(),
                  shape_str(t["shape"].get<std::vector<std::int64_t>>()).c_str());
    }
  }
}

}  // namespace

int run_inspect(const Args& args) {
  po::options_description desc("inspect options");
  add_common_options(desc);
  desc.add_options()
      ("model", po::value<std::string>()->required(), "model folder")
      ("json", po::bool_switch(), "print one JSON object")
      ("blocks", po::value<std::string>()->default_value("all"), "per-block tensor lists to print: all|none|N");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  if (!parse_args(args, "inspect", "DIR [--json]", desc, vm, &pos)) return 0;
  apply_common_options(vm);
  const fs::path dir = vm["model"].as<std::string>();
  const auto config = storage::read_llama_config(dir);
  const auto ckpt = worker::open_model_checkpoint(dir, config);
  const auto index = worker::index_checkpoint(config, *ckpt);
  nlohmann::ordered_json j = model_summary(dir, config, *ckpt, index);
  const nlohmann::ordered_json blocks = block_listing(index, vm["blocks"].as<std::string>());
  if (vm["json"].as<bool>()) {
    j["blocks"] = blocks;
    std::cout << j.dump(2) << "\n";
  } else {
    print_summary(j, blocks);
  }
  return 0;
}

}  // namespace qforge::jobs
