#include "jobs/job_summary.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <regex>
#include <sstream>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/strings.h"
#include "storage/dtype.h"
#include "storage/export.h"
#include "storage/hf_config.h"
#include "storage/safetensors.h"

namespace qforge::jobs {

using nlohmann::json;

namespace {

std::string unit_label(const json& u, std::size_t index) {
  const json blocks = u.value("blocks", json::array());
  std::string label = "unit " + std::to_string(u.value("unit", static_cast<int>(index)));
  if (blocks.size() == 1) return label + " (block " + std::to_string(blocks[0].get<int>()) + ")";
  if (blocks.size() > 1) {
    label += " (blocks " + std::to_string(blocks.front().get<int>()) + "-" + std::to_string(blocks.back().get<int>()) + ")";
  }
  return label;
}

// Bytes of the quantized linears packed and in the input's dtype, from the sidecar's codes/scales/zeros.
void add_linear_bytes(const fs::path& out, const fs::path& model, JobSummary& s) {
  const storage::LlamaConfig cfg = storage::read_llama_config(out);
  const storage::CheckpointReader input(model);
  static const std::regex block_re(R"(^model\.layers\.(\d+)\.)");
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("quantization", 0) != 0 || e.path().extension() != ".safetensors") continue;
    const storage::SafetensorsFile side(e.path());
    for (const auto& t : side.tensors()) {
      std::smatch m;
      const int block = std::regex_search(t.name, m, block_re) ? std::stoi(m[1]) : 0;
      const int bits = cfg.quant ? cfg.quant->weight_bits(block) : 8;
      if (ends_with(t.name, ".codes")) {
        s.linear_packed_bytes += static_cast<std::uint64_t>(t.numel()) * bits / 8;
        const std::string weight = t.name.substr(0, t.name.size() - 6) + ".weight";
        if (input.contains(weight)) {
          s.linear_input_bytes += static_cast<std::uint64_t>(t.numel()) * storage::dtype_size(input.info(weight).dtype);
        }
      } else if (ends_with(t.name, ".scales")) {
        s.linear_packed_bytes += t.nbytes();
      } else if (ends_with(t.name, ".zeros")) {
        s.linear_packed_bytes += static_cast<std::uint64_t>(t.numel()) * bits / 8;
      }
    }
  }
}

// The first export format that takes this result, or why none does (asked of the exporter, which owns
// the rules).
void add_export_format(const fs::path& out, JobSummary& s) {
  const storage::LlamaConfig cfg = storage::read_llama_config(out);
  if (!cfg.quant) return;
  s.export_format.clear();
  for (const char* name : {"gptq", "compressed-tensors"}) {
    const std::string refusal = storage::export_refusal(cfg, storage::parse_export_format(name));
    if (refusal.empty()) {
      s.export_format = name;
      return;
    }
    if (s.export_refusal.empty()) s.export_refusal = refusal;
  }
}

}  // namespace

std::vector<UnitLoss> unit_losses(const json& report) {
  std::vector<UnitLoss> out;
  const json blocks = report.value("blocks", json::array());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const json& u = blocks[i];
    if (!u.contains("initial_loss") || !u.contains("final_loss")) continue;
    out.push_back({unit_label(u, i), u["initial_loss"].get<double>(), u["final_loss"].get<double>()});
  }
  return out;
}

JobSummary summarize_output(const fs::path& out, const fs::path& model, const std::string& description, double seconds) {
  JobSummary s;
  s.out = out;
  s.description = description;
  s.seconds = seconds;
  for (const auto& e : fs::directory_iterator(out)) {
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') {
      s.files.emplace_back(e.path().filename().string(), e.file_size());
    }
  }
  std::sort(s.files.begin(), s.files.end());
  const fs::path report_path = out / "calibration_report.json";
  if (fs::exists(report_path)) {
    const json report = json::parse(read_file(report_path));
    s.units = unit_losses(report);
    if (report.contains("calibration_mean_nll")) {
      s.has_calibration_nll = true;
      s.calibration_nll = report["calibration_mean_nll"].get<double>();
    }
  }
  add_linear_bytes(out, model, s);
  add_export_format(out, s);
  return s;
}

std::string format_job_summary(const JobSummary& s, const fs::path& model, const fs::path& export_out) {
  std::ostringstream os;
  char line[256];
  os << "\nwrote " << s.out.string() << " (" << s.description << ") in " << format_duration(s.seconds) << ":\n";
  std::uint64_t total = 0;
  for (const auto& [name, bytes] : s.files) {
    std::snprintf(line, sizeof line, "  %-28s %10s\n", name.c_str(), format_bytes(static_cast<double>(bytes)).c_str());
    os << line;
    total += bytes;
  }
  std::snprintf(line, sizeof line, "  %-28s %10s\n", "total", format_bytes(static_cast<double>(total)).c_str());
  os << line;
  if (s.linear_packed_bytes > 0) {
    std::snprintf(line, sizeof line, "quantized linears: %s packed vs %s in the input (%.2fx smaller)\n",
                  format_bytes(static_cast<double>(s.linear_packed_bytes)).c_str(),
                  format_bytes(static_cast<double>(s.linear_input_bytes)).c_str(),
                  static_cast<double>(s.linear_input_bytes) / static_cast<double>(s.linear_packed_bytes));
    os << line;
  }
  if (!s.units.empty()) os << "calibration loss per unit (unit-output MSE, before -> after):\n";
  for (const auto& u : s.units) {
    std::snprintf(line, sizeof line, "  %-22s %.4g -> %.4g%s\n", u.label.c_str(), u.initial, u.final,
                  u.worse() ? "   WARNING: more than 1% worse than before calibration" : "");
    os << line;
  }
  const auto worse = std::count_if(s.units.begin(), s.units.end(), [](const UnitLoss& u) { return u.worse(); });
  if (worse > 0) {
    os << "WARNING: " << worse << " unit(s) ended more than 1% above the loss they started with; try a lower "
       << "learning rate (--let-lr/--lwc-lr) or more calibration data\n";
  }
  if (s.has_calibration_nll) {
    std::snprintf(line, sizeof line, "calibration windows: mean NLL %.4f (ppl %.3f) in the quantized model\n",
                  s.calibration_nll, std::exp(s.calibration_nll));
    os << line;
  }
  if (fs::exists(s.out / "calibration_report.json")) os << "report: " << (s.out / "calibration_report.json").string() << "\n";
  if (fs::exists(s.out / "oscillation.svg")) os << "plot:   " << (s.out / "oscillation.svg").string() << "\n";
  const std::string data = fs::exists(s.out / "calibration.tok") ? (s.out / "calibration.tok").string() : "DATA";
  os << "next:\n  qforge eval --model " << s.out.string() << " --reference " << model.string() << " --data " << data << "\n";
  if (!export_out.empty()) {
    os << "  (exported to " << export_out.string() << ")\n";
  } else if (!s.export_format.empty()) {
    os << "  qforge export --model " << s.out.string() << " --format " << s.export_format << " --out " << s.out.string()
       << "-" << s.export_format << "\n";
  } else {
    os << "  (no export format takes this result: " << s.export_refusal << ")\n";
  }
  return os.str();
}

}  // namespace qforge::jobs
