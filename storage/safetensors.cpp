// Reading side of safetensors: MappedFile and lazy tensor loads; the header is validated by
// parse_safetensors_header (storage/safetensors_header.cpp) before any offset is trusted, so a file
// that passes can be indexed without bounds checks.
#include "storage/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>

#include "common/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; qforge copies it byte for byte");

namespace qforge::storage {

using json = nlohmann::json;

namespace {

std::string errno_text() { return std::strerror(errno); }

}  // namespace

// ---- MappedFile ----------------------------------------------------------------------------------

MappedFile::MappedFile(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(path.string(), "", "cannot open file: " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string err = errno_text();
    ::close(fd);
    throw InputError(path.string(), "", "cannot stat file: " + err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(path.string(), "", "not a regular file");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
  // mmap refuses length 0; an empty file maps to nothing and the validator reports it.
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const std::string err = errno_text();
      ::close(fd);
      throw InputError(path.string(), "", "cannot map file: " + err);
    }
    data_ = static_cast<const std::uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file referenced
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

void MappedFile::release(std::uint64_t offset, std::uint64_t len) const {
  if (data_ == nullptr || len == 0 || offset >= size_) return;
  const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t end = std::min(size_, offset + len);
  // Only pages entirely inside the range: the partial pages at either end may belong to a
  // neighbouring tensor that someone is reading right now.
  const std::uint64_t first = (offset + page - 1) / page * page;
  const std::uint64_t last = end / page * page;
  if (last <= first) return;
  // The mapping is read-only and private, so dropped pages are refaulted from the file if touched
  // again; failure only costs memory, never correctness.
  ::madvise(const_cast<std::uint8_t*>(data_) + first, last - first, MADV_DONTNEED);
}

// ---- SafetensorsFile ---------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path), map_(path) {
  SafetensorsHeader h = parse_safetensors_header(map_.data(), map_.size(), path.string());
  data_offset_ = h.data_offset;
  tensors_ = std::move(h.tensors);
  metadata_ = std::move(h.metadata);
  for (std::size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
  // The header is not needed any more; large headers should not stay resident either.
  map_.release(0, data_offset_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) throw InputError(path_.string(), name, "missing tensor");
  return *t;
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
  const TensorInfo& t = info(name);
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(to_scalar_type(t.dtype)).device(at::kCPU));
  QF_CHECK(static_cast<std::uint64_t>(out.nbytes()) == t.nbytes(), path_.string() + ": " + name);
  if (t.nbytes() > 0) std::memcpy(out.data_ptr(), raw(t), t.nbytes());
  map_.release(data_offset_ + t.begin, t.nbytes());
  return out;
}

}  // namespace qforge::storage
