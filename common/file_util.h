// Durable file helpers. Every output qforge writes goes through AtomicFile: write to a temporary
// name beside the target, fsync, rename over the target, fsync the directory. A crash at any point
// leaves either the old file or the new one, never a half-written file under the final name.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace qforge {

namespace fs = std::filesystem;

class AtomicFile {
 public:
  explicit AtomicFile(fs::path target);
  ~AtomicFile();  // removes the temporary if commit() was not reached
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void write(const std::string& text) { write(text.data(), text.size()); }
  std::uint64_t bytes_written() const { return written_; }
  // fsync + rename + fsync(dir). After this the file is durable under its final name.
  void commit();
  const fs::path& target() const { return target_; }

 private:
  fs::path target_;
  fs::path temp_;
  int fd_ = -1;
  std::uint64_t written_ = 0;
};

// The temporary a writer of `target` writes before renaming it into place: `<target>.tmp.<pid>` beside
// it (AtomicFile, the activation cache). One spelling, so that clean-up recognises every writer's leftovers.
fs::path temp_path_for(const fs::path& target);
// Whether the file name `name` is such a temporary; `target_name` (optional) receives the final name.
bool is_temp_name(const std::string& name, std::string* target_name = nullptr);

// Writes a whole file atomically.
void write_file_atomic(const fs::path& path, const std::string& contents);
// Reads a whole file; InputError naming the file if it cannot be read.
std::string read_file(const fs::path& path);
// fsyncs a directory so a rename inside it is durable.
void fsync_directory(const fs::path& dir);

}  // namespace qforge
