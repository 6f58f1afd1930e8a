// On-disk cache of unit-boundary activations for the distributed engine (HDF5, serial libhdf5).
//
// Each rank writes its own slice files (one writer per file); any rank can gather arbitrary samples,
// by global sample id, from a list of slice files. The file layout is specified in storage/FORMAT.md,
// "Activation cache (HDF5)". In short: root attributes describe the slice (format, format_version,
// fingerprints, boundary, stream, total_samples, tokens, hidden, dtype); dataset /activations
// [n, T, H] chunked one sample per chunk, float32 or bf16 bits as uint16; dataset /sample_ids int64
// [n] gives the global id of each row.
//
// Readers never trust a file: every attribute is compared with what the job expects, so a slice of
// another model, job, boundary, stream or dtype is refused instead of silently feeding a wrong block.
//
// Thread safety: these functions may run on several threads at once (Debian's libhdf5 is the
// threadsafe build, which serialises calls internally); slice files are immutable once written.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace qforge::storage {

namespace fs = std::filesystem;

enum class CacheDType { kF32, kBF16 };

// "fp32" | "bf16"; InputError naming --cache-dtype otherwise.
CacheDType parse_cache_dtype(const std::string& s);
// "fp32" / "bf16".
const char* cache_dtype_name(CacheDType d);
// Rounds x (fp32) through the cache representation (identity for fp32, fp32 -> bf16 -> fp32 for
// bf16, round to nearest even): exactly what a reader of the cache gets back.
at::Tensor round_to_cache_dtype(const at::Tensor& x, CacheDType d);

// What a slice file claims to be. Readers pass the expected value; any difference refuses the file.
struct ActivationSliceMeta {
  std::string model_fingerprint;   // hex digest of the model (from the job spec)
  std::string job_fingerprint;     // hex digest of the job spec
  int boundary = 0;                // activations entering unit boundary b (output of block b-1)
  std::string stream;              // "fp" or "q"
  std::int64_t total_samples = 0;  // calibration samples in the whole job
  std::int64_t tokens = 0;         // sequence length T
  std::int64_t hidden = 0;         // H
  CacheDType dtype = CacheDType::kF32;
};

// Writes rows `x` ([n, T, H] fp32 CPU; rounded to meta.dtype on write) whose global sample ids are
// `sample_ids` (n distinct ids, in row order, each in [0, total_samples)) to `path`, atomically:
// written to "<path>.tmp-<pid>", H5Fflush + close, fsync, rename, fsync of the directory; the
// temporary is removed on failure. n may be 0 (a rank with no samples still writes its slice).
// Arguments that break these rules are caller bugs (InternalError). Returns the bytes of the file.
std::uint64_t write_activation_slice(const fs::path& path, const ActivationSliceMeta& meta,
                                     const std::vector<std::int64_t>& sample_ids, const at::Tensor& x);

struct ActivationSliceInfo {
  ActivationSliceMeta meta;
  std::vector<std::int64_t> sample_ids;  // global id of each row, in row order
};

// Opens `path` read-only and validates it: format and format_version attributes; every meta field
// equal to `expected`; /activations of shape [n, T, H] with an element type agreeing with `dtype`;
// /sample_ids of length n, each in [0, total_samples), distinct. A missing, truncated, foreign or
// mismatched file throws InputError naming the file and the field.
ActivationSliceInfo read_activation_slice_info(const fs::path& path, const ActivationSliceMeta& expected);

// Gathers the rows with global ids `ids` (any order; distinct and in [0, total_samples), else
// InternalError: the caller chose them) from `files` (each validated as above) into a new fp32
// tensor [ids.size(), T, H], in the order of `ids`. Every id held by a file
// must be held by exactly one of them: an id in two files is an InputError naming both (there is no
// "first file wins": two copies mean the cache directory is inconsistent). An id in none of the
// files is an InputError too. Only the needed rows are read (one hyperslab per run of consecutive
// rows), so memory beyond the result is at most one slice. Adds the activation bytes read (as
// stored) to *bytes_read when it is not null.
at::Tensor read_activation_rows(const std::vector<fs::path>& files, const ActivationSliceMeta& expected,
                                const std::vector<std::int64_t>& ids, std::uint64_t* bytes_read = nullptr);

}  // namespace qforge::storage
