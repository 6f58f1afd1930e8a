// Output folders are presented only whole and only as this run's (storage/output_folder.h; issue 18,
// cases 2 and 3): the previous output's files never survive a rewrite, files qforge did not write are
// refused before any compute, and readers refuse a folder without its manifest or that differs from it.
#include <gtest/gtest.h>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "storage/output_folder.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using storage::OutputFolder;
using test::shell_quote;

const std::string kQforgeConfig = R"({"quantization_config": {"quant_method": "qforge"}})";

std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "accepted";
}

TEST(OutputFolder, ARewriteLeavesNothingOfThePreviousOutputAndReadersCheckTheManifest) {
  const fs::path dir = test::make_temp_dir("outfolder") / "out";
  {
    OutputFolder first(dir);
    write_file_atomic(dir / "config.json", kQforgeConfig);
    write_file_atomic(dir / "tokenizer.model", "another model's tokenizer");
    first.publish();
  }
  storage::verify_output_folder(dir);
  {
    OutputFolder second(dir);  // the previous files go first: a stale tokenizer cannot be picked up later
    EXPECT_FALSE(fs::exists(dir / "tokenizer.model"));
    EXPECT_FALSE(fs::exists(dir / OutputFolder::kManifestName));
    write_file_atomic(dir / "config.json", kQforgeConfig);
    // Interrupted here: no manifest, so readers refuse the folder.
    EXPECT_NE(refusal([&] { storage::verify_output_folder(dir); }).find("incomplete qforge output"), std::string::npos);
    write_file_atomic(dir / "tokenizer.bin", "this model's tokenizer");
    second.publish();
  }
  storage::verify_output_folder(dir);
  const json m = json::parse(read_file(dir / OutputFolder::kManifestName));
  EXPECT_EQ(m["files"].size(), 2u);
  EXPECT_EQ(m["files"]["tokenizer.bin"]["sha256"], sha256_hex("this model's tokenizer"));
  // A changed file, a stray file readers would use, a missing file: each refused naming it.
  write_file_atomic(dir / "tokenizer.bin", "changed after the run");
  EXPECT_NE(refusal([&] { storage::verify_output_folder(dir); }).find("tokenizer.bin: does not match"), std::string::npos);
  write_file_atomic(dir / "tokenizer.bin", "this model's tokenizer");
  write_file_atomic(dir / "tokenizer.model", "stray");
  EXPECT_NE(refusal([&] { storage::verify_output_folder(dir); }).find("tokenizer.model: is not part"), std::string::npos);
  fs::remove(dir / "tokenizer.model");
  write_file_atomic(dir / "README.md", "notes someone added");  // not a file readers use: left alone
  storage::verify_output_folder(dir);
  fs::remove(dir / "tokenizer.bin");
  EXPECT_NE(refusal([&] { storage::verify_output_folder(dir); }).find("missing"), std::string::npos);
  // A folder that is not a qforge output passes (models from elsewhere have no manifest).
  const fs::path plain = dir.parent_path() / "plain";
  fs::create_directories(plain);
  write_file_atomic(plain / "config.json", "{}");
  storage::verify_output_folder(plain);
}

TEST(OutputFolder, ATargetHoldingFilesQforgeDidNotWriteIsRefusedBeforeAnyCompute) {
  const fs::path dir = test::make_temp_dir("outtarget");
  fs::create_directories(dir / "out" / ".qforge-job");
  write_file_atomic(dir / "out" / "model.safetensors", "an interrupted run's shard");  // ours: replaced
  // Another rank's writability probe of the same folder, present for an instant during every preflight
  // (counting it as foreign failed one rank in ~8 of a 3-rank job's reruns, and hung the others).
  fs::create_directories(dir / "out" / (std::string(OutputFolder::kWriteProbePrefix) + "8gANLO"));
  OutputFolder::check_target(dir / "out", "--out", {dir / "out" / ".qforge-job"});
  write_file_atomic(dir / "out" / "thesis.pdf", "not ours");
  const std::string why = refusal([&] { OutputFolder::check_target(dir / "out", "--out", {dir / "out" / ".qforge-job"}); });
  EXPECT_NE(why.find("--out"), std::string::npos) << why;
  EXPECT_NE(why.find("thesis.pdf"), std::string::npos) << why;
  EXPECT_TRUE(fs::exists(dir / "out" / "thesis.pdf"));
}

// The issue's cases end to end: quantizing into the folder of another model's output leaves none of its
// files (its tokenizer.model would have been preferred by eval), and a kill during assembly into a folder
// with an earlier result leaves a folder eval and export refuse, until the rerun finishes it.
TEST(OutputFolder, QuantizeReplacesAnotherModelsOutputWholeAndAnInterruptedAssemblyIsRefused) {
  const fs::path ref = test::shared_data() / "models/ref-6m";
  const fs::path stories = test::shared_data() / "models/stories260K-hf";
  const fs::path tok = test::shared_data() / "models/stories260K/tok512.bin";
  QF_REQUIRE_DATA(ref / "tokenizer.model");
  QF_REQUIRE_DATA(stories / "model.safetensors");
  const fs::path dir = test::make_temp_dir("outcli");
  const fs::path out = dir / "z";
  const auto q = [&](const fs::path& model, const std::string& extra, const std::string& env = "") {
    return test::run_command(env + " " + test::qforge_binary() + " quantize --log-level warn --method rtn --model " +
                             shell_quote(model.string()) + " --out " + shell_quote(out.string()) + " " + extra);
  };
  ASSERT_EQ(q(ref, "").exit_code, 0);
  ASSERT_TRUE(fs::exists(out / "tokenizer.model"));
  const std::string stories_tok = "--tokenizer " + shell_quote(tok.string());
  auto r = q(stories, stories_tok);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(out / "tokenizer.model"));
  EXPECT_TRUE(fs::exists(out / "tokenizer.bin"));

  const std::string keep_job = "--wbits 3 --job-dir " + shell_quote((dir / "job").string()) + " " + stories_tok;
  r = q(stories, keep_job, "QFORGE_FAULT=mid_assembly:0");
  EXPECT_NE(r.exit_code, 0) << r.output;
  const fs::path text = test::shared_data() / "models/stories260K/generated-eval.txt";
  QF_REQUIRE_DATA(text);
  const std::string eval = test::qforge_binary() + " eval --log-level warn --model " + shell_quote(out.string()) +
                           " --data " + shell_quote(text.string()) + " --seqlen 128";
  r = test::run_command(eval);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("incomplete qforge output"), std::string::npos) << r.output;
  r = test::run_command(test::qforge_binary() + " export --log-level warn --format fake-quant --model " +
                        shell_quote(out.string()) + " --out " + shell_quote((dir / "x").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  ASSERT_EQ(q(stories, keep_job).exit_code, 0);  // the journal is complete: the rerun re-assembles
  EXPECT_EQ(test::run_command(eval).exit_code, 0);
}

}  // namespace
}  // namespace qforge

namespace qforge {
namespace {

// A small file system of its own (tmpfs; needs root, as CI runs), unmounted at the end.
struct SmallDisk {
  fs::path dir;
  bool mounted = false;
  explicit SmallDisk(const std::string& size) : dir(test::make_temp_dir("small-disk")) {
    mounted = geteuid() == 0 &&
              test::run_command("mount -t tmpfs -o size=" + size + " tmpfs " + shell_quote(dir.string())).exit_code == 0;
  }
  ~SmallDisk() {
    if (mounted) test::run_command("umount " + shell_quote(dir.string()));
  }
};

// Issue 18, case 10: on a disk with room for one job (its unit shards plus one output, 2468 KiB for this
// RTN job), a second quantization into the same --out fits (the previous output's files go before the new
// ones are written, so no second copy is ever needed), and a run that filled the disk (here while writing
// unit shards) leaves nothing that keeps its rerun from fitting once the space is freed; the rerun's
// output is the same bytes as on an unconstrained disk.
TEST(OutputFolder, ARerunAfterAFullDiskNeedsNoRoomForASecondCopy) {
  const fs::path model = test::shared_data() / "models/stories260K-hf";
  QF_REQUIRE_DATA(model / "model.safetensors");
  SmallDisk disk("2600k");
  if (!disk.mounted) GTEST_SKIP() << "needs root to mount a small tmpfs";
  const fs::path out = disk.dir / "out";
  const auto q = [&](const fs::path& to, const std::string& bits) {
    return test::run_command(test::qforge_binary() + " quantize --log-level warn --method rtn --wbits " + bits +
                             " --model " + shell_quote(model.string()) + " --out " + shell_quote(to.string()));
  };
  const fs::path ref = test::make_temp_dir("small-disk-ref") / "out";
  ASSERT_EQ(q(ref, "4").exit_code, 0);
  auto r = q(out, "3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = q(out, "4");  // the W3 output is still there while the W4 job's shards are written
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(test::file_digests(out), test::file_digests(ref));

  write_file_atomic(disk.dir / "filler", std::string(1200 * 1024, 'f'));
  r = q(out, "4");
  ASSERT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  fs::remove(disk.dir / "filler");
  r = q(out, "4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(test::file_digests(out), test::file_digests(ref));
}

}  // namespace
}  // namespace qforge
