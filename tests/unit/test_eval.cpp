// Evaluation end to end through the qforge binary against independent references, and the window
// logic of the GPTQ protocol.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "jobs/eval_data.h"
#include "storage/token_file.h"
#include "storage/tokenizer.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"
#include "worker/evaluator.h"

namespace qforge {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using test::shell_quote;

using test::qforge_eval_json;

TEST(Eval, Ref6mPerplexityMatchesReferenceWithinHalfPercent) {
  const fs::path dir = test::shared_data() / "models/ref-6m";
  QF_REQUIRE_DATA(dir / "model.safetensors");
  json ref = json::parse(read_file(dir / "reference_eval.json"))["seqlen_256"];
  json got = qforge_eval_json("--model " + shell_quote(dir.string()) + " --data " +
                           shell_quote((dir / "valid-sample.txt").string()) + " --tokenizer " +
                           shell_quote((dir / "tokenizer.model").string()) + " --seqlen 256");
  ASSERT_TRUE(got.contains("ppl")) << got.dump();
  EXPECT_NEAR(got["ppl"].get<double>() / ref["ppl"].get<double>(), 1.0, 0.005);
  EXPECT_EQ(got["tokens"].get<std::int64_t>(), ref["tokens"].get<std::int64_t>());
  EXPECT_EQ(got["windows"].get<std::int64_t>(), ref["windows"].get<std::int64_t>());
  EXPECT_NEAR(got["mean_nll"].get<double>(), ref["mean_nll"].get<double>(), 1e-3);
}

TEST(Eval, Stories260KGeneratedTextMatchesReference) {
  // PROVENANCE.md: generated-eval.txt with tok512.bin, one BOS, windows of 256: PPL 4.5303 (mean NLL
  // 1.51080, 100 windows), from an independent fp32 implementation.
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  const fs::path text = test::shared_data() / "models/stories260K/generated-eval.txt";
  QF_REQUIRE_DATA(text);
  json got = qforge_eval_json("--model " + shell_quote(dir.string()) + " --data " + shell_quote(text.string()) +
                           " --tokenizer " + shell_quote((test::shared_data() / "models/stories260K/tok512.bin").string()) +
                           " --seqlen 256");
  ASSERT_TRUE(got.contains("ppl")) << got.dump();
  EXPECT_NEAR(got["ppl"].get<double>(), 4.5303, 5e-4);
  EXPECT_NEAR(got["mean_nll"].get<double>(), 1.51080, 1e-4);
  EXPECT_EQ(got["windows"].get<std::int64_t>(), 100);
}

TEST(Eval, BlockByBlockPlanGivesTheResidentPerplexity) {
  // The same windows through the whole resident model in batches of 8 and, under a 12 MiB budget, one block
  // at a time over chunks of 2 windows. Each row's arithmetic is the same; only the GEMMs' row counts (and
  // the head's row chunks) differ, which changes a BLAS kernel's blocking and the order of the NLL sum:
  // measured |diff| of the mean NLL 2.4e-9 (1 and 2 threads); bound 1e-6.
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  const fs::path text = test::shared_data() / "models/stories260K/generated-eval.txt";
  QF_REQUIRE_DATA(text);
  const std::string args = "--model " + shell_quote(dir.string()) + " --data " + shell_quote(text.string()) + " --tokenizer " +
                           shell_quote((test::shared_data() / "models/stories260K/tok512.bin").string()) + " --seqlen 256";
  json resident = qforge_eval_json(args);
  json bounded = qforge_eval_json(args + " --memory-budget 12MiB");
  ASSERT_TRUE(resident.contains("ppl") && bounded.contains("ppl")) << resident.dump() << bounded.dump();
  EXPECT_EQ(resident["plan"], "resident");
  EXPECT_EQ(resident["batch"], 8);
  EXPECT_EQ(bounded["plan"], "block-by-block");
  EXPECT_EQ(bounded["batch"], 2);
  EXPECT_EQ(bounded["windows"], resident["windows"]);
  EXPECT_NEAR(bounded["mean_nll"].get<double>(), resident["mean_nll"].get<double>(), 1e-6);
  EXPECT_NEAR(resident["ppl"].get<double>(), 4.5303, 5e-4);  // PROVENANCE.md, as above
}

TEST(EvalPlan, ResidentWhenAllWeightsAndABatchFitElseOneBlockAtATime) {
  using worker::plan_scoring;
  worker::ScoringOptions o;
  o.memory_budget_bytes = 1000;
  // 8 blocks of 50 bytes (400) + 8 windows of 60 bytes (2048 tokens / 256) = 880 <= 1000: resident, batch 8.
  auto p = plan_scoring(400, 50, 60, 100, 256, o);
  EXPECT_TRUE(p.resident);
  EXPECT_EQ(p.batch, 8);
  // Fewer windows than a batch: the batch is all of them.
  EXPECT_EQ(plan_scoring(400, 50, 60, 3, 256, o).batch, 3);
  // 400 + 8 x 80 = 1040 > 1000: one block (50) resident, (1000 - 50) / 80 = 11 windows per chunk.
  p = plan_scoring(400, 50, 80, 100, 256, o);
  EXPECT_FALSE(p.resident);
  EXPECT_EQ(p.batch, 11);
  // ... at most all windows, at least one even when the budget holds none.
  EXPECT_EQ(plan_scoring(4000, 500, 80, 5, 256, {1000, 0, false}).batch, 5);
  EXPECT_EQ(plan_scoring(4000, 990, 80, 5, 256, {1000, 0, false}).batch, 1);
  // A requested batch is used when it fits (400 + 4 x 80 = 720), and caps the chunk when it does not
  // (900 + 2 x 100 = 1100: (1000 - 100) / 100 = 9 windows would fit beside one block; 2 are asked for).
  p = plan_scoring(400, 50, 80, 100, 256, {1000, 4, false});
  EXPECT_TRUE(p.resident);
  EXPECT_EQ(p.batch, 4);
  p = plan_scoring(900, 100, 100, 100, 256, {1000, 2, false});
  EXPECT_FALSE(p.resident);
  EXPECT_EQ(p.batch, 2);
  // Long windows: 2048 tokens per batch is one window of 4096.
  EXPECT_EQ(plan_scoring(400, 50, 60, 100, 4096, o).batch, 1);
}

TEST(Eval, ModelAgainstItselfHasZeroKlAndFullAgreement) {
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  const fs::path text = test::shared_data() / "tinystories/tinystories_sample.txt";
  QF_REQUIRE_DATA(text);
  json got = qforge_eval_json("--model " + shell_quote(dir.string()) + " --reference " + shell_quote(dir.string()) +
                           " --data " + shell_quote(text.string()) + " --tokenizer " +
                           shell_quote((test::shared_data() / "models/stories260K/tok512.bin").string()) + " --seqlen 128");
  ASSERT_TRUE(got.contains("kl")) << got.dump();
  EXPECT_NEAR(got["kl"].get<double>(), 0.0, 1e-7);
  EXPECT_DOUBLE_EQ(got["top1"].get<double>(), 1.0);
}

// Several --model flags: one table on the same windows; each row is what the model alone scores, and a
// missing second model is refused before the first is scored.
TEST(Eval, SeveralModelsAreComparedInOneTable) {
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  const fs::path text = test::shared_data() / "tinystories/tinystories_sample.txt";
  QF_REQUIRE_DATA(text);
  const std::string data = " --data " + shell_quote(text.string()) + " --tokenizer " +
                           shell_quote((test::shared_data() / "models/stories260K/tok512.bin").string()) + " --seqlen 128";
  const json alone = qforge_eval_json("--model " + shell_quote(dir.string()) + data);
  const std::string two = " --model " + shell_quote(dir.string()) + " --model " + shell_quote(dir.string()) + data;
  auto r = test::run_command(test::qforge_binary() + " eval --log-level warn --json" + two);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json both = json::parse(r.output.substr(r.output.find('{')));
  ASSERT_EQ(both["results"].size(), 2u) << both.dump();
  for (const auto& row : both["results"]) {
    EXPECT_EQ(row["model"], dir.string());
    EXPECT_EQ(row["mean_nll"].get<double>(), alone["mean_nll"].get<double>());  // same windows, same model
  }
  r = test::run_command(test::qforge_binary() + " eval --log-level warn" + two);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("perplexity     mean NLL"), std::string::npos) << r.output;
  r = test::run_command(test::qforge_binary() + " eval --log-level warn --model " + shell_quote(dir.string()) +
                        " --model /nonexistent-model" + data);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("/nonexistent-model"), std::string::npos) << r.output;
}

TEST(Eval, TokenFileGivesSamePerplexityAsText) {
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  const fs::path text = test::shared_data() / "tinystories/tinystories_sample.txt";
  const fs::path tok = test::shared_data() / "models/stories260K/tok512.bin";
  QF_REQUIRE_DATA(text);
  fs::path tmp = test::make_temp_dir("tokfile");
  auto r = test::run_command(test::qforge_binary() + " tokenize --log-level warn --data " + shell_quote(text.string()) +
                             " --tokenizer " + shell_quote(tok.string()) + " --out " + shell_quote((tmp / "t.tok").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json a = qforge_eval_json("--model " + shell_quote(dir.string()) + " --data " + shell_quote(text.string()) +
                         " --tokenizer " + shell_quote(tok.string()) + " --seqlen 128");
  json b = qforge_eval_json("--model " + shell_quote(dir.string()) + " --data " + shell_quote((tmp / "t.tok").string()) +
                         " --seqlen 128");
  EXPECT_EQ(b["data_format"], "tokens");
  EXPECT_EQ(a["tokens"], b["tokens"]);
  EXPECT_DOUBLE_EQ(a["ppl"].get<double>(), b["ppl"].get<double>());
  fs::remove_all(tmp);
}

// --device: auto (the default) is the GPU when there is one, else the CPU, with the CPU's figure;
// a GPU asked for on a machine without one, or a device that does not exist, is bad input (exit 2).
TEST(Eval, DeviceAutoIsTheCpuWithoutAGpuAndCudaIsRefusedThere) {
  const fs::path dir = test::shared_data() / "models/stories260K-hf";
  const fs::path text = test::shared_data() / "tinystories/tinystories_sample.txt";
  const fs::path tok = test::shared_data() / "models/stories260K/tok512.bin";
  QF_REQUIRE_DATA(text);
  const std::string flags = "--model " + shell_quote(dir.string()) + " --data " + shell_quote(text.string()) +
                            " --tokenizer " + shell_quote(tok.string()) + " --seqlen 128";
  if (at::hasCUDA()) GTEST_SKIP() << "this machine has a GPU: auto is not the CPU here (the gpu tier covers it)";
  const json cpu = qforge_eval_json(flags + " --device cpu");
  EXPECT_DOUBLE_EQ(qforge_eval_json(flags).at("ppl").get<double>(), cpu.at("ppl").get<double>());
  EXPECT_DOUBLE_EQ(qforge_eval_json(flags + " --device auto").at("ppl").get<double>(), cpu.at("ppl").get<double>());
  for (const std::string bad : {"cuda", "cuda:1", "tpu"}) {
    auto r = test::run_command(test::qforge_binary() + " eval --log-level warn " + flags + " --device " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.output;
    EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  }
}

TEST(EvalWindows, CutsNonOverlappingWindowsAndDropsTail) {
  std::vector<std::int32_t> ids(23);
  for (int i = 0; i < 23; ++i) ids[static_cast<std::size_t>(i)] = i;
  at::Tensor w = jobs::cut_windows(ids, 5);
  ASSERT_EQ(w.size(0), 4);
  EXPECT_EQ(w[1][0].item<std::int64_t>(), 5);
  EXPECT_EQ(w[3][4].item<std::int64_t>(), 19);
}

TEST(EvalWindows, C4SamplingFollowsPythonRandomAndIsDeterministic) {
  const fs::path c4 = test::shared_data() / "c4/c4-en-train-first1000.jsonl";
  const fs::path tokp = test::shared_data() / "models/llama2-tokenizer/tokenizer.model";
  QF_REQUIRE_DATA(c4);
  QF_REQUIRE_DATA(tokp);
  auto tok = storage::load_tokenizer(tokp);
  jobs::EvalDataSpec spec;
  spec.path = c4;
  spec.format = storage::DataFormat::kC4;
  spec.seqlen = 64;
  spec.c4_samples = 4;
  spec.seed = 0;
  auto a = jobs::load_eval_windows(spec, tok.get());
  auto b = jobs::load_eval_windows(spec, tok.get());
  ASSERT_EQ(a.windows.sizes(), (std::vector<std::int64_t>{4, 64}));
  EXPECT_TRUE(at::equal(a.windows, b.windows));
  // random.seed(0); random.randint(0, 999) == 864 in CPython: the first window comes from document 864
  // whenever that document is longer than 64 tokens (it is), so its tokens must appear there.
  auto docs = storage::read_jsonl_texts(c4);
  auto doc = tok->encode(docs[864], true);
  ASSERT_GT(doc.size(), 64u);
  std::vector<std::int64_t> first(a.windows[0].data_ptr<std::int64_t>(), a.windows[0].data_ptr<std::int64_t>() + 64);
  bool found = false;
  for (std::size_t s = 0; s + 64 <= doc.size() && !found; ++s) {
    found = std::equal(first.begin(), first.end(), doc.begin() + static_cast<std::ptrdiff_t>(s));
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace qforge
