// The exclusive claim of one run on a job directory, for the run's life: two `quantize` runs on one job
// directory would interleave their journals and delete each other's cache files.
//
// Where the filesystem has working advisory locks, the claim is flock(LOCK_EX) on JobLayout::lock_path(), released
// by the kernel whenever the process ends (even kill -9). Where it has none (flock fails with ENOLCK or
// EOPNOTSUPP: some NFS and Lustre mounts), the claim is a lease: the same file holds the holder's host,
// pid and a heartbeat time that a thread renews every stale_after/4 seconds; another run may take the
// lease over only once the heartbeat is older than stale_after. Either way the file names the holder,
// and a refused run is told who holds it (InputError naming --job-dir, exit 2).
#pragma once

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

#include "storage/job_layout.h"

namespace qforge::storage {

class JobLock {
 public:
  enum class Mode { kAuto, kFlock, kLease };  // kAuto: flock, the lease where flock is unsupported
  struct Options {
    Mode mode = Mode::kAuto;
    double stale_after_s = 600;
  };
  // Creates the job directory if needed and claims it, or throws InputError("--job-dir") naming the
  // holder. QFORGE_JOB_LOCK=lease in the environment forces the lease (for filesystems whose flock only
  // pretends, and for tests).
  explicit JobLock(const JobLayout& job);
  JobLock(const JobLayout& job, Options options);
  ~JobLock();
  JobLock(const JobLock&) = delete;
  JobLock& operator=(const JobLock&) = delete;
  bool is_lease() const { return lease_; }

 private:
  bool try_flock();
  void take_lease();
  void renew_lease();
  std::string holder_text() const;

  fs::path path_;
  Options options_;
  int fd_ = -1;
  bool lease_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread renewer_;
};

}  // namespace qforge::storage
