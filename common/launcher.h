// Which launcher started this process, and this rank's place on its node, from the environment.
//
//   mpirun (Open MPI): OMPI_COMM_WORLD_SIZE/RANK/LOCAL_RANK/LOCAL_SIZE, set by mpirun's daemons only
//   srun:              SLURM_STEP_ID with SLURM_PROCID/NPROCS/LOCALID (a job step; pmix for Open MPI)
//   alone:             neither (a plain shell, or a batch script outside any step)
//
// mpirun is checked first: started by mpirun inside a Slurm allocation, a process still sees
// SLURM_JOB_ID (and, from the batch script's step, SLURM_STEP_ID), but its ranks are mpirun's.
// Pure: the environment is passed in, so tests can give any.
#pragma once

#include <functional>
#include <string>

namespace qforge {

enum class LauncherKind { kAlone, kMpirun, kSrun };

struct LauncherInfo {
  LauncherKind kind = LauncherKind::kAlone;
  int rank = 0, size = 1;              // as the launcher numbers them
  int local_rank = 0, local_size = 1;  // on this node
  std::string slurm_job_id;            // set whenever inside a Slurm allocation, whatever the launcher
};

using EnvLookup = std::function<const char*(const char*)>;

LauncherInfo detect_launcher(const EnvLookup& env);
LauncherInfo detect_launcher();  // from the process environment
const char* launcher_name(LauncherKind kind);

// The device index of this rank: local rank modulo the visible devices (0 devices: -1, i.e. CPU).
int device_for_local_rank(int local_rank, int visible_devices);

}  // namespace qforge
