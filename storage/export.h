// Deployable export: a qforge quantized folder -> a GPTQ or compressed-tensors folder that inference
// engines load, built from the integer codes, fp16 scales and zero points of qforge's sidecar (never
// re-derived from the fake-quant weights); and the reverse view, so `qforge eval` can load an exported
// folder (weights dequantized on load). Layouts: storage/quant_pack.h.
//
// Streaming: the output is written tensor by tensor through CheckpointWriter (sharded, with an index),
// packing one linear at a time, so memory stays one linear. Refused, with the reason and the option
// to change: non-deployable results (--faithful: runtime transforms, norm biases), per-block bit
// overrides (one quantization_config cannot express them), activation quantization the format cannot
// express (GPTQ is weight-only; compressed-tensors reads dynamic symmetric per-token int8 activations
// with 8-bit symmetric per-channel weights), and shapes the format cannot pack (named by layer).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "storage/hf_config.h"
#include "storage/safetensors.h"

namespace qforge::storage {

enum class ExportFormat { kGptq, kCompressedTensors, kFakeQuant };
ExportFormat parse_export_format(const std::string& name);  // gptq | compressed-tensors | fake-quant

struct ExportOptions {
  fs::path model;                // a qforge quantize output folder
  fs::path out;
  ExportFormat format = ExportFormat::kGptq;
  std::uint64_t shard_bytes = 0; // 0: one file
};

struct ExportResult {
  std::string checkpoint_format;  // "gptq", "gptq_v2", "pack-quantized", "int-quantized", "fake-quant"
  std::vector<std::string> notes; // what a user should know (e.g. which engines read gptq_v2)
};

ExportResult export_checkpoint(const ExportOptions& options);
// Why the quantized model `model` (its shapes and model.quant, which must be set) cannot be exported to
// `format` ("" when it can): run-time transforms, bit widths, activation quantization and every linear's
// shape against the format's packing. Lets `quantize --export` refuse, and `--dry-run` tell, before
// calibrating rather than after.
std::string export_refusal(const LlamaConfig& model, ExportFormat format);

// For a folder whose config says it is a GPTQ or compressed-tensors export: shows every packed linear
// as a plain fp32 `<linear>.weight` (dequantized when loaded) in place of its packed tensors.
void install_dequantizing_view(CheckpointReader& ckpt, const LlamaConfig& config);

}  // namespace qforge::storage
