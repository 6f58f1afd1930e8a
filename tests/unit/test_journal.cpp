// The job journal: line format and CRC, round trip, torn tails (reported, then truncated by the next
// open so appends continue cleanly), corruption in the middle and unknown versions refused with the
// line number, and concurrent appends.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/journal.h"
#include "tests/support/test_data.h"

namespace qforge::storage {
namespace {

using nlohmann::json;

void append_raw(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::app);
  out << bytes;
}

std::string framed(const std::string& json_text) {
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", crc32(json_text.data(), json_text.size()));
  return json_text + "\t" + crc + "\n";
}

std::string expect_input_error(const fs::path& path) {
  try {
    replay_journal(path);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InputError from " << path;
  return "";
}

TEST(Journal, Crc32MatchesZlib) {
  EXPECT_EQ(crc32("123456789", 9), 0xcbf43926u);
  EXPECT_EQ(crc32("", 0), 0u);
}

TEST(Journal, RoundTripAddsVersion) {
  const fs::path path = test::make_temp_dir("journal-rt") / "journal.log";
  {
    Journal j(path);
    EXPECT_TRUE(fs::exists(path));
    j.append({{"event", "unit_done"}, {"unit", 0}, {"loss", 0.25}});
    j.append({{"event", "unit_done"}, {"unit", 1}, {"note", "tab\there\nnewline"}});
    j.append({{"v", 1}, {"event", "assembled"}});
  }
  const std::string text = read_file(path);
  const std::regex line_re(R"(\{[^\n\t]*\}\t[0-9a-f]{8}\n)");
  std::istringstream lines(text);
  std::string line;
  int count = 0;
  while (std::getline(lines, line)) {
    EXPECT_TRUE(std::regex_match(line + "\n", line_re)) << line;
    ++count;
  }
  EXPECT_EQ(count, 3);

  const JournalReplay r = replay_journal(path);
  EXPECT_FALSE(r.torn_tail);
  EXPECT_EQ(r.valid_bytes, text.size());
  ASSERT_EQ(r.records.size(), 3u);
  for (const auto& rec : r.records) EXPECT_EQ(rec.at("v"), 1);
  EXPECT_EQ(r.records[0].at("unit"), 0);
  EXPECT_EQ(r.records[0].at("loss"), 0.25);
  EXPECT_EQ(r.records[1].at("note"), "tab\there\nnewline");
  EXPECT_EQ(r.records[2].at("event"), "assembled");

  // Reopening appends after the existing records.
  {
    Journal j(path);
    j.append({{"event", "more"}});
  }
  EXPECT_EQ(replay_journal(path).records.size(), 4u);
}

TEST(Journal, MissingFileHasNoRecords) {
  const JournalReplay r = replay_journal(test::make_temp_dir("journal-missing") / "journal.log");
  EXPECT_TRUE(r.records.empty());
  EXPECT_FALSE(r.torn_tail);
  EXPECT_EQ(r.valid_bytes, 0u);
}

void check_torn_tail_recovery(const std::string& tail, const std::string& tag) {
  const fs::path path = test::make_temp_dir(tag) / "journal.log";
  {
    Journal j(path);
    j.append({{"unit", 0}});
    j.append({{"unit", 1}});
  }
  const auto good_size = fs::file_size(path);
  append_raw(path, tail);

  JournalReplay r = replay_journal(path);
  EXPECT_TRUE(r.torn_tail);
  EXPECT_EQ(r.valid_bytes, good_size);
  ASSERT_EQ(r.records.size(), 2u);

  {
    Journal j(path);  // truncates the torn tail
    EXPECT_EQ(fs::file_size(path), good_size);
    j.append({{"unit", 2}});
  }
  r = replay_journal(path);
  EXPECT_FALSE(r.torn_tail);
  ASSERT_EQ(r.records.size(), 3u);
  EXPECT_EQ(r.records[2].at("unit"), 2);
  EXPECT_EQ(r.valid_bytes, fs::file_size(path));
}

TEST(Journal, TornPartialLineIsTruncatedOnOpen) {
  check_torn_tail_recovery(R"({"unit":2,"v":1)", "journal-torn-partial");
  // A crash can also cut between the JSON and the CRC, or inside the CRC digits.
  check_torn_tail_recovery("{\"unit\":2,\"v\":1}\t3b", "journal-torn-crc-digits");
}

TEST(Journal, TornLastLineWithWrongCrcIsTruncatedOnOpen) {
  check_torn_tail_recovery("{\"unit\":2,\"v\":1}\t00000000\n", "journal-torn-badcrc");
}

TEST(Journal, CorruptMiddleLineIsAnErrorWithLineNumber) {
  const fs::path path = test::make_temp_dir("journal-corrupt") / "journal.log";
  {
    Journal j(path);
    j.append({{"unit", 0}});
    j.append({{"unit", 1}});
    j.append({{"unit", 2}});
  }
  std::string text = read_file(path);
  const auto second = text.find("\"unit\":1");
  ASSERT_NE(second, std::string::npos);
  text[second + 7] = '7';  // flip the value on line 2; its CRC no longer matches
  write_file_atomic(path, text);

  const std::string msg = expect_input_error(path);
  EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("journal.log"), std::string::npos) << msg;
  // Opening for append must refuse too, never truncate good records away.
  EXPECT_THROW(Journal{path}, InputError);
  EXPECT_EQ(read_file(path), text);
}

TEST(Journal, UnknownVersionIsAnError) {
  const fs::path path = test::make_temp_dir("journal-version") / "journal.log";
  {
    Journal j(path);
    j.append({{"unit", 0}});
  }
  // Valid CRC, so not a torn tail, even as the last line.
  append_raw(path, framed(R"({"unit":1,"v":2})"));
  const std::string msg = expect_input_error(path);
  EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("version"), std::string::npos) << msg;

  // The writer refuses to produce such a record.
  const fs::path other = test::make_temp_dir("journal-version-append") / "journal.log";
  Journal j(other);
  EXPECT_THROW(j.append({{"v", 2}}), InternalError);
  EXPECT_THROW(j.append(json::array({1, 2})), InternalError);
}

TEST(Journal, ConcurrentAppendsKeepWholeLines) {
  const fs::path path = test::make_temp_dir("journal-threads") / "journal.log";
  Journal j(path);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&j, t] {
      for (int i = 0; i < 20; ++i) j.append({{"thread", t}, {"i", i}, {"pad", std::string(100 + i, 'x')}});
    });
  }
  for (auto& th : threads) th.join();
  const JournalReplay r = replay_journal(path);
  EXPECT_FALSE(r.torn_tail);
  ASSERT_EQ(r.records.size(), 80u);
  std::vector<int> next(4, 0);
  for (const auto& rec : r.records) {
    const int t = rec.at("thread");
    EXPECT_EQ(rec.at("i"), next[t]++);  // each thread's records in its own order
  }
}

}  // namespace
}  // namespace qforge::storage
