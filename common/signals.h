// Stop requests from a batch system. Slurm warns a job before its time limit with the signal the
// batch script asked for (qforge's sbatch template: --signal=B:USR1@<seconds>, forwarded to the job
// step) and preempts or cancels with SIGTERM (then SIGKILL after KillWait). Either asks the job to
// stop resumably: the coordinator checkpoints the units in flight, journals that, and every rank
// exits with kExitStopped, so a requeued or chained job continues where this one stopped.
#pragma once

namespace qforge {

// Installs async-signal-safe handlers for SIGUSR1 and SIGTERM that only record the signal. Idempotent.
void install_stop_signal_handlers();
// The first stop signal received (SIGUSR1 or SIGTERM), or 0.
int stop_signal();

}  // namespace qforge
