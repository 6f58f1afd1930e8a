// qforge export: a quantized folder (or a job directory's output) -> GPTQ, compressed-tensors or a
// plain fake-quant folder (storage/export.h).
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "common/log.h"
#include "coordinator/job_state.h"
#include "jobs/cli.h"
#include "storage/export.h"
#include "storage/job_layout.h"
#include "storage/output_folder.h"

namespace qforge::jobs {

int run_export(const Args& args) {
  po::options_description desc("export options");
  add_common_options(desc);
  desc.add_options()
      ("model", po::value<std::string>(), "quantized folder written by qforge quantize")
      ("job-dir", po::value<std::string>(), "or: the job directory of a finished quantize run (exports its output folder)")
      ("format", po::value<std::string>()->required(), "gptq | compressed-tensors | fake-quant")
      ("out", po::value<std::string>()->required(), "output folder")
      ("shard-size", po::value<std::string>()->default_value("0"), "max bytes per output shard (0: one file)");
  po::variables_map vm;
  if (!parse_args(args, "export", "--model DIR --format gptq|compressed-tensors|fake-quant --out DIR", desc, vm)) return 0;
  apply_common_options(vm);
  storage::ExportOptions o;
  if (vm.count("model") == vm.count("job-dir")) throw InputError("--model", "", "give exactly one of --model and --job-dir");
  if (vm.count("job-dir")) {
    const storage::JobLayout jd(vm["job-dir"].as<std::string>());
    const nlohmann::json spec = nlohmann::json::parse(read_file(jd.spec_path()));
    if (!coordinator::load_job_state(jd).complete() || !spec.contains("out")) {
      throw InputError(jd.journal_path().string(), "", "the job is not complete (see qforge status --job-dir)");
    }
    o.model = spec["out"].get<std::string>();
  } else {
    o.model = vm["model"].as<std::string>();
  }
  o.out = vm["out"].as<std::string>();
  storage::OutputFolder::check_target(o.out, "--out");
  o.format = storage::parse_export_format(vm["format"].as<std::string>());
  o.shard_bytes = parse_size(vm["shard-size"].as<std::string>(), "--shard-size");
  const storage::ExportResult r = storage::export_checkpoint(o);
  for (const auto& n : r.notes) QF_LOG(Warn) << n;
  QF_LOG(Info) << "wrote " << o.out.string() << " (" << r.checkpoint_format << ")";
  return 0;
}

}  // namespace qforge::jobs
