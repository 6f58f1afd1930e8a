// What Slurm says about a job qforge submitted, for `qforge status`: `scontrol show job` while the
// controller still knows the job (running, pending, or finished within MinJobAge), else `sacct`
// (needs accounting storage), else nothing. No Slurm command runs unless a Slurm configuration
// exists (SLURM_CONF or /etc/slurm/slurm.conf): a client without one looks its controller up in DNS.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace qforge::jobs {

// {"job_id", "state" (e.g. RUNNING, PENDING, COMPLETED, or "unknown"), "restarts", "exit_code",
//  "reason", "source": "scontrol" | "sacct" | "none", "note"}.
nlohmann::json query_slurm_job(const std::string& job_id);

// True when a Slurm client may run here without a DNS lookup.
bool slurm_configured();

}  // namespace qforge::jobs
