// The coordinator <-> worker protocol. Written down once, here; coordinator/coordinator.cpp and
// worker/engine_worker.cpp implement the two sides.
//
// Transport: the control communicator (MpiComm, MPI_ERRORS_RETURN). Messages to the coordinator
// (rank 0) carry tag kTagToCoordinator, messages to a worker kTagToWorker, so rank 0's coordinator
// thread and its own worker never take each other's messages. A payload is one JSON object
// {"v": kVersion, "type": "...", ...}; a message with another version is refused (a rank started from
// a different qforge build) rather than misread.
//
//   1. worker -> coord  HELLO{rank, host, device, memory_bytes, threads}        once, at start
//   2. coord -> worker  ASSIGN{task}                                            when the worker's team is idle
//        task "fp_pass": forward the FP model over `samples`, caching the FP stream at every block boundary
//        task "probe":   MRECG module capacity of each of `blocks` on the FP stream of `samples`; one DONE
//                        per block (task.unit = the block, report = the probe), durable one by one
//        task "unit":    calibrate unit `unit` = blocks [first_block, first_block + num_blocks) (attempt
//                        `attempt`) with the team `team_ranks`
//   3. worker -> coord  HEARTBEAT{rank, unit, phase}      from the worker's heartbeat thread, every
//                                                         heartbeat interval, whatever the compute thread does
//   4. worker -> coord  DONE{rank, task, samples, files, shard, digest, report, peak_rss, bytes}
//                   or  FAILED{rank, task, reason}        once per ASSIGN
//   5. coord -> all     SHUTDOWN{ok, reason, abort, exit_code}   after assembly, or when the job must stop
//
// Stopping resumably (a stop signal: common/signals.h): coord -> team CHECKPOINT{unit, attempt}; the
// team agrees on the step to stop after (a vote inside the step's all-reduce), the leader writes the
// unit's training state, and every member answers DONE{stopped: true, shard: the checkpoint file}.
// A later ASSIGN of that unit carries resume_from, and training continues bit for bit.
//
// The coordinator journals a unit as done only when every team member's DONE has arrived (each member
// has written its cache slice; the team leader also the unit's result shard). A rank silent for longer
// than the heartbeat timeout is reported by rank and unit, the journal records why, and the job ends.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qforge::protocol {

constexpr int kVersion = 3;
constexpr int kTagToCoordinator = 101;
constexpr int kTagToWorker = 102;

struct Hello {
  int rank = 0;
  std::string host;
  std::string device;  // "cpu" or "cuda:N"
  std::uint64_t memory_bytes = 0;
  int threads = 1;
};

struct Task {
  std::string kind;                      // "unit" | "fp_pass" | "probe"
  int unit = -1;
  int first_block = 0, num_blocks = 1;   // unit: its blocks
  std::vector<int> blocks;               // probe: blocks this rank probes
  std::string resume_from;               // unit: checkpoint file (under units/) to continue from, if any
  std::string resume_digest;             // its sha256 as journaled
  std::int64_t attempt = 0;              // unique per assignment; names the cache files it writes
  std::vector<int> team_ranks;           // world ranks of the team, team rank = index
  std::vector<std::int64_t> samples;     // fp_pass: sample ids this rank forwards; probe: the probe samples
  int input_boundary = 0;                // unit: boundary (= first block) whose streams feed the unit
  std::vector<std::string> x_fp_files;   // cache files of that boundary (empty for boundary 0: embeddings)
  std::vector<std::string> x_q_files;
  bool write_next = false;               // sequential mode: cache the next boundary's fp and q streams
  bool last_unit = false;                // sequential mode: also report the NLL of the calibration windows
};

struct Heartbeat {
  int rank = 0;
  int unit = -1;
  std::string phase;
};

struct Done {
  int rank = 0;
  Task task;
  std::int64_t samples = 0;              // calibration rows this rank processed
  std::vector<std::string> files;        // cache files written (relative to the cache directory)
  std::string shard;                     // team leader: result shard file name (relative to units/)
  std::string digest;                    // sha256 of the shard
  nlohmann::json report;                 // team leader: losses etc.
  std::uint64_t peak_rss = 0;
  std::uint64_t baseline_rss = 0;        // RSS before the worker loaded anything
  std::uint64_t cache_bytes_written = 0, cache_bytes_read = 0;
  double seconds = 0;
  bool stopped = false;                  // unit: stopped at a checkpoint (shard/digest name the checkpoint file)
};

struct Failed {
  int rank = 0;
  Task task;
  std::string reason;
};

struct Shutdown {
  bool ok = true;
  std::string reason;
  // Rank 0 will MPI_Abort the job (a peer is lost: MPI_Finalize would wait on it forever). Workers then
  // must not enter MPI_Finalize themselves, or they race the abort; they wait to be ended.
  bool abort = false;
  int exit_code = 0;  // what a worker rank exits with (e.g. kExitStopped after a stop signal)
};

struct Checkpoint {
  int unit = -1;
  std::int64_t attempt = 0;
};

nlohmann::json to_json(const Task& t);
Task task_from_json(const nlohmann::json& j);

std::string encode(const Hello& m);
std::string encode(const Task& m);
std::string encode(const Heartbeat& m);
std::string encode(const Done& m);
std::string encode(const Failed& m);
std::string encode(const Shutdown& m);
std::string encode(const Checkpoint& m);

// A decoded message: `type` is one of "hello", "assign", "heartbeat", "done", "failed", "shutdown",
// "checkpoint".
struct Message {
  std::string type;
  nlohmann::json body;
};
// InternalError naming the sender for bytes that are not a message of this version.
Message decode(const std::string& bytes, int from_rank);

Hello hello_from(const Message& m);
Task task_from(const Message& m);
Heartbeat heartbeat_from(const Message& m);
Done done_from(const Message& m);
Failed failed_from(const Message& m);
Shutdown shutdown_from(const Message& m);
Checkpoint checkpoint_from(const Message& m);

}  // namespace qforge::protocol
