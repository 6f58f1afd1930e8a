// qforge inspect: what a model folder holds, read from headers only (no weights are loaded).
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "jobs/cli.h"
#include "storage/hf_config.h"
#include "storage/safetensors.h"
#include "storage/tokenizer.h"
#include "worker/llama_model.h"

namespace qforge::jobs {

namespace fs = std::filesystem;

namespace {

std::string human_bytes(std::uint64_t b) {
  char buf[32];
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", v, units[u]);
  return buf;
}

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
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
  const auto ckpt_ptr = worker::open_model_checkpoint(dir, config);
  const storage::CheckpointReader& ckpt = *ckpt_ptr;
  const auto index = worker::index_checkpoint(config, ckpt);

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
  fs::path tok = storage::find_model_tokenizer(dir);
  j["tokenizer"] = tok.empty() ? "" : tok.filename().string();
  if (config.raw.contains("quantization_config")) j["quantization_config"] = config.raw["quantization_config"];
  if (!ckpt.metadata().empty()) j["safetensors_metadata"] = ckpt.metadata();

  const std::string which = vm["blocks"].as<std::string>();
  int first = 0, last = index.num_blocks() - 1;
  if (which == "none") last = -1;
  else if (which != "all") first = last = std::stoi(which);
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

  if (vm["json"].as<bool>()) {
    j["blocks"] = blocks;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("model         %s\narchitecture  %s\n", dir.c_str(), config.architecture.c_str());
  std::printf("shape         hidden %lld, intermediate %lld, %lld blocks, %lld heads / %lld kv heads (head_dim %lld)%s\n",
              (long long)config.hidden_size, (long long)config.intermediate_size, (long long)config.num_hidden_layers,
              (long long)config.num_attention_heads, (long long)config.num_key_value_heads, (long long)config.head_dim,
              config.num_key_value_heads < config.num_attention_heads ? " GQA" : "");
  std::printf("vocab         %lld%s, context %lld, rope theta %g (%s)\n", (long long)config.vocab_size,
              config.tie_word_embeddings ? " (tied head)" : "", (long long)config.max_position_embeddings, config.rope_theta,
              config.rope_scaling.type.c_str());
  std::printf("parameters    %lld (%s)\n", (long long)index.total_parameters(), human_bytes(index.total_bytes()).c_str());
  std::string dts;
  for (const auto& [d, b] : dtype_bytes) dts += (dts.empty() ? "" : ", ") + d + " " + human_bytes(b);
  std::printf("dtypes        %s\n", dts.c_str());
  std::printf("shards        %zu:", ckpt.shard_names().size());
  for (const auto& s : ckpt.shard_names()) std::printf(" %s", s.c_str());
  std::printf("\ntokenizer     %s\n", tok.empty() ? "(none in folder)" : tok.filename().c_str());
  if (j.contains("quantization_config")) std::printf("quantization  %s\n", j["quantization_config"].dump().c_str());
  else std::printf("quantization  none\n");
  for (const auto& blk : blocks) {
    std::printf("block %d (%s)\n", blk["block"].get<int>(), human_bytes(blk["bytes"].get<std::uint64_t>()).c_str());
    for (const auto& t : blk["tensors"]) {
      std::printf("  %-52s %-6s %s\n", t["name"].get<std::string>().c_str(), t["dtype"].get<std::string>().c_str(),
                  shape_str(t["shape"].get<std::vector<std::int64_t>>()).c_str());
    }
  }
  return 0;
}

}  // namespace qforge::jobs
