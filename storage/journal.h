// The journal: the append-only durable log of a job directory (journal.log). Every state change of a
// job (unit finished, shard written, ...) is one record appended here; all other job state is
// derived from it, so a crash at any point is recovered by replaying the journal.
//
// Format (storage/FORMAT.md, "Journal"): one record per line,
//   <compact JSON object>\t<8 lowercase hex digits: CRC-32 (IEEE, as zlib's crc32) of the JSON bytes>\n
// Every record carries "v": 1 (format version); append() adds it when absent. A line is written with
// one write() and then fsynced, so a crash can leave at most the last line incomplete ("torn tail").
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <vector>

namespace qforge::storage {

namespace fs = std::filesystem;

// Record format version written and accepted.
constexpr int kJournalVersion = 1;

// CRC-32 with the IEEE polynomial, reflected, init and final xor 0xffffffff: the same value as
// zlib's crc32() (which computes it) and Python's zlib.crc32(), so journals can be checked with a one-line script.
std::uint32_t crc32(const void* data, std::size_t size);

struct JournalReplay {
  std::vector<nlohmann::json> records;
  // The last line was incomplete or failed its CRC: a crash during append. Its bytes are not part
  // of valid_bytes and the record is not in `records`.
  bool torn_tail = false;
  // Length of the prefix made of whole, valid lines (where the next append must start).
  std::uint64_t valid_bytes = 0;
};

// Reads all records. A last line that is incomplete (no '\n') or fails its CRC is a torn tail from a
// crash during append: reported via torn_tail, not an error. A bad line followed by any further
// bytes, a line whose CRC matches but whose JSON is not an object, or a record with an unknown
// version "v", is corruption: InputError naming the file and the line number (1-based).
// A missing file gives no records.
JournalReplay replay_journal(const fs::path& path);
// The same for the bytes of a journal (`source` names them in errors): the parser alone, no file I/O
// (fuzz/fuzz_journal.cpp drives it).
JournalReplay parse_journal(const std::string& text, const std::string& source);

class Journal {
 public:
  // Opens for appending (creating it, and fsyncing the directory, if absent). A torn tail is truncated
  // away first (ftruncate to valid_bytes + fsync) so new records never follow garbage. A corrupt
  // journal is refused with replay_journal's InputError rather than appended to.
  explicit Journal(fs::path path);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Adds "v": 1 when absent, writes the line with one write() call, then fsyncs. Thread-safe.
  // Throws InternalError on a record that is not a JSON object or has another "v", and on I/O
  // failure; after an I/O failure the partial line is truncated away if possible and the journal
  // refuses further appends (an fsync error leaves durability unknown, and retrying it is not
  // reliable on Linux), so the job must stop and be resumed from the journal on disk.
  void append(nlohmann::json record);
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;  // bytes of whole lines in the file
  bool failed_ = false;
  std::mutex mutex_;
};

}  // namespace qforge::storage
