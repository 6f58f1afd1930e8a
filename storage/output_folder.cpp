#include "storage/output_folder.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "common/error.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/sha256.h"
#include "common/strings.h"

namespace qforge::storage {

using nlohmann::json;

namespace {

// Every name a qforge output (quantize or export) may hold, and the temporaries of their writers.
bool is_output_name(const std::string& name) {
  static const std::regex shards(R"(^(model|quantization)(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$)");
  static const std::set<std::string> fixed = {
      OutputFolder::kManifestName, OutputFolder::kWritingMarker, "config.json", "quantize_config.json", "generation_config.json",
      "tokenizer.model", "tokenizer.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
      "calibration_report.json", "calibration.tok", "oscillation.json", "oscillation.svg"};
  std::string target;
  if (is_temp_name(name, &target)) return is_output_name(target);
  return fixed.count(name) > 0 || std::regex_match(name, shards);
}

json read_manifest(const fs::path& dir) {
  const fs::path path = dir / OutputFolder::kManifestName;
  try {
    const json m = json::parse(read_file(path));
    if (!m.is_object() || !m.contains("files") || !m["files"].is_object()) throw std::runtime_error("no \"files\" object");
    return m;
  } catch (const std::exception& e) {
    throw InputError(path.string(), "", std::string("unreadable manifest: ") + e.what());
  }
}

// sha256 of a safetensors file's 8-byte header length and header; of any other file, its bytes.
std::string digest(const fs::path& path) {
  if (!ends_with(path.filename().string(), ".safetensors")) return sha256_file(path);
  std::ifstream in(path, std::ios::binary);
  char len_bytes[8] = {};
  in.read(len_bytes, 8);
  std::uint64_t len = 0;
  std::memcpy(&len, len_bytes, 8);
  if (!in || len > (std::uint64_t{1} << 30)) return "unreadable header";
  std::string head(len_bytes, 8);
  head.resize(8 + len);
  in.read(head.data() + 8, static_cast<std::streamsize>(len));
  return in ? sha256_hex(head) : "truncated header";
}

bool is_qforge_output(const fs::path& dir) {
  if (!fs::exists(dir / "config.json")) return false;
  try {
    const json q = json::parse(read_file(dir / "config.json")).value("quantization_config", json::object());
    return q.value("quant_method", "") == "qforge" || q.contains("qforge");
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

void OutputFolder::check_target(const fs::path& dir, const std::string& flag, const std::vector<fs::path>& allowed) {
  if (!fs::exists(dir)) return;
  if (!fs::is_directory(dir)) throw InputError(flag, "", dir.string() + " is a file, not a folder");
  std::set<std::string> ours;
  if (fs::exists(dir / kManifestName)) {
    for (const auto& [name, entry] : read_manifest(dir)["files"].items()) ours.insert(name);
  }
  std::vector<std::string> foreign;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(kWriteProbePrefix, 0) == 0) continue;  // another rank's writability probe, gone in a moment
    bool ok = ours.count(name) > 0 || (e.is_regular_file() && is_output_name(name));
    for (const auto& a : allowed) {
      std::error_code ec;
      ok = ok || fs::equivalent(e.path(), a, ec);
    }
    if (!ok) foreign.push_back(name);
  }
  if (foreign.empty()) return;
  std::string list;
  for (std::size_t i = 0; i < foreign.size() && i < 5; ++i) list += (i ? ", " : "") + foreign[i];
  if (foreign.size() > 5) list += ", ... (" + std::to_string(foreign.size()) + " in all)";
  throw InputError(flag, "", dir.string() + " holds files qforge did not write (" + list +
                                 "); give a new or empty folder, or a previous qforge output to replace");
}

OutputFolder::OutputFolder(fs::path dir) : dir_(std::move(dir)) {
  fs::create_directories(dir_);
  write_file_atomic(dir_ / kWritingMarker, "a qforge run is writing this folder, or was interrupted doing so\n");
  std::set<std::string> previous;
  if (fs::exists(dir_ / kManifestName)) {
    for (const auto& [name, entry] : read_manifest(dir_)["files"].items()) previous.insert(name);
    fs::remove(dir_ / kManifestName);
    fsync_directory(dir_);  // from here on the folder reads as incomplete
  }
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (name == kWritingMarker || !e.is_regular_file()) continue;
    if (previous.count(name) || is_output_name(name)) fs::remove(e.path());
  }
}

void OutputFolder::publish() {
  json files = json::object();
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || name[0] == '.' || name == kManifestName) continue;
    files[name] = {{"bytes", e.file_size()}, {"sha256", digest(e.path())}};
  }
  fsync_directory(dir_);
  write_file_atomic(dir_ / kManifestName, json{{"qforge", QFORGE_VERSION}, {"files", files}}.dump(1) + "\n");
  fs::remove(dir_ / kWritingMarker);
  fsync_directory(dir_);
}

void check_not_mid_write(const fs::path& dir) {
  if (fs::exists(dir / OutputFolder::kWritingMarker)) {
    throw InputError(dir.string(), "", "incomplete qforge output: the run writing it was interrupted (" +
                                           std::string(OutputFolder::kWritingMarker) + " is present); rerun that "
                                           "command to finish it");
  }
}

void verify_output_folder(const fs::path& dir) {
  check_not_mid_write(dir);
  const fs::path manifest = dir / OutputFolder::kManifestName;
  if (!fs::exists(manifest)) {
    if (is_qforge_output(dir)) {
      throw InputError(dir.string(), "", "incomplete qforge output (no " + std::string(OutputFolder::kManifestName) +
                                             "): the run that wrote it was interrupted; rerun that command to finish it");
    }
    return;
  }
  const json files = read_manifest(dir)["files"];
  for (const auto& [name, entry] : files.items()) {
    const fs::path path = dir / name;
    if (!fs::exists(path)) throw InputError(path.string(), "", "listed in the manifest but missing");
    if (fs::file_size(path) != entry.value("bytes", std::uint64_t{0}) || digest(path) != entry.value("sha256", "")) {
      throw InputError(path.string(), "", "does not match the folder's manifest (changed or written by another run)");
    }
  }
  // A file readers would use (a tokenizer, a shard, ...) that the run did not write is refused; others
  // (a README someone added) are not the model's and are left alone.
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && is_output_name(name) && name != OutputFolder::kManifestName && !files.contains(name)) {
      throw InputError(e.path().string(), "", "is not part of this qforge output (not in its manifest); remove it");
    }
  }
}

}  // namespace qforge::storage
