// qforge submit: the quantize job as Slurm batch job(s). Checks the quantize options and the plan (memory
// per rank, activation cache disk against the job dir's free space, a shared filesystem for multi-node
// runs) before anything is queued, renders the script (jobs/slurm_script.h), and either prints it
// (--print: nothing is written or submitted) or writes it into the job dir, runs `sbatch --parsable` and
// records the job ids in <job dir>/slurm.json.
#include <fcntl.h>
#include <poll.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/error.h"
#include "common/strings.h"
#include "common/file_util.h"
#include "jobs/cli.h"
#include "jobs/cmd_quantize.h"
#include "jobs/quantize_job.h"
#include "jobs/slurm_script.h"

namespace qforge::jobs {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// statfs f_type of filesystems that live in one node's memory (linux/magic.h).
constexpr long kTmpfsMagic = 0x01021994;
constexpr long kRamfsMagic = static_cast<long>(0x858458f6);

// The name in "--name" or "--name=value"; empty for anything else.
std::string long_option_name(const std::string& token) {
  if (token.size() < 3 || token.compare(0, 2, "--") != 0) return "";
  return token.substr(2, token.find('=') == std::string::npos ? std::string::npos : token.find('=') - 2);
}

// Boost accepts any unambiguous prefix of a long option (--job for --job-dir), so a prefix counts too.
bool names_option(const std::string& token, const std::string& option) {
  const std::string name = long_option_name(token);
  return !name.empty() && option.compare(0, name.size(), name) == 0;
}

// Removes --out VALUE / --out=VALUE from args and returns VALUE (empty when absent).
std::string take_out(Args& args) {
  std::string out;
  for (std::size_t i = 0; i < args.size();) {
    if (!names_option(args[i], "out")) {
      ++i;
      continue;
    }
    const std::size_t eq = args[i].find('=');
    if (eq != std::string::npos) {
      out = args[i].substr(eq + 1);
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      if (i + 1 >= args.size()) throw InputError("--out", "", "needs a value");
      out = args[i + 1];
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i), args.begin() + static_cast<std::ptrdiff_t>(i) + 2);
    }
  }
  return out;
}

fs::path absolute_dir(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();  // "a/b/" -> "a/b"
  return p;
}

fs::path nearest_existing(fs::path p) {
  std::error_code ec;
  while (!fs::exists(p, ec) && p.has_parent_path() && p != p.parent_path()) p = p.parent_path();
  return p;
}

bool under(const fs::path& p, const char* dir) {
  const std::string s = p.string(), d = dir;
  return s == d || (s.size() > d.size() && s.compare(0, d.size(), d) == 0 && s[d.size()] == '/');
}

// Multi-node runs need a job dir that every node sees: not in memory, not under a node-local temp path.
void check_shared_filesystem(const fs::path& job_dir, int nodes) {
  if (nodes <= 1) return;
  const fs::path existing = nearest_existing(job_dir);
  struct statfs sfs {};
  const bool memory_fs = ::statfs(existing.c_str(), &sfs) == 0 &&
                         (static_cast<long>(sfs.f_type) == kTmpfsMagic || static_cast<long>(sfs.f_type) == kRamfsMagic);
  const bool local_path = under(job_dir, "/tmp") || under(job_dir, "/var/tmp") || under(job_dir, "/dev/shm");
  if (memory_fs || local_path) {
    throw InputError("--job-dir", "", job_dir.string() + " is on a node-local filesystem (" +
                                          (memory_fs ? "tmpfs/ramfs" : "under /tmp, /var/tmp or /dev/shm") +
                                          "); multi-node runs need a shared filesystem that every node sees "
                                          "(NFS, Lustre, GPFS, ...)");
  }
}

// The activation cache must fit in the free space of the job dir's filesystem (nearest existing parent).
void check_free_space(const fs::path& job_dir, std::uint64_t cache_bytes) {
  const fs::path existing = nearest_existing(job_dir);
  struct statvfs vfs {};
  if (::statvfs(existing.c_str(), &vfs) != 0) {
    throw InputError("--job-dir", "", "cannot stat the filesystem of " + existing.string() + ": " + std::strerror(errno));
  }
  const std::uint64_t free_bytes = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  std::cerr << "qforge submit: job dir filesystem (" << existing.string() << "): " << format_mib(free_bytes) << " free, "
            << format_mib(cache_bytes) << " needed for the activation cache\n";
  if (free_bytes < cache_bytes) {
    throw InputError("--job-dir", "", job_dir.string() + ": the activation cache needs " + format_mib(cache_bytes) + " but " +
                                          existing.string() + " has only " + format_mib(free_bytes) + " free");
  }
}

struct ProcessResult {
  int status = -1;  // exit status, or 128 + signal
  std::string out, err;
};

// Runs argv (no shell: nothing in it is interpreted) and collects stdout and stderr.
ProcessResult run_process(const std::vector<std::string>& argv) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw InternalError(std::string("pipe: ") + std::strerror(errno));
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw InternalError(std::string("pipe: ") + std::strerror(errno));
  }
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::execvp(cargv[0], cargv.data());
    // Only async-signal-safe calls after fork: report errno as digits.
    char msg[64] = "exec failed, errno ";
    std::size_t n = std::strlen(msg);
    int e = errno;
    char digits[16];
    int d = 0;
    do {
      digits[d++] = static_cast<char>('0' + e % 10);
      e /= 10;
    } while (e > 0 && d < 15);
    while (d > 0) msg[n++] = digits[--d];
    msg[n++] = '\n';
    (void)!::write(2, msg, n);
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (pid < 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    throw InternalError(std::string("fork: ") + std::strerror(errno));
  }
  ProcessResult r;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      const ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (const auto& f : fds) {
    if (f.fd >= 0) ::close(f.fd);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return r;
}

// A Slurm client without a configuration file falls back to a DNS SRV lookup of the controller (and one
// pointed at a missing file retries for a minute): refuse before calling sbatch instead.
void check_slurm_config() {
  const char* conf = std::getenv("SLURM_CONF");
  if (conf && *conf) {
    if (!fs::exists(conf)) throw InputError("SLURM_CONF", "", std::string("'") + conf + "' does not exist");
    return;
  }
  if (!fs::exists("/etc/slurm/slurm.conf")) {
    throw InputError("SLURM_CONF", "",
                     "not set and /etc/slurm/slurm.conf does not exist: export SLURM_CONF first (the path of the "
                     "cluster's slurm.conf); without one the Slurm client looks the controller up in DNS");
  }
}

// <dir>/slurm.json as read now ({"version":1,"submissions":[]} when absent); InputError on a foreign file.
json read_slurm_json(const fs::path& dir) {
  const fs::path path = dir / "slurm.json";
  if (!fs::exists(path)) return {{"version", 1}, {"submissions", json::array()}};
  json doc;
  try {
    doc = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw InputError(path.string(), "", std::string("not valid JSON: ") + e.what());
  }
  if (!doc.is_object() || doc.value("version", 0) != 1) throw InputError(path.string(), "version", "must be 1");
  if (!doc.contains("submissions") || !doc["submissions"].is_array()) {
    throw InputError(path.string(), "submissions", "must be an array");
  }
  return doc;
}

void append_submission(const fs::path& dir, const json& record) {
  json doc = read_slurm_json(dir);
  doc["submissions"].push_back(record);
  write_file_atomic(dir / "slurm.json", doc.dump(2) + "\n");
}

// submit-<n>.sbatch with n one past the largest in the directory (1 in an empty one).
std::string next_script_name(const fs::path& dir) {
  static const std::regex re(R"(^submit-(\d{1,9})\.sbatch$)");
  int last = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, re)) last = std::max(last, std::stoi(m[1]));
  }
  return "submit-" + std::to_string(last + 1) + ".sbatch";
}

// Writes the script into the job dir and submits it; returns the job id. Nothing is recorded here.
std::string submit_script(const fs::path& dir, const std::string& script_name, const std::string& script,
                          const std::string& dependency) {
  const fs::path path = dir / script_name;
  write_file_atomic(path, script);
  std::vector<std::string> argv = {"sbatch", "--parsable"};
  if (!dependency.empty()) argv.push_back("--dependency=" + dependency);
  argv.push_back(path.string());
  const ProcessResult r = run_process(argv);
  std::string err = r.err;
  while (!err.empty() && std::isspace(static_cast<unsigned char>(err.back()))) err.pop_back();
  if (r.status == 127 && err.rfind("exec failed", 0) == 0) {
    const int e = std::atoi(err.c_str() + std::strlen("exec failed, errno "));
    throw InputError("sbatch", "", std::string("cannot run sbatch: ") + std::strerror(e) +
                                       " (is this a Slurm submit host with sbatch on PATH?); the script is " + path.string());
  }
  if (r.status != 0) {
    throw InputError("sbatch", "", "failed with exit status " + std::to_string(r.status) + ": " +
                                       (err.empty() ? "(no message)" : err) + "; the script is " + path.string());
  }
  return parse_sbatch_job_id(r.out);
}

std::string default_qforge_path() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw InputError("--qforge", "", "cannot find this executable (/proc/self/exe): give --qforge PATH");
  return self.string();
}

void add_submit_options(po::options_description& desc) {
  add_common_options(desc);
  desc.add_options()
      ("job-dir", po::value<std::string>(), "job directory (journal, scripts, slurm.json, Slurm logs); on a shared "
       "filesystem for --nodes > 1. Sweeps: the parent of one job dir per setting")
      ("nodes", po::value<int>()->default_value(1), "nodes")
      ("gpus-per-node", po::value<int>(), "GPU job: this many ranks per node, one GPU each")
      ("ntasks-per-node", po::value<int>(), "CPU job: ranks per node (default 1)")
      ("cpus-per-task", po::value<int>(), "CPUs per rank; qforge then computes with that many threads")
      ("time", po::value<std::string>()->default_value(""), "time limit (sbatch --time, e.g. 04:00:00)")
      ("partition", po::value<std::string>()->default_value(""), "partition")
      ("account", po::value<std::string>()->default_value(""), "account")
      ("signal-seconds", po::value<int>()->default_value(300),
       "send USR1 this many seconds before the time limit; qforge stops at a checkpoint and the job requeues itself")
      ("no-requeue", po::bool_switch(), "do not requeue a job that stopped at a checkpoint (exit 4 instead)")
      ("chain", po::value<int>()->default_value(1),
       "submit K jobs, each starting after the previous one ended (--dependency=afterany); no self-requeue")
      ("sweep", po::value<std::string>()->default_value(""),
       "one job array over settings, e.g. w4a16g128,w2a16g64,w4a4: task i uses <job dir>/<setting> and "
       "<out>/<setting> and adds --wbits/--abits/--group-size")
      ("sbatch-arg", po::value<std::vector<std::string>>()->composing(),
       "an extra #SBATCH line, one sbatch argument each (write --sbatch-arg=--mem=64G); repeatable")
      ("mpi", po::value<std::string>()->default_value("pmix"), "srun --mpi plugin (pmix for Open MPI)")
      ("qforge", po::value<std::string>(), "qforge executable on the compute nodes (default: this executable)")
      ("print", po::bool_switch(), "print the script(s) and exit: nothing is written or submitted");
}

// The allocation: nodes, ranks per node (GPUs or CPU tasks), CPUs per rank.
void read_allocation(const po::variables_map& vm, SubmitOptions& o) {
  o.nodes = vm["nodes"].as<int>();
  if (o.nodes < 1) throw InputError("--nodes", "", "must be >= 1");
  if (vm.count("gpus-per-node") && vm.count("ntasks-per-node")) {
    throw InputError("--ntasks-per-node", "",
                     "give --gpus-per-node (GPU job: one rank per GPU) or --ntasks-per-node (CPU job), not both");
  }
  if (vm.count("gpus-per-node")) {
    o.gpus_per_node = vm["gpus-per-node"].as<int>();
    if (o.gpus_per_node < 1) throw InputError("--gpus-per-node", "", "must be >= 1");
    o.ntasks_per_node = o.gpus_per_node;
  } else if (vm.count("ntasks-per-node")) {
    o.ntasks_per_node = vm["ntasks-per-node"].as<int>();
    if (o.ntasks_per_node < 1) throw InputError("--ntasks-per-node", "", "must be >= 1");
  }
  if (vm.count("cpus-per-task")) {
    o.cpus_per_task = vm["cpus-per-task"].as<int>();
    if (o.cpus_per_task < 1) throw InputError("--cpus-per-task", "", "must be >= 1");
  }
}

// Time limit, queue, requeue/chain/sweep and the launch: everything of the script but the allocation.
void read_scheduling(const po::variables_map& vm, SubmitOptions& o) {
  o.time = vm["time"].as<std::string>();
  o.partition = vm["partition"].as<std::string>();
  o.account = vm["account"].as<std::string>();
  o.signal_seconds = vm["signal-seconds"].as<int>();
  if (o.signal_seconds < 1 || o.signal_seconds > 65535) throw InputError("--signal-seconds", "", "must be 1..65535");
  o.requeue = !vm["no-requeue"].as<bool>();
  o.chain_length = vm["chain"].as<int>();
  if (o.chain_length < 1 || o.chain_length > 1000) throw InputError("--chain", "", "must be 1..1000");
  if (vm.count("sbatch-arg")) o.sbatch_args = vm["sbatch-arg"].as<std::vector<std::string>>();
  for (const auto& a : o.sbatch_args) {
    if (a.empty() || a[0] != '-') {
      throw InputError("--sbatch-arg", "", "'" + a + "' is not an sbatch option (write --sbatch-arg=--mem=64G)");
    }
  }
  o.mpi = vm["mpi"].as<std::string>();
  if (!std::regex_match(o.mpi, std::regex("^[A-Za-z0-9_]+$"))) {
    throw InputError("--mpi", "", "'" + o.mpi + "' is not an srun --mpi plugin name");
  }
  o.qforge = vm.count("qforge") ? vm["qforge"].as<std::string>() : default_qforge_path();
  if (o.qforge.empty()) throw InputError("--qforge", "", "must not be empty");
  const std::string sweep_list = vm["sweep"].as<std::string>();
  if (!sweep_list.empty()) {
    if (o.chain_length > 1) {
      throw InputError("--sweep", "", "cannot be combined with --chain (submit each setting's chain separately)");
    }
    o.sweep = parse_sweep(sweep_list);
  }
}

// The quantize options: the job dir is submit's, and a sweep sets the bits and the output folder itself.
void read_quantize_args(Args qargs, SubmitOptions& o) {
  for (const auto& a : qargs) {
    if (names_option(a, "job-dir")) {
      throw InputError("--job-dir", "", "give it to submit (before `--`), not among the quantize options");
    }
  }
  if (!o.sweep.empty()) {
    for (const auto& a : qargs) {
      for (const char* flag : {"wbits", "abits", "group-size"}) {
        if (names_option(a, flag)) {
          throw InputError("--" + std::string(flag), "", "is set by --sweep for each setting; leave it out");
        }
      }
    }
    o.sweep_out = take_out(qargs);
    if (o.sweep_out.empty()) throw InputError("--out", "", "required among the quantize options (sweeps write <out>/<setting>)");
    while (o.sweep_out.size() > 1 && o.sweep_out.back() == '/') o.sweep_out.pop_back();
  }
  o.quantize_args = qargs;
}

// The preflight of exactly what each job will run (config and safetensors headers only), then the cache
// disk all of them may need at once (array tasks may run at the same time).
void preflight_jobs(const SubmitOptions& o, const fs::path& job_dir) {
  const int ranks = o.nodes * o.ntasks_per_node;
  std::vector<std::pair<std::string, Args>> checks;
  if (o.sweep.empty()) {
    Args a = o.quantize_args;
    a.insert(a.end(), {"--job-dir", o.job_dir});
    checks.emplace_back("", a);
  }
  for (const auto& s : o.sweep) {
    Args a = o.quantize_args;
    a.insert(a.end(), {"--out", o.sweep_out + "/" + s.name, "--job-dir", o.job_dir + "/" + s.name, "--wbits",
                       std::to_string(s.wbits), "--abits", std::to_string(s.abits), "--group-size", std::to_string(s.group_size)});
    checks.emplace_back(s.name + ": ", a);
  }
  std::uint64_t cache_bytes = 0;
  for (const auto& [label, args] : checks) {
    const partition::Plan plan = quantize_preflight(parse_quantize_spec(args), ranks);
    std::cerr << "qforge submit: " << label << "plan for " << ranks << " ranks (" << o.nodes << " node"
              << (o.nodes == 1 ? "" : "s") << " x " << o.ntasks_per_node << "): " << plan.units.size()
              << " units, estimated peak memory per rank " << format_mib(plan.rank_peak_bytes) << ", activation cache on disk "
              << format_mib(plan.cache_disk_bytes) << "\n";
    cache_bytes += plan.cache_disk_bytes;
  }
  check_free_space(job_dir, cache_bytes);
}

void print_scripts(const std::vector<std::string>& scripts) {
  const std::size_t n = scripts.size();
  for (std::size_t i = 0; i < n; ++i) {
    if (n > 1) {
      std::cout << (i > 0 ? "\n" : "") << "# --- chain job " << i + 1 << "/" << n
                << (i > 0 ? " (sbatch --dependency=afterany:<previous job>)" : " (sbatch)") << " ---\n";
    }
    std::cout << scripts[i];
  }
}

// Submits the scripts in chain order and records each submission in slurm.json (and each sweep setting's).
void submit_all(const SubmitOptions& o, const fs::path& job_dir, const std::vector<std::string>& scripts) {
  check_slurm_config();
  fs::create_directories(job_dir);
  std::vector<fs::path> record_dirs = {job_dir};
  for (const auto& s : o.sweep) {
    fs::create_directories(job_dir / s.name);
    record_dirs.push_back(job_dir / s.name);
  }
  for (const auto& d : record_dirs) read_slurm_json(d);  // refuse a foreign slurm.json before queueing anything
  const std::string kind = !o.sweep.empty() ? "array" : o.chain_length > 1 ? "chain" : "single";
  std::string previous;
  for (int i = 0; i < o.chain_length; ++i) {
    const std::string script_name = next_script_name(job_dir);
    const std::string dependency = previous.empty() ? "" : "afterany:" + previous;
    const std::string id = submit_script(job_dir, script_name, scripts[static_cast<std::size_t>(i)], dependency);
    json record = {{"job_id", id}, {"kind", kind}, {"chain_index", i}, {"chain_length", o.chain_length},
                   {"array_size", static_cast<int>(o.sweep.size())}, {"script", script_name}, {"requeue", o.self_requeue()}};
    if (!dependency.empty()) record["dependency"] = dependency;
    append_submission(job_dir, record);
    for (std::size_t t = 0; t < o.sweep.size(); ++t) {
      json task = record;
      task["array_task"] = static_cast<int>(t);
      task["setting"] = o.sweep[t].name;
      task["script"] = "../" + script_name;
      append_submission(job_dir / o.sweep[t].name, task);
    }
    std::cout << "submitted job " << id << " (" << kind;
    if (o.chain_length > 1) std::cout << " " << i + 1 << "/" << o.chain_length;
    if (!o.sweep.empty()) std::cout << " of " << o.sweep.size() << " tasks";
    std::cout << (o.self_requeue() ? ", requeues itself" : "") << "): " << (job_dir / script_name).string() << "\n";
    previous = id;
  }
}

}  // namespace

int run_submit(const Args& all_args) {
  // Everything after the first `--` is quantize options.
  const auto dashes = std::find(all_args.begin(), all_args.end(), "--");
  const Args args(all_args.begin(), dashes);
  const Args qargs = dashes == all_args.end() ? Args() : Args(dashes + 1, all_args.end());
  po::options_description desc("submit options");
  add_submit_options(desc);
  po::variables_map vm;
  if (!parse_args(args, "submit", "--job-dir DIR [--nodes N --gpus-per-node G ...] -- <quantize options>", desc, vm)) {
    return 0;
  }
  apply_common_options(vm);
  if (!vm.count("job-dir")) throw InputError("--job-dir", "", "required");
  if (dashes == all_args.end() || qargs.empty()) {
    throw InputError("--", "",
                     "the quantize options go after `--`: qforge submit --job-dir DIR [options] -- --model M --out O ...");
  }
  SubmitOptions o;
  const fs::path job_dir = absolute_dir(vm["job-dir"].as<std::string>());
  o.job_dir = job_dir.string();
  if (o.job_dir.find_first_of("\\\n\r") != std::string::npos) {
    throw InputError("--job-dir", "", "a backslash or line break cannot be used in Slurm's --output path");
  }
  o.job_name = "qforge-" + job_dir.filename().string();
  read_allocation(vm, o);
  read_scheduling(vm, o);
  read_quantize_args(qargs, o);
  check_shared_filesystem(job_dir, o.nodes);
  preflight_jobs(o, job_dir);
  std::vector<std::string> scripts;
  for (int i = 0; i < o.chain_length; ++i) {
    SubmitOptions member = o;
    member.chain_index = i;
    scripts.push_back(render_sbatch(member));
  }
  if (vm["print"].as<bool>()) {
    print_scripts(scripts);
    return 0;
  }
  submit_all(o, job_dir, scripts);
  return 0;
}

}  // namespace qforge::jobs
