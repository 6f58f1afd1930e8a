// `qforge quantize` end to end on the real stories260K-hf model (per-channel: its 172-wide MLP has no
// group size that divides it), then `qforge eval` of the output folder.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/sha256.h"
#include "partition/plan.h"
#include "storage/hf_config.h"
#include "storage/journal.h"
#include "storage/safetensors.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::shell_quote;

using test::qforge_eval_json;

struct QuantizeCli : ::testing::Test {
  void SetUp() override {
    model = test::shared_data() / "models/stories260K-hf";
    tok = test::shared_data() / "models/stories260K/tok512.bin";
    dir = test::make_temp_dir("quantize");
  }
  void TearDown() override { fs::remove_all(dir); }
  test::CommandResult quantize(const fs::path& out, const std::string& flags) {
    return test::run_command(test::qforge_binary() + " quantize --log-level warn --model " + shell_quote(model.string()) +
                             " --out " + shell_quote(out.string()) + " " + flags);
  }
  fs::path model, tok, dir;
};

TEST_F(QuantizeCli, AffineQuantW4A4FromModelGenerateReloadsToTheInMemoryModel) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path out = dir / "aq";
  auto r = quantize(out, "--method affinequant --wbits 4 --abits 4 --calib-data model:generate --nsamples 4 "
                         "--calib-seqlen 64 --epochs 2 --joint-topk 0 --tokenizer " + shell_quote(tok.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto cfg = storage::read_llama_config(out);
  ASSERT_TRUE(cfg.quant.has_value());
  EXPECT_EQ(cfg.quant->method, "affinequant");
  EXPECT_EQ(cfg.quant->act_bits, 4);
  EXPECT_TRUE(cfg.quant->deployable);
  EXPECT_FALSE(cfg.qkv_bias || cfg.o_bias);  // deployable: no shifts, a stock LLaMA graph
  json report = json::parse(read_file(out / "calibration_report.json"));
  ASSERT_EQ(report["blocks"].size(), 5u);
  for (const auto& b : report["blocks"]) EXPECT_LE(b["final_loss"].get<double>(), b["initial_loss"].get<double>() * 1.05);
  // Evaluating the written folder on the calibration windows reproduces the in-memory quantized model
  // (weights, folded norms and W4A4 activation quantization all survive the round trip).
  json got = qforge_eval_json("--model " + shell_quote(out.string()) + " --data " + shell_quote((out / "calibration.tok").string()) +
                       " --seqlen 64");
  EXPECT_NEAR(got["mean_nll"].get<double>() / report["calibration_mean_nll"].get<double>(), 1.0, 1e-5);
  // The sidecar holds codes, fp16 scales and zero points for all 35 linears.
  storage::SafetensorsFile side(out / "quantization.safetensors");
  EXPECT_EQ(side.tensors().size(), 5u * 7u * 3u);
  EXPECT_EQ(side.info("model.layers.0.mlp.down_proj.scales").dtype, storage::DType::kF16);
  EXPECT_EQ(side.info("model.layers.0.mlp.down_proj.codes").shape, (std::vector<std::int64_t>{64, 172}));
  // `status` pointed at the finished output folder, or at its removed default job directory, says what
  // happened and how to keep a job directory (exit 2, naming the folder).
  for (const fs::path& where : {out, out / ".qforge-job"}) {
    auto st = test::run_command(test::qforge_binary() + " status --job-dir " + shell_quote(where.string()));
    EXPECT_EQ(st.exit_code, 2) << st.output;
    EXPECT_NE(st.output.find(where.string()), std::string::npos) << st.output;
    EXPECT_NE(st.output.find("removed"), std::string::npos) << st.output;
    EXPECT_NE(st.output.find("pass --job-dir DIR to quantize to keep"), std::string::npos) << st.output;
  }
}

TEST_F(QuantizeCli, RtnIsWorseThanFpAndFaithfulRecordsExtras) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path text = test::shared_data() / "models/stories260K/generated-eval.txt";
  QF_REQUIRE_DATA(text);
  auto rtn = quantize(dir / "rtn", "--method rtn --wbits 3 --block-override 0:8");
  ASSERT_EQ(rtn.exit_code, 0) << rtn.output;
  auto cfg = storage::read_llama_config(dir / "rtn");
  EXPECT_EQ(cfg.quant->weight_bits(0), 8);
  EXPECT_EQ(cfg.quant->weight_bits(1), 3);
  const std::string data = " --data " + shell_quote(text.string()) + " --tokenizer " + shell_quote(tok.string()) + " --seqlen 256";
  json fp = qforge_eval_json("--model " + shell_quote(model.string()) + data);
  json q = qforge_eval_json("--model " + shell_quote((dir / "rtn").string()) + " --reference " + shell_quote(model.string()) + data);
  EXPECT_GT(q["ppl"].get<double>(), fp["ppl"].get<double>());
  EXPECT_GT(q["kl"].get<double>(), 0.0);

  auto f = quantize(dir / "faithful", "--method affinequant --faithful --wbits 3 --calib-data model:generate --nsamples 2 "
                                      "--calib-seqlen 32 --epochs 1 --tokenizer " + shell_quote(tok.string()));
  ASSERT_EQ(f.exit_code, 0) << f.output;
  auto fc = storage::read_llama_config(dir / "faithful");
  EXPECT_FALSE(fc.quant->deployable);
  EXPECT_TRUE(fc.quant->norm_bias);       // shifts fold into an RMSNorm bias
  EXPECT_TRUE(fc.qkv_bias && fc.o_bias);  // ... and q/k/v/o biases
  EXPECT_TRUE(fc.quant->norm_affine);     // W3 per-channel faithful recipe uses LN matrices
  json fq = qforge_eval_json("--model " + shell_quote((dir / "faithful").string()) + data);
  EXPECT_TRUE(fq.contains("ppl"));
}

// A rerun of a finished job whose output folder was removed, or damaged, writes it again from the kept
// job directory's unit shards (it used to log "wrote" and leave nothing): the same bytes as the first run.
TEST_F(QuantizeCli, ARerunOfAFinishedJobWritesItsOutputAgain) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const fs::path out = dir / "z0", job = dir / "z0-job";
  const std::string flags = "--method rtn --wbits 4 --job-dir " + shell_quote(job.string());
  ASSERT_EQ(quantize(out, flags).exit_code, 0);
  const std::string first = sha256_file(out / "model.safetensors");
  fs::remove_all(out);
  auto r = quantize(out, flags);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(out / "model.safetensors")) << r.output;
  EXPECT_EQ(sha256_file(out / "model.safetensors"), first);
  write_file_atomic(out / "model.safetensors", "not a model");
  ASSERT_EQ(quantize(out, flags).exit_code, 0);
  EXPECT_EQ(sha256_file(out / "model.safetensors"), first);
}

// `status` counts a job_complete record as JobState does: only once every unit is done.
TEST_F(QuantizeCli, StatusIgnoresAJobCompleteBeforeEveryUnitIsDone) {
  const fs::path job = dir / "forged";
  fs::create_directories(job);
  write_file_atomic(job / "job.json", R"({"fingerprint": "x", "identity": {"mode": "sequential"}})");
  partition::Plan plan;
  for (int b = 0; b < 3; ++b) {
    partition::WorkUnit u;
    u.id = u.first_block = b;
    plan.units.push_back(u);
  }
  write_file_atomic(job / "plan.json", plan.to_json().dump());
  auto status = [&] {
    auto r = test::run_command(test::qforge_binary() + " status --json --job-dir " + shell_quote(job.string()));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return json::parse(r.output.substr(r.output.find('{')));
  };
  auto unit_done = [](int u) {
    return json{{"type", "unit_done"}, {"unit", u}, {"ranks", json::array()}, {"report", {{"blocks", {u}}}}};
  };
  {
    storage::Journal journal(job / "journal.log");
    journal.append({{"type", "job_start"}, {"ranks", 1}});
    journal.append(unit_done(0));
    journal.append({{"type", "job_complete"}});
  }
  json st = status();
  EXPECT_FALSE(st["complete"].get<bool>()) << st.dump();
  EXPECT_EQ(st["units_done"], 1);
  {
    storage::Journal journal(job / "journal.log");
    journal.append(unit_done(1));
    journal.append(unit_done(2));
    journal.append({{"type", "job_complete"}});
  }
  st = status();
  EXPECT_TRUE(st["complete"].get<bool>()) << st.dump();
  // A record that names a unit outside the plan (CRC intact, content forged) is bad input, by position.
  {
    storage::Journal journal(job / "journal.log");
    journal.append(unit_done(7));
  }
  auto r = test::run_command(test::qforge_binary() + " status --job-dir " + shell_quote(job.string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("journal.log: record 7"), std::string::npos) << r.output;
}

TEST_F(QuantizeCli, ConfigFileKeysWithCommandLineOverrides) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  write_file_atomic(dir / "q.cfg", "# job settings\nmethod = rtn\nwbits = 3\ngroup-size = 32\nblock-override = 4:8\n");
  auto r = quantize(dir / "cfg", "--config " + shell_quote((dir / "q.cfg").string()) + " --wbits 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto cfg = storage::read_llama_config(dir / "cfg");
  EXPECT_EQ(cfg.quant->method, "rtn");
  EXPECT_EQ(cfg.quant->bits, 5);          // the command line wins
  EXPECT_EQ(cfg.quant->group_size, 32);   // the file fills the rest (172 = 5 x 32 + a partial 12)
  EXPECT_EQ(cfg.quant->weight_bits(4), 8);
  write_file_atomic(dir / "bad.cfg", "wbitz = 3\n");
  r = quantize(dir / "bad", "--config " + shell_quote((dir / "bad.cfg").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("bad.cfg"), std::string::npos) << r.output;
}

TEST_F(QuantizeCli, BadInputsAreRefused) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  auto r = quantize(dir / "x", "--method omniquant");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--calib-data"), std::string::npos) << r.output;
  r = quantize(dir / "x", "--method rtn --wbits 9");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = quantize(dir / "x", "--method rtn --block-override 7:4");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("block 7"), std::string::npos) << r.output;
  r = quantize(dir / "x", "--method affinequant --ln-matrix true --calib-data model:generate");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--faithful"), std::string::npos) << r.output;
  r = quantize(dir / "x", "--method rtn --compute-dtype fp16");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--compute-dtype"), std::string::npos) << r.output;
  r = quantize(dir / "x", "--method rtn --device tpu");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "x"));
}

// Paths that cannot be used (issue 18, case 9) are bad input, exit 2, named by their option and
// refused before anything is written: a symbolic link loop, a name longer than the file system allows,
// /proc (writable by permission bits, yet no folder can be made there), and the same as --model.
TEST_F(QuantizeCli, UnusablePathsAreRefusedAsBadInputBeforeAnythingIsWritten) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  fs::create_symlink(dir / "loop-a", dir / "loop-b");
  fs::create_symlink(dir / "loop-b", dir / "loop-a");
  const std::string long_name(300, 'n');
  const std::vector<std::pair<fs::path, std::string>> cases = {
      {dir / "loop-a" / "out", "Too many levels of symbolic links"},
      {dir / long_name, "longer than"},
      {fs::path("/proc/qforge-out"), "cannot create a folder in /proc"},
  };
  for (const auto& [out, why] : cases) {
    const auto r = quantize(out, "--method rtn");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--out"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(why), std::string::npos) << r.output;
  }
  auto r = quantize(dir / "ok", "--method rtn --job-dir " + shell_quote((dir / long_name / "job").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--job-dir"), std::string::npos) << r.output;
  // An unusable input path is bad input too (the file system's own words, exit 2, not "internal error").
  r = test::run_command(test::qforge_binary() + " quantize --method rtn --model " + shell_quote((dir / "loop-a").string()) +
                        " --out " + shell_quote((dir / "ok").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name == "loop-a" || name == "loop-b") << name << " was written";
  }
}

// A GPU asked for where there is none is refused before the job directory or the output exist (on a
// GPU machine, cuda:99 is beyond its GPUs and takes the same path; under mpirun: test_engine_mpi.cpp).
TEST_F(QuantizeCli, AMissingGpuIsRefusedBeforeAnythingIsWritten) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  auto r = quantize(dir / "gpu", "--method rtn --device cuda:99");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "gpu"));
}

// The preflight: a plan the options make impossible, an export the quantization cannot express, or an
// output under a file is refused (exit 2, naming the option) before the job directory or the output
// exist, so the corrected command then runs instead of being refused as a different job.
TEST_F(QuantizeCli, RefusedCommandsLeaveNothingAndTheCorrectedOneRunsAndSummarises) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  const std::string calib = "--method omniquant --calib-data model:generate --nsamples 2 --calib-seqlen 32 --epochs 1 "
                            "--joint-topk 0 --tokenizer " + shell_quote(tok.string());
  const fs::path out = dir / "p";
  auto r = quantize(out, calib + " --batch-size 4 --job-dir " + shell_quote((dir / "pj").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--batch-size"), std::string::npos) << r.output;
  r = quantize(out, calib + " --abits 8 --export gptq --job-dir " + shell_quote((dir / "pj").string()));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--export"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(dir / "pj"));
  write_file_atomic(dir / "a-file", "x");
  r = quantize(dir / "a-file" / "out", "--method rtn");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--out"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("is a file"), std::string::npos) << r.output;

  r = quantize(out, calib + " --batch-size 2 --job-dir " + shell_quote((dir / "pj").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The end-of-run summary: what was written, the losses per unit, and what to run next.
  for (const char* want : {"wrote ", "model.safetensors", "quantization.safetensors", "quantized linears:",
                           "calibration loss per unit", "unit 4 (block 4)", "report: ", "next:", "qforge eval --model",
                           "qforge export --model"}) {
    EXPECT_NE(r.output.find(want), std::string::npos) << want << " missing from:\n" << r.output;
  }
}

}  // namespace
}  // namespace qforge

namespace qforge {
namespace {

TEST(QuantizeDryRun, PrintsThePlanAndWritesNothing) {
  const auto model = test::shared_data() / "models/stories260K-hf";
  QF_REQUIRE_DATA(model);
  const auto dir = test::make_temp_dir("dryrun");
  auto r = test::run_command(test::qforge_binary() + " quantize --dry-run --model " + test::shell_quote(model.string()) +
                             " --out " + test::shell_quote((dir / "out").string()) +
                             " --calib-data model:generate --nsamples 16 --calib-seqlen 64 --wbits 4 --abits 4 --mode independent");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("plan: 5 work units, mode independent"), std::string::npos) << r.output;
  // stories260K-hf: 5 blocks x 9 tensors + embeddings + final norm (tied head).
  EXPECT_NE(r.output.find("coverage: 47 tensors, each exactly once"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("estimated peak memory per rank"), std::string::npos) << r.output;
  // Which formats the result will export to, with the reasons for the others.
  EXPECT_NE(r.output.find("export gptq: no (GPTQ checkpoints are weight-only"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("export compressed-tensors: no (compressed-tensors int-quantized expresses W8A8 only"),
            std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "out"));
  r = test::run_command(test::qforge_binary() + " quantize --dry-run --method rtn --wbits 4 --model " +
                        test::shell_quote(model.string()) + " --out " + test::shell_quote((dir / "out").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("export gptq: no (model.layers.*.mlp.gate_proj: out_features: 172 is not a multiple of 32"),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("export compressed-tensors: yes"), std::string::npos) << r.output;
  // A global batch smaller than the team is refused before anything runs.
  auto bad = test::run_command(test::qforge_binary() + " quantize --dry-run --model " + test::shell_quote(model.string()) +
                               " --out " + test::shell_quote((dir / "out").string()) +
                               " --calib-data model:generate --nsamples 16 --mode independent --team-size 2");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--team-size"), std::string::npos) << bad.output;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qforge
