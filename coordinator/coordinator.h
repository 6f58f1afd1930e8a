// The coordinator: a thread on rank 0 that owns the journal and drives the job. It implements the
// coordinator side of common/protocol.h. The loop (Coordinator::run):
//
//   journal job_start; wait for every rank's HELLO
//   repeat until every unit is journaled done:
//     (MRECG: once every block is probed, select the joint units and journal them: select_units)
//     handle messages: HEARTBEAT (liveness), DONE (a unit is journaled done once all of its team's
//       DONEs are in, then its dead cache files are removed), FAILED (journaled; the job stops)
//     stall check: a rank silent for longer than the heartbeat timeout is reported by rank and unit,
//       journaled as worker_lost, and the job stops
//     schedule(): pure policy (job_state.h) -> ASSIGN to idle teams, journaled as unit_assigned
//   assemble the output folder (callback), journal job_complete, SHUTDOWN every rank
//
// Mechanism only: what runs when is decided by schedule(), what the output looks like by the
// assembly callback.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/signals.h"
#include "common/transport.h"
#include "coordinator/job_state.h"
#include "storage/job_layout.h"
#include "storage/journal.h"

namespace qforge::coordinator {

struct CoordinatorSettings {
  storage::JobLayout job;
  int ranks = 1;
  int team_size = 1;          // teams = ranks / team_size; team t = ranks [t·K, (t+1)·K)
  bool needs_data = true;
  double heartbeat_timeout_s = 60;
  bool keep_cache = false;    // keep dead cache files (debugging, benchmarks)
  // Asked every loop turn: a stop signal to act on (checkpoint, then stop resumably), or 0.
  std::function<int()> stop_signal = qforge::stop_signal;
};

struct CoordinatorOutcome {
  int exit_code = 0;          // 0 ok; kExitInternal for a failed unit; kExitWorkerLost for a silent rank
  bool must_abort = false;    // a rank is lost or mid-collective: MPI_Finalize could wait forever; MPI_Abort
  std::string message;
};

class Coordinator {
 public:
  using Assemble = std::function<void(const JobState&)>;
  // `state` is the journal replayed; `journal` is open for appending. `assemble` writes the output.
  // `control` is rank 0's endpoint of the job's control transport.
  Coordinator(CoordinatorSettings settings, const Transport& control, storage::Journal& journal, JobState state,
              Assemble assemble);
  ~Coordinator();
  CoordinatorOutcome run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qforge::coordinator
