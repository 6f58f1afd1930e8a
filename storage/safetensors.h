// safetensors files: a validating mmap reader, a streaming atomic writer, and sharded checkpoints.
//
// File layout (huggingface/safetensors "Format"):
//   bytes [0, 8)        N, u64 little-endian: length of the JSON header
//   bytes [8, 8+N)      UTF-8 JSON object {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
//                       ..., "__metadata__": {"format": "pt"}}; may be padded with spaces at the end
//   bytes [8+N, end)    the data buffer; offsets are relative to its start, half-open, row-major, LE
// The reader refuses anything else (see SafetensorsFile). The writer pads the header with spaces to a
// multiple of 8 (data 8-byte aligned), writes keys in sorted order (nlohmann's object order) and puts
// tensors in the buffer in the order given, so equal content always gives equal bytes.
//
// Sharded checkpoints follow transformers' save_pretrained: `model-00001-of-0000K.safetensors` plus
// `model.safetensors.index.json` {"metadata": {"total_size": bytes}, "weight_map": {name: shard}};
// a single file is `model.safetensors` without index.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "storage/safetensors_header.h"
#include "storage/torch_dtype.h"

namespace qforge::storage {

namespace fs = std::filesystem;

// Read-only mapping of a whole file. Move-only; unmaps in the destructor.
class MappedFile {
 public:
  explicit MappedFile(const fs::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&&) = delete;
  MappedFile(const MappedFile&) = delete;
  const std::uint8_t* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  // Drops the pages of [offset, offset+len) from this process (they stay in the page cache), so
  // reading a checkpoint tensor by tensor does not keep the whole file resident.
  void release(std::uint64_t offset, std::uint64_t len) const;

 private:
  const std::uint8_t* data_ = nullptr;
  std::uint64_t size_ = 0;
};

// One validated safetensors file: the file mapped, its header checked by parse_safetensors_header
// (storage/safetensors_header.h) before anything else is read.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const fs::path& path);
  const fs::path& path() const { return path_; }
  // Tensors in buffer order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  // InputError "<file>: <name>: missing tensor" when absent.
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::uint64_t data_offset() const { return data_offset_; }  // 8 + N
  // Copies one tensor out of the mapping into a new CPU tensor it owns, then releases those pages.
  at::Tensor load(const std::string& name) const;
  // Raw view into the mapping (valid while this object lives).
  const std::uint8_t* raw(const TensorInfo& t) const { return map_.data() + data_offset_ + t.begin; }

 private:
  fs::path path_;
  MappedFile map_;
  std::uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// A whole checkpoint: a folder with model.safetensors, or with model.safetensors.index.json and its
// shards (model.safetensors wins when both exist, as in transformers), or a path to a single
// .safetensors file or to an *.index.json. The index must list every tensor of every shard exactly
// under its shard. Every shard header is validated when opened; tensor bytes are read only by load(),
// so RAM use is bounded by the tensors asked for.
class CheckpointReader {
 public:
  explicit CheckpointReader(const fs::path& dir_or_file);
  // All tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return where_.count(name) != 0 || derived_.count(name) != 0; }
  // InputError naming the checkpoint and the tensor when absent.
  const TensorInfo& info(const std::string& name) const;
  at::Tensor load(const std::string& name) const;
  // Shard file names (relative to the folder), in order.
  std::vector<std::string> shard_names() const;
  // Shard file name holding `name`.
  std::string shard_of(const std::string& name) const;
  std::uint64_t total_bytes() const;
  const fs::path& root() const { return root_; }
  // Metadata of the first shard (every writer here puts the same metadata in each shard).
  const std::map<std::string, std::string>& metadata() const;

  // Shows a tensor computed from stored ones under `info.name` (e.g. a weight dequantized from a packed
  // GPTQ export) in place of the stored tensors it is made from (`replaces`), which leave names(),
  // contains(), info() and load(). Readers above (the model index, block loading) then see a plain
  // checkpoint. shard_of() of a derived tensor names the shard of its first replaced tensor.
  void add_derived(TensorInfo info, std::function<at::Tensor()> make, const std::vector<std::string>& replaces);
  // A stored tensor, also one a derived tensor replaced (what `make` closures read).
  at::Tensor load_stored(const std::string& name) const;

 private:
  struct Derived {
    TensorInfo info;
    std::function<at::Tensor()> make;
    std::size_t shard = 0;
  };
  fs::path source_;  // the path given, named in error messages
  fs::path root_;    // folder holding the shards
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, std::size_t> where_;  // stored tensor -> index into shards_
  std::map<std::string, Derived> derived_;
  std::map<std::string, std::size_t> replaced_;  // stored tensors hidden behind derived ones
};

// What a tensor will be, before its bytes exist (used to plan shards and headers up front).
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t nbytes() const;
};

// Writes one safetensors file atomically. Tensors are written row-major from their contents (a
// non-contiguous or non-CPU tensor is copied first); dtype and shape are kept. Names must be unique.
// Metadata gets "format": "pt" unless the caller sets "format".
void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       std::map<std::string, std::string> metadata = {});

// Greedy HF sharding of `specs` in the given order: a shard is closed when the next tensor would
// exceed max_shard_bytes; a tensor larger than the limit gets a shard of its own.
// max_shard_bytes == 0 means one shard. Returns, per shard, indices into specs.
std::vector<std::vector<std::size_t>> plan_shards(const std::vector<TensorSpec>& specs, std::uint64_t max_shard_bytes);

// Output folders (quantize assembly, export; storage/output_folder.h): copies the non-weight files that
// travel with a model (tokenizer, generation config; `extra` names more) from `from` to `to`.
void copy_model_side_files(const fs::path& from, const fs::path& to, const std::vector<std::string>& extra = {});

// Streams a (possibly sharded) checkpoint into `dir`: shard layout and headers are fixed from the
// specs first, then `produce` is called once per spec, in shard order, and each returned tensor
// (must match the spec's dtype and shape) is written and dropped. Peak memory is one tensor.
// With one shard the file is model.safetensors and no index is written. Every file is atomic.
class CheckpointWriter {
 public:
  using Producer = std::function<at::Tensor(const TensorSpec&)>;
  // `stem` names the files: <stem>.safetensors, or <stem>-0000i-of-0000N.safetensors + index.
  CheckpointWriter(fs::path dir, std::vector<TensorSpec> specs, std::uint64_t max_shard_bytes,
                   std::map<std::string, std::string> metadata = {}, std::string stem = "model");
  void write(const Producer& produce);
  // File names the writer will produce (shards, then the index if any).
  std::vector<std::string> file_names() const;

 private:
  fs::path dir_;
  std::vector<TensorSpec> specs_;
  std::vector<std::vector<std::size_t>> shards_;
  std::map<std::string, std::string> metadata_;
  std::string stem_;
};


}  // namespace qforge::storage
