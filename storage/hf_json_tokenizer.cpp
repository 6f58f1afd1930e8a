// HF `tokenizers` tokenizer.json with a BPE model: byte-level BPE (GPT-2, LLaMA-3, Qwen2) and the
// SentencePiece-style BPE with byte fallback that transformers writes for LLaMA-2/Mistral. The pipeline is
// tokenizers' own, stage for stage:
//   1. added tokens are split off the raw text (leftmost, longest first; lstrip/rstrip swallow the
//      whitespace beside them) and map straight to their ids;
//   2. every other segment is normalized (NFC/NFD/NFKC/NFKD through utf8proc, Prepend, Replace, Sequence),
//   3. pre-tokenized (Split with a regex through PCRE2 in UTF + Unicode-property mode, ByteLevel with
//      GPT-2's byte-to-character table and optionally its regex, Metaspace, Sequence),
//   4. each piece is encoded by BPE: with ignore_merges a piece that is a vocabulary entry is one token;
//      otherwise its characters are merged pair by pair, lowest merge rank first (all occurrences, left to
//      right); unknown symbols fall back to <0xXX> byte tokens or the unk token;
//   5. the post-processor adds its template's special tokens (TemplateProcessing; ByteLevel adds none).
// Anything else in the file (other models, normalizers, pre-tokenizers, split behaviours, dropout) is
// refused naming the field, rather than encoded approximately.
#define PCRE2_CODE_UNIT_WIDTH 8  // UTF-8 strings
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <queue>
#include <tuple>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "common/error.h"
#include "storage/tokenizer_backends.h"

namespace qforge::storage {

namespace {

using nlohmann::json;

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    out.push_back(s.substr(i, std::min(n, s.size() - i)));
    i += n;
  }
  return out;
}

std::string utf8_of(std::uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256 + n in order.
struct ByteLevelTable {
  std::string to_char[256];
  std::unordered_map<std::string, unsigned char> to_byte;
  ByteLevelTable() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_char[b] = utf8_of(printable ? static_cast<std::uint32_t>(b) : static_cast<std::uint32_t>(256 + n++));
      to_byte[to_char[b]] = static_cast<unsigned char>(b);
    }
  }
};
const ByteLevelTable& byte_level() {
  static const ByteLevelTable t;
  return t;
}

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                          &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw InputError(where, "pattern", "regex does not compile at offset " + std::to_string(offset) + ": " +
                                             reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // 10-50x faster where available; the interpreter otherwise
    data_ = pcre2_match_data_create_from_pattern(code_, nullptr);
  }
  ~Regex() {
    pcre2_match_data_free(data_);
    pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches [begin, end) of the pattern in s, left to right (an empty match advances by one
  // character). `s` is valid UTF-8 (encode checks it once: PCRE2 would otherwise validate the whole subject
  // at every match, quadratic in its length). The match data is shared: callers hold the tokenizer's lock.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(const std::string& s) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    std::size_t at = 0;
    while (at <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), at, PCRE2_NO_UTF_CHECK, data_, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw InternalError(std::string("tokenizer regex failed: ") + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data_);
      if (ov[1] == ov[0]) {
        at = ov[0] + 1;
        while (at < s.size() && (static_cast<unsigned char>(s[at]) & 0xC0) == 0x80) ++at;
        continue;
      }
      out.emplace_back(ov[0], ov[1]);
      at = ov[1];
    }
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* data_ = nullptr;
};

std::string normalize_unicode(const std::string& s, const std::string& form) {
  const auto opts = form == "NFC"    ? UTF8PROC_COMPOSE
                    : form == "NFD"  ? UTF8PROC_DECOMPOSE
                    : form == "NFKC" ? (UTF8PROC_COMPOSE | UTF8PROC_COMPAT)
                                     : (UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  utf8proc_uint8_t* out = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                              &out, static_cast<utf8proc_option_t>(opts | UTF8PROC_STABLE));
  if (n < 0) return s;  // invalid UTF-8 is passed on unchanged, as bytes
  std::string result(reinterpret_cast<char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return result;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

std::string field_string(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j.at(key).is_string()) throw InputError(where, key, "missing or not a string");
  return j.at(key).get<std::string>();
}

// A "pattern" of Split/Replace: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::unique_ptr<Regex> regex;
  std::vector<std::pair<std::size_t, std::size_t>> find_all(const std::string& s) const {
    if (regex) return regex->find_all(s);
    std::vector<std::pair<std::size_t, std::size_t>> out;
    if (literal.empty()) return out;
    for (std::size_t at = s.find(literal); at != std::string::npos; at = s.find(literal, at + literal.size())) {
      out.emplace_back(at, at + literal.size());
    }
    return out;
  }
};
Pattern parse_pattern(const json& j, const std::string& where) {
  Pattern p;
  if (j.is_object() && j.contains("String") && j.at("String").is_string()) {
    p.literal = j.at("String").get<std::string>();
  } else if (j.is_object() && j.contains("Regex") && j.at("Regex").is_string()) {
    p.regex = std::make_unique<Regex>(j.at("Regex").get<std::string>(), where);
  } else {
    throw InputError(where, "pattern", "must be {\"String\": ...} or {\"Regex\": ...}");
  }
  return p;
}

// One step of the normalizer or pre-tokenizer chain.
struct Step {
  std::string type;
  std::string text;           // Prepend: what; Replace: the content; Metaspace: the replacement
  std::string form;           // NFC, ...
  std::string behavior;       // Split: Isolated | Removed
  std::string prepend_scheme; // Metaspace: always | first | never
  bool flag = false;          // ByteLevel: add_prefix_space; Metaspace: split
  bool use_regex = false;     // ByteLevel
  std::shared_ptr<Pattern> pattern;
};

std::vector<Step> parse_chain(const json& j, const std::string& where, const char* list_key, bool normalizer) {
  std::vector<Step> out;
  if (j.is_null()) return out;
  if (!j.is_object()) throw InputError(where, "", "must be an object or null");
  const std::string type = field_string(j, "type", where);
  if (type == "Sequence") {
    if (!j.contains(list_key) || !j.at(list_key).is_array()) throw InputError(where, list_key, "missing list");
    for (const json& e : j.at(list_key)) {
      for (Step& s : parse_chain(e, where, list_key, normalizer)) out.push_back(std::move(s));
    }
    return out;
  }
  Step s;
  s.type = type;
  const std::string here = where + " " + type;
  if (normalizer && (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD")) {
    s.form = type;
    s.type = "Unicode";
  } else if (normalizer && type == "Prepend") {
    s.text = field_string(j, "prepend", here);
  } else if (type == "Replace" && normalizer) {
    s.text = field_string(j, "content", here);
    s.pattern = std::make_shared<Pattern>(parse_pattern(j.value("pattern", json()), here));
  } else if (!normalizer && type == "Split") {
    s.pattern = std::make_shared<Pattern>(parse_pattern(j.value("pattern", json()), here));
    s.behavior = field_string(j, "behavior", here);
    if (s.behavior != "Isolated" && s.behavior != "Removed") {
      throw InputError(here, "behavior", "'" + s.behavior + "' is not supported (Isolated, Removed)");
    }
    if (j.value("invert", false)) throw InputError(here, "invert", "inverted splits are not supported");
  } else if (!normalizer && type == "ByteLevel") {
    s.flag = j.value("add_prefix_space", false);
    s.use_regex = j.value("use_regex", true);
    if (s.use_regex) s.pattern = std::make_shared<Pattern>(Pattern{"", std::make_unique<Regex>(kGpt2Pattern, here)});
  } else if (!normalizer && type == "Metaspace") {
    s.text = j.value("replacement", std::string("\xE2\x96\x81"));
    s.prepend_scheme = j.value("prepend_scheme", std::string(j.value("add_prefix_space", true) ? "always" : "never"));
    s.flag = j.value("split", true);
  } else {
    throw InputError(where, "type", "'" + type + "' is not supported by qforge's tokenizer.json reader");
  }
  out.push_back(std::move(s));
  return out;
}

// Splits `piece` at the matches of p: Isolated keeps matches and gaps as pieces, Removed drops the matches.
void split_piece(const std::string& piece, const Pattern& p, bool keep_matches, std::vector<std::string>& out) {
  std::size_t last = 0;
  for (const auto& [b, e] : p.find_all(piece)) {
    if (b > last) out.push_back(piece.substr(last, b - last));
    if (keep_matches) out.push_back(piece.substr(b, e - b));
    last = e;
  }
  if (last < piece.size()) out.push_back(piece.substr(last));
}

class HfJsonTokenizer final : public Tokenizer {
 public:
  HfJsonTokenizer(const json& j, const std::string& source) : source_(source) {
    parse_model(j.at("model"));
    parse_added_tokens(j.value("added_tokens", json::array()));
    normalizer_ = parse_chain(j.value("normalizer", json()), source + ": normalizer", "normalizers", true);
    pre_ = parse_chain(j.value("pre_tokenizer", json()), source + ": pre_tokenizer", "pretokenizers", false);
    parse_post_processor(j.value("post_processor", json()));
    parse_decoder(j.value("decoder", json()));
  }

  std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const override {
    check_utf8(text);
    std::lock_guard<std::mutex> lock(mutex_);  // the regex match data and the word cache are shared
    std::vector<std::int32_t> ids;
    if (add_bos) ids.insert(ids.end(), prefix_.begin(), prefix_.end());
    AddedScan scan(added_.size(), kNotScanned);
    std::size_t at = 0;
    bool first = true;
    while (at < text.size()) {
      std::size_t begin = 0, end = 0;
      int id = -1;
      const bool found = next_added(text, at, scan, &begin, &end, &id);
      const std::size_t seg_end = found ? begin : text.size();
      if (seg_end > at) encode_segment(text.substr(at, seg_end - at), first, ids);
      if (!found) break;
      ids.push_back(id);
      first = false;
      at = end;
    }
    if (add_bos) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    return ids;
  }

  std::string decode(const std::vector<std::int32_t>& ids) const override {
    std::vector<std::string> tokens;
    for (std::int32_t id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) {
        throw InputError(source_, "", "token id " + std::to_string(id) + " is outside the vocabulary");
      }
      tokens.push_back(pieces_[static_cast<std::size_t>(id)]);
    }
    return run_decoder(tokens);
  }

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return prefix_.empty() ? -1 : prefix_.front(); }
  int eos_id() const override { return eos_; }
  std::string kind() const override { return "tokenizer.json"; }

 private:
  struct Added {
    std::string content;
    std::int32_t id;
    bool lstrip, rstrip;
  };

  void parse_model(const json& m) {
    const std::string where = source_ + ": model";
    if (field_string(m, "type", where) != "BPE") {
      throw InputError(where, "type", "'" + m.at("type").get<std::string>() + "' is not supported (BPE)");
    }
    if (m.contains("dropout") && !m.at("dropout").is_null() && m.at("dropout").get<double>() != 0.0) {
      throw InputError(where, "dropout", "BPE dropout is not supported");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (m.contains(key) && m.at(key).is_string() && !m.at(key).get<std::string>().empty()) {
        throw InputError(where, key, "not supported");
      }
    }
    byte_fallback_ = m.value("byte_fallback", false);
    ignore_merges_ = m.value("ignore_merges", false);
    fuse_unk_ = m.value("fuse_unk", false);
    for (const auto& [piece, id] : m.at("vocab").items()) add_piece(piece, id.get<std::int32_t>());
    if (m.contains("unk_token") && m.at("unk_token").is_string()) {
      const auto it = vocab_.find(m.at("unk_token").get<std::string>());
      if (it == vocab_.end()) throw InputError(where, "unk_token", "not in the vocabulary");
      unk_ = it->second;
    }
    int rank = 0;
    for (const json& merge : m.at("merges")) {
      std::string a, b;
      if (merge.is_string()) {  // "a b" (tokenizers < 0.20)
        const std::string s = merge.get<std::string>();
        const auto sp = s.find(' ');
        if (sp == std::string::npos) throw InputError(where, "merges", "entry '" + s + "' is not two symbols");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (merge.is_array() && merge.size() == 2) {
        a = merge.at(0).get<std::string>(), b = merge.at(1).get<std::string>();
      } else {
        throw InputError(where, "merges", "entry " + std::to_string(rank) + " is not a pair");
      }
      const auto ia = vocab_.find(a), ib = vocab_.find(b), merged = vocab_.find(a + b);
      if (ia == vocab_.end() || ib == vocab_.end() || merged == vocab_.end()) {
        throw InputError(where, "merges", "entry " + std::to_string(rank) + " ('" + a + "' '" + b + "') names a token outside the vocabulary");
      }
      merges_[pair_key(ia->second, ib->second)] = {rank++, merged->second};  // a repeated pair: the last wins, as in tokenizers
    }
  }

  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  void add_piece(const std::string& piece, std::int32_t id) {
    if (id < 0) throw InputError(source_, "model.vocab", "negative id for '" + piece + "'");
    vocab_[piece] = id;
    if (static_cast<std::size_t>(id) >= pieces_.size()) pieces_.resize(static_cast<std::size_t>(id) + 1);
    pieces_[static_cast<std::size_t>(id)] = piece;
  }

  void parse_added_tokens(const json& list) {
    for (const json& t : list) {
      const std::string where = source_ + ": added_tokens";
      const std::string content = field_string(t, "content", where);
      if (t.value("single_word", false)) throw InputError(where, "single_word", "not supported ('" + content + "')");
      if (t.value("normalized", false) && !t.value("special", false)) {
        throw InputError(where, "normalized", "added tokens matched after normalization are not supported ('" + content + "')");
      }
      Added a{content, t.at("id").get<std::int32_t>(), t.value("lstrip", false), t.value("rstrip", false)};
      add_piece(content, a.id);
      added_.push_back(a);
      if (content == "</s>" || content == "<|end_of_text|>" || content == "<|endoftext|>" || content == "<|im_end|>") {
        if (eos_ < 0) eos_ = a.id;
      }
    }
    // Longest first, so that at one position the longest added token wins.
    std::sort(added_.begin(), added_.end(), [](const Added& x, const Added& y) { return x.content.size() > y.content.size(); });
  }

  void parse_post_processor(const json& p) {
    if (p.is_null()) return;
    const std::string where = source_ + ": post_processor";
    const std::string type = field_string(p, "type", where);
    if (type == "Sequence") {
      for (const json& e : p.at("processors")) parse_post_processor(e);
    } else if (type == "TemplateProcessing") {
      bool after = false;
      for (const json& e : p.at("single")) {
        if (e.contains("Sequence")) {
          after = true;
        } else if (e.contains("SpecialToken")) {
          const std::string name = e.at("SpecialToken").at("id").get<std::string>();
          for (const json& id : p.at("special_tokens").at(name).at("ids")) (after ? suffix_ : prefix_).push_back(id.get<std::int32_t>());
        }
      }
    } else if (type != "ByteLevel") {
      throw InputError(where, "type", "'" + type + "' is not supported (TemplateProcessing, ByteLevel, Sequence)");
    }
  }

  void parse_decoder(const json& d) {
    if (d.is_null()) return;
    const std::string where = source_ + ": decoder";
    const std::string type = field_string(d, "type", where);
    if (type == "Sequence") {
      for (const json& e : d.at("decoders")) parse_decoder(e);
      return;
    }
    if (type != "ByteLevel" && type != "Replace" && type != "ByteFallback" && type != "Fuse" && type != "Strip" &&
        type != "Metaspace") {
      throw InputError(where, "type", "'" + type + "' is not supported");
    }
    decoder_.push_back(d);
  }

  // Each added token's next occurrence in the text being encoded, found again only once the scan has
  // passed it: linear in the text for any number of added tokens (LLaMA-3 has 256).
  using AddedScan = std::vector<std::size_t>;
  static constexpr std::size_t kNotScanned = std::string::npos - 1;

  // The next added token at or after `from`: leftmost, then longest; lstrip/rstrip extend the match over
  // the whitespace beside it.
  bool next_added(const std::string& text, std::size_t from, AddedScan& scan, std::size_t* begin, std::size_t* end, int* id) const {
    std::size_t best = std::string::npos;
    const Added* hit = nullptr;
    for (std::size_t i = 0; i < added_.size(); ++i) {
      const Added& a = added_[i];
      if (scan[i] == kNotScanned || (scan[i] != std::string::npos && scan[i] < from)) scan[i] = text.find(a.content, from);
      const std::size_t at = scan[i];
      if (at != std::string::npos && (at < best || (at == best && a.content.size() > hit->content.size()))) {
        best = at;
        hit = &a;
      }
    }
    if (!hit) return false;
    std::size_t b = best, e = best + hit->content.size();
    if (hit->lstrip) {
      while (b > from && std::isspace(static_cast<unsigned char>(text[b - 1]))) --b;
    }
    if (hit->rstrip) {
      while (e < text.size() && std::isspace(static_cast<unsigned char>(text[e]))) ++e;
    }
    *begin = b, *end = e, *id = hit->id;
    return true;
  }

  // tokenizers takes Rust strings: text that is not UTF-8 has no tokenization to agree with.
  void check_utf8(const std::string& text) const {
    std::size_t i = 0;
    while (i < text.size()) {
      utf8proc_int32_t cp = 0;
      const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + i),
                                      static_cast<utf8proc_ssize_t>(text.size() - i), &cp);
      if (n <= 0) {
        throw InputError(source_, "", "the text to encode is not valid UTF-8 (byte offset " + std::to_string(i) + ")");
      }
      i += static_cast<std::size_t>(n);
    }
  }

  void encode_segment(const std::string& raw, bool first, std::vector<std::int32_t>& ids) const {
    std::string text = raw;
    for (const Step& s : normalizer_) {
      if (s.type == "Unicode") {
        text = normalize_unicode(text, s.form);
      } else if (s.type == "Prepend") {
        if (!text.empty()) text = s.text + text;
      } else if (s.type == "Replace") {
        std::string out;
        std::size_t last = 0;
        for (const auto& [b, e] : s.pattern->find_all(text)) {
          out += text.substr(last, b - last) + s.text;
          last = e;
        }
        text = out + text.substr(last);
      }
    }
    std::vector<std::string> pieces = {text};
    for (const Step& s : pre_) pieces = pre_tokenize(s, pieces, first);
    for (const std::string& p : pieces) encode_word(p, ids);
  }

  std::vector<std::string> pre_tokenize(const Step& s, const std::vector<std::string>& pieces, bool first) const {
    std::vector<std::string> out;
    if (s.type == "Split") {
      for (const std::string& p : pieces) split_piece(p, *s.pattern, s.behavior == "Isolated", out);
    } else if (s.type == "ByteLevel") {
      for (std::size_t i = 0; i < pieces.size(); ++i) {
        std::string p = pieces[i];
        if (s.flag && !p.empty() && p[0] != ' ') p = " " + p;  // tokenizers does this per piece
        std::vector<std::string> parts;
        if (s.use_regex) {
          split_piece(p, *s.pattern, true, parts);
        } else {
          parts.push_back(p);
        }
        for (const std::string& part : parts) {
          std::string mapped;
          for (unsigned char c : part) mapped += byte_level().to_char[c];
          out.push_back(mapped);
        }
      }
    } else if (s.type == "Metaspace") {
      for (std::size_t i = 0; i < pieces.size(); ++i) {
        std::string p = replace_all(pieces[i], " ", s.text);
        const bool prepend = s.prepend_scheme == "always" || (s.prepend_scheme == "first" && first && i == 0);
        if (prepend && p.rfind(s.text, 0) != 0) p = s.text + p;
        if (!s.flag) {
          out.push_back(p);
          continue;
        }
        // Split before every replacement character (MergedWithNext).
        std::size_t start = 0;
        for (std::size_t at = p.find(s.text, 1); at != std::string::npos; at = p.find(s.text, at + s.text.size())) {
          out.push_back(p.substr(start, at - start));
          start = at;
        }
        out.push_back(p.substr(start));
      }
    }
    out.erase(std::remove_if(out.begin(), out.end(), [](const std::string& x) { return x.empty(); }), out.end());
    return out;
  }

  void encode_word(const std::string& word, std::vector<std::int32_t>& ids) const {
    const auto cached = cache_.find(word);
    if (cached != cache_.end()) {
      ids.insert(ids.end(), cached->second.begin(), cached->second.end());
      return;
    }
    std::vector<std::int32_t> out;
    const auto whole = vocab_.find(word);
    if (ignore_merges_ && whole != vocab_.end()) {
      out.push_back(whole->second);
    } else {
      out = merge_all(initial_symbols(word));
    }
    if (word.size() <= kCachedWordBytes && cache_.size() < kCachedWords) cache_.emplace(word, out);
    ids.insert(ids.end(), out.begin(), out.end());
  }

  // A word's characters as vocabulary ids before any merge (tokenizers' merge_word): a character outside
  // the vocabulary becomes its <0xXX> byte tokens (byte_fallback), else the unk token (one for a run of
  // them with fuse_unk), else it is dropped, as tokenizers drops it.
  std::vector<std::int32_t> initial_symbols(const std::string& word) const {
    std::vector<std::int32_t> sym;
    bool last_unk = false;
    for (const std::string& c : utf8_chars(word)) {
      if (const auto it = vocab_.find(c); it != vocab_.end()) {
        sym.push_back(it->second);
        last_unk = false;
        continue;
      }
      if (byte_fallback_ && push_bytes(c, sym)) {
        last_unk = false;
        continue;
      }
      if (unk_ < 0) continue;
      if (!(fuse_unk_ && last_unk)) sym.push_back(unk_);
      last_unk = true;
    }
    return sym;
  }

  bool push_bytes(const std::string& c, std::vector<std::int32_t>& sym) const {
    std::vector<std::int32_t> bytes;
    for (unsigned char b : c) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      const auto it = vocab_.find(name);
      if (it == vocab_.end()) return false;
      bytes.push_back(it->second);
    }
    sym.insert(sym.end(), bytes.begin(), bytes.end());
    return true;
  }

  // BPE over a linked list of symbols with a min-heap of candidate pairs ordered by (merge rank, position),
  // as tokenizers' Word::merge_all: O(n log n), so a whole SentencePiece-style segment (no pre-tokenizer
  // split) is as cheap as many short words. A popped pair whose symbols changed since it was pushed is stale.
  std::vector<std::int32_t> merge_all(std::vector<std::int32_t> sym) const {
    const int n = static_cast<int>(sym.size());
    std::vector<int> prev(static_cast<std::size_t>(n)), next(static_cast<std::size_t>(n));
    std::vector<bool> alive(static_cast<std::size_t>(n), true);
    for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
    using Candidate = std::tuple<int, int, std::int32_t>;  // rank, position of the left symbol, merged id
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    const auto push = [&](int left) {
      if (left < 0 || next[left] < 0) return;
      const auto it = merges_.find(pair_key(sym[left], sym[next[left]]));
      if (it != merges_.end()) heap.emplace(it->second.rank, left, it->second.id);
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const auto [rank, left, merged] = heap.top();
      heap.pop();
      if (!alive[left] || next[left] < 0) continue;
      const auto it = merges_.find(pair_key(sym[left], sym[next[left]]));
      if (it == merges_.end() || it->second.rank != rank) continue;  // stale
      const int right = next[left];
      sym[left] = merged;
      alive[right] = false;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      push(prev[left]);
      push(left);
    }
    std::vector<std::int32_t> out;
    for (int i = 0; i < n; ++i) {
      if (alive[i]) out.push_back(sym[i]);
    }
    return out;
  }

  std::string run_decoder(std::vector<std::string> tokens) const {
    for (const json& d : decoder_) {
      const std::string type = d.at("type").get<std::string>();
      if (type == "ByteLevel") {
        std::string bytes;
        for (const std::string& t : tokens) {
          for (const std::string& ch : utf8_chars(t)) {
            const auto it = byte_level().to_byte.find(ch);
            bytes += it == byte_level().to_byte.end() ? ch : std::string(1, static_cast<char>(it->second));
          }
        }
        tokens = {bytes};
      } else if (type == "Replace") {
        const std::string from = d.at("pattern").value("String", std::string()), to = d.value("content", std::string());
        for (std::string& t : tokens) t = replace_all(t, from, to);
      } else if (type == "ByteFallback") {
        std::vector<std::string> out;
        for (const std::string& t : tokens) {
          unsigned int byte = 0;
          if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' && std::sscanf(t.c_str() + 3, "%2X", &byte) == 1) {
            out.push_back(std::string(1, static_cast<char>(byte)));
          } else {
            out.push_back(t);
          }
        }
        tokens = out;
      } else if (type == "Fuse") {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens = {all};
      } else if (type == "Strip") {
        const std::string c = d.value("content", std::string(" "));
        const int start = d.value("start", 0), stop = d.value("stop", 0);
        for (std::string& t : tokens) {
          for (int i = 0; i < start && t.rfind(c, 0) == 0; ++i) t.erase(0, c.size());
          for (int i = 0; i < stop && t.size() >= c.size() && t.compare(t.size() - c.size(), c.size(), c) == 0; ++i) {
            t.erase(t.size() - c.size());
          }
        }
      } else if (type == "Metaspace") {
        const std::string rep = d.value("replacement", std::string("\xE2\x96\x81"));
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = replace_all(tokens[i], rep, " ");
          if (i == 0 && d.value("prepend_scheme", std::string("always")) != "never" && tokens[i].rfind(' ', 0) == 0) {
            tokens[i].erase(0, 1);
          }
        }
      }
    }
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
  }

  std::string source_;
  std::unordered_map<std::string, std::int32_t> vocab_;
  std::vector<std::string> pieces_;
  struct Merge {
    int rank;
    std::int32_t id;  // the merged token
  };
  std::unordered_map<std::uint64_t, Merge> merges_;  // by pair_key(left id, right id)
  static constexpr std::size_t kCachedWordBytes = 256;  // longer words (whole SentencePiece segments) are not cached
  static constexpr std::size_t kCachedWords = 1 << 16;   // bounded memory for any corpus (tokenizers: 10,000)
  std::vector<Added> added_;
  std::vector<Step> normalizer_, pre_;
  std::vector<json> decoder_;
  std::vector<std::int32_t> prefix_, suffix_;
  std::int32_t unk_ = -1, eos_ = -1;
  bool byte_fallback_ = false, ignore_merges_ = false, fuse_unk_ = false;
  mutable std::mutex mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> parse_hf_json_tokenizer(const std::string& bytes, const std::string& source) {
  json j;
  try {
    j = json::parse(bytes);
  } catch (const json::exception& e) {
    throw InputError(source, "", std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object() || !j.contains("model") || !j.at("model").is_object()) {
    throw InputError(source, "model", "not a tokenizers tokenizer.json (no model object)");
  }
  try {
    return std::make_unique<HfJsonTokenizer>(j, source);
  } catch (const json::exception& e) {
    throw InputError(source, "", std::string("malformed tokenizer.json: ") + e.what());
  }
}

}  // namespace qforge::storage
