// Non-finite and out-of-range numbers are bad input wherever they enter (issue 18, cases 7-9): a flag
// outside its documented range, a weight that is Inf, a tokenizer score that is NaN, a token id beyond
// the vocabulary; each is refused with exit 2 naming the flag, tensor or file. And nothing non-finite
// is ever journaled (JSON would write null, which breaks every later replay).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "common/error.h"
#include "common/file_util.h"
#include "storage/journal.h"
#include "storage/safetensors.h"
#include "storage/token_file.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using test::shell_quote;

struct BadNumbers : ::testing::Test {
  void SetUp() override {
    model = test::shared_data() / "models/stories260K-hf";
    tok = test::shared_data() / "models/stories260K/tok512.bin";
    dir = test::make_temp_dir("bad-numbers");
  }
  test::CommandResult qforge(const std::string& args) { return test::run_command(test::qforge_binary() + " " + args); }
  fs::path model, tok, dir;
};

TEST_F(BadNumbers, HyperparametersOutsideTheirRangeAreRefusedNamingTheFlag) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const std::string base = "quantize --log-level warn --model " + shell_quote(model.string()) + " --out " +
                           shell_quote((dir / "out").string()) + " --method omniquant --calib-data model:generate ";
  for (const std::string bad : {"--lwc-lr -100", "--let-lr 0", "--alpha -5", "--alpha 2", "--alpha nan", "--sf inf",
                                "--sf -1", "--threads -1", "--heartbeat-timeout nan", "--nsamples 0"}) {
    const auto r = qforge(base + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.output;
    EXPECT_NE(r.output.find(bad.substr(0, bad.find(' '))), std::string::npos) << bad << ": " << r.output;
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST_F(BadNumbers, AnInfWeightIsRefusedAsItIsLoadedNamingTheTensor) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path bad = dir / "inf-model";
  fs::create_directories(bad);
  fs::copy_file(model / "config.json", bad / "config.json");
  const storage::SafetensorsFile f(model / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& t : f.tensors()) tensors.emplace_back(t.name, f.load(t.name));
  const std::string victim = "model.layers.2.mlp.up_proj.weight";
  for (auto& [name, t] : tensors) {
    if (name == victim) t.view(-1)[5] = std::numeric_limits<float>::infinity();
  }
  storage::write_safetensors(bad / "model.safetensors", tensors, {{"format", "pt"}});
  auto r = qforge("quantize --log-level warn --method rtn --model " + shell_quote(bad.string()) + " --out " +
                  shell_quote((dir / "q").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(victim), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("non-finite"), std::string::npos) << r.output;
  const fs::path text = test::shared_data() / "models/stories260K/generated-eval.txt";
  QF_REQUIRE_DATA(text);
  r = qforge("eval --log-level warn --model " + shell_quote(bad.string()) + " --data " + shell_quote(text.string()) +
             " --tokenizer " + shell_quote(tok.string()) + " --seqlen 128");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(victim), std::string::npos) << r.output;
}

TEST_F(BadNumbers, ATokenizerWithANanScoreAndTokenIdsBeyondTheVocabularyAreRefused) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  QF_REQUIRE_DATA(tok);
  std::string bytes = read_file(tok);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(bytes.data() + 4, &nan, 4);  // header: max_token_length (4 bytes), then token 0's score
  write_file_atomic(dir / "nan.bin", bytes);
  const fs::path text = test::shared_data() / "models/stories260K/generated-eval.txt";
  QF_REQUIRE_DATA(text);
  auto r = qforge("eval --log-level warn --model " + shell_quote(model.string()) + " --data " + shell_quote(text.string()) +
                  " --tokenizer " + shell_quote((dir / "nan.bin").string()) + " --seqlen 128");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("non-finite merge score"), std::string::npos) << r.output;

  std::vector<std::int32_t> ids(600, 7);
  ids[300] = 512;  // the model has 512 tokens: ids 0..511
  storage::write_token_file(dir / "ids.tok", ids);
  r = qforge("quantize --log-level warn --method omniquant --epochs 1 --nsamples 2 --calib-seqlen 64 --joint-topk 0 --model " +
             shell_quote(model.string()) + " --out " + shell_quote((dir / "q2").string()) + " --calib-data " +
             shell_quote((dir / "ids.tok").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("id 512 outside the model's vocabulary"), std::string::npos) << r.output;
  r = qforge("eval --log-level warn --model " + shell_quote(model.string()) + " --data " + shell_quote((dir / "ids.tok").string()) +
             " --seqlen 64");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("do not fit the vocabulary"), std::string::npos) << r.output;
}

TEST(JournalNumbers, ANonFiniteNumberIsRefusedNamingItsFieldAndNothingIsWritten) {
  const fs::path path = test::make_temp_dir("journal-nan") / "journal.log";
  storage::Journal j(path);
  j.append({{"type", "job_start"}});
  const auto before = read_file(path);
  try {
    j.append({{"type", "probe_done"}, {"report", {{"capacity_loss", std::nan("")}}}});
    FAIL() << "a NaN was journaled";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("report.capacity_loss"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(path), before);
  EXPECT_EQ(storage::replay_journal(path).records.size(), 1u);
}

}  // namespace
}  // namespace qforge
