// Job state as a pure function of the journal, and the scheduling policy over it.
//
// Every record the coordinator journals is applied here, on replay at start and live during the run,
// through the same apply(), so a resumed coordinator knows exactly what the crashed one knew durably.
// Records (storage/FORMAT.md, "Journal"): job_start, unit_assigned, fp_slice_done, unit_done,
// unit_failed, worker_lost, job_complete.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace qforge::coordinator {

class JobState {
 public:
  // `sequential`: units chain through the quantized stream; otherwise (independent) an FP pass over
  // all samples first caches the FP stream at every unit boundary.
  JobState(int units, bool sequential, std::int64_t samples);

  void apply(const nlohmann::json& record);

  int units() const { return units_; }
  bool sequential() const { return sequential_; }
  bool unit_done(int u) const { return done_.count(u) > 0; }
  const nlohmann::json& done_record(int u) const { return done_.at(u); }
  int done_count() const { return static_cast<int>(done_.size()); }
  bool all_units_done() const { return done_count() == units_; }
  bool complete() const { return complete_; }
  // 1 + the largest attempt number ever journaled: attempts (and so cache file names) never repeat.
  std::int64_t next_attempt() const { return max_attempt_ + 1; }
  int starts() const { return starts_; }
  const std::string& last_error() const { return last_error_; }
  // How often each unit was journaled done (a correct run never exceeds 1).
  const std::map<int, int>& done_counts() const { return done_counts_; }

  // Independent mode: samples whose FP stream is not yet cached at every boundary.
  std::vector<std::int64_t> fp_missing_samples() const;
  // Asked by the scheduler on every loop turn: a count, not a scan of the samples.
  bool fp_pass_complete() const { return !sequential_ && static_cast<std::int64_t>(fp_covered_.size()) >= samples_; }
  // Cache files (names under cache/) that hold `stream` at `boundary` (>= 1) for all samples, as the
  // journal says: sequential from unit b-1's done record, independent from the FP pass records.
  std::vector<std::string> boundary_files(int boundary, const std::string& stream) const;
  // Cache files the journal still needs (for garbage collection of everything else).
  std::set<std::string> live_cache_files() const;

 private:
  int units_;
  bool sequential_;
  std::int64_t samples_;
  std::map<int, nlohmann::json> done_;
  std::map<int, int> done_counts_;
  std::set<std::int64_t> fp_covered_;
  std::map<int, std::vector<std::string>> fp_files_;  // boundary -> files
  std::int64_t max_attempt_ = 0;
  int starts_ = 0;
  bool complete_ = false;
  std::string last_error_;
};

// What the scheduler may hand out: a task kind for a team (or, for the FP pass, every rank).
struct Assignment {
  std::string kind;  // "unit" | "fp_pass"
  int unit = -1;
  int team = 0;
};

// The scheduling policy, pure: given the durable state, the units in flight and the idle teams, what
// to start now. Sequential: the first unfinished unit, once its predecessor is done, on team 0 (there
// is one team). Independent: first the FP pass (needs every team idle; one assignment means "all
// ranks"), then unfinished units in order on idle teams, lowest team first.
std::vector<Assignment> schedule(const JobState& state, const std::set<int>& running_units, bool fp_running,
                                 const std::vector<int>& idle_teams, int teams);

}  // namespace qforge::coordinator
