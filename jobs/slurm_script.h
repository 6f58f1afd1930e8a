// The sbatch script of `qforge submit`, rendered from slurm/qforge-quantize.sbatch.in (embedded into the
// executable at build time). Pure: no I/O, so the golden tests render it with fixed inputs.
//
// What the script does (details in the template's own comments): #SBATCH lines for the resources,
// `--signal=B:USR1@S` and requeue; the job step `srun --mpi=M --kill-on-bad-exit=1 qforge quantize
// --job-dir D ...` runs in the background; USR1 and TERM are trapped and forwarded to srun (which passes
// them to every rank); the shell waits until the step is gone; exit 0 ends the job, kScriptExitStopped
// (qforge stopped at a checkpoint) requeues the job when it requeues itself and the signal was USR1,
// otherwise that status is the job's.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"

namespace qforge::jobs {

// qforge's exit code for "stopped at a checkpoint because of a signal; rerunning resumes"; the script
// branches on it (@EXIT_STOPPED@).
constexpr int kScriptExitStopped = kExitStopped;

// One setting of a --sweep, "w<bits>a<bits>[g<group>]".
struct SweepSetting {
  std::string name;              // as written, e.g. "w4a16g128": also the task's job dir and out subfolder
  int wbits = 4;
  int abits = 16;
  std::int64_t group_size = 0;   // 0: no g part (per output channel)
};

struct SubmitOptions {
  std::string job_dir;                     // absolute; for sweeps the parent of the per-setting job dirs
  std::string job_name;
  int nodes = 1;
  int ntasks_per_node = 1;                 // ranks per node (= gpus_per_node for GPU jobs)
  int gpus_per_node = 0;                   // 0: a CPU job
  int cpus_per_task = 0;                   // 0: not requested, and no thread setting
  std::string time, partition, account;    // empty: not set
  std::vector<std::string> sbatch_args;    // extra #SBATCH lines, one sbatch argument each
  int signal_seconds = 300;
  bool requeue = true;                     // false: --no-requeue
  int chain_index = 0;                     // this script's place (0-based) in a chain of chain_length jobs
  int chain_length = 1;
  std::vector<SweepSetting> sweep;         // non-empty: one job array with a task per setting
  std::string sweep_out;                   // sweeps: tasks write <sweep_out>/<setting>
  std::string mpi = "pmix";
  std::string qforge;                      // the executable as the compute nodes see it
  std::vector<std::string> quantize_args;  // given after --job-dir (sweeps: without --out and bit flags)

  // Requeue on and not a chain: a job that qforge stopped at a checkpoint requeues itself (a chain's
  // next job resumes instead).
  bool self_requeue() const { return requeue && chain_length == 1; }
};

// The whole script for one job (one member of a chain, or the job array of a sweep).
std::string render_sbatch(const SubmitOptions& options);

// Replaces every @NAME@ (NAME of A-Z, 0-9, _) with values[NAME]; a line that is only a placeholder
// with an empty value is dropped. Other '@' are kept. InternalError for a name without a value.
std::string render_template(const std::string& text, const std::map<std::string, std::string>& values);

// The embedded slurm/qforge-quantize.sbatch.in.
const std::string& sbatch_template();

// One shell word: bare when it holds only [A-Za-z0-9_./:=,+@%-] (and is not empty), otherwise in single
// quotes with each ' written as '\''.
std::string shell_quote(const std::string& word);

// One argument of an #SBATCH line as sbatch's own parser reads it: bare when safe, otherwise in double
// quotes with ", \ and # backslash-escaped. InputError naming `flag` for a newline (no way to write it).
std::string sbatch_quote(const std::string& value, const std::string& flag);

// "w4a16g128,w2a16g64,w4a4" -> settings; InputError("--sweep") on an empty or malformed item, bits
// out of range (weights 2..8, activations 4..16), a zero group, or a duplicate.
std::vector<SweepSetting> parse_sweep(const std::string& list);

// The job id in `sbatch --parsable` output ("123" or "123;cluster"); InputError naming sbatch otherwise.
std::string parse_sbatch_job_id(const std::string& output);

}  // namespace qforge::jobs
