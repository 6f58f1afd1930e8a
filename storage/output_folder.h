// An output folder qforge writes (quantize's --out, export's --out) is presented as a result only when it
// is complete and all of it comes from the run that wrote it.
//
// Writing starts (OutputFolder's constructor) by removing the folder's manifest, then every file of the
// previous output (the files its manifest lists, and any file with a name qforge writes, e.g. left by an
// interrupted run), so nothing stale survives beside the new files: not another model's tokenizer, not a
// shard of an earlier layout. It ends (publish) by writing qforge-manifest.json last: every file with its
// size and sha256 (of a safetensors file: of its 8-byte length and JSON header, so checking is cheap for any
// model size while a file from another write, or cut short, still differs). Between the two the folder has
// no manifest, and readers refuse it: a crash mid-write never leaves a mix that evaluates as a model.
//
// Files in the target that qforge did not write are refused before anything is computed (check_target, in
// the preflight) rather than deleted or silently kept.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace qforge::storage {

namespace fs = std::filesystem;

class OutputFolder {
 public:
  static constexpr const char* kManifestName = "qforge-manifest.json";
  // Present from the start of a write until its publish: what names a folder as interrupted mid-write
  // even after the previous output's config.json is gone.
  static constexpr const char* kWritingMarker = ".qforge-writing";
  // Prefix of the empty folders a preflight creates and removes to learn that a folder is writable;
  // every rank probes at once, so one rank's probe is nothing foreign to another's check_target.
  static constexpr const char* kWriteProbePrefix = ".qforge-probe-";

  // InputError naming `flag` when `dir` exists and holds an entry that is neither the previous output's
  // (listed in its manifest, or named like a file qforge writes) nor one of `allowed` (e.g. the default
  // job directory inside it). Writes nothing.
  static void check_target(const fs::path& dir, const std::string& flag, const std::vector<fs::path>& allowed = {});

  // Begins a write into `dir` (created if needed): removes the manifest, then the previous output's files.
  explicit OutputFolder(fs::path dir);
  // Ends it: the manifest over every regular file now in the folder (not hidden ones), fsynced.
  void publish();

 private:
  fs::path dir_;
};

// Readers' check. A folder with a manifest must match it exactly (every file present with its size and
// digest, no other file of a kind readers use, such as a tokenizer); a qforge output without one (its config.json's quantization_config is
// qforge's, or was exported by qforge) was interrupted mid-write. InputError naming the file either way;
// any other folder (a model from elsewhere) passes.
void verify_output_folder(const fs::path& dir);
// The cheap part of that check, for every reader of a model folder's config.json: InputError when a
// qforge write into `dir` began and did not finish.
void check_not_mid_write(const fs::path& dir);

}  // namespace qforge::storage
