#include "storage/journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/file_util.h"

namespace qforge::storage {

using nlohmann::json;

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string crc_hex(std::uint32_t crc) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", crc);
  return buf;
}

bool parse_crc_hex(const std::string& s, std::uint32_t& out) {
  if (s.size() != 8) return false;
  out = 0;
  for (char ch : s) {
    int d;
    if (ch >= '0' && ch <= '9') d = ch - '0';
    else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
    else if (ch >= 'A' && ch <= 'F') d = ch - 'A' + 10;
    else return false;
    out = (out << 4) | static_cast<std::uint32_t>(d);
  }
  return true;
}

// Why a line is not a valid record, or empty if it is. Distinguishes "the bytes are not what the
// writer wrote" (CRC; torn tail if last) from "the writer wrote something we must not accept".
struct LineCheck {
  std::string torn;     // bytes damaged: acceptable only as the last line
  std::string corrupt;  // never acceptable
  json record;
};

LineCheck check_line(const std::string& line) {
  LineCheck r;
  const auto tab = line.rfind('\t');
  std::uint32_t stored = 0;
  if (tab == std::string::npos || !parse_crc_hex(line.substr(tab + 1), stored)) {
    r.torn = "no '\\t<crc32 hex>' suffix";
    return r;
  }
  const std::uint32_t actual = crc32(line.data(), tab);
  if (actual != stored) {
    r.torn = "CRC mismatch (stored " + crc_hex(stored) + ", computed " + crc_hex(actual) + ")";
    return r;
  }
  try {
    r.record = json::parse(line.begin(), line.begin() + static_cast<std::ptrdiff_t>(tab));
  } catch (const json::exception& e) {
    r.corrupt = std::string("CRC matches but the JSON does not parse: ") + e.what();
    return r;
  }
  if (!r.record.is_object()) {
    r.corrupt = "CRC matches but the record is not a JSON object";
    return r;
  }
  const auto v = r.record.find("v");
  if (v == r.record.end() || !v->is_number_integer() || v->get<std::int64_t>() != kJournalVersion) {
    r.corrupt = "v: unknown journal record version " + (v == r.record.end() ? std::string("(absent)") : v->dump()) +
                " (this qforge reads version " + std::to_string(kJournalVersion) +
                "; was the job written by a newer qforge?)";
  }
  return r;
}

}  // namespace

std::uint32_t crc32(const void* data, std::size_t size) {
  // zlib takes lengths as uInt: feed it in pieces that fit.
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = ::crc32(0L, Z_NULL, 0);
  while (size > 0) {
    const auto n = static_cast<uInt>(std::min<std::size_t>(size, 1u << 30));
    c = ::crc32(c, p, n);
    p += n;
    size -= n;
  }
  return static_cast<std::uint32_t>(c);
}

JournalReplay replay_journal(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return {};
  return parse_journal(read_file(path), path.string());
}

JournalReplay parse_journal(const std::string& text, const std::string& source) {
  JournalReplay out;
  std::size_t pos = 0;
  for (std::size_t line_no = 1; pos < text.size(); ++line_no) {
    const std::size_t nl = text.find('\n', pos);
    const bool complete = nl != std::string::npos;
    const std::size_t end = complete ? nl + 1 : text.size();
    const bool last = end == text.size();
    const std::string where = "line " + std::to_string(line_no);
    if (!complete) {  // only possible for the last line: a crash mid-append
      out.torn_tail = true;
      break;
    }
    LineCheck check = check_line(text.substr(pos, nl - pos));
    if (!check.corrupt.empty()) throw InputError(source, where, check.corrupt);
    if (!check.torn.empty()) {
      if (last) {
        out.torn_tail = true;
        break;
      }
      // An append is one write of a whole line, so only the last line can be damaged by a crash.
      throw InputError(source, where,
                       check.torn + " and more bytes follow: the journal is corrupt (not a torn append)");
    }
    out.records.push_back(std::move(check.record));
    pos = end;
    out.valid_bytes = end;
  }
  return out;
}

Journal::Journal(fs::path path) : path_(std::move(path)) {
  std::error_code ec;
  const bool existed = fs::exists(path_, ec);
  const JournalReplay replay = replay_journal(path_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError(path_.string(), "", "cannot open journal for appending: " + errno_text());
  if (!existed) fsync_directory(path_.has_parent_path() ? path_.parent_path() : fs::path("."));
  if (replay.torn_tail) {
    if (::ftruncate(fd_, static_cast<off_t>(replay.valid_bytes)) != 0 || ::fsync(fd_) != 0) {
      const std::string err = errno_text();
      ::close(fd_);
      fd_ = -1;
      throw InternalError(path_.string() + ": cannot truncate the torn tail: " + err);
    }
  }
  size_ = replay.valid_bytes;
}

Journal::~Journal() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

// JSON has no NaN or Inf (nlohmann writes null), and a null where a number belongs breaks every later
// replay: such a record is refused before it is written, naming the field.
void check_finite_numbers(const json& j, const std::string& where) {
  if (j.is_number_float() && !std::isfinite(j.get<double>())) {
    throw InternalError("journal record field " + where + " is not a finite number (" + j.dump() + ")");
  }
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) check_finite_numbers(v, where.empty() ? k : where + "." + k);
  } else if (j.is_array()) {
    for (std::size_t i = 0; i < j.size(); ++i) check_finite_numbers(j[i], where + "[" + std::to_string(i) + "]");
  }
}

}  // namespace

void Journal::append(json record) {
  if (!record.is_object()) throw InternalError(path_.string() + ": journal record must be a JSON object");
  check_finite_numbers(record, "");
  if (!record.contains("v")) record["v"] = kJournalVersion;
  QF_CHECK(record["v"] == kJournalVersion, path_.string() + ": journal record with version " + record["v"].dump());
  record["v"] = kJournalVersion;  // 1.0 compares equal but would be written as a float
  std::string line;
  try {
    // Compact dump escapes control characters inside strings, so the text has no raw '\t' or '\n'.
    line = record.dump();
  } catch (const json::exception& e) {
    throw InternalError(path_.string() + ": journal record cannot be serialised: " + e.what());
  }
  line += '\t' + crc_hex(crc32(line.data(), line.size())) + '\n';

  std::lock_guard<std::mutex> lock(mutex_);
  if (failed_) throw InternalError(path_.string() + ": journal refused append after an earlier I/O failure");
  ssize_t n;
  do {
    n = ::write(fd_, line.data(), line.size());
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(line.size())) {
    const std::string err = n < 0 ? errno_text() : "short write (" + std::to_string(n) + " of " +
                                                        std::to_string(line.size()) + " bytes)";
    failed_ = true;
    // Remove the partial line so the file stays a valid journal; replay would call it torn otherwise.
    if (n > 0 && ::ftruncate(fd_, static_cast<off_t>(size_)) == 0) ::fsync(fd_);
    throw InternalError(path_.string() + ": journal write failed: " + err);
  }
  if (::fsync(fd_) != 0) {
    failed_ = true;
    throw InternalError(path_.string() + ": journal fsync failed: " + errno_text());
  }
  size_ += line.size();
}

}  // namespace qforge::storage
