#include "storage/text_data.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "common/error.h"
#include "common/strings.h"
#include "common/file_util.h"
#include "storage/token_file.h"

namespace qforge::storage {

namespace {

struct FormatName {
  DataFormat format;
  const char* name;
};
constexpr FormatName kFormats[] = {
    {DataFormat::kText, "text"},
    {DataFormat::kWikitext, "wikitext"},
    {DataFormat::kC4, "c4"},
    {DataFormat::kTokens, "tokens"},
};

// Python's str.isspace() for one code point (what str.strip() removes).
bool is_python_space(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// True when a line holds only whitespace, i.e. Python `not line.strip()`. A malformed UTF-8 byte is not
// whitespace (Python would not have decoded the file at all).
bool is_blank_python(const std::string& s, std::size_t begin, std::size_t end) {
  std::size_t i = begin;
  while (i < end) {
    unsigned char b = static_cast<unsigned char>(s[i]);
    std::uint32_t cp;
    std::size_t len;
    if (b < 0x80) {
      cp = b;
      len = 1;
    } else if ((b & 0xE0) == 0xC0) {
      cp = b & 0x1F;
      len = 2;
    } else if ((b & 0xF0) == 0xE0) {
      cp = b & 0x0F;
      len = 3;
    } else if ((b & 0xF8) == 0xF0) {
      cp = b & 0x07;
      len = 4;
    } else {
      return false;
    }
    if (end - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      unsigned char c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (!is_python_space(cp)) return false;
    i += len;
  }
  return true;
}

}  // namespace

DataFormat parse_data_format(const std::string& name) {
  for (const auto& f : kFormats) {
    if (name == f.name) return f.format;
  }
  throw InputError("--data-format", "", "unknown data format \"" + name + "\" (expected text, wikitext, c4 or tokens)");
}

const char* data_format_name(DataFormat format) {
  for (const auto& f : kFormats) {
    if (f.format == format) return f.name;
  }
  throw InternalError("unknown DataFormat " + std::to_string(static_cast<int>(format)));
}

DataFormat guess_data_format(const fs::path& path) {
  if (is_token_file(path)) return DataFormat::kTokens;
  const std::string ext = path.extension().string();
  if (ext == ".jsonl" || ext == ".json") return DataFormat::kC4;
  const std::string name = path.filename().string();
  if (starts_with(name, "wiki.") && ends_with(name, ".raw")) return DataFormat::kWikitext;
  return DataFormat::kText;
}

std::string wikitext_hf_join(const std::string& raw) {
  // The HF wikitext builder iterates the file in Python text mode: universal newlines turn "\r\n" and
  // a lone "\r" into "\n", and each resulting line (with its "\n") is one row, or "" when
  // row.strip() is empty.
  std::string text;
  text.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      text.push_back('\n');
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else {
      text.push_back(raw[i]);
    }
  }

  std::string out;
  out.reserve(text.size() + text.size() / 8);
  bool first = true;
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t nl = text.find('\n', begin);
    std::size_t end = nl == std::string::npos ? text.size() : nl + 1;
    if (!first) out += "\n\n";
    first = false;
    if (!is_blank_python(text, begin, end)) out.append(text, begin, end - begin);
    begin = end;
  }
  return out;
}

std::vector<std::string> read_jsonl_texts(const fs::path& path) {
  const std::string source = path.string();
  const std::string bytes = read_file(path);
  std::vector<std::string> texts;
  std::size_t begin = 0;
  std::size_t line_no = 0;
  while (begin < bytes.size()) {
    ++line_no;
    std::size_t nl = bytes.find('\n', begin);
    std::size_t end = nl == std::string::npos ? bytes.size() : nl;
    const std::string line = bytes.substr(begin, end - begin);
    begin = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = "line " + std::to_string(line_no);
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw InputError(source, where, std::string("malformed JSON: ") + e.what());
    }
    if (!doc.is_object()) throw InputError(source, where, "expected a JSON object with a \"text\" field");
    auto it = doc.find("text");
    if (it == doc.end()) throw InputError(source, where, "missing \"text\" field");
    if (!it->is_string()) throw InputError(source, where, "\"text\" is not a string");
    texts.push_back(it->get<std::string>());
  }
  return texts;
}

}  // namespace qforge::storage
