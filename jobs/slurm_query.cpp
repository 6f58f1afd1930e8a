#include "jobs/slurm_query.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <sstream>

namespace qforge::jobs {

using nlohmann::json;

namespace {

// Output of a command line built only from validated job ids (no user text reaches the shell).
bool capture(const std::string& command, std::string& out) {
  FILE* p = popen((command + " 2>/dev/null").c_str(), "r");
  if (!p) return false;
  std::array<char, 4096> buf{};
  out.clear();
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  return pclose(p) == 0;
}

}  // namespace

bool slurm_configured() {
  const char* conf = std::getenv("SLURM_CONF");
  if (conf && *conf) return std::filesystem::exists(conf);
  return std::filesystem::exists("/etc/slurm/slurm.conf");
}

json query_slurm_job(const std::string& id) {
  json out = {{"job_id", id}, {"state", "unknown"}, {"restarts", nullptr}, {"exit_code", nullptr}, {"reason", nullptr},
              {"source", "none"}, {"note", ""}};
  static const std::regex valid(R"(^\d+(_\d+)?$)");
  if (!std::regex_match(id, valid)) {
    out["note"] = "not a Slurm job id";
    return out;
  }
  if (!slurm_configured()) {
    out["note"] = "no Slurm configuration here (export SLURM_CONF)";
    return out;
  }
  std::string text;
  if (capture("scontrol show job -o " + id, text) && !text.empty()) {
    std::map<std::string, std::string> f;
    static const std::regex kv(R"(([A-Za-z]+)=(\S*))");
    for (std::sregex_iterator it(text.begin(), text.end(), kv), end; it != end; ++it) {
      if (!f.count((*it)[1])) f[(*it)[1]] = (*it)[2];
    }
    out["source"] = "scontrol";
    out["state"] = f["JobState"];
    if (!f["Restarts"].empty()) out["restarts"] = std::stoi(f["Restarts"]);
    out["exit_code"] = f["ExitCode"];
    out["reason"] = f["Reason"];
    return out;
  }
  if (capture("sacct -X -n -P -o JobID,State,ExitCode -j " + id, text) && !text.empty()) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string jid, state, code;
      std::getline(ls, jid, '|');
      std::getline(ls, state, '|');
      std::getline(ls, code, '|');
      if (jid == id) {
        out["source"] = "sacct";
        out["state"] = state;
        out["exit_code"] = code;
      }
    }
    if (out["source"] == "sacct") return out;
  }
  out["note"] = "Slurm no longer knows this job (past MinJobAge, and no accounting)";
  return out;
}

}  // namespace qforge::jobs
