#include "common/launcher.h"

#include <cstdlib>

#include "common/error.h"

namespace qforge {

namespace {

int env_int(const EnvLookup& env, const char* name, int fallback) {
  const char* v = env(name);
  if (!v || !*v) return fallback;
  try {
    return std::stoi(v);
  } catch (const std::exception&) {
    throw InputError(name, "", std::string("environment variable is not an integer: '") + v + "'");
  }
}

}  // namespace

LauncherInfo detect_launcher(const EnvLookup& env) {
  LauncherInfo info;
  if (const char* job = env("SLURM_JOB_ID")) info.slurm_job_id = job;
  if (env("OMPI_COMM_WORLD_SIZE")) {
    info.kind = LauncherKind::kMpirun;
    info.size = env_int(env, "OMPI_COMM_WORLD_SIZE", 1);
    info.rank = env_int(env, "OMPI_COMM_WORLD_RANK", 0);
    info.local_rank = env_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0);
    info.local_size = env_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (env("SLURM_STEP_ID") && env("SLURM_PROCID")) {
    info.kind = LauncherKind::kSrun;
    info.size = env_int(env, "SLURM_NPROCS", env_int(env, "SLURM_NTASKS", 1));
    info.rank = env_int(env, "SLURM_PROCID", 0);
    info.local_rank = env_int(env, "SLURM_LOCALID", 0);
    // SLURM_TASKS_PER_NODE may read "2(x3)"; the leading count is this node's for homogeneous steps.
    info.local_size = env_int(env, "SLURM_NTASKS_PER_NODE", 0);
    if (info.local_size == 0) {
      const char* tpn = env("SLURM_TASKS_PER_NODE");
      info.local_size = tpn ? std::atoi(tpn) : 1;
    }
    if (info.local_size < 1) info.local_size = 1;
  }
  return info;
}

LauncherInfo detect_launcher() {
  return detect_launcher([](const char* name) -> const char* { return std::getenv(name); });
}

const char* launcher_name(LauncherKind kind) {
  switch (kind) {
    case LauncherKind::kMpirun: return "mpirun";
    case LauncherKind::kSrun: return "srun";
    case LauncherKind::kAlone: break;
  }
  return "alone";
}

int device_for_local_rank(int local_rank, int visible_devices) {
  return visible_devices <= 0 ? -1 : local_rank % visible_devices;
}

}  // namespace qforge
