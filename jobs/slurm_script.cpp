#include "jobs/slurm_script.h"

#include <cctype>
#include <regex>
#include <set>
#include <sstream>

#include "common/error.h"
#include "jobs/sbatch_template.h"  // generated from slurm/qforge-quantize.sbatch.in (jobs/CMakeLists.txt)

namespace qforge::jobs {

namespace {

bool is_placeholder_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

// Characters that mean nothing to bash (in an argument or an assignment's value) nor to sbatch's
// #SBATCH parser, so such a word can stay bare and the script stays readable.
bool is_plain_word(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                    c == '/' || c == ':' || c == '=' || c == ',' || c == '+' || c == '@' || c == '%' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : "\n") + l;
  return out;
}

// Slurm expands %j, %A, ... in --output; a literal % in the directory is written %%.
std::string escape_filename_pattern(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '%' ? std::string("%%") : std::string(1, c);
  return out;
}

std::string setting_bits(const SweepSetting& s) {
  return "--wbits " + std::to_string(s.wbits) + " --abits " + std::to_string(s.abits) + " --group-size " +
         std::to_string(s.group_size);
}

// The job dir (and for sweeps the output folder and bits) of this job: an assignment, or a `case` on
// the array task id.
std::string select_job(const SubmitOptions& o) {
  if (o.sweep.empty()) return "job_dir=" + shell_quote(o.job_dir);
  std::vector<std::string> l;
  l.push_back("# Job array: task $SLURM_ARRAY_TASK_ID runs one setting, with its own job dir and output folder.");
  l.push_back("case \"${SLURM_ARRAY_TASK_ID:-}\" in");
  for (std::size_t i = 0; i < o.sweep.size(); ++i) {
    const SweepSetting& s = o.sweep[i];
    l.push_back("  " + std::to_string(i) + ")  # " + s.name);
    l.push_back("    job_dir=" + shell_quote(o.job_dir + "/" + s.name));
    l.push_back("    out=" + shell_quote(o.sweep_out + "/" + s.name));
    l.push_back("    bits=(" + setting_bits(s) + ") ;;");
  }
  l.push_back("  *)");
  l.push_back("    echo \"qforge-sbatch: no setting for array task '${SLURM_ARRAY_TASK_ID:-}'\" >&2");
  l.push_back("    exit 2 ;;");
  l.push_back("esac");
  return join_lines(l);
}

std::string quantize_args(const SubmitOptions& o) {
  std::string out;
  if (!o.sweep.empty()) out = "--out \"$out\"";
  for (const auto& a : o.quantize_args) out += (out.empty() ? "" : " ") + shell_quote(a);
  if (!o.sweep.empty()) out += " \"${bits[@]}\"";
  return out;
}

std::string description(const SubmitOptions& o) {
  const std::string requeue = o.self_requeue() ? "requeues itself when stopped at a checkpoint by USR1"
                                               : "does not requeue itself";
  if (!o.sweep.empty()) {
    std::string names;
    for (const auto& s : o.sweep) names += (names.empty() ? "" : ", ") + s.name;
    return "job array of " + std::to_string(o.sweep.size()) + " settings (" + names + "); each task " + requeue;
  }
  if (o.chain_length > 1) {
    return "chain job " + std::to_string(o.chain_index + 1) + "/" + std::to_string(o.chain_length) +
           (o.chain_index > 0 ? " (starts when job " + std::to_string(o.chain_index) + " of the chain has ended)" : "");
  }
  return "single job that " + requeue;
}

// What exit kScriptExitStopped leads to (comment), and the line logged when the job does not requeue.
std::string stopped_action(const SubmitOptions& o) {
  if (o.self_requeue()) return "scontrol requeue, then exit 0: the job runs again and resumes";
  if (o.chain_length > 1 && o.chain_index + 1 < o.chain_length) {
    return "the job exits " + std::to_string(kScriptExitStopped) + "; the next chain job resumes";
  }
  return "the job exits " + std::to_string(kScriptExitStopped) + "; submit again to resume";
}

std::string stopped_hint(const SubmitOptions& o) {
  if (o.self_requeue()) return "not requeued after TERM; submit again to resume";
  if (o.chain_length > 1 && o.chain_index + 1 < o.chain_length) return "the next job of the chain resumes it";
  return "submit again to resume";
}

}  // namespace

const std::string& sbatch_template() {
  static const std::string text = kSbatchTemplateText;
  return text;
}

std::string render_template(const std::string& text, const std::map<std::string, std::string>& values) {
  std::string out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const bool last_without_newline = in.eof();
    if (line.size() > 2 && line.front() == '@' && line.back() == '@' &&
        is_placeholder_name(line.substr(1, line.size() - 2))) {
      const auto it = values.find(line.substr(1, line.size() - 2));
      if (it != values.end() && it->second.empty()) continue;  // an optional block that is not there
    }
    std::string rendered;
    for (std::size_t i = 0; i < line.size();) {
      const std::size_t end = line[i] == '@' ? line.find('@', i + 1) : std::string::npos;
      const std::string name = end == std::string::npos ? std::string() : line.substr(i + 1, end - i - 1);
      if (!is_placeholder_name(name)) {
        rendered += line[i++];
        continue;
      }
      const auto it = values.find(name);
      if (it == values.end()) throw InternalError("sbatch template: no value for @" + name + "@");
      rendered += it->second;
      i = end + 1;
    }
    out += rendered;
    if (!last_without_newline) out += '\n';
  }
  return out;
}

std::string shell_quote(const std::string& word) {
  if (is_plain_word(word)) return word;
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string sbatch_quote(const std::string& value, const std::string& flag) {
  if (value.find_first_of("\n\r") != std::string::npos) {
    throw InputError(flag, "", "a line break cannot be written into an #SBATCH line");
  }
  if (is_plain_word(value)) return value;
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\' || c == '#') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string render_sbatch(const SubmitOptions& o) {
  QF_CHECK(o.nodes >= 1 && o.ntasks_per_node >= 1 && o.chain_length >= 1 && o.chain_index < o.chain_length,
           "bad submit options");
  QF_CHECK(o.sweep.empty() || o.chain_length == 1, "a sweep is not chained");
  std::vector<std::string> resources;
  if (o.gpus_per_node > 0) resources.push_back("#SBATCH --gpus-per-node=" + std::to_string(o.gpus_per_node));
  if (o.cpus_per_task > 0) resources.push_back("#SBATCH --cpus-per-task=" + std::to_string(o.cpus_per_task));
  if (!o.time.empty()) resources.push_back("#SBATCH --time=" + sbatch_quote(o.time, "--time"));
  if (!o.partition.empty()) resources.push_back("#SBATCH --partition=" + sbatch_quote(o.partition, "--partition"));
  if (!o.account.empty()) resources.push_back("#SBATCH --account=" + sbatch_quote(o.account, "--account"));
  std::vector<std::string> extra;
  if (!o.sbatch_args.empty()) extra.push_back("# --sbatch-arg lines come last, so they win over the lines above");
  for (const auto& a : o.sbatch_args) extra.push_back("#SBATCH " + sbatch_quote(a, "--sbatch-arg"));
  const std::string log_name = o.sweep.empty() ? "slurm-%j.out" : "slurm-%A_%a.out";
  std::string threads;
  if (o.cpus_per_task > 0) {
    threads = join_lines({"# --cpus-per-task: qforge computes with that many threads per rank. srun (Slurm >= 22.05) does",
                          "# not inherit --cpus-per-task from sbatch, so it is passed on to the step as well.",
                          "export QFORGE_THREADS=${SLURM_CPUS_PER_TASK:-1}",
                          "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}"});
  }
  const std::map<std::string, std::string> values = {
      {"DESCRIPTION", description(o)},
      {"JOB_NAME", sbatch_quote(o.job_name, "--job-name")},
      {"NODES", std::to_string(o.nodes)},
      {"NTASKS_PER_NODE", std::to_string(o.ntasks_per_node)},
      {"RESOURCE_SBATCH", join_lines(resources)},
      {"SIGNAL_SECONDS", std::to_string(o.signal_seconds)},
      {"REQUEUE_FLAG", o.self_requeue() ? "--requeue" : "--no-requeue"},
      {"OUTPUT", sbatch_quote(escape_filename_pattern(o.job_dir) + "/" + log_name, "--job-dir")},
      {"ARRAY_SBATCH", o.sweep.empty() ? "" : "#SBATCH --array=0-" + std::to_string(o.sweep.size() - 1)},
      {"EXTRA_SBATCH", join_lines(extra)},
      {"EXIT_STOPPED", std::to_string(kScriptExitStopped)},
      {"STOPPED_ACTION", stopped_action(o)},
      {"STOPPED_HINT", stopped_hint(o)},
      {"THREADS", threads},
      {"QFORGE", shell_quote(o.qforge)},
      {"SELECT_JOB", select_job(o)},
      {"SELF_REQUEUE", o.self_requeue() ? "1" : "0"},
      {"MPI", shell_quote(o.mpi)},
      {"QUANTIZE_ARGS", quantize_args(o)},
  };
  return render_template(sbatch_template(), values);
}

std::vector<SweepSetting> parse_sweep(const std::string& list) {
  static const std::regex re(R"(^w(\d{1,2})a(\d{1,2})(?:g(\d{1,6}))?$)");
  std::vector<SweepSetting> out;
  std::set<std::string> seen;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = list.find(',', start);
    const std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::smatch m;
    if (!std::regex_match(item, m, re)) {
      throw InputError("--sweep", "",
                       "'" + item + "' is not a setting like w4a16g128, w2a16g64 or w4a4 (w<bits>a<bits>[g<group>])");
    }
    SweepSetting s;
    s.name = item;
    s.wbits = std::stoi(m[1]);
    s.abits = std::stoi(m[2]);
    s.group_size = m[3].matched ? std::stoll(m[3]) : 0;
    if (s.wbits < 2 || s.wbits > 8) throw InputError("--sweep", "", "'" + item + "': weight bits must be 2..8");
    if (s.abits < 4 || s.abits > 16) throw InputError("--sweep", "", "'" + item + "': activation bits must be 4..16");
    if (m[3].matched && s.group_size < 1) {
      throw InputError("--sweep", "", "'" + item + "': group size must be >= 1 (leave out g for per-channel)");
    }
    if (!seen.insert(item).second) throw InputError("--sweep", "", "'" + item + "' is listed twice");
    out.push_back(s);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string parse_sbatch_job_id(const std::string& output) {
  std::string text = output;
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  std::size_t first = 0;
  while (first < text.size() && std::isspace(static_cast<unsigned char>(text[first]))) ++first;
  text = text.substr(first);
  // --parsable prints "<id>" or "<id>;<cluster>"; warnings may come first on lines of their own.
  const std::size_t nl = text.rfind('\n');
  if (nl != std::string::npos) text = text.substr(nl + 1);
  const std::string id = text.substr(0, text.find(';'));
  if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos) {
    throw InputError("sbatch", "", "unexpected --parsable output '" + output + "' (expected a job id)");
  }
  return id;
}

}  // namespace qforge::jobs
