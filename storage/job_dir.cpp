#include "storage/job_dir.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <vector>

#include "common/error.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace qforge::storage {

using nlohmann::json;

std::string JobDir::unit_shard_name(int unit) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "unit-%05d.safetensors", unit);
  return buf;
}

std::string JobDir::cache_file_name(int boundary, const std::string& stream, std::int64_t attempt, int part) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "b%04d-%s-a%06lld-t%d.h5", boundary, stream.c_str(), static_cast<long long>(attempt), part);
  return buf;
}

std::string model_fingerprint(const fs::path& model_dir) {
  Sha256 h;
  auto feed = [&](const std::string& s) {
    const std::uint64_t n = s.size();
    h.update(&n, sizeof n);  // length-prefixed so concatenations cannot collide
    h.update(s.data(), s.size());
  };
  feed(read_file(model_dir / "config.json"));
  std::vector<fs::path> shards;
  for (const auto& e : fs::directory_iterator(model_dir)) {
    if (e.path().extension() == ".safetensors") shards.push_back(e.path());
  }
  std::sort(shards.begin(), shards.end());
  for (const auto& p : shards) {
    std::ifstream in(p, std::ios::binary);
    std::uint64_t header_len = 0;
    if (!in.read(reinterpret_cast<char*>(&header_len), 8) || header_len > (100u << 20)) {
      throw InputError(p.string(), "header", "not a safetensors file");
    }
    std::string header(header_len, '\0');
    if (!in.read(header.data(), static_cast<std::streamsize>(header_len))) throw InputError(p.string(), "header", "truncated");
    feed(p.filename().string());
    feed(std::to_string(fs::file_size(p)));
    feed(header);
  }
  return h.hex_digest();
}

std::string json_fingerprint(const json& j) { return sha256_hex(j.dump()); }  // nlohmann sorts object keys

namespace {

// First path (a.b.c) where two JSON values differ, with both values.
bool first_difference(const json& a, const json& b, const std::string& path, std::string& where, std::string& va,
                      std::string& vb) {
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      if (!b.contains(k)) return where = path + k, va = v.dump(), vb = "(absent)", true;
      if (first_difference(v, b[k], path + k + ".", where, va, vb)) return true;
    }
    for (const auto& [k, v] : b.items()) {
      if (!a.contains(k)) return where = path + k, va = "(absent)", vb = v.dump(), true;
    }
    return false;
  }
  if (a != b) {
    where = path.empty() ? "identity" : path.substr(0, path.size() - 1);
    va = a.dump();
    vb = b.dump();
    return true;
  }
  return false;
}

}  // namespace

json create_or_check_job_spec(const JobDir& dir, json spec) {
  spec["format"] = "qforge-job";
  spec["format_version"] = 1;
  spec["fingerprint"] = json_fingerprint(spec.at("identity"));
  if (!fs::exists(dir.spec_path())) {
    fs::create_directories(dir.root());
    write_file_atomic(dir.spec_path(), spec.dump(2) + "\n");
    fsync_directory(dir.root());
    return spec;
  }
  json old;
  try {
    old = json::parse(read_file(dir.spec_path()));
  } catch (const json::exception& e) {
    throw InputError(dir.spec_path().string(), "", std::string("not a qforge job spec: ") + e.what());
  }
  if (old.value("format", "") != "qforge-job" || !old.contains("identity")) {
    throw InputError(dir.spec_path().string(), "format", "not a qforge job spec");
  }
  if (old.value("format_version", 0) != 1) {
    throw InputError(dir.spec_path().string(), "format_version", "written by an incompatible qforge (" + old["format_version"].dump() + ")");
  }
  std::string where, was, now;
  if (first_difference(old["identity"], spec["identity"], "", where, was, now)) {
    throw InputError(dir.spec_path().string(), where,
                     "this job directory holds a different job (was " + was + ", now " + now +
                         "); resume with the original options, or use another --job-dir");
  }
  return old;
}

}  // namespace qforge::storage
