// Every malformed input gives one clear error naming the file/field and exit code 2; no crash or hang.
#include <gtest/gtest.h>

#include <fstream>

#include "common/file_util.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using test::shell_quote;

struct CliErrors : ::testing::Test {
  void SetUp() override {
    dir = test::make_temp_dir("cli");
    model = dir / "model";
    auto r = test::run_command(test::qforge_binary() + " make-synthetic --log-level warn --shape tiny --blocks 2 --out " +
                               shell_quote(model.string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    text = dir / "text.txt";
    write_file_atomic(text, "Once upon a time there was a small model that wanted to be quantized.\n");
  }
  void TearDown() override { fs::remove_all(dir); }

  test::CommandResult eval(const std::string& flags) {
    return test::run_command(test::qforge_binary() + " eval --log-level warn " + flags);
  }
  void expect_bad_input(const test::CommandResult& r, const std::string& needle) {
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
  }
  fs::path dir, model, text;
};

TEST_F(CliErrors, SyntheticModelEvaluates) {
  auto r = eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string()) + " --seqlen 16");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("perplexity"), std::string::npos) << r.output;
}

TEST_F(CliErrors, UnknownCommandAndOption) {
  expect_bad_input(test::run_command(test::qforge_binary() + " frobnicate"), "unknown command");
  expect_bad_input(eval("--model x --data y --no-such-flag"), "no-such-flag");
  expect_bad_input(eval("--data y"), "model");
}

TEST_F(CliErrors, MissingModelFolder) {
  expect_bad_input(eval("--model " + shell_quote((dir / "nope").string()) + " --data " + shell_quote(text.string())), "nope");
}

TEST_F(CliErrors, ConfigWithWrongTypeNamesField) {
  std::string cfg = read_file(model / "config.json");
  auto pos = cfg.find("\"hidden_size\": 64");
  ASSERT_NE(pos, std::string::npos) << cfg;
  cfg.replace(pos, 17, "\"hidden_size\": \"64\"");
  write_file_atomic(model / "config.json", cfg);
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string())), "hidden_size");
}

TEST_F(CliErrors, ConfigShapeMismatchNamesTensor) {
  std::string cfg = read_file(model / "config.json");
  auto pos = cfg.find("\"intermediate_size\": 176");
  ASSERT_NE(pos, std::string::npos);
  cfg.replace(pos, 24, "\"intermediate_size\": 128");
  write_file_atomic(model / "config.json", cfg);
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string())), "mlp.gate_proj");
}

TEST_F(CliErrors, TruncatedCheckpoint) {
  fs::resize_file(model / "model.safetensors", fs::file_size(model / "model.safetensors") - 10);
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string())), "model.safetensors");
}

TEST_F(CliErrors, MissingTensor) {
  // Drop the last block's down_proj by rewriting the checkpoint without it is heavy; instead claim one
  // more block than the file has.
  std::string cfg = read_file(model / "config.json");
  auto pos = cfg.find("\"num_hidden_layers\": 2");
  ASSERT_NE(pos, std::string::npos);
  cfg.replace(pos, 22, "\"num_hidden_layers\": 3");
  write_file_atomic(model / "config.json", cfg);
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string())),
                   "model.layers.2");
}

TEST_F(CliErrors, SeqlenLargerThanModelSupports) {
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string()) + " --seqlen 4096"),
                   "max_position_embeddings");
}

TEST_F(CliErrors, MissingTokenizer) {
  fs::remove(model / "tokenizer.bin");
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string())), "tokenizer");
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string()) + " --tokenizer " +
                        shell_quote((dir / "none.model").string())),
                   "none.model");
}

TEST_F(CliErrors, EmptyAndTooShortDatasets) {
  fs::path empty = dir / "empty.txt";
  write_file_atomic(empty, "");
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(empty.string())), "empty");
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string()) + " --seqlen 256"),
                   "text.txt");
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote((dir / "missing.txt").string())),
                   "missing.txt");
}

TEST_F(CliErrors, BadDataFormatAndMalformedC4) {
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(text.string()) +
                        " --data-format xml"),
                   "xml");
  fs::path c4 = dir / "bad.jsonl";
  write_file_atomic(c4, "{\"text\": \"ok\"}\n{not json}\n");
  expect_bad_input(eval("--model " + shell_quote(model.string()) + " --data " + shell_quote(c4.string())), "bad.jsonl");
}

TEST_F(CliErrors, InspectPrintsBlocksAndRejectsBadFolder) {
  auto r = test::run_command(test::qforge_binary() + " inspect " + shell_quote(model.string()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model.layers.1.mlp.down_proj.weight"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("GQA"), std::string::npos) << r.output;
  expect_bad_input(test::run_command(test::qforge_binary() + " inspect " + shell_quote(dir.string())), "config.json");
}

TEST_F(CliErrors, ImportRejectsBadLlama2cFile) {
  fs::path bad = dir / "bad.bin";
  write_file_atomic(bad, std::string(40, '\x01'));
  expect_bad_input(test::run_command(test::qforge_binary() + " import-llama2c " + shell_quote(bad.string()) + " " +
                                     shell_quote((dir / "out").string())),
                   "bad.bin");
  EXPECT_FALSE(fs::exists(dir / "out" / "model.safetensors"));
}

}  // namespace
}  // namespace qforge
