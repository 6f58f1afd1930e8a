// The worker loop of the distributed engine (every rank runs one; rank 0's shares its process with the
// coordinator thread). It implements the worker side of common/protocol.h:
//
//   HELLO -> { wait for ASSIGN -> run the task -> DONE | FAILED } until SHUTDOWN
//
// while a heartbeat thread reports every heartbeat interval, whatever the compute thread is doing.
// A unit task: read this rank's rows of the unit's input streams (embeddings at boundary 0, else the
// HDF5 cache), calibrate with the team (data-parallel: every optimiser step's global batch split over
// the team, gradients all-reduced), cache the next boundary's streams (sequential mode), and, on the
// team leader, write the unit's result shard atomically. A unit of several blocks (MRECG joint unit)
// is trained as one (worker/calibrator.h); only its input and output boundaries touch the cache. An
// FP-pass task forwards the FP model over this rank's samples and caches the FP stream at every block
// boundary (independent mode: all samples; MRECG probes: the probe samples). A probe task measures the
// module capacity of its blocks on that FP stream and reports each block as soon as it is measured.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/transport.h"
#include "storage/activation_cache.h"
#include "storage/job_layout.h"
#include "worker/calibrator.h"

namespace qforge::worker {

// Identical on every rank (all ranks parse the same command line and job spec), except `device`.
struct EngineSettings {
  std::filesystem::path model;
  storage::JobLayout job;
  std::string model_fingerprint, job_fingerprint;
  bool sequential = true;
  int team_size = 1;
  std::int64_t samples = 0, seqlen = 0, batch_size = 1;
  storage::CacheDType cache_dtype = storage::CacheDType::kF32;
  bool needs_data = true;                              // false for RTN: weights only, no activations
  int blocks = 0;                                      // decoder blocks of the model
  int probe_epochs = 0;                                // MRECG probes: epochs (0 = initialisation only)
  std::vector<CalibOptions> block_options;             // per block
  double heartbeat_interval_s = 5;
  double collective_timeout_s = 120;                   // longer than the coordinator's heartbeat timeout
  at::Device device = at::kCPU;                        // this rank's compute device (from its local rank)
};

enum class WorkerExit {
  kOk,        // SHUTDOWN after a complete job
  kFailed,    // the job stopped (a unit failed); MPI can be finalized normally
  kStopped,   // a stop signal ended the job at a checkpoint (exit kExitStopped); MPI can be finalized
  kAborting,  // rank 0 is about to MPI_Abort the job (a peer is lost): do not finalize, wait to be ended
};
// Runs until SHUTDOWN. `control` is this rank's endpoint of the job's control transport (rank 0: the
// coordinator); `team` of its team's.
WorkerExit run_worker(const EngineSettings& settings, const Transport& control, const Transport& team);

// The tensors of block `block` of a calibration result as they are named in a checkpoint: the folded
// fake-quant weights, norms and biases, then per linear "<name>.codes" U8, ".scales" F16, ".zeros" I32.
std::vector<std::pair<std::string, at::Tensor>> block_result_tensors(int block, const BlockResult& r);

}  // namespace qforge::worker
