// Writing side of safetensors, and whole checkpoints (one file or shards plus an index).
// Headers are built from TensorSpecs before any tensor exists, so a shard can be streamed one tensor
// at a time: the writer never needs more than the tensor it is currently writing.
#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <set>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/safetensors.h"

#include <algorithm>

namespace qforge::storage {

using json = nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr std::uint64_t kHeaderAlign = 8;

// ---- writing helpers -----------------------------------------------------------------------------

void check_specs(const std::vector<TensorSpec>& specs) {
  std::set<std::string> seen;
  for (const TensorSpec& s : specs) {
    if (s.name == "__metadata__") throw InternalError("tensor name __metadata__ is reserved by safetensors");
    if (!seen.insert(s.name).second) throw InternalError("tensor " + s.name + " is written twice");
    s.nbytes();  // validates the shape
  }
}

// [u64 N][header of N bytes], N padded with spaces so the data starts 8-byte aligned. Tensors are
// laid out back to back in the order of `specs`; the JSON keys come out sorted (nlohmann's std::map),
// so the bytes depend only on the content.
std::string build_header(const std::vector<const TensorSpec*>& specs, std::map<std::string, std::string> metadata) {
  json header = json::object();
  std::uint64_t offset = 0;
  for (const TensorSpec* s : specs) {
    const std::uint64_t n = s->nbytes();
    header[s->name] = {{"dtype", dtype_name(s->dtype)}, {"shape", s->shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  metadata.emplace("format", "pt");  // keeps a caller-given "format"
  header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw InternalError(std::string("cannot encode safetensors header: ") + e.what());
  }
  text.append((kHeaderAlign - text.size() % kHeaderAlign) % kHeaderAlign, ' ');
  const std::uint64_t len = text.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
  return out + text;
}

// Writes one tensor's bytes after checking it is what the header promised.
void write_tensor(AtomicFile& out, const TensorSpec& spec, at::Tensor t) {
  const std::string where = out.target().string() + ": " + spec.name;
  QF_CHECK(t.defined(), where + ": producer returned an undefined tensor");
  QF_CHECK(from_scalar_type(t.scalar_type()) == spec.dtype,
           where + ": dtype " + c10::toString(t.scalar_type()) + " does not match spec " + dtype_name(spec.dtype));
  QF_CHECK(t.sizes().vec() == spec.shape, where + ": shape " + c10::str(t.sizes()) + " does not match spec");
  if (!t.device().is_cpu()) t = t.cpu();
  t = t.contiguous();
  QF_CHECK(static_cast<std::uint64_t>(t.nbytes()) == spec.nbytes(), where + ": byte size does not match spec");
  if (t.nbytes() > 0) out.write(t.data_ptr(), t.nbytes());
}

std::string shard_file_name(const std::string& stem, std::size_t index, std::size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "-%05zu-of-%05zu.safetensors", index + 1, count);
  return stem + buf;
}

// ---- reading helpers -----------------------------------------------------------------------------

// weight_map of a model.safetensors.index.json: tensor name -> shard file name.
std::map<std::string, std::string> read_index(const fs::path& index_path) {
  const std::string where = index_path.string();
  const json index = detail::parse_json_strict(read_file(index_path), where, "");
  if (!index.is_object()) throw InputError(where, "", "top-level JSON value must be an object");
  auto wm = index.find("weight_map");
  if (wm == index.end()) throw InputError(where, "weight_map", "missing");
  if (!wm->is_object()) throw InputError(where, "weight_map", "must be an object of tensor name -> shard file");
  std::map<std::string, std::string> out;
  for (const auto& item : wm->items()) {
    const json& v = item.value();
    if (!v.is_string()) throw InputError(where, "weight_map." + item.key(), "must be a shard file name string");
    const std::string shard = v.get<std::string>();
    const fs::path sp(shard);
    if (shard.empty() || sp.is_absolute() || sp.filename() != sp) {
      throw InputError(where, "weight_map." + item.key(), "shard \"" + shard + "\" must be a file name in the folder");
    }
    out[item.key()] = shard;
  }
  return out;
}

}  // namespace

// ---- TensorSpec / write_safetensors / plan_shards -----------------------------------------------

std::uint64_t TensorSpec::nbytes() const {
  std::uint64_t n = dtype_size(dtype);
  for (std::int64_t d : shape) {
    QF_CHECK(d >= 0, "tensor " + name + " has a negative dimension");
    QF_CHECK(!__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n), "tensor " + name + " size overflows");
  }
  return n;
}

void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       std::map<std::string, std::string> metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    QF_CHECK(t.defined(), path.string() + ": tensor " + name + " is undefined");
    specs.push_back({name, from_scalar_type(t.scalar_type()), t.sizes().vec()});
  }
  check_specs(specs);
  std::vector<const TensorSpec*> order;
  for (const TensorSpec& s : specs) order.push_back(&s);
  AtomicFile out(path);
  out.write(build_header(order, std::move(metadata)));
  for (std::size_t i = 0; i < specs.size(); ++i) write_tensor(out, specs[i], tensors[i].second);
  out.commit();
}

std::vector<std::vector<std::size_t>> plan_shards(const std::vector<TensorSpec>& specs, std::uint64_t max_shard_bytes) {
  std::vector<std::vector<std::size_t>> shards;
  if (specs.empty()) return shards;
  if (max_shard_bytes == 0) {
    shards.emplace_back();
    for (std::size_t i = 0; i < specs.size(); ++i) shards.back().push_back(i);
    return shards;
  }
  std::vector<std::size_t> current;
  std::uint64_t current_bytes = 0;
  auto close = [&] {
    if (!current.empty()) shards.push_back(std::move(current));
    current.clear();
    current_bytes = 0;
  };
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const std::uint64_t n = specs[i].nbytes();
    if (n > max_shard_bytes) {
      // Too big for any shard: alone, and the order of tensors across shards is kept.
      close();
      shards.push_back({i});
      continue;
    }
    if (current_bytes + n > max_shard_bytes) close();
    current.push_back(i);
    current_bytes += n;
  }
  close();
  return shards;
}

// ---- CheckpointWriter ----------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(fs::path dir, std::vector<TensorSpec> specs, std::uint64_t max_shard_bytes,
                                   std::map<std::string, std::string> metadata, std::string stem)
    : dir_(std::move(dir)), specs_(std::move(specs)), metadata_(std::move(metadata)), stem_(std::move(stem)) {
  check_specs(specs_);
  shards_ = plan_shards(specs_, max_shard_bytes);
  if (shards_.empty()) shards_.emplace_back();  // a checkpoint without tensors is still one valid file
}

std::vector<std::string> CheckpointWriter::file_names() const {
  if (shards_.size() == 1) return {stem_ + ".safetensors"};
  std::vector<std::string> names;
  for (std::size_t i = 0; i < shards_.size(); ++i) names.push_back(shard_file_name(stem_, i, shards_.size()));
  names.push_back(stem_ + ".safetensors.index.json");
  return names;
}

void CheckpointWriter::write(const Producer& produce) {
  const std::vector<std::string> names = file_names();
  json weight_map = json::object();
  std::uint64_t total = 0;
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    std::vector<const TensorSpec*> members;
    for (std::size_t i : shards_[s]) {
      members.push_back(&specs_[i]);
      weight_map[specs_[i].name] = names[s];
      total += specs_[i].nbytes();
    }
    AtomicFile out(dir_ / names[s]);
    out.write(build_header(members, metadata_));
    for (const TensorSpec* spec : members) write_tensor(out, *spec, produce(*spec));  // dropped right away
    out.commit();
  }
  if (shards_.size() > 1) {
    // transformers' layout: json.dumps(index, indent=2, sort_keys=True) + "\n".
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(dir_ / names.back(), index.dump(2) + "\n");
  }
}

// ---- CheckpointReader ----------------------------------------------------------------------------

CheckpointReader::CheckpointReader(const fs::path& dir_or_file) : source_(dir_or_file), root_(dir_or_file) {
  const std::string where = dir_or_file.string();
  std::error_code ec;
  const fs::file_status st = fs::status(dir_or_file, ec);
  if (ec || !fs::exists(st)) throw InputError(where, "", "checkpoint not found (no such file or directory)");

  fs::path index_path;
  std::vector<std::string> files;
  if (fs::is_directory(st)) {
    // Same preference as transformers: a single model.safetensors wins over an index.
    if (fs::is_regular_file(dir_or_file / kSingleFile)) {
      files.push_back(kSingleFile);
    } else if (fs::is_regular_file(dir_or_file / kIndexFile)) {
      index_path = dir_or_file / kIndexFile;
    } else {
      throw InputError(where, "", std::string("no ") + kSingleFile + " or " + kIndexFile + " in " + where);
    }
  } else {
    root_ = dir_or_file.has_parent_path() ? dir_or_file.parent_path() : fs::path(".");
    const std::string fname = dir_or_file.filename().string();
    const std::string suffix = ".index.json";
    if (fname.size() > suffix.size() && fname.compare(fname.size() - suffix.size(), suffix.size(), suffix) == 0) {
      index_path = dir_or_file;
    } else {
      files.push_back(fname);
    }
  }

  std::map<std::string, std::string> weight_map;
  if (!index_path.empty()) {
    weight_map = read_index(index_path);
    std::set<std::string> shard_set;
    for (const auto& [tensor, shard] : weight_map) {
      if (shard_set.insert(shard).second && !fs::is_regular_file(root_ / shard)) {
        throw InputError(index_path.string(), "weight_map." + tensor, "shard " + shard + " does not exist in " +
                                                                          root_.string());
      }
    }
    files.assign(shard_set.begin(), shard_set.end());  // sorted: model-00001-of-... first
  }

  for (const std::string& f : files) {
    shards_.push_back(std::make_unique<SafetensorsFile>(root_ / f));
    const SafetensorsFile& shard = *shards_.back();
    for (const TensorInfo& t : shard.tensors()) {
      if (!index_path.empty()) {
        auto it = weight_map.find(t.name);
        if (it == weight_map.end() || it->second != f) {
          throw InputError(index_path.string(), "weight_map",
                           "tensor " + t.name + " of shard " + f + " is not listed for that shard");
        }
      }
      if (!where_.emplace(t.name, shards_.size() - 1).second) {
        throw InputError(shard.path().string(), t.name, "tensor also present in another shard");
      }
    }
  }
  for (const auto& [tensor, shard] : weight_map) {
    if (where_.count(tensor) == 0) {
      throw InputError(index_path.string(), "weight_map." + tensor, "tensor not found in shard " + shard);
    }
  }
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size() + derived_.size());
  for (const auto& [name, shard] : where_) out.push_back(name);
  for (const auto& [name, d] : derived_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  if (auto d = derived_.find(name); d != derived_.end()) return d->second.info;
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError(source_.string(), name, "missing tensor in checkpoint");
  return shards_[it->second]->info(name);
}

// A model's weights must be finite: one Inf or NaN makes every loss and probe downstream meaningless.
// Checked as each tensor is loaded (the bytes are in cache then), never as a separate pass.
// The extrema are finite exactly when every element is (min and max propagate NaN), and finding them
// allocates nothing the size of the tensor.
static at::Tensor check_finite(at::Tensor t, const fs::path& file, const std::string& name) {
  if (!at::isFloatingType(t.scalar_type()) || t.numel() == 0) return t;
  const auto [lo, hi] = at::aminmax(t);
  if (!std::isfinite(lo.item<double>()) || !std::isfinite(hi.item<double>())) {
    throw InputError(file.string(), name, "holds non-finite values (NaN or Inf); the checkpoint is damaged");
  }
  return t;
}

at::Tensor CheckpointReader::load(const std::string& name) const {
  if (auto d = derived_.find(name); d != derived_.end()) return d->second.make();
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError(source_.string(), name, "missing tensor in checkpoint");
  return check_finite(shards_[it->second]->load(name), shards_[it->second]->path(), name);
}

void CheckpointReader::add_derived(TensorInfo info, std::function<at::Tensor()> make, const std::vector<std::string>& replaces) {
  QF_CHECK(!replaces.empty() && where_.count(replaces.front()), "derived tensor " + info.name + " replaces nothing stored");
  // The replaced tensors stay readable by the closure through the shards themselves.
  Derived d{info, std::move(make), where_.at(replaces.front())};
  for (const auto& r : replaces) {
    auto it = where_.find(r);
    QF_CHECK(it != where_.end(), "derived tensor " + info.name + " replaces missing " + r);
    replaced_[r] = it->second;
    where_.erase(it);
  }
  derived_[info.name] = std::move(d);
}

at::Tensor CheckpointReader::load_stored(const std::string& name) const {
  if (auto it = replaced_.find(name); it != replaced_.end()) {
    return check_finite(shards_[it->second]->load(name), shards_[it->second]->path(), name);
  }
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError(source_.string(), name, "missing tensor in checkpoint");
  return check_finite(shards_[it->second]->load(name), shards_[it->second]->path(), name);
}

std::vector<std::string> CheckpointReader::shard_names() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s->path().filename().string());
  return out;
}

std::string CheckpointReader::shard_of(const std::string& name) const {
  if (auto d = derived_.find(name); d != derived_.end()) return shards_[d->second.shard]->path().filename().string();
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError(source_.string(), name, "missing tensor in checkpoint");
  return shards_[it->second]->path().filename().string();
}

std::uint64_t CheckpointReader::total_bytes() const {
  std::uint64_t total = 0;
  for (const auto& s : shards_) {
    for (const TensorInfo& t : s->tensors()) total += t.nbytes();
  }
  return total;
}

const std::map<std::string, std::string>& CheckpointReader::metadata() const {
  static const std::map<std::string, std::string> kEmpty;
  return shards_.empty() ? kEmpty : shards_.front()->metadata();
}

}  // namespace qforge::storage

namespace qforge::storage {

void copy_model_side_files(const fs::path& from, const fs::path& to, const std::vector<std::string>& extra) {
  std::vector<std::string> files = {"tokenizer.model", "tokenizer.bin", "tokenizer.json", "tokenizer_config.json",
                                    "special_tokens_map.json", "generation_config.json"};
  files.insert(files.end(), extra.begin(), extra.end());
  for (const auto& f : files) {
    if (fs::exists(from / f)) write_file_atomic(to / f, read_file(from / f));
  }
}

}  // namespace qforge::storage
