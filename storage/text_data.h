// Evaluation and calibration text sources, turned into exactly the strings the reference protocols
// tokenize (../shared/docs/formats-and-ecosystem.md §4).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace qforge::storage {

namespace fs = std::filesystem;

enum class DataFormat { kText, kWikitext, kC4, kTokens };

// "text" | "wikitext" | "c4" | "tokens"; InputError for anything else.
DataFormat parse_data_format(const std::string& name);
const char* data_format_name(DataFormat format);
// Used when --data-format is not given: token-file magic -> tokens; *.jsonl / *.json -> c4;
// a file name starting with "wiki." and ending in ".raw" -> wikitext; otherwise text.
DataFormat guess_data_format(const fs::path& path);

// A WikiText raw file (e.g. wiki.test.raw) -> the string "\n\n".join(HF datasets rows) that GPTQ-style
// code tokenizes: each line is one row; a whitespace-only line is an empty row; other rows keep their
// text with a trailing "\n".
std::string wikitext_hf_join(const std::string& raw);

// JSON lines with a "text" string field (C4 documents), in file order. InputError naming the file and
// line for malformed JSON or a missing/non-string "text".
std::vector<std::string> read_jsonl_texts(const fs::path& path);

}  // namespace qforge::storage
