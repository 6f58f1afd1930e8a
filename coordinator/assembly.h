// Checkpoint assembly: the coordinator's last step. Streams the per-unit result shards of the job
// directory (just checked by the coordinator against the digests the journal recorded) and the
// model's global tensors into a normal sharded HF folder: model*.safetensors (+ index),
// quantization*.safetensors (the sidecar of integer codes, fp16 scales, int32 zeros), config.json with
// quantization_config, calibration_report.json, oscillation.json/.svg (coordinator/oscillation.h; also into the job directory), calibration.tok and
// the tokenizer files. One tensor is in memory at a time. Output files hold no
// paths, times, job ids or launcher names: equal work gives equal bytes.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/job_state.h"
#include "storage/dtype.h"
#include "storage/hf_config.h"
#include "storage/job_layout.h"

namespace qforge::coordinator {

struct AssemblySpec {
  std::filesystem::path model;          // the input model folder (global tensors, tokenizer files)
  std::filesystem::path out;
  storage::JobLayout job;
  storage::LlamaConfig out_config;      // with quant set; norm/bias flags are completed from the shards
  storage::DType model_dtype = storage::DType::kF32;  // of tensors the transforms add (the model's torch_dtype)
  std::uint64_t shard_bytes = 0;
  std::map<std::string, std::string> sidecar_metadata;
  nlohmann::json report;                // calibration_report.json; "blocks" is filled from the unit reports
  std::filesystem::path tokenizer;      // copied when the model folder has none
  bool copy_calibration_tokens = true;
};

void assemble_checkpoint(const AssemblySpec& spec, const JobState& state);

}  // namespace qforge::coordinator
