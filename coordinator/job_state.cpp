#include "coordinator/job_state.h"

#include <algorithm>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/job_layout.h"
#include "storage/journal.h"

namespace qforge::coordinator {

namespace fs = std::filesystem;
using nlohmann::json;

json JointSpec::identity() const {
  if (!enabled) return nullptr;
  return {{"topk", topk}, {"max_blocks", max_blocks}, {"capacity", data_dependent ? "probe" : "data-free"},
          {"probe_epochs", data_dependent ? probe_epochs : 0}, {"probe_samples", data_dependent ? probe_samples : 0}};
}

JointSpec JointSpec::from_identity(const json& j) {
  JointSpec s;
  if (j.is_null()) return s;
  s.enabled = true;
  s.topk = j.at("topk").get<int>();
  s.max_blocks = j.at("max_blocks").get<int>();
  s.data_dependent = j.at("capacity").get<std::string>() == "probe";
  s.probe_epochs = j.at("probe_epochs").get<int>();
  s.probe_samples = j.at("probe_samples").get<std::int64_t>();
  return s;
}

JobState::JobState(int blocks, bool sequential, std::int64_t samples, JointSpec joint)
    : blocks_(blocks), sequential_(sequential), samples_(samples), joint_(std::move(joint)) {
  QF_CHECK(!joint_.enabled || joint_.topk > 0, "joint reconstruction needs topk > 0");
  if (joint_.enabled) {
    units_ready_ = false;
  } else {
    for (int b = 0; b < blocks; ++b) units_.emplace_back(b, 1);
  }
  progress_.resize(units_.size());
}

JobState JobState::from_plan(const partition::Plan& plan, JointSpec joint) {
  int blocks = 0;
  for (const auto& u : plan.units) {
    QF_CHECK(u.first_block == blocks && u.num_blocks >= 1, "plan.json: units do not tile the blocks in order");
    blocks += u.num_blocks;
  }
  JobState st(blocks, plan.options.mode == partition::EngineMode::kSequential, plan.options.nsamples, std::move(joint));
  st.teams_ = plan.teams;
  if (!st.joint_.enabled) {
    st.units_.clear();
    for (const auto& u : plan.units) st.units_.emplace_back(u.first_block, u.num_blocks);
  }
  return st;
}

void JobState::apply_unit_record(const std::string& type, const json& r) {
  const int u = r.at("unit").get<int>();
  QF_CHECK(units_ready_ && u >= 0 && u < units(), "journal names unit " + std::to_string(u) + " outside the plan");
  UnitProgress& p = progress_[static_cast<std::size_t>(u)];
  if (type == "unit_assigned") {
    ++p.attempts;
    p.assigned_in_start = starts_;
    p.ranks = r.value("ranks", json::array());
  } else if (type == "unit_done") {
    done_[u] = r;
    ++done_counts_[u];
    checkpoints_.erase(u);
  } else if (!done_.count(u)) {  // unit_checkpoint
    checkpoints_[u] = r;
  }
}

void JobState::apply_selection(const json& r) {
  units_.clear();
  int next = 0;
  for (const auto& u : r.at("units")) {
    const int first = u.at(0).get<int>(), n = u.at(1).get<int>();
    QF_CHECK(first == next && n >= 1, "journal's joint_selection units do not tile the blocks in order");
    units_.emplace_back(first, n);
    next = first + n;
  }
  QF_CHECK(next == blocks_, "journal's joint_selection units do not cover every block");
  selection_ = r;
  units_ready_ = true;
  progress_.assign(units_.size(), UnitProgress{});
}

void JobState::apply(const json& r) {
  const std::string type = r.at("type").get<std::string>();
  if (r.contains("attempt")) max_attempt_ = std::max(max_attempt_, r["attempt"].get<std::int64_t>());
  if (r.contains("t")) {
    if (first_t_ == 0) first_t_ = r["t"].get<double>();
    last_t_ = r["t"].get<double>();
  }
  if (type == "job_start") {
    ++starts_;
    last_start_ = r;
    stopped_message_.clear();
  } else if (type == "unit_done" || type == "unit_checkpoint" || (type == "unit_assigned" && r.value("kind", "") == "unit")) {
    apply_unit_record(type, r);
  } else if (type == "fp_slice_done") {
    add_fp_slice(r);
    fp_slices_.push_back(r);
  } else if (type == "file_damaged") {
    apply_damage(r);
  } else if (type == "probe_done") {
    const int b = r.at("block").get<int>();
    QF_CHECK(b >= 0 && b < blocks_, "journal names probed block " + std::to_string(b) + " outside the model");
    probes_[b] = r;
  } else if (type == "joint_selection") {
    apply_selection(r);
  } else if (type == "unit_failed" || type == "worker_lost" || type == "job_failed") {
    last_error_ = r.value("message", type);
  } else if (type == "job_stopped") {
    stopped_message_ = r.value("message", type);
  } else if (type == "job_complete") {
    // Only a journal whose every unit is done is complete: a job_complete record before that (a forged or
    // corrupted journal) does not end the job, which then runs its remaining units.
    complete_ = all_units_done();
    if (!complete_) {
      last_error_ = "journal has a job_complete record with only " + std::to_string(done_count()) + " of " +
                    std::to_string(units()) + " units done; ignored";
    }
  }
  // stop_requested and unknown future types change nothing durable.
}

void JobState::add_fp_slice(const json& r) {
  for (auto id : r.at("samples")) {
    const std::int64_t v = id.get<std::int64_t>();
    QF_CHECK(v >= 0 && v < samples_, "journal names sample " + std::to_string(v) + " outside the calibration set");
    fp_covered_.insert(v);
  }
  for (const auto& f : r.at("files")) fp_files_[f.at("boundary").get<int>()].push_back(f.at("file").get<std::string>());
}

namespace {

bool slice_has(const json& slice, const std::string& file) {
  for (const auto& f : slice.at("files")) {
    if (f.at("file") == file) return true;
  }
  return false;
}

bool done_has(const json& done, const std::string& file) {
  for (const auto& rk : done.at("ranks")) {
    for (const auto& f : rk.at("files")) {
      if (f == file) return true;
    }
  }
  return false;
}

}  // namespace

void JobState::drop_unit_done(int u) {
  done_.erase(u);
  --done_counts_[u];  // the redo's unit_done is then the unit's one live record again
  complete_ = false;
}

// A damaged file takes with it the record that made it; the scheduler then makes it again.
void JobState::apply_damage(const json& r) {
  const std::string file = r.at("file").get<std::string>();
  const std::string what = r.at("what").get<std::string>();
  ++damaged_files_;
  if (what == "checkpoint") {
    for (auto it = checkpoints_.begin(); it != checkpoints_.end();) {
      it = it->second.at("file") == file ? checkpoints_.erase(it) : std::next(it);
    }
    return;
  }
  QF_CHECK(what == "shard" || what == "cache", "file_damaged names an unknown kind of file '" + what + "'");
  std::vector<int> units;
  for (const auto& [u, rec] : done_) {
    if (what == "shard" ? rec.at("shard") == file : done_has(rec, file)) units.push_back(u);
  }
  for (int u : units) drop_unit_done(u);
  if (what == "shard") return;
  const auto dead = std::remove_if(fp_slices_.begin(), fp_slices_.end(), [&](const json& s) { return slice_has(s, file); });
  if (dead == fp_slices_.end()) return;
  fp_slices_.erase(dead, fp_slices_.end());
  fp_covered_.clear();
  fp_files_.clear();
  for (const auto& s : fp_slices_) add_fp_slice(s);
  complete_ = false;
}

std::string JobState::unit_text(int u) const {
  const auto [first, count] = unit(u);
  return "unit " + std::to_string(u) + " (block" + (count > 1 ? "s " : " ") + std::to_string(first) +
         (count > 1 ? "-" + std::to_string(first + count - 1) : "") + ")";
}

std::string JobState::producer_of(const std::string& file) const {
  for (const auto& [u, rec] : done_) {
    if (rec.at("shard") == file || done_has(rec, file)) return unit_text(u);
  }
  for (const auto& [u, rec] : checkpoints_) {
    if (rec.at("file") == file) return unit_text(u) + " from its start (its checkpoint is dropped)";
  }
  for (const auto& s : fp_slices_) {
    if (!slice_has(s, file)) continue;
    return "the FP pass over " + std::to_string(s.at("samples").size()) + " samples (rank " + s.at("rank").dump() + "'s slice)";
  }
  return "";
}

const json& JobState::checkpoint(int u) const {
  static const json none;
  const auto it = checkpoints_.find(u);
  return it == checkpoints_.end() ? none : it->second;
}

std::set<std::string> JobState::live_checkpoint_files() const {
  std::set<std::string> live;
  for (const auto& [u, r] : checkpoints_) live.insert(r.at("file").get<std::string>());
  return live;
}

std::vector<int> JobState::missing_probe_blocks() const {
  std::vector<int> missing;
  if (!probes_pending()) return missing;
  for (int b = 0; b < blocks_; ++b) {
    if (!probes_.count(b)) missing.push_back(b);
  }
  return missing;
}

std::vector<double> JobState::selection_values() const {
  QF_CHECK(joint_.data_dependent || static_cast<int>(joint_.data_free_capacity.size()) == blocks_,
           "data-free capacities need one value per block");
  std::vector<double> v;
  for (int b = 0; b < blocks_; ++b) {
    if (joint_.data_dependent) {
      v.push_back(probes_.at(b).at("capacity_loss").get<double>());
    } else {
      v.push_back(-joint_.data_free_capacity.at(static_cast<std::size_t>(b)));
    }
  }
  return v;
}

std::vector<std::int64_t> JobState::probe_sample_ids() const {
  std::vector<std::int64_t> ids;
  for (std::int64_t i = 0; i < std::min(joint_.probe_samples, samples_); ++i) ids.push_back(i);
  return ids;
}

std::int64_t JobState::fp_needed() const {
  if (samples_ == 0) return 0;
  if (!sequential_) return samples_;
  return probes_pending() ? std::min(joint_.probe_samples, samples_) : 0;
}

std::vector<std::int64_t> JobState::fp_missing_samples() const {
  std::vector<std::int64_t> missing;
  for (std::int64_t i = 0; i < fp_needed(); ++i) {
    if (!fp_covered_.count(i)) missing.push_back(i);
  }
  return missing;
}

std::vector<std::string> JobState::fp_pass_files(int boundary) const {
  const auto it = fp_files_.find(boundary);
  return it == fp_files_.end() ? std::vector<std::string>{} : it->second;
}

std::vector<std::string> JobState::boundary_files(int boundary, const std::string& stream) const {
  QF_CHECK(boundary >= 1, "boundary 0 is the embedding, not cached");
  if (!sequential_) return fp_pass_files(boundary);
  for (const auto& [u, rec] : done_) {
    const auto [first, n] = unit(u);
    if (first + n != boundary) continue;
    std::vector<std::string> out;
    for (const auto& rk : rec.at("ranks")) {
      for (const auto& f : rk.at("files")) {
        const std::string name = f.get<std::string>();
        const auto parsed = storage::JobLayout::parse_cache_file(name);
        if (parsed && parsed->stream == stream) out.push_back(name);
      }
    }
    return out;
  }
  throw InternalError("boundary " + std::to_string(boundary) + " requested before the unit ending there finished");
}

std::set<std::string> JobState::live_cache_files() const {
  std::set<std::string> live;
  if (!units_ready_) {
    // Probes still read the FP pass at every block boundary.
    for (const auto& [b, files] : fp_files_) live.insert(files.begin(), files.end());
    return live;
  }
  if (!sequential_) {
    // Only unit inputs are read from now on; boundaries inside joint units and of finished units are dead.
    for (int u = 0; u < units(); ++u) {
      if (unit_done(u) || unit(u).first == 0) continue;
      for (const auto& f : fp_pass_files(unit(u).first)) live.insert(f);
    }
    return live;
  }
  // Sequential: the output of a finished unit feeds its successor until that one is done (in a normal run
  // one boundary; after a dropped unit, also the boundary where the chain resumes).
  for (int u = 0; u + 1 < units(); ++u) {
    if (!unit_done(u) || unit_done(u + 1)) continue;
    const auto [first, n] = unit(u);
    for (const char* s : {"fp", "q"}) {
      for (const auto& f : boundary_files(first + n, s)) live.insert(f);
    }
  }
  return live;
}

JobState load_job_state(const storage::JobLayout& job, const JointSpec& joint, bool* torn_tail) {
  if (!fs::exists(job.plan_path())) {
    throw InputError(job.plan_path().string(), "", "missing: the job never got past its preparation");
  }
  JobState state = JobState::from_plan(partition::Plan::from_json(json::parse(read_file(job.plan_path()))), joint);
  const storage::JournalReplay replay = storage::replay_journal(job.journal_path());
  for (std::size_t i = 0; i < replay.records.size(); ++i) {
    // A record that is well-formed JSON with an intact CRC but does not make sense (hand-edited, forged)
    // is bad input, named by its position, not an internal error.
    try {
      state.apply(replay.records[i]);
    } catch (const std::exception& e) {
      throw InputError(job.journal_path().string(), "record " + std::to_string(i + 1),
                       std::string("does not fit the job's plan and history: ") + e.what());
    }
  }
  if (torn_tail) *torn_tail = replay.torn_tail;
  return state;
}

JobState load_job_state(const storage::JobLayout& job, bool* torn_tail) {
  const json spec = json::parse(read_file(job.spec_path()));
  return load_job_state(job, JointSpec::from_identity(spec.at("identity").value("joint", json())), torn_tail);
}

std::vector<Assignment> schedule(const JobState& state, const std::set<int>& running_units, bool phase_running,
                                 const std::vector<int>& idle_teams, int teams) {
  std::vector<Assignment> out;
  if (state.all_units_done() || idle_teams.empty()) return out;
  const bool all_idle = !phase_running && running_units.empty() && static_cast<int>(idle_teams.size()) == teams;
  if (!state.fp_pass_complete()) {
    if (all_idle) out.push_back({WorkKind::kFpPass, -1, -1});
    return out;
  }
  if (state.probes_pending()) {
    if (all_idle) out.push_back({WorkKind::kProbe, -1, -1});
    return out;
  }
  if (!state.units_ready()) return out;  // the coordinator selects the joint units first
  if (state.sequential()) {
    if (!running_units.empty()) return out;
    for (int u = 0; u < state.units(); ++u) {
      if (state.unit_done(u)) continue;
      if (u == 0 || state.unit_done(u - 1)) {
        if (std::find(idle_teams.begin(), idle_teams.end(), 0) != idle_teams.end()) out.push_back({WorkKind::kUnit, u, 0});
      }
      break;
    }
    return out;
  }
  std::size_t next_team = 0;
  for (int u = 0; u < state.units() && next_team < idle_teams.size(); ++u) {
    if (state.unit_done(u) || running_units.count(u)) continue;
    out.push_back({WorkKind::kUnit, u, idle_teams[next_team++]});
  }
  return out;
}

}  // namespace qforge::coordinator
