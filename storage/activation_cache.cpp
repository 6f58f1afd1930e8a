#include "storage/activation_cache.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/fault.h"
#include "common/file_util.h"
#include "storage/h5_handle.h"

namespace qforge::storage {

namespace {

constexpr const char* kFormatName = "qforge-activations";
constexpr std::int64_t kFormatVersion = 2;  // 2: every chunk (one sample's row) carries a Fletcher-32 checksum
constexpr const char* kActivations = "activations";
constexpr const char* kSampleIds = "sample_ids";
constexpr const char* kBf16Tag = "bfloat16";  // /activations "dtype" attribute for bf16 bits
// Longest string attribute a reader accepts: fingerprints are hex digests, far below this; the cap
// keeps a malformed file from asking for a huge allocation.
constexpr std::size_t kMaxStringAttr = 4096;
// HDF5 refuses chunks of 4 GiB or more.
constexpr std::uint64_t kMaxChunkBytes = (std::uint64_t{1} << 32) - 1;

std::size_t element_size(CacheDType d) { return d == CacheDType::kF32 ? 4 : 2; }

// ---- attributes --------------------------------------------------------------------------------

void write_string_attr(hid_t obj, const char* name, const std::string& value, const std::string& file) {
  const H5Where w{file, name, false};
  // Fixed-length, null-terminated: readable by h5py and h5dump without variable-length bookkeeping.
  H5Handle type(QF_H5(w, H5Tcopy, H5T_C_S1));
  QF_H5(w, H5Tset_size, type.get(), value.size() + 1);
  QF_H5(w, H5Tset_strpad, type.get(), H5T_STR_NULLTERM);
  QF_H5(w, H5Tset_cset, type.get(), H5T_CSET_UTF8);
  H5Handle space(QF_H5(w, H5Screate, H5S_SCALAR));
  H5Handle attr(QF_H5(w, H5Acreate2, obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  QF_H5(w, H5Awrite, attr.get(), type.get(), value.c_str());
}

void write_int_attr(hid_t obj, const char* name, std::int64_t value, const std::string& file) {
  const H5Where w{file, name, false};
  H5Handle space(QF_H5(w, H5Screate, H5S_SCALAR));
  H5Handle attr(QF_H5(w, H5Acreate2, obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  QF_H5(w, H5Awrite, attr.get(), H5T_NATIVE_INT64, &value);
}

// Opens attribute `name` of `obj`, which must exist and hold one value of class `cls`. `field` is
// how messages name it.
H5Handle open_attr(hid_t obj, const char* name, H5T_class_t cls, const std::string& file, const std::string& field) {
  const H5Where w{file, field, true};
  if (QF_H5(w, H5Aexists, obj, name) == 0) throw InputError(file, field, "missing attribute");
  H5Handle attr(QF_H5(w, H5Aopen, obj, name, H5P_DEFAULT));
  H5Handle type(QF_H5(w, H5Aget_type, attr.get()));
  if (QF_H5(w, H5Tget_class, type.get()) != cls) {
    throw InputError(file, field, cls == H5T_STRING ? "is not a string" : "is not an integer");
  }
  H5Handle space(QF_H5(w, H5Aget_space, attr.get()));
  if (QF_H5(w, H5Sget_simple_extent_npoints, space.get()) != 1) throw InputError(file, field, "is not a single value");
  return attr;
}

std::string read_string_attr(hid_t obj, const char* name, const std::string& file, const std::string& field) {
  const H5Where w{file, field, true};
  H5Handle attr = open_attr(obj, name, H5T_STRING, file, field);
  H5Handle ftype(QF_H5(w, H5Aget_type, attr.get()));
  H5Handle mtype(QF_H5(w, H5Tcopy, H5T_C_S1));
  // HDF5 has no conversion between character sets: read in whichever one the file declares.
  QF_H5(w, H5Tset_cset, mtype.get(), QF_H5(w, H5Tget_cset, ftype.get()));
  if (QF_H5(w, H5Tis_variable_str, ftype.get()) > 0) {
    // Not what qforge writes, but what h5py writes by default; accepted so a file edited there reads.
    QF_H5(w, H5Tset_size, mtype.get(), H5T_VARIABLE);
    char* text = nullptr;
    QF_H5(w, H5Aread, attr.get(), mtype.get(), static_cast<void*>(&text));
    std::string out = text != nullptr ? text : "";
    H5free_memory(text);
    if (out.size() > kMaxStringAttr) throw InputError(file, field, "string attribute too long");
    return out;
  }
  const std::size_t size = H5Tget_size(ftype.get());
  if (size == 0) throw_h5_failure("H5Tget_size", w);
  if (size > kMaxStringAttr) throw InputError(file, field, "string attribute too long");
  QF_H5(w, H5Tset_size, mtype.get(), size);
  QF_H5(w, H5Tset_strpad, mtype.get(), H5T_STR_NULLPAD);  // copy the bytes as stored, no truncation
  std::string buf(size, '\0');
  QF_H5(w, H5Aread, attr.get(), mtype.get(), buf.data());
  buf.resize(::strnlen(buf.data(), size));
  return buf;
}

std::int64_t read_int_attr(hid_t obj, const char* name, const std::string& file) {
  const H5Where w{file, name, true};
  H5Handle attr = open_attr(obj, name, H5T_INTEGER, file, name);
  std::int64_t value = 0;
  QF_H5(w, H5Aread, attr.get(), H5T_NATIVE_INT64, &value);
  return value;
}

// ---- validation ----------------------------------------------------------------------------------

// A slice opened for reading: validated, with /activations open.
struct OpenSlice {
  H5Handle file;
  H5Handle activations;
  ActivationSliceInfo info;
};

void expect_equal(const std::string& file, const char* field, const std::string& got, const std::string& want) {
  if (got != want) throw InputError(file, field, "is '" + got + "', expected '" + want + "'");
}

void expect_equal(const std::string& file, const char* field, std::int64_t got, std::int64_t want) {
  if (got != want) {
    throw InputError(file, field, "is " + std::to_string(got) + ", expected " + std::to_string(want));
  }
}

// Opens dataset `name`, which must exist, and returns it with its dimensions.
H5Handle open_dataset(hid_t fid, const char* name, const std::string& file, std::vector<hsize_t>* dims) {
  const H5Where w{file, name, true};
  if (QF_H5(w, H5Lexists, fid, name, H5P_DEFAULT) == 0) throw InputError(file, name, "missing dataset");
  H5Handle dset(QF_H5(w, H5Dopen2, fid, name, H5P_DEFAULT));
  H5Handle space(QF_H5(w, H5Dget_space, dset.get()));
  const int rank = QF_H5(w, H5Sget_simple_extent_ndims, space.get());
  dims->assign(static_cast<std::size_t>(rank), 0);
  QF_H5(w, H5Sget_simple_extent_dims, space.get(), dims->data(), nullptr);
  return dset;
}

std::string dims_text(const std::vector<hsize_t>& dims) {
  std::string out = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

OpenSlice open_slice(const fs::path& path, const ActivationSliceMeta& expected) {
  const std::string file = path.string();
  const H5Where wf{file, "", true};
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw InputError(file, "", "no such file (activation cache slice)");
  // H5Fopen on a foreign file reports a stack of superblock errors; this says what is wrong plainly.
  if (QF_H5(wf, H5Fis_hdf5, file.c_str()) == 0) {
    throw InputError(file, "", "not an HDF5 file (expected a qforge activation cache slice)");
  }
  OpenSlice s;
  s.file = H5Handle(QF_H5(wf, H5Fopen, file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  const hid_t fid = s.file.get();

  const std::string format = read_string_attr(fid, "format", file, "format");
  if (format != kFormatName) {
    throw InputError(file, "format", "is '" + format + "', expected '" + kFormatName + "' (not an activation cache slice)");
  }
  const std::int64_t version = read_int_attr(fid, "format_version", file);
  if (version != kFormatVersion) {
    throw InputError(file, "format_version",
                     "is " + std::to_string(version) + "; this qforge reads version " + std::to_string(kFormatVersion));
  }

  ActivationSliceMeta& m = s.info.meta;
  m.model_fingerprint = read_string_attr(fid, "model_fingerprint", file, "model_fingerprint");
  expect_equal(file, "model_fingerprint", m.model_fingerprint, expected.model_fingerprint);
  m.job_fingerprint = read_string_attr(fid, "job_fingerprint", file, "job_fingerprint");
  expect_equal(file, "job_fingerprint", m.job_fingerprint, expected.job_fingerprint);
  const std::int64_t boundary = read_int_attr(fid, "boundary", file);
  expect_equal(file, "boundary", boundary, expected.boundary);
  m.boundary = expected.boundary;
  m.stream = read_string_attr(fid, "stream", file, "stream");
  expect_equal(file, "stream", m.stream, expected.stream);
  m.total_samples = read_int_attr(fid, "total_samples", file);
  expect_equal(file, "total_samples", m.total_samples, expected.total_samples);
  m.tokens = read_int_attr(fid, "tokens", file);
  expect_equal(file, "tokens", m.tokens, expected.tokens);
  m.hidden = read_int_attr(fid, "hidden", file);
  expect_equal(file, "hidden", m.hidden, expected.hidden);
  const std::string dtype = read_string_attr(fid, "dtype", file, "dtype");
  if (dtype != "fp32" && dtype != "bf16") throw InputError(file, "dtype", "unknown cache dtype '" + dtype + "'");
  expect_equal(file, "dtype", dtype, cache_dtype_name(expected.dtype));
  m.dtype = expected.dtype;

  // /activations: [n, T, H] of the element type `dtype` promises.
  std::vector<hsize_t> dims;
  s.activations = open_dataset(fid, kActivations, file, &dims);
  if (dims.size() != 3 || dims[1] != static_cast<hsize_t>(m.tokens) || dims[2] != static_cast<hsize_t>(m.hidden)) {
    throw InputError(file, kActivations,
                     "shape " + dims_text(dims) + " is not [n, tokens = " + std::to_string(m.tokens) +
                         ", hidden = " + std::to_string(m.hidden) + "]");
  }
  // Bounds the sample_ids allocation below by the job, not by what the file claims.
  if (dims[0] > static_cast<hsize_t>(m.total_samples)) {
    throw InputError(file, kActivations,
                     "has " + std::to_string(dims[0]) + " rows, more than total_samples = " + std::to_string(m.total_samples));
  }
  const std::int64_t n = static_cast<std::int64_t>(dims[0]);
  {
    const H5Where wa{file, kActivations, true};
    H5Handle type(QF_H5(wa, H5Dget_type, s.activations.get()));
    const H5T_class_t cls = QF_H5(wa, H5Tget_class, type.get());
    const std::size_t size = H5Tget_size(type.get());
    if (m.dtype == CacheDType::kF32) {
      if (cls != H5T_FLOAT || size != 4) throw InputError(file, kActivations, "element type is not float32 (dtype = fp32)");
    } else {
      if (cls != H5T_INTEGER || size != 2 || QF_H5(wa, H5Tget_sign, type.get()) != H5T_SGN_NONE) {
        throw InputError(file, kActivations, "element type is not uint16 bfloat16 bits (dtype = bf16)");
      }
      const std::string tag = read_string_attr(s.activations.get(), "dtype", file, "activations.dtype");
      expect_equal(file, "activations.dtype", tag, kBf16Tag);
    }
  }

  // /sample_ids: n distinct ids in [0, total_samples).
  H5Handle ids = open_dataset(fid, kSampleIds, file, &dims);
  if (dims.size() != 1 || dims[0] != static_cast<hsize_t>(n)) {
    throw InputError(file, kSampleIds, "shape " + dims_text(dims) + " is not [" + std::to_string(n) + "] (rows of activations)");
  }
  {
    const H5Where wi{file, kSampleIds, true};
    H5Handle type(QF_H5(wi, H5Dget_type, ids.get()));
    if (QF_H5(wi, H5Tget_class, type.get()) != H5T_INTEGER) throw InputError(file, kSampleIds, "is not integer");
    s.info.sample_ids.resize(static_cast<std::size_t>(n));
    if (n > 0) QF_H5(wi, H5Dread, ids.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, s.info.sample_ids.data());
  }
  std::vector<std::int64_t> sorted = s.info.sample_ids;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] < 0 || sorted[i] >= m.total_samples) {
      throw InputError(file, kSampleIds,
                       "id " + std::to_string(sorted[i]) + " out of range [0, " + std::to_string(m.total_samples) + ")");
    }
    if (i > 0 && sorted[i] == sorted[i - 1]) throw InputError(file, kSampleIds, "id " + std::to_string(sorted[i]) + " repeated");
  }
  return s;
}

// Reads `count` consecutive rows from `first_row` of an open slice into `out` ([count, T, H] fp32,
// contiguous). Returns the bytes read as stored.
std::uint64_t read_rows(const OpenSlice& s, const std::string& file, std::int64_t first_row, std::int64_t count,
                        at::Tensor out) {
  const H5Where w{file, kActivations, true};
  const ActivationSliceMeta& m = s.info.meta;
  const hsize_t start[3] = {static_cast<hsize_t>(first_row), 0, 0};
  const hsize_t extent[3] = {static_cast<hsize_t>(count), static_cast<hsize_t>(m.tokens), static_cast<hsize_t>(m.hidden)};
  H5Handle fspace(QF_H5(w, H5Dget_space, s.activations.get()));
  QF_H5(w, H5Sselect_hyperslab, fspace.get(), H5S_SELECT_SET, start, nullptr, extent, nullptr);
  H5Handle mspace(QF_H5(w, H5Screate_simple, 3, extent, nullptr));
  if (m.dtype == CacheDType::kF32) {
    QF_H5(w, H5Dread, s.activations.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT, out.data_ptr());
  } else {
    at::Tensor bits = at::empty({count, m.tokens, m.hidden}, at::kShort);
    QF_H5(w, H5Dread, s.activations.get(), H5T_NATIVE_UINT16, mspace.get(), fspace.get(), H5P_DEFAULT, bits.data_ptr());
    out.copy_(bits.view(at::kBFloat16));
  }
  return static_cast<std::uint64_t>(count * m.tokens * m.hidden) * element_size(m.dtype);
}

struct Request {
  std::int64_t row;  // in the file
  std::int64_t pos;  // in the output
};

// Pass 2 of read_activation_rows for one file: runs of consecutive file rows that are also consecutive
// in the output are read with one hyperslab each (scattered ids degrade to one chunk-sized read per row).
std::uint64_t read_requests(const fs::path& path, const ActivationSliceMeta& expected, const std::vector<std::int64_t>& ids,
                            std::vector<Request>& req, at::Tensor out) {
  const std::string file = path.string();
  const OpenSlice s = open_slice(path, expected);
  for (const Request& q : req) {
    // Files are immutable after their rename; a different file under the same name is not.
    if (q.row >= static_cast<std::int64_t>(s.info.sample_ids.size()) ||
        s.info.sample_ids[static_cast<std::size_t>(q.row)] != ids[static_cast<std::size_t>(q.pos)]) {
      throw InputError(file, kSampleIds, "changed while being read");
    }
  }
  std::sort(req.begin(), req.end(), [](const Request& a, const Request& b) { return a.row < b.row; });
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < req.size();) {
    std::size_t j = i + 1;
    while (j < req.size() && req[j].row == req[j - 1].row + 1 && req[j].pos == req[j - 1].pos + 1) ++j;
    const std::int64_t count = static_cast<std::int64_t>(j - i);
    bytes += read_rows(s, file, req[i].row, count, out.narrow(0, req[i].pos, count));
    i = j;
  }
  return bytes;
}

// Removes the temporary file unless the write got as far as the rename.
class TempFileGuard {
 public:
  explicit TempFileGuard(fs::path path) : path_(std::move(path)) {}
  ~TempFileGuard() {
    if (armed_) {
      std::error_code ec;
      fs::remove(path_, ec);
    }
  }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void disarm() { armed_ = false; }

 private:
  fs::path path_;
  bool armed_ = true;
};

void fsync_file(const fs::path& path) {
  // HDF5's sec2 driver does not fsync on close; without this a crash after the rename could leave a
  // complete-looking name over unwritten blocks.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InternalError(path.string() + ": open for fsync failed: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw InternalError(path.string() + ": fsync failed: " + std::strerror(err));
}

}  // namespace

CacheDType parse_cache_dtype(const std::string& s) {
  if (s == "fp32") return CacheDType::kF32;
  if (s == "bf16") return CacheDType::kBF16;
  throw InputError("--cache-dtype", "", "'" + s + "' is not one of fp32, bf16");
}

const char* cache_dtype_name(CacheDType d) { return d == CacheDType::kF32 ? "fp32" : "bf16"; }

at::Tensor round_to_cache_dtype(const at::Tensor& x, CacheDType d) {
  QF_CHECK(x.scalar_type() == at::kFloat, "round_to_cache_dtype expects fp32");
  if (d == CacheDType::kF32) return x;
  return x.to(at::kBFloat16).to(at::kFloat);
}

std::uint64_t write_activation_slice(const fs::path& path, const ActivationSliceMeta& meta,
                                     const std::vector<std::int64_t>& sample_ids, const at::Tensor& x) {
  const std::int64_t n = static_cast<std::int64_t>(sample_ids.size());
  QF_CHECK(x.defined() && x.device().is_cpu() && x.scalar_type() == at::kFloat, "activation slice must be fp32 on CPU");
  QF_CHECK(meta.tokens > 0 && meta.hidden > 0 && meta.boundary >= 0 && meta.total_samples >= n, "bad slice meta");
  QF_CHECK(meta.stream == "fp" || meta.stream == "q", "stream must be fp or q, not '" + meta.stream + "'");
  QF_CHECK(x.dim() == 3 && x.size(0) == n && x.size(1) == meta.tokens && x.size(2) == meta.hidden,
           "activation slice shape " + std::to_string(x.dim()) + "-d does not match [n, tokens, hidden]");
  {
    std::vector<std::int64_t> sorted = sample_ids;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < sorted.size(); ++i) {
      QF_CHECK(sorted[i] >= 0 && sorted[i] < meta.total_samples, "sample id out of range: " + std::to_string(sorted[i]));
      QF_CHECK(i == 0 || sorted[i] != sorted[i - 1], "sample id repeated: " + std::to_string(sorted[i]));
    }
  }
  const std::uint64_t chunk_bytes = static_cast<std::uint64_t>(meta.tokens * meta.hidden) * element_size(meta.dtype);
  QF_CHECK(chunk_bytes <= kMaxChunkBytes, "one sample's activations exceed HDF5's 4 GiB chunk limit");

  // The bytes as stored: fp32 as is, bf16 as its bit pattern (LibTorch has no uint16, int16 has the same bits).
  const at::Tensor rows = meta.dtype == CacheDType::kF32 ? x.contiguous()
                                                         : x.to(at::kBFloat16).contiguous().view(at::kShort);

  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  fs::create_directories(dir);
  const fs::path temp = temp_path_for(path);
  const std::string tname = temp.string();
  TempFileGuard guard(temp);  // declared before the handles: the file is closed before it is removed
  {
    const H5Where wf{tname, "", false};
    H5Handle fid(QF_H5(wf, H5Fcreate, tname.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    write_string_attr(fid.get(), "format", kFormatName, tname);
    write_int_attr(fid.get(), "format_version", kFormatVersion, tname);
    write_string_attr(fid.get(), "model_fingerprint", meta.model_fingerprint, tname);
    write_string_attr(fid.get(), "job_fingerprint", meta.job_fingerprint, tname);
    write_int_attr(fid.get(), "boundary", meta.boundary, tname);
    write_string_attr(fid.get(), "stream", meta.stream, tname);
    write_int_attr(fid.get(), "total_samples", meta.total_samples, tname);
    write_int_attr(fid.get(), "tokens", meta.tokens, tname);
    write_int_attr(fid.get(), "hidden", meta.hidden, tname);
    write_string_attr(fid.get(), "dtype", cache_dtype_name(meta.dtype), tname);

    {
      const H5Where wa{tname, kActivations, false};
      const hsize_t dims[3] = {static_cast<hsize_t>(n), static_cast<hsize_t>(meta.tokens), static_cast<hsize_t>(meta.hidden)};
      // Unlimited rows only so that an empty slice (n = 0) can still have [1, T, H] chunks.
      const hsize_t max_dims[3] = {H5S_UNLIMITED, dims[1], dims[2]};
      // One chunk per sample: a reader gathering scattered samples touches exactly the chunks it needs.
      const hsize_t chunk[3] = {1, dims[1], dims[2]};
      H5Handle space(QF_H5(wa, H5Screate_simple, 3, dims, max_dims));
      H5Handle dcpl(QF_H5(wa, H5Pcreate, H5P_DATASET_CREATE));
      QF_H5(wa, H5Pset_chunk, dcpl.get(), 3, chunk);
      // HDF5 checks each chunk's checksum on every read: a flipped bit in the cache is a refused file, never
      // a silently different model.
      QF_H5(wa, H5Pset_fletcher32, dcpl.get());
      QF_H5(wa, H5Pset_fill_time, dcpl.get(), H5D_FILL_TIME_NEVER);  // every chunk is written in full
      const bool f32 = meta.dtype == CacheDType::kF32;
      H5Handle dset(QF_H5(wa, H5Dcreate2, fid.get(), kActivations, f32 ? H5T_IEEE_F32LE : H5T_STD_U16LE, space.get(),
                          H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
      if (n > 0) {
        QF_H5(wa, H5Dwrite, dset.get(), f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT,
              rows.data_ptr());
      }
      if (!f32) write_string_attr(dset.get(), "dtype", kBf16Tag, tname);
      dset.close(wa);
    }
    {
      const H5Where wi{tname, kSampleIds, false};
      const hsize_t dims[1] = {static_cast<hsize_t>(n)};
      H5Handle space(QF_H5(wi, H5Screate_simple, 1, dims, nullptr));
      H5Handle dset(QF_H5(wi, H5Dcreate2, fid.get(), kSampleIds, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                          H5P_DEFAULT));
      if (n > 0) QF_H5(wi, H5Dwrite, dset.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, sample_ids.data());
      dset.close(wi);
    }
    QF_H5(wf, H5Fflush, fid.get(), H5F_SCOPE_GLOBAL);
    fid.close(wf);
  }
  fsync_file(temp);
  fault_point("cache_write");  // tests: a crash with the slice complete under its temporary name only
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    throw InternalError(path.string() + ": rename from " + tname + " failed: " + std::strerror(errno));
  }
  guard.disarm();
  fsync_directory(dir);
  return fs::file_size(path);
}

ActivationSliceInfo read_activation_slice_info(const fs::path& path, const ActivationSliceMeta& expected) {
  return open_slice(path, expected).info;
}

namespace {

// A slice that cannot be read as what its name promises is damaged: the job can make it again.
template <typename F>
auto reading(const fs::path& file, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const DamagedFileError&) {
    throw;
  } catch (const InputError& e) {
    throw DamagedFileError(file.string(), e.what());
  }
}

}  // namespace

at::Tensor read_activation_rows(const std::vector<fs::path>& files, const ActivationSliceMeta& expected,
                                const std::vector<std::int64_t>& ids, std::uint64_t* bytes_read) {
  // Output position of each requested id.
  std::unordered_map<std::int64_t, std::int64_t> wanted;
  wanted.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    QF_CHECK(ids[i] >= 0 && ids[i] < expected.total_samples, "requested sample id out of range: " + std::to_string(ids[i]));
    QF_CHECK(wanted.emplace(ids[i], static_cast<std::int64_t>(i)).second, "requested sample id repeated: " + std::to_string(ids[i]));
  }

  // Pass 1: validate every file and find, for every id any file holds, its only holder. All ids are
  // checked, not just the requested ones: a duplicate anywhere means the slice list is inconsistent.
  std::vector<std::vector<Request>> requests(files.size());
  std::unordered_map<std::int64_t, std::size_t> holder;
  std::size_t found = 0;
  for (std::size_t f = 0; f < files.size(); ++f) {
    const ActivationSliceInfo info = reading(files[f], [&] { return read_activation_slice_info(files[f], expected); });
    for (std::size_t r = 0; r < info.sample_ids.size(); ++r) {
      const std::int64_t id = info.sample_ids[r];
      const auto [it, inserted] = holder.emplace(id, f);
      if (!inserted) {
        throw InputError(files[f].string(), kSampleIds,
                         "sample id " + std::to_string(id) + " is also in " + files[it->second].string() +
                             " (each sample must be cached in exactly one slice file)");
      }
      const auto w = wanted.find(id);
      if (w != wanted.end()) {
        requests[f].push_back({static_cast<std::int64_t>(r), w->second});
        ++found;
      }
    }
  }
  if (found != ids.size()) {
    for (const std::int64_t id : ids) {
      if (holder.count(id) != 0) continue;
      std::string where = "activation cache (boundary " + std::to_string(expected.boundary) + ", stream " +
                          expected.stream + ")";
      std::string listed;
      for (std::size_t f = 0; f < files.size() && f < 4; ++f) listed += (f ? ", " : "") + files[f].string();
      if (files.size() > 4) listed += ", ...";
      throw InputError(where, kSampleIds,
                       "sample id " + std::to_string(id) + " is in none of the " + std::to_string(files.size()) +
                           " slice files (" + listed + ")");
    }
  }

  // Pass 2: one file open at a time.
  at::Tensor out = at::empty({static_cast<std::int64_t>(ids.size()), expected.tokens, expected.hidden}, at::kFloat);
  std::uint64_t bytes = 0;
  for (std::size_t f = 0; f < files.size(); ++f) {
    std::vector<Request>& req = requests[f];
    if (req.empty()) continue;
    bytes += reading(files[f], [&] { return read_requests(files[f], expected, ids, req, out); });
  }
  if (bytes_read != nullptr) *bytes_read += bytes;
  return out;
}

}  // namespace qforge::storage
