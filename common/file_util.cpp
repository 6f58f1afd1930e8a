#include "common/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace qforge {

static std::string errno_text() { return std::strerror(errno); }

fs::path temp_path_for(const fs::path& target) {
  fs::path temp = target;
  temp += ".tmp." + std::to_string(::getpid());
  return temp;
}

bool is_temp_name(const std::string& name, std::string* target_name) {
  const auto pos = name.rfind(".tmp.");
  if (pos == std::string::npos || pos == 0 || pos + 5 == name.size()) return false;
  if (name.find_first_not_of("0123456789", pos + 5) != std::string::npos) return false;
  if (target_name) *target_name = name.substr(0, pos);
  return true;
}

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  if (target_.has_parent_path()) fs::create_directories(target_.parent_path());
  temp_ = temp_path_for(target_);
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError(temp_.string(), "", "cannot create file: " + errno_text());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    std::error_code ec;
    fs::remove(temp_, ec);
  }
}

void AtomicFile::write(const void* data, std::size_t size) {
  QF_CHECK(fd_ >= 0, "write after commit");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw InternalError(temp_.string() + ": write failed: " + errno_text());
    }
    p += n;
    size -= static_cast<std::size_t>(n);
    written_ += static_cast<std::uint64_t>(n);
  }
}

void AtomicFile::commit() {
  QF_CHECK(fd_ >= 0, "commit twice");
  if (::fsync(fd_) != 0) throw InternalError(temp_.string() + ": fsync failed: " + errno_text());
  if (::close(fd_) != 0) throw InternalError(temp_.string() + ": close failed: " + errno_text());
  fd_ = -1;
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    std::string err = errno_text();
    std::error_code ec;
    fs::remove(temp_, ec);
    throw InternalError(target_.string() + ": rename failed: " + err);
  }
  fsync_directory(target_.has_parent_path() ? target_.parent_path() : fs::path("."));
}

void write_file_atomic(const fs::path& path, const std::string& contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string(), "", std::string("cannot open file: ") + errno_text());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw InputError(path.string(), "", "read failed");
  return ss.str();
}

void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // some filesystems do not allow opening directories; the rename still happened
  ::fsync(fd);
  ::close(fd);
}

}  // namespace qforge
