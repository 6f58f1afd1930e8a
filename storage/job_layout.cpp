#include "storage/job_layout.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <regex>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace qforge::storage {

using nlohmann::json;

std::string JobLayout::unit_shard_name(int unit) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "unit-%05d.safetensors", unit);
  return buf;
}

std::string JobLayout::checkpoint_name(int unit, std::int64_t attempt) {
  char buf[80];
  std::snprintf(buf, sizeof buf, "unit-%05d.ckpt-a%06lld.safetensors", unit, static_cast<long long>(attempt));
  return buf;
}

std::string JobLayout::cache_file_name(int boundary, const std::string& stream, std::int64_t attempt, int part) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "b%04d-%s-a%06lld-t%d.h5", boundary, stream.c_str(), static_cast<long long>(attempt), part);
  return buf;
}

namespace {

// The name without a writer's temporary suffix, and whether it had one.
std::pair<std::string, bool> final_name(const std::string& name) {
  std::string target;
  if (is_temp_name(name, &target)) return {target, true};
  return {name, false};
}

bool parse_int(const std::smatch& m, int i, std::int64_t& out) {
  try {
    out = std::stoll(m[i].str());
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::optional<JobLayout::UnitFile> JobLayout::parse_unit_shard(const std::string& name) {
  static const std::regex re(R"(^unit-(\d{5,})\.safetensors$)");
  const auto [base, temporary] = final_name(name);
  std::smatch m;
  std::int64_t unit = 0;
  if (!std::regex_match(base, m, re) || !parse_int(m, 1, unit)) return std::nullopt;
  return UnitFile{static_cast<int>(unit), -1, temporary};
}

std::optional<JobLayout::UnitFile> JobLayout::parse_checkpoint(const std::string& name) {
  static const std::regex re(R"(^unit-(\d{5,})\.ckpt-a(\d{6,})\.safetensors$)");
  const auto [base, temporary] = final_name(name);
  std::smatch m;
  std::int64_t unit = 0, attempt = 0;
  if (!std::regex_match(base, m, re) || !parse_int(m, 1, unit) || !parse_int(m, 2, attempt)) return std::nullopt;
  return UnitFile{static_cast<int>(unit), attempt, temporary};
}

std::optional<JobLayout::CacheFile> JobLayout::parse_cache_file(const std::string& name) {
  static const std::regex re(R"(^b(\d{4,})-(fp|q)-a(\d{6,})-t(\d+)\.h5$)");
  const auto [base, temporary] = final_name(name);
  std::smatch m;
  std::int64_t boundary = 0, attempt = 0, part = 0;
  if (!std::regex_match(base, m, re) || !parse_int(m, 1, boundary) || !parse_int(m, 3, attempt) || !parse_int(m, 4, part)) {
    return std::nullopt;
  }
  return CacheFile{static_cast<int>(boundary), m[2].str(), attempt, static_cast<int>(part), temporary};
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

json create_or_check_job_spec(const JobLayout& dir, json spec) {
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
