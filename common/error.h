// Error types shared by every qforge library.
//
// Exceptions inside, exit codes at the boundary: library code throws one of these, and jobs/main.cpp
// turns them into one line on stderr plus an exit code (2 = bad input, 1 = internal failure).
// InputError messages name the file and the field, because that is what a user needs to fix input.
#pragma once

#include <stdexcept>
#include <string>

namespace qforge {

// 3: a worker rank stopped responding (the journal records which; resume with the same command).
// kExitStopped: a stop signal (Slurm's time-limit warning, preemption) ended the job at a checkpoint;
// rerunning the same command resumes it. The sbatch template requeues on it.
enum ExitCode : int { kExitOk = 0, kExitInternal = 1, kExitBadInput = 2, kExitWorkerLost = 3, kExitStopped = 4 };

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  virtual int exit_code() const { return kExitInternal; }
};

// Something the user gave us is wrong (file, flag, config field, data). Exit code 2.
class InputError : public Error {
 public:
  explicit InputError(const std::string& msg) : Error(msg) {}
  // "<where>: <field>: <what>", e.g. "model/config.json: num_key_value_heads: must divide ...".
  InputError(const std::string& where, const std::string& field, const std::string& what);
  int exit_code() const override { return kExitBadInput; }
};

// A file qforge wrote for itself (a job's cache slice, checkpoint or unit shard) is missing or fails its
// checksum or digest. Bad input as far as this run goes, but the job can recompute the file: the
// coordinator drops it with the journal record that made it (storage/FORMAT.md, file_damaged).
class DamagedFileError : public InputError {
 public:
  DamagedFileError(std::string path, const std::string& what) : InputError(what), path_(std::move(path)) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A bug or an environment failure (I/O error on a good file, out of memory, ...). Exit code 1.
class InternalError : public Error {
 public:
  using Error::Error;
};

// Throws InternalError with file:line when a condition that must hold does not.
[[noreturn]] void throw_check_failure(const char* cond, const char* file, int line, const std::string& msg);

}  // namespace qforge

#define QF_CHECK(cond, msg)                                                  \
  do {                                                                       \
    if (!(cond)) ::qforge::throw_check_failure(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
