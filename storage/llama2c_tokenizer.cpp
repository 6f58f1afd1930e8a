// llama2.c tokenizer.bin: reading, and encode()/decode() with exactly the results of karpathy
// llama2.c run.c.
//
// run.c merges by rescanning every adjacent pair after each merge, which is quadratic in the text
// length: fine for a prompt, hours for a WikiText-sized evaluation file. Here the same greedy choice is
// made with a heap over the adjacent pairs of a linked list: the heap orders by score (highest first)
// and then by the position of the left symbol (leftmost first), which is exactly the pair run.c picks
// with its strictly-greater scan from the left, so the ids are identical.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "storage/tokenizer_backends.h"

namespace qforge::storage {

namespace {

constexpr int kBosId = 1;
constexpr int kEosId = 2;
// Byte-fallback tokens <0x00>..<0xFF> sit at ids 3..258 in every tokenizer.bin exported by llama2.c.
constexpr int kByteFallbackOffset = 3;
// run.c starts its best-pair search at best_score = -1e10 with a strict '>', so a pair whose merged
// token scores at or below this (or NaN) is never merged.
constexpr float kMinMergeScore = -1e10f;
// Bounds for "this really is a tokenizer.bin": real ones have 7..27; anything near the int32 range is
// some other file's first four bytes.
constexpr std::int32_t kMaxSaneTokenLength = 1 << 16;

std::int32_t read_i32(const std::string& bytes, std::size_t offset) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return static_cast<std::int32_t>(v);
}

float read_f32(const std::string& bytes, std::size_t offset) {
  std::uint32_t bits = static_cast<std::uint32_t>(read_i32(bytes, offset));
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::string source)
      : pieces_(std::move(pieces)), scores_(std::move(scores)), source_(std::move(source)) {
    lookup_.reserve(pieces_.size() * 2);
    // The real vocabularies (tok512.bin, LLaMA-2 tokenizer.bin) have no duplicate pieces. For one that
    // does, run.c's bsearch may land on any of the copies; the lowest id is kept here so the result is
    // at least deterministic.
    for (std::size_t i = 0; i < pieces_.size(); ++i) lookup_.emplace(pieces_[i], static_cast<int>(i));
  }

  std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const override {
    std::vector<std::int32_t> ids;
    ids.reserve(text.size() + 2);
    if (add_bos) ids.push_back(kBosId);
    if (!text.empty()) {
      // SentencePiece's add_dummy_prefix, as run.c does it: the " " token goes in front and takes part
      // in merging. Every exported vocabulary has " "; byte fallback keeps a vocabulary without it usable.
      int space = find(" ");
      ids.push_back(space >= 0 ? space : byte_fallback(' '));
    }
    split_code_points(text, &ids);
    merge(&ids);
    return ids;
  }

  std::string decode(const std::vector<std::int32_t>& ids) const override {
    std::string out;
    std::int32_t prev = -1;
    for (std::int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) {
        throw InputError(source_, "decode", "token id " + std::to_string(id) + " outside 0.." +
                                                              std::to_string(vocab_size() - 1));
      }
      // run.c never prints BOS/EOS (they delimit sequences); "\n<s>\n" in the text would be noise.
      if (id == kBosId || id == kEosId) {
        prev = id;
        continue;
      }
      const std::string& piece = pieces_[static_cast<std::size_t>(id)];
      std::size_t start = 0;
      // After BOS the SentencePiece decoder drops the dummy-prefix space (run.c decode(), PR #89).
      if (prev == kBosId && !piece.empty() && piece[0] == ' ') start = 1;
      int byte = raw_byte(piece, start);
      if (byte >= 0) {
        out.push_back(static_cast<char>(byte));
      } else {
        out.append(piece, start, std::string::npos);
      }
      prev = id;
    }
    return out;
  }

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return kBosId; }
  int eos_id() const override { return kEosId; }
  std::string kind() const override { return "llama2c"; }

 private:
  int find(const std::string& piece) const {
    auto it = lookup_.find(piece);
    return it == lookup_.end() ? -1 : it->second;
  }

  int byte_fallback(unsigned char byte) const {
    int id = byte + kByteFallbackOffset;
    // A vocabulary too small to hold the byte tokens has no id for the byte; <unk> (0) is the honest
    // answer (run.c would emit an out-of-range id).
    return id < vocab_size() ? id : 0;
  }

  // "<0xHH>" pieces stand for one raw byte; returns it, or -1 for an ordinary piece.
  static int raw_byte(const std::string& piece, std::size_t start) {
    if (piece.size() - start != 6 || piece.compare(start, 3, "<0x") != 0 || piece[start + 5] != '>') return -1;
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int hi = hex(piece[start + 3]);
    int lo = hex(piece[start + 4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

  // One id per UTF-8 code point, or one byte-fallback id per byte of a code point not in the vocabulary.
  // Mirrors run.c: a code point is a lead byte plus following continuation bytes (10xxxxxx), at most 4
  // bytes; malformed sequences are split the same way run.c splits them.
  void split_code_points(const std::string& text, std::vector<std::int32_t>* ids) const {
    std::string buffer;
    for (std::size_t i = 0; i < text.size(); ++i) {
      buffer.push_back(text[i]);
      bool next_is_continuation =
          i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (next_is_continuation && buffer.size() < 4) continue;
      int id = find(buffer);
      if (id >= 0) {
        ids->push_back(id);
      } else {
        for (char c : buffer) ids->push_back(byte_fallback(static_cast<unsigned char>(c)));
      }
      buffer.clear();
    }
  }

  struct Candidate {
    float score;
    std::size_t left;       // position of the left symbol; positions follow list order
    std::size_t right;
    std::int32_t merged;    // id of the merged piece
    std::uint32_t left_version;
    std::uint32_t right_version;
  };
  struct WorseCandidate {
    // priority_queue pops the "largest": highest score, then the leftmost pair.
    bool operator()(const Candidate& a, const Candidate& b) const {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    }
  };

  void merge(std::vector<std::int32_t>* ids_io) const {
    std::vector<std::int32_t>& ids = *ids_io;
    const std::size_t n = ids.size();
    if (n < 2) return;
    constexpr std::size_t kNone = std::numeric_limits<std::size_t>::max();
    std::vector<std::size_t> prev(n), next(n);
    // A symbol's version changes whenever its id does (or it is merged away), which invalidates every
    // heap entry made from its old id.
    std::vector<std::uint32_t> version(n, 0);
    std::vector<bool> alive(n, true);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = i == 0 ? kNone : i - 1;
      next[i] = i + 1 == n ? kNone : i + 1;
    }
    std::priority_queue<Candidate, std::vector<Candidate>, WorseCandidate> heap;
    std::string joined;
    auto push_pair = [&](std::size_t left) {
      if (left == kNone || next[left] == kNone) return;
      std::size_t right = next[left];
      joined = pieces_[static_cast<std::size_t>(ids[left])];
      joined += pieces_[static_cast<std::size_t>(ids[right])];
      int merged = find(joined);
      if (merged < 0) return;
      float score = scores_[static_cast<std::size_t>(merged)];
      if (!(score > kMinMergeScore)) return;
      heap.push(Candidate{score, left, right, merged, version[left], version[right]});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push_pair(i);

    while (!heap.empty()) {
      Candidate c = heap.top();
      heap.pop();
      if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || version[c.left] != c.left_version ||
          version[c.right] != c.right_version) {
        continue;
      }
      ids[c.left] = c.merged;
      ++version[c.left];
      alive[c.right] = false;
      ++version[c.right];
      next[c.left] = next[c.right];
      if (next[c.right] != kNone) prev[next[c.right]] = c.left;
      push_pair(prev[c.left]);
      push_pair(c.left);
    }

    std::size_t out = 0;
    for (std::size_t i = 0; i != kNone; i = next[i]) ids[out++] = ids[i];
    ids.resize(out);
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> lookup_;
  std::string source_;
};

}  // namespace

bool looks_like_llama2c_tokenizer(const std::string& bytes) {
  if (bytes.size() < 12) return false;
  std::int32_t max_len = read_i32(bytes, 0);
  if (max_len < 1 || max_len > kMaxSaneTokenLength) return false;
  std::int32_t first_len = read_i32(bytes, 8);
  return first_len >= 0 && first_len <= max_len;
}

std::unique_ptr<Tokenizer> parse_llama2c_tokenizer(const std::string& bytes, const std::string& source) {
  if (bytes.size() < 4) throw InputError(source, "max_token_length", "file too short for the llama2.c header");
  const std::int32_t max_len = read_i32(bytes, 0);
  if (max_len < 1 || max_len > kMaxSaneTokenLength) {
    throw InputError(source, "max_token_length",
                     std::to_string(max_len) + " is not a llama2.c tokenizer.bin header (expected 1.." +
                         std::to_string(kMaxSaneTokenLength) + ")");
  }
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::size_t offset = 4;
  while (offset < bytes.size()) {
    const std::string where = "token " + std::to_string(pieces.size());
    if (bytes.size() - offset < 8) {
      throw InputError(source, where, "truncated entry: the file ends inside its score/length");
    }
    float score = read_f32(bytes, offset);
    std::int32_t len = read_i32(bytes, offset + 4);
    offset += 8;
    // run.c would silently never merge a NaN-scored pair; a damaged score table is refused instead.
    if (!std::isfinite(score)) throw InputError(source, where, "non-finite merge score (the file is damaged)");
    if (len < 0 || len > max_len) {
      throw InputError(source, where,
                       "byte length " + std::to_string(len) + " outside 0..max_token_length " + std::to_string(max_len));
    }
    if (bytes.size() - offset < static_cast<std::size_t>(len)) {
      throw InputError(source, where,
                       "truncated entry: " + std::to_string(len) + " bytes declared, " +
                           std::to_string(bytes.size() - offset) + " left in the file");
    }
    pieces.emplace_back(bytes, offset, static_cast<std::size_t>(len));
    scores.push_back(score);
    offset += static_cast<std::size_t>(len);
  }
  // BOS = 1 and EOS = 2 are fixed in the format, so a usable vocabulary has at least ids 0..2.
  if (pieces.size() < 3) {
    throw InputError(source, "vocab_size",
                     std::to_string(pieces.size()) + " tokens; a llama2.c tokenizer needs at least <unk>, BOS, EOS");
  }
  return std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores), source);
}

}  // namespace qforge::storage
