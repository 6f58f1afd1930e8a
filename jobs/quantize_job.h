// The quantize job: one code path for one process and for `mpirun -np N`.
//
// Every rank parses the same command line. Rank 0 prepares the job directory (storage/job_layout.h:
// spec and fingerprint check, calibration windows, plan, job id), every rank checks it sees the same
// job id (shared filesystem), teams are formed, rank 0 starts the coordinator thread
// (coordinator/coordinator.h) and every rank, rank 0 included, runs the worker loop
// (worker/engine_worker.h) until SHUTDOWN. The coordinator assembles the output folder
// (coordinator/assembly.h). A job directory that holds a matching journal is resumed: finished units
// are never re-run.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "jobs/calib_data.h"
#include "partition/plan.h"
#include "storage/activation_cache.h"
#include "storage/hf_config.h"
#include "storage/quant_config.h"
#include "worker/gptq.h"
#include "worker/hadamard.h"
#include "worker/precision.h"
#include "worker/recipes.h"

namespace qforge::jobs {

namespace fs = std::filesystem;

struct QuantizeSpec {
  fs::path model;
  storage::LlamaConfig model_config;  // the model's config.json, read once when the spec is parsed
  fs::path out;
  worker::Method method = worker::Method::kRtn;
  worker::GptqOptions gptq;          // --rounding gptq, --gptq-damp, --act-order
  worker::RotationKind rotate = worker::RotationKind::kNone;  // --rotate: R1/R2 folded before calibration
  std::uint64_t rotate_seed = 0;
  int wbits = 4;
  int abits = 16;
  std::int64_t group_size = 0;
  bool sym = false;
  bool act_sym = false;
  bool faithful = false;
  std::map<int, storage::BitsOverride> overrides;
  CalibDataSpec calib;
  fs::path tokenizer;
  worker::Recipe recipe;
  std::int64_t batch_size = 1;
  bool fp64_matrices = false;
  worker::ComputePrecision compute = worker::ComputePrecision::kFp32;  // --compute-dtype
  std::uint64_t shard_bytes = 0;
  // Engine
  fs::path job_dir;                  // empty: <out>/.qforge-job, removed after success
  partition::EngineMode mode = partition::EngineMode::kSequential;
  int team_size = 0;                 // 0: all ranks (sequential) or 1 (independent)
  storage::CacheDType cache_dtype = storage::CacheDType::kF32;
  double heartbeat_timeout_s = 60;
  bool keep_cache = false;
  bool dry_run = false;
  int threads = 0;                   // --threads as given (0: pinned value of the job, else default)
  std::string device = "auto";       // cpu | cuda | cuda:N | auto (each rank: its local rank's GPU, else the CPU)
  std::string export_format;         // after success: also export (gptq | compressed-tensors | fake-quant)
  fs::path export_out;               // default <out>-<format>
  // MRECG joint reconstruction (algorithms.md §4.6)
  int joint_topk = -1;               // -1: max(1, round(blocks / 8)); 0: block-wise (no probes)
  int joint_max_blocks = 3;
  std::string modcap = "probe";      // probe (data-dependent) | data-free (parameters x bits)
  int probe_epochs = 0;              // 0: initialisation + forward only
  std::int64_t probe_samples = 16;   // the first N calibration sequences
};

// Whether the job reads calibration data: every method but plain RTN (GPTQ rounding needs inputs too).
bool needs_data(const QuantizeSpec& spec);
// How logs, reports and summaries name the method: "gptq" for RTN's grid with GPTQ rounding, the
// method with "+gptq" when a learned method's codes come from GPTQ.
std::string method_label(const QuantizeSpec& spec);

// Runs the whole job (or prints the plan with dry_run); throws InputError for bad input, InternalError
// for failures. Returns the exit code (non-zero when the job stopped; the reason is already logged).
// Every check that can be made before compute (the preflight: options against the model, the plan,
// batch against team, paths writable, export compatibility) runs before anything is written.
int run_quantize_job(const QuantizeSpec& spec);

// The preflight for `ranks` ranks, writing nothing; returns the block plan (memory per rank, cache disk)
// built from config.json and the safetensors headers only. `qforge submit` runs it before queueing.
partition::Plan quantize_preflight(const QuantizeSpec& spec, int ranks);

}  // namespace qforge::jobs
