// The coordinator <-> worker protocol. Written down once, here; coordinator/coordinator.cpp and
// worker/engine_worker.cpp implement the two sides, over a common/transport.h Transport (MPI in a
// job, threads of one process in tests).
//
// Messages to the coordinator (rank 0) carry tag kTagToCoordinator, messages to a worker
// kTagToWorker, so rank 0's coordinator thread and its own worker never take each other's messages.
// A payload is one JSON object {"v": kVersion, "type": "...", ...}; a message of another version is
// refused (a rank started from a different qforge build) rather than misread, and so is a message with
// a missing or mistyped field. tests/unit/test_protocol.cpp holds a hand-written example of each.
//
//   1. worker -> coord  HELLO{rank, host, device, memory_bytes, threads}      once, at start
//   2. coord -> worker  ASSIGN{id, ranks, work}                               when the worker's team is idle
//        `id` is unique within the job (journaled as the record's "attempt") and names the cache files
//        the assignment writes; `ranks` are the ranks taking part (a unit's team, in team-rank order).
//        work "fp_pass": forward the FP model over `samples`, caching the FP stream at every block boundary
//        work "probe":   MRECG module capacity of each of `blocks` on the FP stream of `samples`; one DONE
//                        per block (probed_block), durable one by one
//        work "unit":    calibrate unit `unit` = blocks [first_block, first_block + num_blocks) with the team
//   3. worker -> coord  HEARTBEAT{rank, assignment, phase}   from the worker's heartbeat thread, every
//                                                            heartbeat interval, whatever the compute thread
//                                                            does (assignment 0: idle)
//   4. worker -> coord  DONE{rank, assignment, ...}   or   FAILED{rank, assignment, reason, exit_code}   per ASSIGN
//   5. coord -> all     SHUTDOWN{ok, reason, abort, exit_code}   after assembly, or when the job must stop
//
// Stopping resumably (a stop signal: common/signals.h): coord -> team CHECKPOINT{assignment}; the
// team agrees on the step to stop after (a vote inside the step's all-reduce), the leader writes the
// unit's training state, and every member answers DONE{stopped: true}, the leader's with `checkpoint`.
// A later assignment of that unit carries resume_from, and training continues bit for bit.
//
// The coordinator journals a unit as done only when every team member's DONE has arrived (each member
// has written its cache slice; the team leader also the unit's result shard). A rank silent for longer
// than the heartbeat timeout is reported by rank, assignment and last phase, the journal records why,
// and the job ends.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace qforge::protocol {

constexpr int kVersion = 5;
constexpr int kTagToCoordinator = 101;
constexpr int kTagToWorker = 102;

struct Hello {
  int rank = 0;
  std::string host;
  std::string device;  // "cpu" or "cuda:N"
  std::uint64_t memory_bytes = 0;
  int threads = 1;
};

// The FP pass: this rank's share of the samples whose FP stream is cached at every block boundary.
struct FpPassWork {
  std::vector<std::int64_t> samples;
};

// MRECG probes: this rank's blocks, on the FP stream of `samples` (read from `x_fp_files`, the FP-pass
// files of those blocks' input boundaries; block 0 reads the embeddings).
struct ProbeWork {
  std::vector<int> blocks;
  std::vector<std::int64_t> samples;
  std::vector<std::string> x_fp_files;
};

// One unit: blocks [first_block, first_block + num_blocks), fed by the streams at boundary first_block.
struct UnitWork {
  int unit = 0;
  int first_block = 0, num_blocks = 1;
  std::vector<std::string> x_fp_files;   // cache files of the input boundary (empty at boundary 0: embeddings)
  std::vector<std::string> x_q_files;    // the quantized stream's (= x_fp_files in independent mode)
  bool write_next = false;               // sequential mode: cache the next boundary's fp and q streams
  bool last_unit = false;                // sequential mode: also report the NLL of the calibration windows
  std::string resume_from;               // checkpoint file (under units/) to continue from, if any
  std::string resume_digest;             // its sha256 as journaled
};

using Work = std::variant<FpPassWork, ProbeWork, UnitWork>;

struct Assign {
  std::int64_t id = 0;
  std::vector<int> ranks;
  Work work;
};

struct Heartbeat {
  int rank = 0;
  std::int64_t assignment = 0;  // 0: idle
  std::string phase;            // idle | fp_pass | probe | load | read | train | write | shard | checkpoint
};

// A file under the job's units/ folder and its sha256.
struct UnitFile {
  std::string name;
  std::string sha256;
};

struct Done {
  int rank = 0;
  std::int64_t assignment = 0;
  std::optional<int> probed_block;       // probe: the block this DONE reports
  std::int64_t samples = 0;              // calibration rows this rank processed
  std::vector<std::string> cache_files;  // cache files written (names under cache/)
  std::optional<UnitFile> shard;         // unit, team leader: the result shard
  bool stopped = false;                  // unit: stopped at a checkpoint (every member says so)
  std::optional<UnitFile> checkpoint;    // stopped unit, team leader: the training state written
  nlohmann::json report;                 // probe: the measurement; unit leader: losses etc.; stopped: epoch, step
  std::uint64_t peak_rss = 0;
  std::uint64_t baseline_rss = 0;        // RSS before the worker loaded anything
  std::uint64_t cache_bytes_written = 0, cache_bytes_read = 0;
  double seconds = 0;
};

struct Failed {
  int rank = 0;
  std::int64_t assignment = 0;
  std::string reason;
  int exit_code = 1;  // what the job exits with: 2 (kExitBadInput) when the input is at fault, else 1
  // A job file the work read is missing or fails its digest/checksum (a name under the job's units/ or
  // cache/): the coordinator drops it with its journal effect and has it recomputed.
  std::optional<std::string> damaged_file;
};

struct Shutdown {
  bool ok = true;
  std::string reason;
  // Rank 0 will abort the job (a peer is lost: MPI_Finalize would wait on it). Workers then must not
  // enter MPI_Finalize themselves, or they race the abort; they wait to be ended.
  bool abort = false;
  int exit_code = 0;  // what a worker rank exits with (e.g. kExitStopped after a stop signal)
};

struct Checkpoint {
  std::int64_t assignment = 0;
};

using Message = std::variant<Hello, Assign, Heartbeat, Done, Failed, Shutdown, Checkpoint>;

std::string encode(const Message& m);
// InternalError naming the sender for bytes that are not a complete message of this version.
Message decode(const std::string& bytes, int from_rank);
// "hello", "assign", ... (the "type" of the encoding).
const char* type_name(const Message& m);
// "fp_pass", "probe" or "unit".
const char* kind_name(const Work& w);

}  // namespace qforge::protocol
