// The job directory: everything a run needs to resume (layout in storage/FORMAT.md).
//
//   job.json          the job spec: identity (model/data/config fingerprints, mode, team size, qforge
//                     version) and its fingerprint; pinned settings (compute threads)
//   job_id            a fresh random id per start, read back by every rank (shared-filesystem check)
//   plan.json         the plan of work units (partition/plan.h)
//   calibration.tok   the calibration windows (QFTOKENS), fixed at the first start
//   journal.log       append-only, fsync'd record of progress (storage/journal.h)
//   units/unit-NNNNN.safetensors   one result shard per finished unit (weights + codes/scales/zeros)
//   cache/bBBBB-<stream>-aAAAAAA-tT.h5   HDF5 activation slices (storage/activation_cache.h)
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace qforge::storage {

namespace fs = std::filesystem;

class JobDir {
 public:
  JobDir() = default;
  explicit JobDir(fs::path root) : root_(std::move(root)) {}
  const fs::path& root() const { return root_; }
  fs::path spec_path() const { return root_ / "job.json"; }
  fs::path job_id_path() const { return root_ / "job_id"; }
  fs::path plan_path() const { return root_ / "plan.json"; }
  fs::path calibration_path() const { return root_ / "calibration.tok"; }
  fs::path journal_path() const { return root_ / "journal.log"; }
  fs::path units_dir() const { return root_ / "units"; }
  fs::path cache_dir() const { return root_ / "cache"; }
  fs::path unit_shard(int unit) const { return units_dir() / unit_shard_name(unit); }

  static std::string unit_shard_name(int unit);
  // Slice file of `stream` ("fp"|"q") at `boundary`, written by team rank `part` of assignment `attempt`.
  static std::string cache_file_name(int boundary, const std::string& stream, std::int64_t attempt, int part);

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
nlohmann::json create_or_check_job_spec(const JobDir& dir, nlohmann::json spec);

}  // namespace qforge::storage
