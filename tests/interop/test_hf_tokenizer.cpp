// The interop tier, tokenizers: qforge's tokenizer.json reader (storage/hf_json_tokenizer.cpp) against the
// `tokenizers` package itself, id for id, on the WikiText-2 test text (one string, 1.3 MB) and on each of the
// 1000 C4 documents. The tokenizer files have the published structure of each family, made here without
// downloads (tests/interop/hf_reference.py tokenizer): LLaMA-3 (its pre-tokenizer regex, ignore_merges,
// a BOS template) and Qwen2 (its regex, NFC, no BOS) byte-level BPEs trained by `tokenizers` on 300 C4
// documents, and LLaMA-2's SentencePiece model converted by transformers (Metaspace, byte fallback);
// plus one document with the family's special tokens inside text. Expected: 0 mismatching sequences.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "storage/safetensors.h"
#include "storage/token_file.h"
#include "storage/tokenizer.h"
#include "tests/interop/interop_support.h"

namespace qforge::test {
namespace {

namespace fs = std::filesystem;

std::vector<std::int32_t> slice(const at::Tensor& t, std::int64_t begin, std::int64_t end) {
  const at::Tensor s = t.slice(0, begin, end).to(at::kInt).contiguous();
  return std::vector<std::int32_t>(s.data_ptr<std::int32_t>(), s.data_ptr<std::int32_t>() + s.numel());
}

// Where two id sequences first differ, for the failure message.
std::string first_difference(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b) {
  std::size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return "first difference at " + std::to_string(i) + " (lengths " + std::to_string(a.size()) + " vs " +
         std::to_string(b.size()) + ")";
}

class HfTokenizer : public ::testing::TestWithParam<const char*> {};

TEST_P(HfTokenizer, IdsEqualTokenizersOnWikiText2AndC4) {
  QF_REQUIRE_TRANSFORMERS();
  const std::string family = GetParam();
  const fs::path wiki = shared_data() / "wikitext-2/wikitext-2-raw/wiki.test.raw";
  const fs::path c4 = shared_data() / "c4/c4-en-train-first1000.jsonl";
  const fs::path spm = shared_data() / "models/llama2-tokenizer/tokenizer.model";
  QF_REQUIRE_DATA(wiki);
  QF_REQUIRE_DATA(c4);
  QF_REQUIRE_DATA(spm);
  const fs::path dir = make_temp_dir("interop-tokenizer-" + family);
  run_python("tokenizer " + family + " " + shell_quote(dir.string()) +
             (family == "llama2" ? " --spm " + shell_quote(spm.string()) : " --train " + shell_quote(c4.string())));
  const fs::path tokenizer_json = dir / "tokenizer.json";
  // The C4 documents, then one with the family's special tokens inside text (split off before anything else).
  const std::string special = family == "llama3" ? "<|end_of_text|>" : family == "qwen2" ? "<|im_end|>" : "</s>";
  const fs::path docs_file = dir / "c4-and-specials.jsonl";
  write_file_atomic(docs_file, read_bytes(c4) + nlohmann::json({{"text", "Hi" + special + " there " + special + "\nend"}}).dump() + "\n");
  run_python("encode " + shell_quote(tokenizer_json.string()) + " " + shell_quote((dir / "ids.safetensors").string()) +
             " --wikitext " + shell_quote(wiki.string()) + " --c4 " + shell_quote(docs_file.string()));
  const storage::SafetensorsFile ref(dir / "ids.safetensors");
  const auto tok = storage::load_tokenizer(tokenizer_json);
  EXPECT_EQ(tok->kind(), "tokenizer.json");

  const at::Tensor wiki_ids = ref.load("wikitext");
  const std::vector<std::int32_t> want = slice(wiki_ids, 0, wiki_ids.size(0));
  const std::vector<std::int32_t> got = tok->encode(read_bytes(wiki), /*add_bos=*/true);
  EXPECT_EQ(got, want) << "WikiText-2: " << first_difference(got, want);
  // The CLI reads it as any tokenizer: `qforge tokenize` of the text writes the same ids.
  const fs::path tok_file = dir / "wiki.tok";
  const auto r = run_qforge("tokenize --data-format text --data " + shell_quote(wiki.string()) + " --tokenizer " +
                            shell_quote(tokenizer_json.string()) + " --out " + shell_quote(tok_file.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(storage::read_token_file(tok_file), want);

  const at::Tensor c4_ids = ref.load("c4"), offsets = ref.load("c4_offsets");
  std::ifstream in(docs_file);
  std::string line;
  int docs = 0, mismatches = 0;
  std::string first;
  for (; std::getline(in, line); ++docs) {
    const std::string text = nlohmann::json::parse(line).at("text").get<std::string>();
    const auto expect = slice(c4_ids, offsets[docs].item<std::int64_t>(), offsets[docs + 1].item<std::int64_t>());
    const auto ids = tok->encode(text, /*add_bos=*/true);
    if (ids != expect) {
      if (mismatches++ == 0) first = "document " + std::to_string(docs) + ": " + first_difference(ids, expect);
    }
  }
  EXPECT_EQ(docs, 1001);
  EXPECT_EQ(mismatches, 0) << first;
  std::printf("[interop] %s tokenizer.json: WikiText-2 %zu ids %s, C4 + special-token document %d/%d equal\n", family.c_str(),
              want.size(), got == want ? "equal" : "DIFFER", docs - mismatches, docs);
  // Decoding gives the text back (byte-level and byte-fallback BPE are lossless; special tokens aside).
  const std::string sample = "Héllo wörld — 123 tokens\n\n  spaces\tand ünïcödé 🙂";
  std::vector<std::int32_t> ids = tok->encode(sample, /*add_bos=*/false);
  EXPECT_EQ(tok->decode(ids), sample);
}

INSTANTIATE_TEST_SUITE_P(Families, HfTokenizer, ::testing::Values("llama3", "qwen2", "llama2"));

}  // namespace
}  // namespace qforge::test
