// Data sources (WikiText HF join, C4 JSON lines, format names) and token files.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/text_data.h"
#include "storage/token_file.h"
#include "tests/support/test_data.h"

namespace qforge::storage {
namespace {

std::string expect_input_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InputError";
  return "";
}

std::string token_header(std::uint32_t version, std::uint32_t width, std::uint64_t count) {
  std::string out = "QFTOKENS";
  out.append(reinterpret_cast<const char*>(&version), 4);
  out.append(reinterpret_cast<const char*>(&width), 4);
  out.append(reinterpret_cast<const char*>(&count), 8);
  return out;
}

TEST(TextData, FormatNames) {
  for (const char* name : {"text", "wikitext", "c4", "tokens"}) {
    EXPECT_STREQ(data_format_name(parse_data_format(name)), name);
  }
  EXPECT_EQ(parse_data_format("c4"), DataFormat::kC4);
  std::string msg = expect_input_error([] { parse_data_format("wikitext2"); });
  EXPECT_NE(msg.find("wikitext2"), std::string::npos) << msg;
}

TEST(TextData, GuessFormat) {
  const fs::path dir = test::make_temp_dir("guess-format");
  write_token_file(dir / "ids.bin", {1, 2, 3});
  write_file_atomic(dir / "wiki.test.raw", " = Title = \n");
  write_file_atomic(dir / "docs.jsonl", "{\"text\": \"a\"}\n");
  write_file_atomic(dir / "notes.txt", "plain text\n");
  EXPECT_EQ(guess_data_format(dir / "ids.bin"), DataFormat::kTokens);
  EXPECT_EQ(guess_data_format(dir / "wiki.test.raw"), DataFormat::kWikitext);
  EXPECT_EQ(guess_data_format(dir / "docs.jsonl"), DataFormat::kC4);
  EXPECT_EQ(guess_data_format(dir / "other.json"), DataFormat::kC4);
  EXPECT_EQ(guess_data_format(dir / "notes.txt"), DataFormat::kText);
  EXPECT_EQ(guess_data_format(dir / "wiki.test.tokens"), DataFormat::kText);
  fs::remove_all(dir);
}

TEST(TextData, WikitextJoinRowModel) {
  // Whitespace-only lines (" \n", and the last line without "\n") become empty rows.
  EXPECT_EQ(wikitext_hf_join(" \n = Title = \n \nText here .\n"), "\n\n = Title = \n\n\n\n\nText here .\n");
  EXPECT_EQ(wikitext_hf_join("a\n \t\nb"), "a\n\n\n\n\nb");
  EXPECT_EQ(wikitext_hf_join(""), "");
  // Python text mode reads "\r\n" and lone "\r" as line ends.
  EXPECT_EQ(wikitext_hf_join("a\r\nb\rc\n"), "a\n\n\nb\n\n\nc\n");
  // A no-break space (U+00A0) is whitespace to str.strip().
  EXPECT_EQ(wikitext_hf_join("\xC2\xA0\nx\n"), "\n\nx\n");
}

TEST(TextData, WikitextTestJoinMatchesHfDatasetsString) {
  const fs::path raw = test::shared_data() / "wikitext-2" / "wikitext-2-raw" / "wiki.test.raw";
  const fs::path joined = test::shared_data() / "wikitext-2" / "wikitext-2-raw" / "wiki.test.hf_join.txt";
  QF_REQUIRE_DATA(raw);
  QF_REQUIRE_DATA(joined);
  const std::string got = wikitext_hf_join(read_file(raw));
  const std::string want = read_file(joined);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want);
}

TEST(TextData, C4JsonlFirst1000) {
  const fs::path path = test::shared_data() / "c4" / "c4-en-train-first1000.jsonl";
  QF_REQUIRE_DATA(path);
  auto texts = read_jsonl_texts(path);
  ASSERT_EQ(texts.size(), 1000u);
  EXPECT_EQ(texts[0].rfind("Beginners BBQ Class Taking Place in Missoula!", 0), 0u) << texts[0].substr(0, 80);
  for (const auto& t : texts) EXPECT_FALSE(t.empty());
}

TEST(TextData, JsonlErrorsNameFileAndLine) {
  const fs::path dir = test::make_temp_dir("jsonl");
  write_file_atomic(dir / "ok.jsonl", "{\"text\": \"one\"}\n\n  \r\n{\"text\": \"two \\u00e9\", \"url\": \"x\"}");
  EXPECT_EQ(read_jsonl_texts(dir / "ok.jsonl"), (std::vector<std::string>{"one", "two \xC3\xA9"}));

  write_file_atomic(dir / "bad.jsonl", "{\"text\": \"one\"}\n\n{\"text\": \"two\"\n");
  std::string msg = expect_input_error([&] { read_jsonl_texts(dir / "bad.jsonl"); });
  EXPECT_NE(msg.find("bad.jsonl"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;

  write_file_atomic(dir / "missing.jsonl", "{\"text\": \"one\"}\n{\"content\": \"two\"}\n");
  msg = expect_input_error([&] { read_jsonl_texts(dir / "missing.jsonl"); });
  EXPECT_NE(msg.find("missing.jsonl"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("text"), std::string::npos) << msg;

  write_file_atomic(dir / "number.jsonl", "{\"text\": 5}\n");
  msg = expect_input_error([&] { read_jsonl_texts(dir / "number.jsonl"); });
  EXPECT_NE(msg.find("line 1"), std::string::npos) << msg;

  write_file_atomic(dir / "array.jsonl", "[\"text\"]\n");
  EXPECT_THROW(read_jsonl_texts(dir / "array.jsonl"), InputError);
  EXPECT_THROW(read_jsonl_texts(dir / "absent.jsonl"), InputError);
  fs::remove_all(dir);
}

TEST(TokenFile, RoundTrip) {
  const fs::path dir = test::make_temp_dir("tokfile");
  const std::vector<std::int32_t> ids = {1, 0, 31999, -1, 2147483647, -2147483647 - 1, 42};
  write_token_file(dir / "ids.bin", ids);
  EXPECT_TRUE(is_token_file(dir / "ids.bin"));
  EXPECT_EQ(fs::file_size(dir / "ids.bin"), 24 + 4 * ids.size());
  EXPECT_EQ(read_token_file(dir / "ids.bin"), ids);
  // The layout is the documented one (little-endian header fields), as the Python writer produces.
  EXPECT_EQ(read_file(dir / "ids.bin").substr(0, 24), token_header(1, 4, ids.size()));

  write_token_file(dir / "empty.bin", {});
  EXPECT_TRUE(read_token_file(dir / "empty.bin").empty());
  fs::remove_all(dir);
}

TEST(TokenFile, RejectsBadHeadersAndSizes) {
  const fs::path dir = test::make_temp_dir("tokfile-bad");
  const std::string two_ids("\x01\x00\x00\x00\x02\x00\x00\x00", 8);

  write_file_atomic(dir / "magic.bin", "QFTOKENZ" + token_header(1, 4, 2).substr(8) + two_ids);
  std::string msg = expect_input_error([&] { read_token_file(dir / "magic.bin"); });
  EXPECT_NE(msg.find("magic.bin: magic"), std::string::npos) << msg;
  EXPECT_FALSE(is_token_file(dir / "magic.bin"));

  write_file_atomic(dir / "version.bin", token_header(2, 4, 2) + two_ids);
  msg = expect_input_error([&] { read_token_file(dir / "version.bin"); });
  EXPECT_NE(msg.find("version.bin: version"), std::string::npos) << msg;

  write_file_atomic(dir / "width.bin", token_header(1, 8, 1) + two_ids);
  msg = expect_input_error([&] { read_token_file(dir / "width.bin"); });
  EXPECT_NE(msg.find("width.bin: bytes per id"), std::string::npos) << msg;

  write_file_atomic(dir / "short.bin", token_header(1, 4, 3) + two_ids);
  msg = expect_input_error([&] { read_token_file(dir / "short.bin"); });
  EXPECT_NE(msg.find("short.bin: count"), std::string::npos) << msg;

  write_file_atomic(dir / "long.bin", token_header(1, 4, 1) + two_ids);
  EXPECT_THROW(read_token_file(dir / "long.bin"), InputError);

  write_file_atomic(dir / "ragged.bin", token_header(1, 4, 2) + two_ids + "x");
  EXPECT_THROW(read_token_file(dir / "ragged.bin"), InputError);

  // A count so large that 4 * count overflows must still be a clean InputError.
  write_file_atomic(dir / "huge.bin", token_header(1, 4, ~0ull) + two_ids);
  EXPECT_THROW(read_token_file(dir / "huge.bin"), InputError);

  write_file_atomic(dir / "header.bin", "QFTOKENS\x01");
  msg = expect_input_error([&] { read_token_file(dir / "header.bin"); });
  EXPECT_NE(msg.find("header.bin"), std::string::npos) << msg;

  write_file_atomic(dir / "text.txt", "QFTOK is not how this starts\n");
  EXPECT_FALSE(is_token_file(dir / "text.txt"));
  EXPECT_FALSE(is_token_file(dir / "absent.bin"));
  EXPECT_THROW(read_token_file(dir / "absent.bin"), InputError);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace qforge::storage
