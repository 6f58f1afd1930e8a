// qforge status: progress of a job directory, read from its spec, plan and journal only (safe to run
// while the job runs, from any node that sees the directory): a projection of coordinator::JobState.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/strings.h"
#include "common/file_util.h"
#include "coordinator/job_state.h"
#include "coordinator/oscillation.h"
#include "common/progress.h"
#include "jobs/cli.h"
#include "jobs/slurm_query.h"
#include "storage/job_layout.h"
#include "storage/journal.h"

namespace qforge::jobs {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Why `dir` holds no job to report on, and what to do: the usual cases are a finished run's output
// folder, or its default job directory, which a successful run removes.
std::string no_job_reason(const fs::path& dir) {
  const std::string keep = "; pass --job-dir DIR to quantize to keep a job directory after success";
  if (fs::exists(dir / "calibration_report.json")) {
    return "a finished qforge output folder, not a job directory (its default job directory " +
           (dir / ".qforge-job").string() + " was removed when the run succeeded; calibration_report.json has the "
           "per-unit losses)" + keep;
  }
  if (dir.filename() == ".qforge-job" && !fs::exists(dir)) {
    return "no such job directory: the default job directory is removed when its run succeeds (the results are in " +
           dir.parent_path().string() + ")" + keep;
  }
  return "not a qforge job directory (no job.json)";
}

json unit_status(const coordinator::JobState& st, int u) {
  const auto [first, n] = st.unit(u);
  const coordinator::UnitProgress& p = st.progress(u);
  json ui = {{"unit", u}, {"first_block", first}, {"num_blocks", n}, {"attempts", p.attempts},
             {"done_count", st.done_counts().count(u) ? st.done_counts().at(u) : 0}};
  if (st.unit_done(u)) {
    const json& r = st.done_record(u);
    ui["state"] = "done";
    ui["seconds"] = r.value("seconds", 0.0);
    ui["team"] = r.value("team", 0);
    ui["ranks"] = r["ranks"];
    const json& rep = r.value("report", json::object());
    for (const char* k : {"initial_loss", "final_loss"}) {
      if (rep.contains(k)) ui[k] = rep[k];
    }
    return ui;
  }
  ui["state"] = p.assigned_in_start == 0 ? "pending" : p.assigned_in_start == st.starts() ? "assigned" : "interrupted";
  if (p.assigned_in_start > 0) ui["ranks_assigned"] = p.ranks;
  if (const json& ck = st.checkpoint(u); !ck.is_null()) {
    ui["checkpoint"] = {{"epoch", ck.value("epoch", 0)}, {"step", ck.value("step", 0)}, {"file", ck.value("file", "")}};
  }
  return ui;
}

// Samples, peak RSS and cache traffic per rank, from the done units and the FP-pass slices.
void add_rank_figures(const coordinator::JobState& st, json& out) {
  std::map<int, std::int64_t> rank_samples;
  std::map<int, std::uint64_t> rank_peak;
  std::uint64_t written = 0, read = 0;
  std::int64_t fp_samples = 0;
  for (int u = 0; u < st.units(); ++u) {
    if (!st.unit_done(u)) continue;
    for (const auto& rk : st.done_record(u)["ranks"]) {
      const int rank = rk.value("rank", 0);
      rank_samples[rank] += rk.value("samples", std::int64_t{0});
      rank_peak[rank] = std::max(rank_peak[rank], rk.value("peak_rss", std::uint64_t{0}));
      written += rk.value("cache_bytes_written", std::uint64_t{0});
      read += rk.value("cache_bytes_read", std::uint64_t{0});
    }
  }
  for (const auto& r : st.fp_slices()) {
    fp_samples += static_cast<std::int64_t>(r["samples"].size());
    const int rank = r.value("rank", 0);
    rank_peak[rank] = std::max(rank_peak[rank], r.value("peak_rss", std::uint64_t{0}));
    written += r.value("cache_bytes_written", std::uint64_t{0});
  }
  json rs = json::object(), rp = json::object();
  for (const auto& [k, v] : rank_samples) rs[std::to_string(k)] = v;
  for (const auto& [k, v] : rank_peak) rp[std::to_string(k)] = v;
  out["rank_samples"] = rs;
  out["rank_peak_rss"] = rp;
  out["cache_bytes_written"] = written;
  out["cache_bytes_read"] = read;
  if (out["mode"] == "independent") out["fp_pass_samples"] = fp_samples;
}

// Slurm: the jobs `qforge submit` recorded (slurm.json) and what Slurm says about them now.
json slurm_status(const storage::JobLayout& jd) {
  json jobs = json::array();
  for (const auto& sub : json::parse(read_file(jd.root() / "slurm.json")).value("submissions", json::array())) {
    json q = query_slurm_job(sub.value("job_id", ""));
    q["kind"] = sub.value("kind", "");
    if (sub.contains("chain_index")) q["chain_index"] = sub["chain_index"];
    jobs.push_back(q);
  }
  return jobs;
}

json collect_status(const storage::JobLayout& jd) {
  if (!fs::exists(jd.spec_path())) throw InputError(jd.root().string(), "", no_job_reason(jd.root()));
  const json spec = json::parse(read_file(jd.spec_path()));
  bool torn_tail = false;
  const coordinator::JobState st = coordinator::load_job_state(jd, &torn_tail);
  json out = {{"job_dir", jd.root().string()}, {"fingerprint", spec.value("fingerprint", "")},
              {"mode", spec["identity"].value("mode", "")}, {"starts", st.starts()}, {"complete", st.complete()},
              {"last_error", st.last_error().empty() ? json() : json(st.last_error())}, {"torn_tail", torn_tail}};
  if (st.starts() > 0) {
    out["ranks"] = st.last_start().value("ranks", 0);
    out["team_size"] = st.last_start().value("team_size", 0);
  }
  if (!st.stopped_message().empty()) out["stopped"] = st.stopped_message();
  out["damaged_files"] = st.damaged_files();
  if (fs::exists(jd.root() / "slurm.json")) out["slurm"] = slurm_status(jd);
  // Before an MRECG selection there are no units yet (the probes decide them).
  const int units = st.units_ready() ? st.units() : 0;
  out["units_total"] = units;
  out["units_done"] = st.done_count();
  out["units_ready"] = st.units_ready();
  if (st.joint().enabled) out["blocks_probed"] = static_cast<int>(st.probes().size());
  if (!st.probes().empty() || st.selection().is_object() || st.done_count() > 0) {
    std::map<int, json> done_records;
    for (int u = 0; u < units; ++u) {
      if (st.unit_done(u)) done_records[u] = st.done_record(u);
    }
    out["oscillation"] = coordinator::oscillation_report(st.probes(), st.selection(), done_records);
  }
  out["units"] = json::array();
  double done_seconds = 0;
  for (int u = 0; u < units; ++u) {
    out["units"].push_back(unit_status(st, u));
    if (st.unit_done(u)) done_seconds += st.done_record(u).value("seconds", 0.0);
  }
  add_rank_figures(st, out);
  const int done = st.done_count();
  out["eta_seconds"] = done > 0 && done < units ? done_seconds / done * (units - done) / std::max(1, st.teams()) : 0.0;
  out["journal_span_seconds"] = st.last_time() - st.first_time();
  return out;
}

void print_oscillation(const json& osc) {
  const json& sel = osc["selection"];
  if (sel.is_object()) {
    std::cout << "MRECG: capacity from " << sel["capacity"].get<std::string>() << ", top-" << sel["topk"].get<int>() << ", units:";
    for (const auto& u : sel["units"]) {
      const int f = u[0], n = u[1];
      std::cout << " " << (n > 1 ? "[" + std::to_string(f) + "-" + std::to_string(f + n - 1) + "]" : std::to_string(f));
    }
    std::cout << "\n";
  }
  const auto fmt = [](const json& v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.4g", v.is_number() ? v.get<double>() : 0.0);
    return v.is_number() ? std::string(b) : std::string("-");
  };
  std::cout << "oscillation (normalised loss per block, probe / final):";
  for (const auto& b : osc["blocks"]) std::cout << " " << b["block"].get<int>() << ":" << fmt(b["probe"]) << "/" << fmt(b["final"]);
  const json& sm = osc["summary"];
  std::cout << "\n  final curve: max " << fmt(sm["final_max"]) << ", " << sm["final_drops"].get<int>() << " drop(s) totalling "
            << fmt(sm["final_drop_total"]) << "; probe curve: " << sm["probe_drops"].get<int>() << " drop(s) totalling "
            << fmt(sm["probe_drop_total"]) << "\n";
}

// --plot FILE: the job's oscillation plot; --compare DIR adds another job's final curve (e.g. the
// block-wise run next to the joint one).
void write_plot(const json& st, const po::variables_map& vm) {
  if (!st.contains("oscillation")) throw InputError("--plot", "", "the job has no finished unit to plot");
  const json& osc = st["oscillation"];
  auto values = [](const json& a) {
    std::vector<double> v;
    for (const auto& x : a) v.push_back(x.is_number() ? x.get<double>() : std::nan(""));
    return v;
  };
  std::vector<coordinator::PlotSeries> series;
  if (std::any_of(osc["probe"].begin(), osc["probe"].end(), [](const json& x) { return x.is_number(); })) {
    series.push_back({"probe (block alone, FP input)", values(osc["probe"]), "#888888"});
  }
  series.push_back({vm["label"].as<std::string>(), values(osc["final"]), "#c0392b"});
  if (!vm["compare"].as<std::string>().empty()) {
    const json other = collect_status(storage::JobLayout(vm["compare"].as<std::string>()));
    if (!other.contains("oscillation")) throw InputError("--compare", "", "that job has no finished unit");
    series.push_back({vm["compare-label"].as<std::string>(), values(other["oscillation"]["final"]), "#2e86c1"});
  }
  std::vector<std::pair<int, int>> joint;
  for (const auto& u : osc["units"]) joint.emplace_back(u["blocks"].front().get<int>(), static_cast<int>(u["blocks"].size()));
  const std::string path = vm["plot"].as<std::string>();
  write_file_atomic(path, coordinator::oscillation_svg(vm["title"].as<std::string>(), series, joint));
  std::cout << "wrote " << path << "\n";
}

}  // namespace

int run_status(const Args& args) {
  po::options_description desc("status options");
  add_common_options(desc);
  desc.add_options()("job-dir", po::value<std::string>()->required(), "job directory")("json", po::bool_switch(),
                                                                                       "print one JSON object")(
      "plot", po::value<std::string>()->default_value(""), "write the oscillation plot (SVG) to this file")(
      "compare", po::value<std::string>()->default_value(""), "with --plot: also draw this job directory's final curve")(
      "label", po::value<std::string>()->default_value("final (this job)"), "with --plot: legend of this job's curve")(
      "compare-label", po::value<std::string>()->default_value("final (compared job)"), "with --plot: legend of --compare")(
      "title", po::value<std::string>()->default_value("per-block reconstruction loss across depth"), "with --plot: title");
  po::positional_options_description pos;
  pos.add("job-dir", 1);
  po::variables_map vm;
  if (!parse_args(args, "status", "--job-dir DIR [--json]", desc, vm, &pos)) return 0;
  apply_common_options(vm);
  const json st = collect_status(storage::JobLayout(vm["job-dir"].as<std::string>()));
  if (vm["json"].as<bool>()) {
    std::cout << st.dump(2) << "\n";
    return 0;
  }
  const int total = st["units_total"], done = st["units_done"];
  std::cout << "job " << st["job_dir"].get<std::string>() << " (" << st["mode"].get<std::string>() << " mode, fingerprint "
            << st["fingerprint"].get<std::string>().substr(0, 12) << ")\n";
  std::cout << "state: "
            << (st["complete"].get<bool>()        ? "complete"
                : !st["last_error"].is_null()     ? "stopped"
                : st.contains("stopped")          ? "stopped by a signal, resumable"
                                                  : "in progress or interrupted")
            << "; starts " << st["starts"].get<int>() << " (" << std::max(0, st["starts"].get<int>() - 1) << " restarts)"
            << "; last run " << st.value("ranks", 0) << " ranks\n";
  if (st.contains("slurm")) {
    for (const auto& j : st["slurm"]) {
      std::cout << "Slurm job " << j["job_id"].get<std::string>() << " (" << j["kind"].get<std::string>() << "): "
                << j["state"].get<std::string>();
      if (j["restarts"].is_number()) std::cout << ", restarts " << j["restarts"].get<int>();
      if (j["exit_code"].is_string() && !j["exit_code"].get<std::string>().empty()) std::cout << ", exit " << j["exit_code"].get<std::string>();
      if (j["reason"].is_string() && j["reason"] != "None" && !j["reason"].get<std::string>().empty()) std::cout << ", reason " << j["reason"].get<std::string>();
      if (!j["note"].get<std::string>().empty()) std::cout << " (" << j["note"].get<std::string>() << ")";
      std::cout << "\n";
    }
  }
  if (!st["units_ready"].get<bool>()) {
    std::cout << "MRECG: " << st.value("blocks_probed", 0) << " block(s) probed; the units are chosen once every block is probed\n";
  }
  std::cout << "progress: " << done << "/" << total << " units done";
  if (!st["complete"].get<bool>() && done > 0 && done < total) {
    std::cout << ", ETA " << format_duration(st["eta_seconds"].get<double>());
  }
  std::cout << "\n";
  if (st.contains("fp_pass_samples")) std::cout << "FP pass: " << st["fp_pass_samples"].get<std::int64_t>() << " samples cached\n";
  for (const auto& u : st["units"]) {
    std::printf("  unit %3d (block %d%s): %-11s", u["unit"].get<int>(), u["first_block"].get<int>(),
                u["num_blocks"].get<int>() > 1 ? ("+" + std::to_string(u["num_blocks"].get<int>() - 1)).c_str() : "",
                u["state"].get<std::string>().c_str());
    if (u["state"] == "done") {
      std::printf(" %8s on team %d", format_duration(u["seconds"].get<double>()).c_str(), u["team"].get<int>());
      if (u.contains("final_loss")) std::printf(", MSE %.4g -> %.4g", u["initial_loss"].get<double>(), u["final_loss"].get<double>());
      std::printf(", samples");
      for (const auto& rk : u["ranks"]) std::printf(" r%d:%lld", rk["rank"].get<int>(), static_cast<long long>(rk["samples"].get<std::int64_t>()));
    }
    if (u.contains("checkpoint")) {
      std::printf(" checkpoint at epoch %d step %lld", u["checkpoint"]["epoch"].get<int>() + 1,
                  static_cast<long long>(u["checkpoint"]["step"].get<std::int64_t>()));
    }
    if (u["attempts"].get<int>() > 1) std::printf(" (%d attempts)", u["attempts"].get<int>());
    std::printf("\n");
  }
  std::cout << "samples per rank (finished units):";
  for (const auto& [r, n] : st["rank_samples"].items()) std::cout << " r" << r << ":" << n.get<std::int64_t>();
  std::cout << "\npeak RSS per rank:";
  for (const auto& [r, n] : st["rank_peak_rss"].items()) std::cout << " r" << r << ":" << format_mib(n.get<double>());
  std::cout << "\ncache: " << format_mib(st["cache_bytes_written"].get<double>()) << " written, "
            << format_mib(st["cache_bytes_read"].get<double>()) << " read\n";
  if (st.contains("oscillation")) print_oscillation(st["oscillation"]);
  if (st["damaged_files"].get<int>() > 0) {
    std::cout << "damaged job files dropped and recomputed: " << st["damaged_files"].get<int>() << " (file_damaged in the journal)\n";
  }
  std::cout << "last error: " << (st["last_error"].is_null() ? "none" : st["last_error"].get<std::string>()) << "\n";
  if (!vm["plot"].as<std::string>().empty()) write_plot(st, vm);
  return 0;
}

}  // namespace qforge::jobs
