// Tokenizers against real vocabularies in ../shared/data: llama2.c tok512.bin against the ids recorded
// in stories260K/reference_outputs.json, the LLaMA-2 vocabulary in both formats against each other, and
// SentencePiece models against the token counts of their reference evaluations.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/tokenizer.h"
#include "tests/support/test_data.h"

namespace qforge::storage {
namespace {

using Ids = std::vector<std::int32_t>;
using nlohmann::json;

fs::path tok512_path() { return test::shared_data() / "models" / "stories260K" / "tok512.bin"; }
fs::path stories_reference_path() { return test::shared_data() / "models" / "stories260K" / "reference_outputs.json"; }
fs::path llama2_dir() { return test::shared_data() / "models" / "llama2-tokenizer"; }
fs::path ref6m_dir() { return test::shared_data() / "models" / "ref-6m"; }

// Python str.strip() for the ASCII whitespace the TinyStories sample uses.
std::string py_strip(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  std::size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  std::size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::string expect_input_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InputError";
  return "";
}

// A tokenizer.bin image: max_token_length, then (score, length, bytes) per piece.
std::string make_llama2c_bin(const std::vector<std::pair<std::string, float>>& vocab) {
  std::int32_t max_len = 1;
  for (const auto& [piece, score] : vocab) max_len = std::max<std::int32_t>(max_len, static_cast<std::int32_t>(piece.size()));
  std::string out(reinterpret_cast<const char*>(&max_len), 4);
  for (const auto& [piece, score] : vocab) {
    std::int32_t len = static_cast<std::int32_t>(piece.size());
    out.append(reinterpret_cast<const char*>(&score), 4);
    out.append(reinterpret_cast<const char*>(&len), 4);
    out += piece;
  }
  return out;
}

// The standard llama2.c layout: <unk>, BOS, EOS, 256 byte tokens, then `extra`.
std::vector<std::pair<std::string, float>> base_vocab(const std::vector<std::pair<std::string, float>>& extra) {
  std::vector<std::pair<std::string, float>> vocab = {{"<unk>", 0.f}, {"\n<s>\n", 0.f}, {"\n</s>\n", 0.f}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab.emplace_back(name, 0.f);
  }
  vocab.insert(vocab.end(), extra.begin(), extra.end());
  return vocab;
}

// llama2.c run.c encode() transcribed literally (quadratic rescan per merge), to check the heap-based
// merge against the original algorithm.
Ids run_c_encode(const std::vector<std::pair<std::string, float>>& vocab, const std::string& text, bool bos) {
  auto lookup = [&](const std::string& s) {
    for (std::size_t i = 0; i < vocab.size(); ++i)
      if (vocab[i].first == s) return static_cast<int>(i);
    return -1;
  };
  Ids tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buf;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
    int id = lookup(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (char c : buf) tokens.push_back(static_cast<unsigned char>(c) + 3);
    }
    buf.clear();
  }
  while (true) {
    float best_score = -1e10f;
    int best_id = -1;
    int best_idx = -1;
    for (int i = 0; i + 1 < static_cast<int>(tokens.size()); ++i) {
      int id = lookup(vocab[tokens[i]].first + vocab[tokens[i + 1]].first);
      if (id != -1 && vocab[id].second > best_score) {
        best_score = vocab[id].second;
        best_id = id;
        best_idx = i;
      }
    }
    if (best_idx == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  return tokens;
}

std::vector<std::pair<std::string, float>> read_vocab(const fs::path& path) {
  std::string bytes = read_file(path);
  std::vector<std::pair<std::string, float>> vocab;
  std::size_t off = 4;
  while (off < bytes.size()) {
    float score;
    std::int32_t len;
    std::memcpy(&score, bytes.data() + off, 4);
    std::memcpy(&len, bytes.data() + off + 4, 4);
    off += 8;
    vocab.emplace_back(bytes.substr(off, static_cast<std::size_t>(len)), score);
    off += static_cast<std::size_t>(len);
  }
  return vocab;
}

TEST(Llama2cTokenizer, LoadsTok512) {
  QF_REQUIRE_DATA(tok512_path());
  auto tok = load_tokenizer(tok512_path());
  EXPECT_EQ(tok->kind(), "llama2c");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
}

TEST(Llama2cTokenizer, EncodeExamplesMatchReference) {
  QF_REQUIRE_DATA(stories_reference_path());
  auto tok = load_tokenizer(tok512_path());
  auto ref = nlohmann::json::parse(read_file(stories_reference_path()));
  ASSERT_FALSE(ref.at("encode_examples").empty());
  for (const auto& [text, ids] : ref.at("encode_examples").items()) {
    EXPECT_EQ(tok->encode(text, true), ids.get<Ids>()) << text;
  }
  EXPECT_EQ(tok->encode("Once upon a time", true), (Ids{1, 403, 407, 261, 378}));
}

TEST(Llama2cTokenizer, TinyStoriesSampleIdsMatchReference) {
  const fs::path text_path = test::shared_data() / "tinystories" / "tinystories_sample.txt";
  QF_REQUIRE_DATA(stories_reference_path());
  QF_REQUIRE_DATA(text_path);
  auto tok = load_tokenizer(tok512_path());
  auto ref = nlohmann::json::parse(read_file(stories_reference_path()));
  const auto& stories = ref.at("tinystories_sample_nll").at("stories");

  // The reference method: split on <|endoftext|>, strip, encode each non-empty story with BOS.
  const std::string text = read_file(text_path);
  const std::string sep = "<|endoftext|>";
  std::vector<std::string> parts;
  for (std::size_t begin = 0;;) {
    std::size_t at = text.find(sep, begin);
    std::string story = py_strip(text.substr(begin, at == std::string::npos ? std::string::npos : at - begin));
    if (!story.empty()) parts.push_back(story);
    if (at == std::string::npos) break;
    begin = at + sep.size();
  }
  ASSERT_EQ(parts.size(), 5u);
  ASSERT_EQ(stories.size(), parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    Ids ids = tok->encode(parts[i], true);
    EXPECT_EQ(ids, stories[i].at("ids").get<Ids>()) << "story " << i;
    EXPECT_EQ(ids.size(), stories[i].at("n_tokens").get<std::size_t>());
    EXPECT_EQ(tok->decode(ids), parts[i]) << "story " << i;
  }
}

TEST(Llama2cTokenizer, DecodesReferenceGreedyText) {
  QF_REQUIRE_DATA(stories_reference_path());
  auto tok = load_tokenizer(tok512_path());
  auto ref = nlohmann::json::parse(read_file(stories_reference_path()));
  const auto& greedy = ref.at("greedy_from_bos");
  EXPECT_EQ(tok->decode(greedy.at("ids_including_bos").get<Ids>()), greedy.at("text").get<std::string>());
}

TEST(Llama2cTokenizer, EmptyTextAndByteFallback) {
  QF_REQUIRE_DATA(tok512_path());
  auto tok = load_tokenizer(tok512_path());
  EXPECT_EQ(tok->encode("", true), (Ids{1}));
  EXPECT_TRUE(tok->encode("", false).empty());
  // U+1F436 (F0 9F 90 B6) is not one of the 512 pieces: four byte-fallback ids, byte + 3, after the
  // dummy-prefix " " (id 410); decode turns the <0xHH> pieces back into bytes.
  Ids ids = tok->encode("\xF0\x9F\x90\xB6", false);
  EXPECT_EQ(ids, (Ids{410, 0xF0 + 3, 0x9F + 3, 0x90 + 3, 0xB6 + 3}));
  EXPECT_EQ(tok->decode(ids), " \xF0\x9F\x90\xB6");  // no BOS, so the dummy-prefix space stays
  // "€" is one of the pieces (id 503), so it is one token.
  EXPECT_EQ(tok->encode("\xE2\x82\xAC", false), (Ids{410, 503}));
  const std::string mixed = "Tom said \xE2\x80\x9Chi\xE2\x80\x9D to the \xF0\x9F\x90\xB6.\n\tBye!";
  EXPECT_EQ(tok->decode(tok->encode(mixed, true)), mixed);
  EXPECT_THROW(tok->decode({512}), InputError);
}

TEST(Llama2cTokenizer, HeapMergeMatchesRunCOnRealVocab) {
  QF_REQUIRE_DATA(tok512_path());
  const fs::path gen = test::shared_data() / "models" / "stories260K" / "generated-eval.txt";
  QF_REQUIRE_DATA(gen);
  auto tok = load_tokenizer(tok512_path());
  auto vocab = read_vocab(tok512_path());
  const std::string text = read_file(gen);
  // A few paragraphs of varying length, including ones that start or end mid-line.
  for (std::size_t begin : {0u, 1000u, 5001u, 20017u}) {
    std::string piece = text.substr(begin, 700);
    EXPECT_EQ(tok->encode(piece, true), run_c_encode(vocab, piece, true)) << "offset " << begin;
  }
}

TEST(Llama2cTokenizer, HeapMergeMatchesRunCWithTiedScores) {
  // Equal scores everywhere make the leftmost-pair rule decide every merge.
  auto vocab = base_vocab({{" ", 0.f}, {"a", 0.f}, {"b", 0.f}, {"ab", -1.f}, {"ba", -1.f}, {"aa", -1.f},
                           {"bb", -2.f}, {"aab", -1.f}, {"aba", -1.f}, {"abab", -1.f}, {" a", -1.f},
                           {"é", 0.f}, {"éa", -1.f}, {"l", 0.f}, {"o", 0.f}, {"w", 0.f},
                           {"lo", -3.f}, {"low", -20000000000.f}});
  const fs::path dir = test::make_temp_dir("tok-ties");
  write_file_atomic(dir / "tokenizer.bin", make_llama2c_bin(vocab));
  auto tok = load_tokenizer(dir / "tokenizer.bin");
  ASSERT_EQ(tok->kind(), "llama2c");
  std::mt19937 rng(7);
  const std::vector<std::string> alphabet = {"a", "b", "\xC3\xA9", "l", "o", "w", " ", "\xE2\x82\xAC"};
  for (int trial = 0; trial < 300; ++trial) {
    std::string text;
    int len = static_cast<int>(rng() % 24);
    for (int i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    bool bos = trial % 2 == 0;
    ASSERT_EQ(tok->encode(text, bos), run_c_encode(vocab, text, bos)) << "text \"" << text << "\"";
  }
  // "low" scores below run.c's -1e10 starting point, so it is never merged.
  EXPECT_EQ(tok->encode("low", false), (Ids{259, 275, 274}));  // " ", "lo", "w"
  EXPECT_EQ(tok->encode("low", false), run_c_encode(vocab, "low", false));
  fs::remove_all(dir);
}

TEST(Llama2cTokenizer, GeneratedEvalTokenCountMatchesProvenance) {
  const fs::path gen = test::shared_data() / "models" / "stories260K" / "generated-eval.txt";
  QF_REQUIRE_DATA(gen);
  // PROVENANCE.md: 25,741 tokens with tok512.bin, whole file tokenized once with one BOS.
  EXPECT_EQ(load_tokenizer(tok512_path())->encode(read_file(gen), true).size(), 25741u);
}

TEST(Llama2cTokenizer, Llama2VocabularyMatchesSentencePiece) {
  QF_REQUIRE_DATA(llama2_dir() / "tokenizer.bin");
  QF_REQUIRE_DATA(llama2_dir() / "tokenizer.model");
  QF_REQUIRE_DATA(ref6m_dir() / "valid-sample.txt");
  auto bin = load_tokenizer(llama2_dir() / "tokenizer.bin");
  auto sp = load_tokenizer(llama2_dir() / "tokenizer.model");
  EXPECT_EQ(bin->kind(), "llama2c");
  EXPECT_EQ(sp->kind(), "sentencepiece");
  EXPECT_EQ(bin->vocab_size(), 32000);
  EXPECT_EQ(sp->vocab_size(), 32000);
  // For valid UTF-8 text without a literal U+2581, llama2.c's score-greedy merge is SentencePiece BPE:
  // the two implementations agree id for id (also checked on all of wiki.test.raw and the C4 sample).
  for (const std::string text :
       {"Hello world", "Once upon a time, there was a little girl named Lily.",
        "The quick brown fox jumps over the lazy dog.", "  Two  spaces,\ttab and \xEF\xAC\x83 ligature"}) {
    EXPECT_EQ(bin->encode(text, true), sp->encode(text, true)) << text;
    EXPECT_EQ(bin->decode(bin->encode(text, true)), text);
  }
  const std::string doc = read_file(ref6m_dir() / "valid-sample.txt");
  Ids from_bin = bin->encode(doc, true);
  EXPECT_EQ(from_bin.size(), 35088u);
  EXPECT_TRUE(from_bin == sp->encode(doc, true));

  // Where they legitimately differ: SentencePiece turns a malformed UTF-8 byte into U+FFFD (id 30140)
  // while llama2.c falls back to the byte itself (0xFF + 3); and a literal U+2581 is a space to
  // SentencePiece but an unknown character (three byte tokens) to llama2.c.
  EXPECT_EQ(bin->encode("x\xFF y", true), (Ids{1, 921, 258, 343}));
  EXPECT_EQ(sp->encode("x\xFF y", true), (Ids{1, 921, 30140, 343}));
  EXPECT_EQ(bin->encode("a \xE2\x96\x81 b", true), (Ids{1, 263, 29871, 229, 153, 132, 289}));
  EXPECT_EQ(sp->encode("a \xE2\x96\x81 b", true), (Ids{1, 263, 259, 289}));
}

// Expected ids below were produced by libsentencepiece 0.1.97 (SentencePieceProcessor::Encode/Decode)
// with the same model files.
TEST(SentencePieceTokenizer, Llama2MatchesLibsentencepiece) {
  QF_REQUIRE_DATA(llama2_dir() / "tokenizer.model");
  auto tok = load_tokenizer(llama2_dir() / "tokenizer.model");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->encode("Hello world", true), (Ids{1, 15043, 3186}));
  EXPECT_EQ(tok->encode("The quick brown fox jumps over the lazy dog.", false),
            (Ids{450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889}));
  // Identity normalizer: spaces kept as they are, unknown characters as UTF-8 byte pieces.
  EXPECT_EQ(tok->encode("  Two  spaces,\ttab and \xEF\xAC\x83 ligature \xEF\xBC\xA1", false),
            (Ids{259, 7803, 29871, 8162, 29892, 12, 3891, 322, 29871, 242, 175, 134, 14172, 1535, 29871, 242, 191, 164}));
  // Decoding: only the first non-control piece loses its leading U+2581; byte pieces are reassembled.
  EXPECT_EQ(tok->decode({29871, 448}), " -");
  EXPECT_EQ(tok->decode({1, 15043}), "Hello");
  EXPECT_EQ(tok->decode({68, 15043}), "A Hello");
  EXPECT_EQ(tok->decode({0, 15043}), " \xE2\x81\x87  Hello");
  EXPECT_EQ(tok->decode({29871, 29871, 15043}), "  Hello");
  EXPECT_EQ(tok->decode({1, 242, 191, 164, 2}), "\xEF\xBC\xA1");
  EXPECT_EQ(tok->decode({242, 1, 191}), "\xEF\xBF\xBD\xEF\xBF\xBD");  // a control piece splits the byte run
  const std::string text = "Perplexity on WikiText-2: 5.47 \xE2\x86\x92 5.60 after 4-bit GPTQ.";
  EXPECT_EQ(tok->decode(tok->encode(text, true)), text);
}

TEST(SentencePieceTokenizer, Llama2WikitextTestTokenCount) {
  const fs::path joined = test::shared_data() / "wikitext-2" / "wikitext-2-raw" / "wiki.test.hf_join.txt";
  QF_REQUIRE_DATA(joined);
  QF_REQUIRE_DATA(llama2_dir() / "tokenizer.model");
  // The GPTQ-style LLaMA-2 WikiText-2 test encoding: "\n\n".join(rows) with one BOS is 341,469 tokens.
  auto tok = load_tokenizer(llama2_dir() / "tokenizer.model");
  EXPECT_EQ(tok->encode(read_file(joined), true).size(), 341469u);
}

TEST(SentencePieceTokenizer, Ref6mVocabularyAndRoundTrip) {
  QF_REQUIRE_DATA(ref6m_dir() / "tokenizer.model");
  auto tok = load_tokenizer(ref6m_dir() / "tokenizer.model");
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 4096);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  const std::string text = "The kernel maps each BPF program to a file descriptor. See also: bpf(2).";
  Ids ids = tok->encode(text, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(Ids(ids.begin() + 1, ids.end()), tok->encode(text, false));
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_TRUE(tok->encode("", false).empty());
  EXPECT_EQ(tok->encode("", true), (Ids{1}));
  EXPECT_EQ(tok->encode(" \n\t ", true), (Ids{1}));  // nothing but whitespace normalizes to nothing
  EXPECT_THROW(tok->decode({4096}), InputError);
}

TEST(SentencePieceTokenizer, Ref6mNfkcNormalizationMatchesLibsentencepiece) {
  QF_REQUIRE_DATA(ref6m_dir() / "tokenizer.model");
  auto tok = load_tokenizer(ref6m_dir() / "tokenizer.model");
  EXPECT_EQ(tok->encode("Hello world", false), (Ids{522, 325, 311, 2914, 455}));
  // nmt_nfkc: runs of whitespace collapse, tab becomes a space, the ffi ligature and the fullwidth A
  // become ASCII.
  EXPECT_EQ(tok->encode("  Two  spaces,\ttab and \xEF\xAC\x83 ligature \xEF\xBC\xA1", false),
            (Ids{306, 958, 1286, 1455, 2969, 259, 354, 315, 277, 2958, 2945, 333, 370, 996, 355}));
  EXPECT_EQ(tok->decode(tok->encode("ﬃ", false)), "ffi");
}

TEST(SentencePieceTokenizer, Ref6mValidSampleTokenCountMatchesReferenceEval) {
  const fs::path eval = ref6m_dir() / "reference_eval.json";
  QF_REQUIRE_DATA(eval);
  QF_REQUIRE_DATA(ref6m_dir() / "valid-sample.txt");
  auto tok = load_tokenizer(ref6m_dir() / "tokenizer.model");
  auto ref = nlohmann::json::parse(read_file(eval));
  // The reference protocol: the whole file, read as is, tokenized once with one BOS in front.
  Ids ids = tok->encode(read_file(ref6m_dir() / "valid-sample.txt"), true);
  EXPECT_EQ(ids.size(), ref.at("seqlen_256").at("tokens").get<std::size_t>());
  EXPECT_EQ(ids.size(), 35322u);
}

TEST(Tokenizer, LoadErrorsNameTheFile) {
  const fs::path dir = test::make_temp_dir("tok-errors");
  std::string msg = expect_input_error([&] { load_tokenizer(dir / "nope.model"); });
  EXPECT_NE(msg.find("nope.model"), std::string::npos) << msg;

  write_file_atomic(dir / "empty.bin", "");
  msg = expect_input_error([&] { load_tokenizer(dir / "empty.bin"); });
  EXPECT_NE(msg.find("empty.bin"), std::string::npos) << msg;

  write_file_atomic(dir / "notes.txt", "hello, this is a plain text file and no tokenizer at all\n");
  msg = expect_input_error([&] { load_tokenizer(dir / "notes.txt"); });
  EXPECT_NE(msg.find("notes.txt: not a tokenizer.json, SentencePiece model or llama2.c tokenizer.bin"), std::string::npos) << msg;

  EXPECT_THROW(load_tokenizer(dir), InputError);
  fs::remove_all(dir);
}

// A tokenizer.json small enough to encode by hand: GPT-2's byte-to-character table maps ASCII letters to
// themselves and the space to 'Ġ' (U+0120); merges by rank h+e, l+l, he+ll.
json tiny_tokenizer_json() {
  return json::parse(R"({
    "version": "1.0",
    "added_tokens": [
      {"id": 8, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 9, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": " ?\\p{L}+|\\s+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [8], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
      "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "\u0120": 4, "he": 5, "ll": 6, "hell": 7},
      "merges": ["h e", "l l", "he ll"]}})");
}

// Worked by hand: "hello hell<|end|>he" splits off <|end|>, pre-tokenizes to "hello", " hell", "he";
// "hello" merges h+e, then l+l, then he+ll into hell, o; " hell" into Ġ, hell; "he" into he. (The tokenizers
// package gives the same ids for this file; the interop tier compares the two on real text.)
TEST(HfJsonTokenizer, HandWorkedBpeAndItsRefusals) {
  const fs::path dir = test::make_temp_dir("tok-json");
  write_file_atomic(dir / "tokenizer.json", tiny_tokenizer_json().dump());
  const auto tok = load_tokenizer(dir / "tokenizer.json");
  EXPECT_EQ(tok->kind(), "tokenizer.json");
  EXPECT_EQ(tok->encode("hello hell<|end|>he", /*add_bos=*/true), (Ids{8, 7, 3, 4, 7, 9, 5}));
  EXPECT_EQ(tok->encode("hello", /*add_bos=*/false), (Ids{7, 3}));
  EXPECT_EQ(tok->decode({7, 3, 4, 7}), "hello hell");
  // What the reader does not run is refused, naming the file and the field, never approximated.
  const auto refusal = [&](const std::function<void(json&)>& edit) {
    json j = tiny_tokenizer_json();
    edit(j);
    write_file_atomic(dir / "bad.json", j.dump());
    return expect_input_error([&] { load_tokenizer(dir / "bad.json"); });
  };
  std::string msg = refusal([](json& j) { j["model"]["type"] = "WordPiece"; });
  EXPECT_NE(msg.find("bad.json: model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'WordPiece' is not supported"), std::string::npos) << msg;
  msg = refusal([](json& j) { j["model"]["dropout"] = 0.1; });
  EXPECT_NE(msg.find("dropout"), std::string::npos) << msg;
  msg = refusal([](json& j) { j["normalizer"] = {{"type", "BertNormalizer"}}; });
  EXPECT_NE(msg.find("'BertNormalizer' is not supported"), std::string::npos) << msg;
  msg = refusal([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithNext"; });
  EXPECT_NE(msg.find("'MergedWithNext' is not supported"), std::string::npos) << msg;
  msg = refusal([](json& j) { j["model"]["merges"][2] = "he xx"; });
  EXPECT_NE(msg.find("merges"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(Tokenizer, TruncatedLlama2cFileNamesTokenIndex) {
  QF_REQUIRE_DATA(tok512_path());
  const std::string bytes = read_file(tok512_path());
  const fs::path dir = test::make_temp_dir("tok-trunc");
  // Cut inside the last entry's bytes, then inside its score/length.
  write_file_atomic(dir / "cut_bytes.bin", bytes.substr(0, bytes.size() - 1));
  std::string msg = expect_input_error([&] { load_tokenizer(dir / "cut_bytes.bin"); });
  EXPECT_NE(msg.find("cut_bytes.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("token 511"), std::string::npos) << msg;

  auto vocab = read_vocab(tok512_path());
  const std::size_t last_entry = bytes.size() - 8 - vocab.back().first.size();
  write_file_atomic(dir / "cut_header.bin", bytes.substr(0, last_entry + 5));
  msg = expect_input_error([&] { load_tokenizer(dir / "cut_header.bin"); });
  EXPECT_NE(msg.find("token 511"), std::string::npos) << msg;

  // A length larger than max_token_length is structurally wrong, not merely truncated.
  std::size_t entry5 = 4;
  for (int i = 0; i < 5; ++i) entry5 += 8 + vocab[static_cast<std::size_t>(i)].first.size();
  std::string bad = bytes;
  const std::int32_t huge = 1000;
  std::memcpy(&bad[entry5 + 4], &huge, 4);
  write_file_atomic(dir / "bad_len.bin", bad);
  msg = expect_input_error([&] { load_tokenizer(dir / "bad_len.bin"); });
  EXPECT_NE(msg.find("bad_len.bin: token 5: byte length 1000"), std::string::npos) << msg;
  // With the very first entry broken the file no longer looks like a tokenizer.bin at all.
  std::memcpy(&bad[4 + 4], &huge, 4);
  write_file_atomic(dir / "bad_first.bin", bad);
  msg = expect_input_error([&] { load_tokenizer(dir / "bad_first.bin"); });
  EXPECT_NE(msg.find("bad_first.bin: not a tokenizer.json, SentencePiece model or llama2.c tokenizer.bin"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(Tokenizer, DetectsFormatByContentNotName) {
  QF_REQUIRE_DATA(tok512_path());
  QF_REQUIRE_DATA(ref6m_dir() / "tokenizer.model");
  const fs::path dir = test::make_temp_dir("tok-detect");
  write_file_atomic(dir / "tokenizer.model", read_file(tok512_path()));
  write_file_atomic(dir / "tokenizer.bin", read_file(ref6m_dir() / "tokenizer.model"));
  EXPECT_EQ(load_tokenizer(dir / "tokenizer.model")->kind(), "llama2c");
  EXPECT_EQ(load_tokenizer(dir / "tokenizer.bin")->kind(), "sentencepiece");
  fs::remove_all(dir);
}

TEST(Tokenizer, FindModelTokenizerPrefersSentencePiece) {
  const fs::path dir = test::make_temp_dir("tok-find");
  EXPECT_EQ(find_model_tokenizer(dir), fs::path());
  write_file_atomic(dir / "tokenizer.json", "{}");  // LLaMA-3, Qwen: the folder holds only this one
  EXPECT_EQ(find_model_tokenizer(dir), dir / "tokenizer.json");
  write_file_atomic(dir / "tokenizer.bin", "x");
  EXPECT_EQ(find_model_tokenizer(dir), dir / "tokenizer.bin");
  write_file_atomic(dir / "tokenizer.model", "x");
  EXPECT_EQ(find_model_tokenizer(dir), dir / "tokenizer.model");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace qforge::storage
