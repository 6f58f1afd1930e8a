#include "coordinator/job_state.h"

#include <algorithm>

#include "common/error.h"

namespace qforge::coordinator {

using nlohmann::json;

JobState::JobState(int units, bool sequential, std::int64_t samples) : units_(units), sequential_(sequential), samples_(samples) {}

void JobState::apply(const json& r) {
  const std::string type = r.at("type").get<std::string>();
  if (r.contains("attempt")) max_attempt_ = std::max(max_attempt_, r["attempt"].get<std::int64_t>());
  if (type == "job_start") {
    ++starts_;
  } else if (type == "unit_done") {
    const int u = r.at("unit").get<int>();
    QF_CHECK(u >= 0 && u < units_, "journal names unit " + std::to_string(u) + " outside the plan");
    done_[u] = r;
    ++done_counts_[u];
  } else if (type == "fp_slice_done") {
    for (auto id : r.at("samples")) {
      const std::int64_t v = id.get<std::int64_t>();
      QF_CHECK(v >= 0 && v < samples_, "journal names sample " + std::to_string(v) + " outside the calibration set");
      fp_covered_.insert(v);
    }
    for (const auto& f : r.at("files")) fp_files_[f.at("boundary").get<int>()].push_back(f.at("file").get<std::string>());
  } else if (type == "unit_failed" || type == "worker_lost" || type == "job_failed") {
    last_error_ = r.value("message", type);
  } else if (type == "job_complete") {
    complete_ = true;
  }
  // unit_assigned and unknown future types change nothing durable.
}

std::vector<std::int64_t> JobState::fp_missing_samples() const {
  std::vector<std::int64_t> missing;
  if (sequential_) return missing;
  for (std::int64_t i = 0; i < samples_; ++i) {
    if (!fp_covered_.count(i)) missing.push_back(i);
  }
  return missing;
}

std::vector<std::string> JobState::boundary_files(int boundary, const std::string& stream) const {
  QF_CHECK(boundary >= 1, "boundary 0 is the embedding, not cached");
  if (sequential_) {
    const auto it = done_.find(boundary - 1);
    QF_CHECK(it != done_.end(), "boundary " + std::to_string(boundary) + " requested before its unit finished");
    std::vector<std::string> out;
    for (const auto& rk : it->second.at("ranks")) {
      for (const auto& f : rk.at("files")) {
        const std::string name = f.get<std::string>();
        if (name.find("-" + stream + "-") != std::string::npos) out.push_back(name);
      }
    }
    return out;
  }
  const auto it = fp_files_.find(boundary);
  return it == fp_files_.end() ? std::vector<std::string>{} : it->second;
}

std::set<std::string> JobState::live_cache_files() const {
  std::set<std::string> live;
  if (!sequential_) {
    if (all_units_done()) return live;
    for (const auto& [b, files] : fp_files_) live.insert(files.begin(), files.end());
    return live;
  }
  // Sequential: only the boundary after the last finished unit feeds anything still to run.
  int last = -1;
  while (last + 1 < units_ && unit_done(last + 1)) ++last;
  if (last >= 0 && last + 1 < units_) {
    for (const char* s : {"fp", "q"}) {
      for (const auto& f : boundary_files(last + 1, s)) live.insert(f);
    }
  }
  return live;
}

std::vector<Assignment> schedule(const JobState& state, const std::set<int>& running_units, bool fp_running,
                                 const std::vector<int>& idle_teams, int teams) {
  std::vector<Assignment> out;
  if (state.all_units_done() || idle_teams.empty()) return out;
  if (state.sequential()) {
    if (!running_units.empty()) return out;
    for (int u = 0; u < state.units(); ++u) {
      if (state.unit_done(u)) continue;
      if (u == 0 || state.unit_done(u - 1)) {
        if (std::find(idle_teams.begin(), idle_teams.end(), 0) != idle_teams.end()) out.push_back({"unit", u, 0});
      }
      break;
    }
    return out;
  }
  if (!state.fp_pass_complete()) {
    if (!fp_running && running_units.empty() && static_cast<int>(idle_teams.size()) == teams) out.push_back({"fp_pass", -1, -1});
    return out;
  }
  std::size_t next_team = 0;
  for (int u = 0; u < state.units() && next_team < idle_teams.size(); ++u) {
    if (state.unit_done(u) || running_units.count(u)) continue;
    out.push_back({"unit", u, idle_teams[next_team++]});
  }
  return out;
}

}  // namespace qforge::coordinator
