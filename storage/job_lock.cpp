#include "storage/job_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/sysinfo.h"

namespace qforge::storage {

using nlohmann::json;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json holder_record() { return {{"host", host_name()}, {"pid", static_cast<long>(getpid())}, {"heartbeat", now_s()}}; }

std::string describe(const json& h) {
  return "qforge pid " + std::to_string(h.value("pid", 0L)) + " on " + h.value("host", std::string("?"));
}

}  // namespace

JobLock::JobLock(const JobLayout& job) : JobLock(job, Options{}) {}

JobLock::JobLock(const JobLayout& job, Options options) : path_(job.lock_path()), options_(options) {
  fs::create_directories(job.root());
  if (const char* env = std::getenv("QFORGE_JOB_LOCK"); env && std::string(env) == "lease") options_.mode = Mode::kLease;
  if (options_.mode != Mode::kLease && try_flock()) return;
  take_lease();
}

JobLock::~JobLock() {
  if (renewer_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    renewer_.join();
    std::error_code ec;
    fs::remove(path_, ec);  // a lease is given back explicitly; a flock goes with the descriptor
  }
  if (fd_ >= 0) close(fd_);
}

std::string JobLock::holder_text() const {
  try {
    return describe(json::parse(read_file(path_)));
  } catch (const std::exception&) {
    return "another qforge run";
  }
}

// True when claimed; false when flock is not supported here (the caller falls back to the lease).
bool JobLock::try_flock() {
  fd_ = open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError("--job-dir", "", path_.string() + ": cannot create the lock file: " + std::strerror(errno));
  if (flock(fd_, LOCK_EX | LOCK_NB) == 0) {
    const std::string text = holder_record().dump() + "\n";
    if (ftruncate(fd_, 0) != 0 || pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
      QF_LOG(Warn) << path_.string() << ": could not record this run as the holder: " << std::strerror(errno);
    }
    return true;
  }
  const int err = errno;
  if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {
    close(fd_);
    fd_ = -1;
    return false;
  }
  const std::string holder = holder_text();
  close(fd_);
  fd_ = -1;
  throw InputError("--job-dir", "", path_.parent_path().string() + " is in use by " + holder + " (" + path_.string() +
                                        "); one run per job directory: wait for it to end or stop it");
}

void JobLock::take_lease() {
  if (fs::exists(path_)) {
    json h;
    try {
      h = json::parse(read_file(path_));
    } catch (const std::exception&) {
      h = json::object();  // unreadable: a crashed writer's; stale by definition
    }
    const double age = now_s() - h.value("heartbeat", 0.0);
    if (age < options_.stale_after_s) {
      throw InputError("--job-dir", "", path_.parent_path().string() + " is in use by " + describe(h) + " (lease " +
                                            path_.string() + " renewed " + std::to_string(static_cast<int>(age)) +
                                            " s ago; taken over only after " +
                                            std::to_string(static_cast<int>(options_.stale_after_s)) + " s without renewal)");
    }
    QF_LOG(Warn) << path_.string() << ": taking over the stale lease of " << describe(h) << " (not renewed for "
                 << static_cast<int>(age) << " s)";
  }
  write_file_atomic(path_, holder_record().dump() + "\n");
  lease_ = true;
  renewer_ = std::thread([this] { renew_lease(); });
}

void JobLock::renew_lease() {
  const auto period = std::chrono::duration<double>(options_.stale_after_s / 4);
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [this] { return stop_; })) {
    try {
      write_file_atomic(path_, holder_record().dump() + "\n");
    } catch (const std::exception& e) {
      QF_LOG(Warn) << path_.string() << ": lease not renewed: " << e.what();
    }
  }
}

}  // namespace qforge::storage
