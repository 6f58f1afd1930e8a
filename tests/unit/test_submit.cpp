// `qforge submit`: the sbatch script (golden files under tests/golden, rendered in process and by the
// CLI with --print), shell quoting, the refusals, and the script's signal/exit-code behaviour, run with
// bash against fake srun/scontrol/qforge. No Slurm client is ever run: the CLI tests use --print (or stop
// before sbatch), and the script runs see a PATH that holds only the fakes and a few coreutils.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/file_util.h"
#include "jobs/slurm_script.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using jobs::SubmitOptions;

const fs::path kGoldenDir = fs::path(QFORGE_SOURCE_DIR) / "tests" / "golden";
// The model path the golden files show; the CLI tests replace the real one with it.
const std::string kGoldenModel = "/models/stories260K-hf";

std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// The options of the README example: 2 nodes x 8 GPUs. --batch-size 16 because a sequential team of 16
// ranks needs a batch of at least 16 sequences (submit checks the plan and refuses less).
const char* kQuantizeArgs =
    "--out /shared/out/x --method omniquant --wbits 4 --abits 16 --calib-data model:generate --nsamples 16 "
    "--calib-seqlen 64 --batch-size 16";
const char* kSweepQuantizeArgs = "--method omniquant --calib-data model:generate --nsamples 16 --calib-seqlen 64 --batch-size 16";

SubmitOptions gpu_options() {
  SubmitOptions o;
  o.job_dir = "/shared/jobs/x";
  o.job_name = "qforge-x";
  o.nodes = 2;
  o.gpus_per_node = 8;
  o.ntasks_per_node = 8;
  o.time = "04:00:00";
  o.partition = "gpu";
  o.account = "proj";
  o.qforge = "/opt/qforge/bin/qforge";
  o.quantize_args = words(std::string("--model ") + kGoldenModel + " " + kQuantizeArgs);
  return o;
}

SubmitOptions sweep_options() {
  SubmitOptions o = gpu_options();
  o.sweep = jobs::parse_sweep("w4a16g128,w2a16g64");
  o.sweep_out = "/shared/out/x";
  o.quantize_args = words(std::string("--model ") + kGoldenModel + " " + kSweepQuantizeArgs);
  return o;
}

// What `submit --print --chain K` prints.
std::string chain_text(SubmitOptions o, int k) {
  std::string out;
  o.chain_length = k;
  for (int i = 0; i < k; ++i) {
    o.chain_index = i;
    out += (i > 0 ? "\n" : "") + std::string("# --- chain job ") + std::to_string(i + 1) + "/" + std::to_string(k) +
           (i > 0 ? " (sbatch --dependency=afterany:<previous job>)" : " (sbatch)") + " ---\n" + jobs::render_sbatch(o);
  }
  return out;
}

// Compares with a golden file; QFORGE_UPDATE_GOLDEN=1 rewrites it instead (review the diff).
void expect_golden(const std::string& text, const std::string& name) {
  const fs::path path = kGoldenDir / name;
  if (const char* update = std::getenv("QFORGE_UPDATE_GOLDEN"); update && std::string(update) == "1") {
    write_file_atomic(path, text);
    return;
  }
  ASSERT_TRUE(fs::exists(path)) << path << " is missing (QFORGE_UPDATE_GOLDEN=1 writes it)";
  EXPECT_EQ(text, test::read_bytes(path)) << "differs from " << path << " (QFORGE_UPDATE_GOLDEN=1 rewrites it)";
}

test::CommandResult bash_syntax_check(const fs::path& dir, const std::string& script) {
  const fs::path path = dir / "check.sbatch";
  write_file_atomic(path, script);
  return test::run_command("bash -n " + test::shell_quote(path.string()));
}

struct SubmitScript : ::testing::Test {
  void SetUp() override { dir = test::make_temp_dir("submit-script"); }
  void TearDown() override { fs::remove_all(dir); }
  fs::path dir;
};

TEST_F(SubmitScript, GpuJobMatchesGolden) { expect_golden(jobs::render_sbatch(gpu_options()), "submit-2x8-gpu.sbatch"); }

TEST_F(SubmitScript, ChainMatchesGolden) { expect_golden(chain_text(gpu_options(), 2), "submit-2x8-gpu-chain2.sbatch"); }

TEST_F(SubmitScript, SweepMatchesGolden) { expect_golden(jobs::render_sbatch(sweep_options()), "submit-2x8-gpu-sweep.sbatch"); }

TEST_F(SubmitScript, ScriptsHaveTheSbatchLinesOfTheirKind) {
  const std::string single = jobs::render_sbatch(gpu_options());
  for (const char* line : {"#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=8\n", "#SBATCH --gpus-per-node=8\n",
                           "#SBATCH --signal=B:USR1@300\n", "#SBATCH --requeue\n", "#SBATCH --open-mode=append\n",
                           "#SBATCH --output=/shared/jobs/x/slurm-%j.out\n", "srun --mpi=pmix --kill-on-bad-exit=1 "}) {
    EXPECT_NE(single.find(line), std::string::npos) << line;
  }
  EXPECT_EQ(single.find("QFORGE_THREADS"), std::string::npos);  // only with --cpus-per-task
  SubmitOptions chain = gpu_options();
  chain.chain_length = 2;
  EXPECT_NE(jobs::render_sbatch(chain).find("#SBATCH --no-requeue\n"), std::string::npos);
  const std::string sweep = jobs::render_sbatch(sweep_options());
  EXPECT_NE(sweep.find("#SBATCH --array=0-1\n"), std::string::npos);
  EXPECT_NE(sweep.find("slurm-%A_%a.out"), std::string::npos);
  SubmitOptions cpu = gpu_options();
  cpu.gpus_per_node = 0;
  cpu.ntasks_per_node = 2;
  cpu.cpus_per_task = 4;
  cpu.requeue = false;
  cpu.signal_seconds = 120;
  cpu.sbatch_args = {"--mem=64G", "--comment=two words # not a comment"};
  const std::string c = jobs::render_sbatch(cpu);
  EXPECT_EQ(c.find("--gpus-per-node"), std::string::npos);
  for (const char* line : {"#SBATCH --cpus-per-task=4\n", "#SBATCH --no-requeue\n", "#SBATCH --signal=B:USR1@120\n",
                           "#SBATCH --mem=64G\n", "#SBATCH \"--comment=two words \\# not a comment\"\n",
                           "export QFORGE_THREADS=${SLURM_CPUS_PER_TASK:-1}\n"}) {
    EXPECT_NE(c.find(line), std::string::npos) << line;
  }
}

TEST_F(SubmitScript, RenderedScriptsPassBashSyntaxCheck) {
  SubmitOptions cpu = gpu_options();
  cpu.gpus_per_node = 0;
  cpu.cpus_per_task = 2;
  cpu.sbatch_args = {"--mem=1G"};
  for (const std::string& script : {jobs::render_sbatch(gpu_options()), chain_text(gpu_options(), 3),
                                    jobs::render_sbatch(sweep_options()), jobs::render_sbatch(cpu)}) {
    const auto r = bash_syntax_check(dir, script);
    EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << script;
  }
}

TEST_F(SubmitScript, ShellQuotingRoundTripsThroughBash) {
  const std::string weird = "/data/my model's dir/it's \"q\" $HOME `id` \\n *;|&<>(){}~#!%=,:@ end";
  EXPECT_EQ(jobs::shell_quote("/plain/path-1.2_x:y=z,w+v@u%t"), "/plain/path-1.2_x:y=z,w+v@u%t");
  EXPECT_EQ(jobs::shell_quote(""), "''");
  EXPECT_EQ(jobs::shell_quote("a b'c"), "'a b'\\''c'");
  for (const std::string& value : {weird, std::string("it's"), std::string("two words"), std::string(""),
                                   std::string("-n"), std::string("line\nbreak")}) {
    const auto r = test::run_command("bash -c " + test::shell_quote("printf %s " + jobs::shell_quote(value) + "; printf '|'"));
    EXPECT_EQ(r.output, value + "|") << jobs::shell_quote(value);
  }
  // The same path as qforge executable, job dir, model and output folder of a whole script.
  SubmitOptions o = sweep_options();
  o.qforge = weird + "/qforge";
  o.job_dir = "/jobs/my job's dir";
  o.sweep_out = weird;
  o.quantize_args = {"--model", weird, "--calib-data", "it's data.txt"};
  const auto r = bash_syntax_check(dir, jobs::render_sbatch(o));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(SubmitScript, SbatchQuoteFollowsSbatchsParser) {
  EXPECT_EQ(jobs::sbatch_quote("04:00:00", "--time"), "04:00:00");
  EXPECT_EQ(jobs::sbatch_quote("/a b/c#d\"e\\f", "--job-dir"), "\"/a b/c\\#d\\\"e\\\\f\"");
  EXPECT_THROW(jobs::sbatch_quote("a\nb", "--partition"), InputError);
  // A literal % in the job dir is written %% so that Slurm does not expand it in --output.
  SubmitOptions o = gpu_options();
  o.job_dir = "/shared/jobs/100%";
  EXPECT_NE(jobs::render_sbatch(o).find("#SBATCH --output=/shared/jobs/100%%/slurm-%j.out\n"), std::string::npos);
  o.job_dir = "/shared/my jobs/x";
  EXPECT_NE(jobs::render_sbatch(o).find("#SBATCH --output=\"/shared/my jobs/x/slurm-%j.out\"\n"), std::string::npos);
}

TEST_F(SubmitScript, ParseSweepIsStrict) {
  const auto s = jobs::parse_sweep("w4a16g128,w2a16g64,w4a4");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].name, "w4a16g128");
  EXPECT_EQ(s[0].wbits, 4);
  EXPECT_EQ(s[0].abits, 16);
  EXPECT_EQ(s[0].group_size, 128);
  EXPECT_EQ(s[1].wbits, 2);
  EXPECT_EQ(s[1].group_size, 64);
  EXPECT_EQ(s[2].abits, 4);
  EXPECT_EQ(s[2].group_size, 0);
  for (const char* bad : {"", "w4a16,", "w4", "a16w4", "w4a16g", "W4A16", "w4a16 ", "w1a16", "w9a16", "w4a3", "w4a17",
                          "w4a16g0", "w4a16,w4a16", "w4a16g128x"}) {
    try {
      jobs::parse_sweep(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("--sweep"), std::string::npos) << e.what();
    }
  }
}

TEST_F(SubmitScript, ParseSbatchJobId) {
  EXPECT_EQ(jobs::parse_sbatch_job_id("12345\n"), "12345");
  EXPECT_EQ(jobs::parse_sbatch_job_id("12345;cluster-a\n"), "12345");
  EXPECT_EQ(jobs::parse_sbatch_job_id("sbatch: warning: something\n678\n"), "678");
  EXPECT_THROW(jobs::parse_sbatch_job_id(""), InputError);
  EXPECT_THROW(jobs::parse_sbatch_job_id("Submitted batch job 12"), InputError);
}

TEST_F(SubmitScript, TemplateRendering) {
  EXPECT_EQ(jobs::render_template("a=@A@\n@B@\nUSR1@@N@ x@y z@\n", {{"A", "1"}, {"B", ""}, {"N", "300"}}),
            "a=1\nUSR1@300 x@y z@\n");
  EXPECT_EQ(jobs::render_template("@B@\nend", {{"B", "two\nlines"}}), "two\nlines\nend");
  EXPECT_THROW(jobs::render_template("@MISSING@\n", {}), InternalError);
  // Every placeholder of the embedded template has a value.
  EXPECT_NE(jobs::sbatch_template().find("@EXIT_STOPPED@"), std::string::npos);
  EXPECT_NO_THROW(jobs::render_sbatch(gpu_options()));
}

// The script run by bash as a batch job would be, with fakes for srun (drops its options and runs the
// command), scontrol (logs) and qforge (logs its arguments; exits 4 on USR1/TERM, or at once with
// FAKE_EXIT). PATH holds only the fakes and the coreutils the scripts use, so no real Slurm client can run.
struct ScriptRun {
  int exit_code = -1;
  std::string log, output;
  std::vector<std::string> qforge_args;
};

void write_executable(const fs::path& path, const std::string& text) {
  write_file_atomic(path, text);
  fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
}

ScriptRun run_script(const fs::path& dir, SubmitOptions o, const std::string& signal, int qforge_exit,
                     const std::string& extra_env = "") {
  const fs::path bin = dir / "bin";
  fs::create_directories(bin);
  for (const char* tool : {"sleep", "touch", "hostname"}) {
    for (const char* where : {"/bin/", "/usr/bin/"}) {
      if (fs::exists(std::string(where) + tool) && !fs::exists(bin / tool)) {
        fs::create_symlink(std::string(where) + tool, bin / tool);
      }
    }
  }
  write_executable(bin / "srun",
                   "#!/bin/bash\necho \"srun $*\" >> \"$FAKE_LOG\"\n"
                   "while [ $# -gt 0 ]; do case \"$1\" in --*) shift ;; *) break ;; esac; done\nexec \"$@\"\n");
  write_executable(bin / "scontrol", "#!/bin/bash\necho \"scontrol $*\" >> \"$FAKE_LOG\"\n");
  write_executable(bin / "sbatch", "#!/bin/bash\necho \"sbatch must not run\" >> \"$FAKE_LOG\"\nexit 1\n");
  const fs::path fake_qforge = dir / "fake qforge's bin" / "qforge";
  fs::create_directories(fake_qforge.parent_path());
  write_executable(fake_qforge,
                   "#!/bin/bash\nprintf '%s\\n' \"$@\" > \"$FAKE_LOG.args\"\n"
                   "trap 'echo \"qforge got USR1\" >> \"$FAKE_LOG\"; exit 4' USR1\n"
                   "trap 'echo \"qforge got TERM\" >> \"$FAKE_LOG\"; exit 4' TERM\n"
                   "if [ -n \"${FAKE_EXIT:-}\" ]; then exit \"$FAKE_EXIT\"; fi\n"
                   "touch \"$FAKE_READY\"\nwhile :; do sleep 0.05; done\n");
  o.qforge = fake_qforge.string();
  const fs::path script = dir / "job.sbatch", log = dir / "log", ready = dir / "ready", out = dir / "out";
  write_file_atomic(script, jobs::render_sbatch(o));
  using test::shell_quote;
  std::string cmd = "env -i PATH=" + shell_quote(bin.string()) + " SLURM_JOB_ID=77 FAKE_LOG=" + shell_quote(log.string()) +
                    " FAKE_READY=" + shell_quote(ready.string()) + " " + extra_env +
                    (signal.empty() ? " FAKE_EXIT=" + std::to_string(qforge_exit) : std::string()) + " /bin/bash " +
                    shell_quote(script.string()) + " > " + shell_quote(out.string()) + " 2>&1 & pid=$!; ";
  if (!signal.empty()) {
    cmd += "i=0; while [ ! -e " + shell_quote(ready.string()) + " ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
           "sleep 0.2; kill -" + signal + " $pid; ";
  }
  cmd += "wait $pid; echo rc=$?";
  const auto r = test::run_command(cmd);
  ScriptRun run;
  const auto rc = r.output.rfind("rc=");
  if (rc != std::string::npos) run.exit_code = std::stoi(r.output.substr(rc + 3));
  run.log = test::read_bytes(log);
  run.output = test::read_bytes(out);
  std::istringstream args(test::read_bytes(fs::path(log.string() + ".args")));
  for (std::string line; std::getline(args, line);) run.qforge_args.push_back(line);
  return run;
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

TEST_F(SubmitScript, Usr1IsForwardedAndTheStoppedJobRequeuesItself) {
  SubmitOptions o = gpu_options();
  o.quantize_args = {"--model", "/models/it's a model", "--out", "/out/x y"};
  const ScriptRun r = run_script(dir, o, "USR1", 0);
  EXPECT_EQ(r.exit_code, 0) << r.output << r.log;
  EXPECT_TRUE(contains(r.log, "srun --mpi=pmix --kill-on-bad-exit=1 ")) << r.log;
  EXPECT_TRUE(contains(r.log, "qforge got USR1")) << r.log;
  EXPECT_TRUE(contains(r.log, "scontrol requeue 77")) << r.log;
  EXPECT_FALSE(contains(r.log, "sbatch")) << r.log;
  EXPECT_TRUE(contains(r.output, "received SIGUSR1, forwarding it to the job step")) << r.output;
  // Every argument reaches qforge intact, quotes and spaces included.
  EXPECT_EQ(r.qforge_args, (std::vector<std::string>{"quantize", "--job-dir", "/shared/jobs/x", "--model",
                                                     "/models/it's a model", "--out", "/out/x y"}));
}

TEST_F(SubmitScript, TermIsForwardedButNeverRequeued) {
  const ScriptRun r = run_script(dir, gpu_options(), "TERM", 0);
  EXPECT_EQ(r.exit_code, jobs::kScriptExitStopped) << r.output << r.log;
  EXPECT_TRUE(contains(r.log, "qforge got TERM")) << r.log;
  EXPECT_FALSE(contains(r.log, "scontrol")) << r.log;
  EXPECT_TRUE(contains(r.output, "not requeued after TERM")) << r.output;
}

TEST_F(SubmitScript, ChainJobsAndNoRequeueExitStopped) {
  SubmitOptions chain = gpu_options();
  chain.chain_length = 2;
  ScriptRun r = run_script(dir, chain, "USR1", 0);
  EXPECT_EQ(r.exit_code, jobs::kScriptExitStopped) << r.output << r.log;
  EXPECT_TRUE(contains(r.log, "qforge got USR1")) << r.log;
  EXPECT_FALSE(contains(r.log, "scontrol")) << r.log;
  EXPECT_TRUE(contains(r.output, "the next job of the chain resumes it")) << r.output;
  fs::remove_all(dir);
  fs::create_directories(dir);
  SubmitOptions single = gpu_options();
  single.requeue = false;
  r = run_script(dir, single, "", jobs::kScriptExitStopped);
  EXPECT_EQ(r.exit_code, jobs::kScriptExitStopped) << r.output << r.log;
  EXPECT_FALSE(contains(r.log, "scontrol")) << r.log;
}

TEST_F(SubmitScript, ExitStatusesPassThrough) {
  for (int code : {0, 1, 2, 3}) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    const ScriptRun r = run_script(dir, gpu_options(), "", code);
    EXPECT_EQ(r.exit_code, code) << r.output << r.log;
    EXPECT_FALSE(contains(r.log, "scontrol")) << r.log;
  }
}

TEST_F(SubmitScript, ArrayTaskPicksItsSetting) {
  const ScriptRun r = run_script(dir, sweep_options(), "", 0, "SLURM_ARRAY_TASK_ID=1");
  EXPECT_EQ(r.exit_code, 0) << r.output << r.log;
  std::vector<std::string> expected = {"quantize", "--job-dir", "/shared/jobs/x/w2a16g64", "--out", "/shared/out/x/w2a16g64",
                                       "--model", kGoldenModel};
  for (const auto& w : words(kSweepQuantizeArgs)) expected.push_back(w);
  for (const char* w : {"--wbits", "2", "--abits", "16", "--group-size", "64"}) expected.push_back(w);
  EXPECT_EQ(r.qforge_args, expected);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const ScriptRun bad = run_script(dir, sweep_options(), "", 0, "SLURM_ARRAY_TASK_ID=2");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_TRUE(bad.qforge_args.empty());
}

// The CLI. Refusals come before anything is read or written; the golden runs use --print.
struct SubmitCli : ::testing::Test {
  void SetUp() override {
    dir = test::make_temp_dir("submit-cli");
    model = test::shared_data() / "models/stories260K-hf";
  }
  void TearDown() override { fs::remove_all(dir); }
  test::CommandResult submit(const std::string& flags) {
    return test::run_command(test::qforge_binary() + " submit --log-level warn " + flags);
  }
  // stdout alone (the plan summary goes to stderr).
  std::string print_stdout(const std::string& flags, int* exit_code) {
    const fs::path out = dir / "stdout.txt";
    // run_command appends 2>&1; the braces keep stderr out of the file.
    const auto r = test::run_command("{ " + test::qforge_binary() + " submit --log-level warn --print " + flags + " > " +
                                     test::shell_quote(out.string()) + "; }");
    *exit_code = r.exit_code;
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string text = test::read_bytes(out);
    const std::string quoted = jobs::shell_quote(model.string());
    for (std::size_t at; (at = text.find(quoted)) != std::string::npos;) text.replace(at, quoted.size(), kGoldenModel);
    return text;
  }
  void expect_bad_input(const test::CommandResult& r, const std::string& needle) {
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_TRUE(contains(r.output, needle)) << "expected '" << needle << "' in: " << r.output;
  }
  std::string model_flag() const { return "--model " + test::shell_quote(model.string()); }
  fs::path dir, model;
};

const char* kGoldenSubmitFlags =
    "--job-dir /shared/jobs/x --nodes 2 --gpus-per-node 8 --time 04:00:00 --partition gpu --account proj "
    "--qforge /opt/qforge/bin/qforge";

TEST_F(SubmitCli, HelpWorks) {
  const auto r = submit("--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* flag : {"--job-dir", "--gpus-per-node", "--ntasks-per-node", "--chain", "--sweep", "--sbatch-arg", "--print"}) {
    EXPECT_TRUE(contains(r.output, flag)) << flag;
  }
  EXPECT_TRUE(contains(test::run_command(test::qforge_binary() + " --help").output, "submit"));
}

TEST_F(SubmitCli, GpusAndTasksPerNodeTogetherAreRefused) {
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --gpus-per-node 4 --ntasks-per-node 4 -- --model m --out o"),
                   "--ntasks-per-node");
}

TEST_F(SubmitCli, JobDirAmongTheQuantizeOptionsIsRefused) {
  expect_bad_input(submit("--print --job-dir /shared/jobs/x -- --model m --out o --job-dir /elsewhere"), "--job-dir");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x -- --model m --out o --job-dir=/elsewhere"), "--job-dir");
}

TEST_F(SubmitCli, MissingPiecesAreRefused) {
  expect_bad_input(submit("--print --job-dir /shared/jobs/x"), "after `--`");
  expect_bad_input(submit("--print -- --model m --out o"), "--job-dir");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --chain 2 --sweep w4a16 -- --model m --out o"), "--chain");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --nodes 0 -- --model m --out o"), "--nodes");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --sbatch-arg=mem=1G -- --model m --out o"), "--sbatch-arg");
}

TEST_F(SubmitCli, BadSweepIsRefused) {
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --sweep w4a16g128,w4x16 -- --model m --out o"), "--sweep");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --sweep w4a16 -- --model m --out o --wbits 3"), "--wbits");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --sweep w4a16 -- --model m --out o --group-size=64"), "--group-size");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x --sweep w4a16 -- --model m"), "--out");
}

TEST_F(SubmitCli, MultiNodeJobDirUnderTmpIsRefused) {
  const auto r = submit("--print --job-dir /tmp/qforge-jobs/x --nodes 2 -- --model m --out o");
  expect_bad_input(r, "shared filesystem");
  EXPECT_TRUE(contains(r.output, "--job-dir")) << r.output;
  EXPECT_FALSE(fs::exists("/tmp/qforge-jobs/x"));
}

TEST_F(SubmitCli, QuantizeOptionsAndPlanAreChecked) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  // The quantize options themselves (parsed as `qforge quantize` would).
  expect_bad_input(submit("--print --job-dir /shared/jobs/x -- " + model_flag() + " --out o --wbits 9"), "--wbits");
  expect_bad_input(submit("--print --job-dir /shared/jobs/x -- " + model_flag()), "--out");
  // The plan: 16 ranks in one sequential team need a batch of at least 16 sequences.
  expect_bad_input(submit(std::string("--print ") + kGoldenSubmitFlags + " -- " + model_flag() +
                          " --out /shared/out/x --method omniquant --calib-data model:generate --nsamples 16 --calib-seqlen 64"),
                   "--batch-size");
  // The estimates are reported.
  const auto ok = submit(std::string("--print ") + kGoldenSubmitFlags + " -- " + model_flag() + " " + kQuantizeArgs);
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_TRUE(contains(ok.output, "estimated peak memory per rank")) << ok.output;
  EXPECT_TRUE(contains(ok.output, "activation cache on disk")) << ok.output;
}

TEST_F(SubmitCli, PrintMatchesGoldens) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  int rc = 0;
  expect_golden(print_stdout(std::string(kGoldenSubmitFlags) + " -- " + model_flag() + " " + kQuantizeArgs, &rc),
                "submit-2x8-gpu.sbatch");
  expect_golden(print_stdout(std::string(kGoldenSubmitFlags) + " --chain 2 -- " + model_flag() + " " + kQuantizeArgs, &rc),
                "submit-2x8-gpu-chain2.sbatch");
  expect_golden(print_stdout(std::string(kGoldenSubmitFlags) + " --sweep w4a16g128,w2a16g64 -- " + model_flag() +
                                 " --out /shared/out/x " + kSweepQuantizeArgs,
                             &rc),
                "submit-2x8-gpu-sweep.sbatch");
  // --print writes nothing.
  EXPECT_FALSE(fs::exists("/shared/jobs/x/slurm.json"));
}

TEST_F(SubmitCli, SubmittingWithoutSlurmConfigIsRefused) {
  QF_REQUIRE_DATA(model / "model.safetensors");
  if (fs::exists("/etc/slurm/slurm.conf")) GTEST_SKIP() << "/etc/slurm/slurm.conf exists: this test would reach sbatch";
  // PATH holds only a fake sbatch that records being run, so no Slurm client can be reached even if the
  // check were gone.
  const fs::path bin = dir / "bin";
  fs::create_directories(bin);
  write_executable(bin / "sbatch", "#!/bin/sh\necho ran > \"$0.ran\"\nexit 1\n");
  const fs::path job_dir = dir / "job";
  const auto r = test::run_command("env -u SLURM_CONF PATH=" + test::shell_quote(bin.string()) + " " + test::qforge_binary() +
                                   " submit --log-level warn --job-dir " + test::shell_quote(job_dir.string()) + " -- " +
                                   model_flag() + " --out " + test::shell_quote((dir / "out").string()) + " --method rtn");
  expect_bad_input(r, "export SLURM_CONF first");
  EXPECT_FALSE(fs::exists(bin / "sbatch.ran"));
  EXPECT_FALSE(fs::exists(job_dir));
}

}  // namespace
}  // namespace qforge
