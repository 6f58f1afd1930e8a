// Job state as a pure function of the plan and the journal, and the scheduling policy over it.
//
// The only interpreter of journal records: every record the coordinator journals is applied here, on
// replay at start and live during the run, through the same apply(), so a resumed coordinator knows
// exactly what the crashed one knew durably; `qforge status` is a projection of the same state.
// Records (storage/FORMAT.md, "Journal"): job_start, unit_assigned, fp_slice_done, probe_done,
// joint_selection, unit_checkpoint, unit_done, unit_failed, worker_lost, file_damaged, stop_requested,
// job_stopped, job_complete.
//
// file_damaged {file, what: shard|checkpoint|cache, reason}: a job file the journal relies on is missing
// or fails its digest/checksum. Applying it drops the effect of the record that made the file (the
// unit's unit_done, the unit_checkpoint, the FP-pass slice), so the scheduler recomputes it from the
// last good state; nothing else changes.
//
// Units: without MRECG they are the plan's (plan.json: one per block), known from the start. With MRECG
// (JointSpec) they are what the journaled joint_selection record says, an amendment to the plan, and
// until it exists there are none to run: first
// the FP pass caches the probe samples' FP stream at every block boundary, then every block is
// probed (probe_done, one record per block), then the coordinator selects the joint units.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "partition/plan.h"
#include "storage/job_layout.h"

namespace qforge::coordinator {

// MRECG joint reconstruction (algorithms.md §4.6), as fixed in the job spec.
struct JointSpec {
  bool enabled = false;                 // units come from a journaled joint_selection
  int topk = 0;                         // differentials to select (> 0 when enabled)
  int max_blocks = 3;                   // size cap of a joint unit
  bool data_dependent = true;           // capacities from probes; else `data_free_capacity`
  std::int64_t probe_samples = 0;       // the first N calibration samples feed the probes
  int probe_epochs = 0;                 // probe training epochs (0: initialisation + forward only)
  std::vector<double> data_free_capacity;  // per block: parameters x bits (data-free ModCap; the coordinator's)

  // The job spec's "joint" identity (job.json): null when disabled. from_identity reads it back
  // (without data_free_capacity, which only the coordinator needs).
  nlohmann::json identity() const;
  static JointSpec from_identity(const nlohmann::json& j);
};

// What the journal says happened to one unit beyond done/not done (for `qforge status`).
struct UnitProgress {
  int attempts = 0;          // unit_assigned records
  int assigned_in_start = 0; // the start (1-based) of the latest assignment; 0: never assigned
  nlohmann::json ranks = nlohmann::json::array();  // of the latest assignment
};

class JobState {
 public:
  // `sequential`: units chain through the quantized stream; otherwise (independent) an FP pass over
  // all samples first caches the FP stream at every block boundary.
  JobState(int blocks, bool sequential, std::int64_t samples, JointSpec joint = {});
  // The plan's units, mode and samples (plan.json: the input of execution).
  static JobState from_plan(const partition::Plan& plan, JointSpec joint = {});

  void apply(const nlohmann::json& record);

  // Units are known (always without MRECG; after joint_selection with it).
  bool units_ready() const { return units_ready_; }
  int units() const { return static_cast<int>(units_.size()); }
  // (first block, number of blocks) of unit u.
  std::pair<int, int> unit(int u) const { return units_.at(static_cast<std::size_t>(u)); }
  const std::vector<std::pair<int, int>>& unit_list() const { return units_; }
  int blocks() const { return blocks_; }
  // "unit 2 (block 2)", "unit 3 (blocks 3-5)": how logs and messages name a unit.
  std::string unit_text(int u) const;
  const JointSpec& joint() const { return joint_; }
  // Teams of the plan the state was built from (1 for a state built without one).
  int teams() const { return teams_; }
  bool sequential() const { return sequential_; }
  // MRECG probes: blocks not yet probed (empty when no probes are needed), and per block the value the
  // selection ranks (probe: normalised loss ℓ_b; data-free: -capacity, so a capacity drop is a rise).
  std::vector<int> missing_probe_blocks() const;
  // Asked on every scheduler turn: counts, not scans.
  bool probes_pending() const {
    return joint_.enabled && joint_.data_dependent && !units_ready_ && static_cast<int>(probes_.size()) < blocks_;
  }
  bool needs_selection() const { return joint_.enabled && !units_ready_ && !probes_pending(); }
  std::vector<double> selection_values() const;
  const std::map<int, nlohmann::json>& probes() const { return probes_; }
  const nlohmann::json& selection() const { return selection_; }
  // The samples whose FP stream the probes read (the first probe_samples ones).
  std::vector<std::int64_t> probe_sample_ids() const;
  bool unit_done(int u) const { return done_.count(u) > 0; }
  const nlohmann::json& done_record(int u) const { return done_.at(u); }
  int done_count() const { return static_cast<int>(done_.size()); }
  bool all_units_done() const { return units_ready_ && done_count() == units(); }
  bool complete() const { return complete_; }
  // 1 + the largest attempt number ever journaled: attempts (and so cache file names) never repeat.
  std::int64_t next_attempt() const { return max_attempt_ + 1; }
  int starts() const { return starts_; }
  const std::string& last_error() const { return last_error_; }
  // The latest mid-unit checkpoint of an unfinished unit (a unit_checkpoint record), or null.
  const nlohmann::json& checkpoint(int u) const;
  // Checkpoint files (names under units/) that a resume may still need.
  std::set<std::string> live_checkpoint_files() const;
  // How often each unit was journaled done (a correct run never exceeds 1).
  const std::map<int, int>& done_counts() const { return done_counts_; }
  const UnitProgress& progress(int u) const { return progress_.at(static_cast<std::size_t>(u)); }
  // The latest job_start record, the job_stopped message since it (empty: none), the fp_slice_done
  // records, and the journal's time span ("t" of its first and last records).
  const nlohmann::json& last_start() const { return last_start_; }
  const std::string& stopped_message() const { return stopped_message_; }
  const std::vector<nlohmann::json>& fp_slices() const { return fp_slices_; }
  double first_time() const { return first_t_; }
  double last_time() const { return last_t_; }

  // Samples the FP pass must still cache at every block boundary: all of them in independent mode,
  // the probe samples while MRECG probes are pending, none otherwise.
  std::vector<std::int64_t> fp_missing_samples() const;
  // Asked by the scheduler on every loop turn: a count, not a scan of the samples.
  bool fp_pass_complete() const { return static_cast<std::int64_t>(fp_covered_.size()) >= fp_needed(); }
  // Cache files (names under cache/) that hold `stream` at block boundary `boundary` (>= 1) for all
  // samples, as the journal says: sequential from the done record of the unit ending there,
  // independent from the FP pass records.
  std::vector<std::string> boundary_files(int boundary, const std::string& stream) const;
  // FP-pass files at `boundary` (>= 1).
  std::vector<std::string> fp_pass_files(int boundary) const;
  // Cache files the journal still needs (for garbage collection of everything else).
  std::set<std::string> live_cache_files() const;
  // What dropping job file `file` (a name under units/ or cache/) makes the scheduler redo, in words
  // ("unit 2 (block 2)", "the FP pass over samples 0-7"); empty when no live record produced it.
  std::string producer_of(const std::string& file) const;
  // file_damaged records applied (files dropped and recomputed) over the job's life.
  int damaged_files() const { return damaged_files_; }

 private:
  std::int64_t fp_needed() const;
  void apply_unit_record(const std::string& type, const nlohmann::json& r);
  void apply_selection(const nlohmann::json& r);
  void apply_damage(const nlohmann::json& r);
  void add_fp_slice(const nlohmann::json& r);
  void drop_unit_done(int u);

  int blocks_;
  int teams_ = 1;
  bool sequential_;
  std::int64_t samples_;
  JointSpec joint_;
  std::vector<std::pair<int, int>> units_;
  bool units_ready_ = true;
  std::map<int, nlohmann::json> probes_;   // block -> probe_done record
  nlohmann::json selection_;               // the joint_selection record
  std::map<int, nlohmann::json> checkpoints_;  // unit -> latest unit_checkpoint (until the unit is done)
  std::map<int, nlohmann::json> done_;
  std::map<int, int> done_counts_;
  std::set<std::int64_t> fp_covered_;
  std::map<int, std::vector<std::string>> fp_files_;  // boundary -> files
  std::int64_t max_attempt_ = 0;
  int starts_ = 0;
  bool complete_ = false;
  std::string last_error_;
  std::vector<UnitProgress> progress_;
  nlohmann::json last_start_;
  std::string stopped_message_;
  std::vector<nlohmann::json> fp_slices_;
  double first_t_ = 0, last_t_ = 0;
  int damaged_files_ = 0;
};

// A job directory's state: its plan.json with the journal replayed through JobState::apply. `joint`
// as the job runs it; the overload without reads it from job.json's identity (for `status` and
// `export`, which need no data-free capacities). `torn_tail`: the journal's last line was cut by a crash.
JobState load_job_state(const storage::JobLayout& job, const JointSpec& joint, bool* torn_tail = nullptr);
JobState load_job_state(const storage::JobLayout& job, bool* torn_tail = nullptr);

// What the scheduler may hand out: a task kind for a team (or, for the FP pass, every rank).
enum class WorkKind { kFpPass, kProbe, kUnit };
struct Assignment {
  WorkKind kind = WorkKind::kUnit;
  int unit = -1;
  int team = 0;
};

// The scheduling policy, pure: given the durable state, the units in flight and the idle teams, what
// to start now. First the FP pass when one is needed, then the MRECG probes (each needs every team
// idle; one assignment means "all ranks"); no units until they are selected. Sequential: the first
// unfinished unit, once its predecessor is done, on team 0 (there is one team). Independent:
// unfinished units in order on idle teams, lowest team first. `phase_running`: an FP pass or probe
// assignment is in flight.
std::vector<Assignment> schedule(const JobState& state, const std::set<int>& running_units, bool phase_running,
                                 const std::vector<int>& idle_teams, int teams);

}  // namespace qforge::coordinator
