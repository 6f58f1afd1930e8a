// The job directory's layout: the one place that makes, and parses back, the name of every file in it
// (documented in storage/FORMAT.md); the coordinator, the workers, status and clean-up ask it.
//
//   job.json          the job spec: identity (model/data/config fingerprints, mode, team size, qforge
//                     version) and its fingerprint; pinned settings (compute threads)
//   job_id            a fresh random id per start, read back by every rank (shared-filesystem check)
//   plan.json         the plan of work units (partition/plan.h)
//   calibration.tok   the calibration windows (QFTOKENS), fixed at the first start
//   journal.log       append-only, fsync'd record of progress (storage/journal.h)
//   units/unit-NNNNN.safetensors   one result shard per finished unit (weights + codes/scales/zeros)
//   units/unit-NNNNN.ckpt-aAAAAAA.safetensors   mid-unit checkpoint of attempt A (on a stop signal)
//   cache/bBBBB-<stream>-aAAAAAA-tT.h5   HDF5 activation slices (storage/activation_cache.h)
// Every file is written under a temporary name first (common/file_util.h: temp_path_for) and renamed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace qforge::storage {

namespace fs = std::filesystem;

class JobLayout {
 public:
  JobLayout() = default;
  explicit JobLayout(fs::path root) : root_(std::move(root)) {}
  const fs::path& root() const { return root_; }
  fs::path spec_path() const { return root_ / "job.json"; }
  fs::path job_id_path() const { return root_ / "job_id"; }
  fs::path plan_path() const { return root_ / "plan.json"; }
  fs::path calibration_path() const { return root_ / "calibration.tok"; }
  fs::path journal_path() const { return root_ / "journal.log"; }
  fs::path lock_path() const { return root_ / "lock"; }  // storage/job_lock.h: the running job's claim
  // --rotate: the rotated FP model the engine quantizes (an HF folder, written once at the first start)
  // and, inside it, what rotation it holds.
  fs::path rotated_model_dir() const { return root_ / "rotated-model"; }
  fs::path rotation_record_path() const { return rotated_model_dir() / "qforge-rotation.json"; }
  fs::path units_dir() const { return root_ / "units"; }
  fs::path cache_dir() const { return root_ / "cache"; }
  fs::path unit_shard(int unit) const { return units_dir() / unit_shard_name(unit); }

  static std::string unit_shard_name(int unit);
  // Mid-unit checkpoint of `unit` written by assignment `attempt` (one per attempt: a checkpoint a later
  // attempt resumes from is never overwritten).
  static std::string checkpoint_name(int unit, std::int64_t attempt);
  // Slice file of `stream` ("fp"|"q") at `boundary`, written by team rank `part` of assignment `attempt`.
  static std::string cache_file_name(int boundary, const std::string& stream, std::int64_t attempt, int part);

  // The names above read back; nullopt for any other name. `temporary`: the name is a writer's
  // temporary of such a file (a crashed writer's leftover unless its writer is still running).
  struct UnitFile {
    int unit = 0;
    std::int64_t attempt = -1;  // checkpoints only
    bool temporary = false;
  };
  struct CacheFile {
    int boundary = 0;
    std::string stream;
    std::int64_t attempt = 0;
    int part = 0;
    bool temporary = false;
  };
  static std::optional<UnitFile> parse_unit_shard(const std::string& name);
  static std::optional<UnitFile> parse_checkpoint(const std::string& name);
  static std::optional<CacheFile> parse_cache_file(const std::string& name);

 private:
  fs::path root_;
};

// Digest of a model folder that is cheap for any size: config.json's bytes and, per safetensors file
// (sorted by name), its name, size and JSON header. Weights rewritten in place with the same shapes
// would not be noticed; every other change of model is.
std::string model_fingerprint(const fs::path& model_dir);

// sha256 of the canonical (sorted-key, compact) JSON text.
std::string json_fingerprint(const nlohmann::json& j);

// Creates the job directory with `spec` ({"identity": {...}, ...}; "fingerprint" is added here) or,
// when it already holds a job.json, checks that the identity matches: a different job is refused with
// InputError naming job.json and the first differing field (old and new value). Returns the spec
// stored on disk (which keeps the first run's pinned settings).
nlohmann::json create_or_check_job_spec(const JobLayout& dir, nlohmann::json spec);

}  // namespace qforge::storage
