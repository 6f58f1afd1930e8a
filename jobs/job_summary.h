// The end-of-run summary of `qforge quantize` (rank 0, stdout): the files written with their sizes,
// what the quantized linears take packed (codes at their bits, fp16 scales, packed zero points: what a
// GPTQ or compressed-tensors export stores) against the input's bytes for the same weights, every
// unit's calibration loss before -> after with a warning for a unit that got worse, where the report
// and plot are, and the commands that come next.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace qforge::jobs {

namespace fs = std::filesystem;

struct UnitLoss {
  std::string label;     // "unit 3 (block 3)", "unit 4 (blocks 4-6)"
  double initial = 0;    // unit-output MSE before calibration
  double final = 0;      // and after
  // Ended more than 1% above its start: below that, a short calibration on little data wanders in the
  // noise of the loss estimate, and a warning would cry wolf.
  bool worse() const { return final > initial * 1.01; }
};

struct JobSummary {
  fs::path out;
  std::string description;                                  // "affinequant W4A16 g128 (deployable)"
  std::vector<std::pair<std::string, std::uint64_t>> files;  // name, bytes (sorted by name)
  std::uint64_t linear_input_bytes = 0;   // the quantized linears in the input model's dtype
  std::uint64_t linear_packed_bytes = 0;  // the same weights packed
  std::vector<UnitLoss> units;
  bool has_calibration_nll = false;
  double calibration_nll = 0;
  double seconds = 0;
  // The export format that takes this result ("gptq", "compressed-tensors"), or empty with the reason.
  std::string export_format = "gptq";
  std::string export_refusal;
};

// The units' losses from calibration_report.json's "blocks" (one entry per unit; RTN has none).
std::vector<UnitLoss> unit_losses(const nlohmann::json& report);
// Reads the output folder `out` (and the input `model` for the weights' original bytes).
JobSummary summarize_output(const fs::path& out, const fs::path& model, const std::string& description, double seconds);
// The text; `export_out` is the export folder when one was written, else empty.
std::string format_job_summary(const JobSummary& s, const fs::path& model, const fs::path& export_out);

}  // namespace qforge::jobs
