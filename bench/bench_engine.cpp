// Engine scaling benchmark: runs `mpirun -np R qforge quantize` on a synthetic model for each rank
// count and mode, and prints, from each run's journal, the time per unit, the compute-phase wall time
// and scaling efficiency against one rank, cache bytes written/read, and peak RSS per rank (growth
// over the rank's baseline), with the machine's core count.
//
//   bench_engine [--shape small] [--ranks 1,2,4] [--modes sequential,independent] [--nsamples 16]
//                [--seqlen 128] [--batch 4] [--epochs 2] [--method omniquant] [--keep DIR]
//
// Each rank computes with one thread (QFORGE_THREADS=1), so R ranks ask for R cores: on a machine
// with fewer cores than ranks the numbers show oversubscription, not scaling.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "storage/journal.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) out.push_back(x);
  return out;
}

int sh(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

struct RunFigures {
  double wall = 0;            // whole command
  double compute = 0;         // first assignment -> last unit done (journal times)
  double unit_mean = 0;       // mean seconds per unit as reported by the workers
  double fp_pass = 0;         // independent mode: slowest FP-pass slice
  std::uint64_t written = 0, read = 0;
  std::map<int, std::uint64_t> growth;  // rank -> peak RSS minus baseline
  int units = 0;
};

RunFigures figures_of(const fs::path& job, double wall) {
  RunFigures f;
  f.wall = wall;
  double first = 0, last = 0, unit_sum = 0;
  for (const auto& r : qforge::storage::replay_journal(job / "journal.log").records) {
    const std::string type = r.value("type", "");
    const double t = r.value("t", 0.0);
    if (type == "unit_assigned" && first == 0) first = t;
    if (type == "fp_slice_done") {
      f.fp_pass = std::max(f.fp_pass, r.value("seconds", 0.0));
      f.written += r.value("cache_bytes_written", std::uint64_t{0});
      const int rank = r.value("rank", 0);
      f.growth[rank] = std::max(f.growth[rank], r.value("peak_rss", std::uint64_t{0}) - r.value("baseline_rss", std::uint64_t{0}));
    }
    if (type != "unit_done") continue;
    last = t;
    ++f.units;
    unit_sum += r.value("seconds", 0.0);
    for (const auto& rk : r["ranks"]) {
      f.written += rk.value("cache_bytes_written", std::uint64_t{0});
      f.read += rk.value("cache_bytes_read", std::uint64_t{0});
      const int rank = rk.value("rank", 0);
      f.growth[rank] = std::max(f.growth[rank], rk.value("peak_rss", std::uint64_t{0}) - rk.value("baseline_rss", std::uint64_t{0}));
    }
  }
  f.compute = last - first;
  f.unit_mean = f.units ? unit_sum / f.units : 0;
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt = {{"shape", "small"}, {"ranks", "1,2,4"}, {"modes", "sequential,independent"},
                                            {"nsamples", "16"}, {"seqlen", "128"}, {"batch", "4"}, {"epochs", "2"},
                                            {"method", "omniquant"}, {"keep", ""}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || !opt.count(k.substr(2))) {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
    opt[k.substr(2)] = argv[i + 1];
  }
  const fs::path qforge = fs::path(QFORGE_BENCH_BINARY_DIR) / "jobs" / "qforge";
  const fs::path dir = opt["keep"].empty() ? fs::temp_directory_path() / ("qforge-bench-engine-" + std::to_string(getpid())) : fs::path(opt["keep"]);
  fs::create_directories(dir);
  const fs::path model = dir / ("model-" + opt["shape"]);
  if (!fs::exists(model / "config.json") &&
      sh(qforge.string() + " make-synthetic --log-level warn --shape " + opt["shape"] + " --out " + model.string()) != 0) {
    return 1;
  }
  std::printf("engine benchmark: synthetic '%s', %s x %s tokens, batch %s, %s epochs, %s; %u cores, 1 thread per rank\n",
              opt["shape"].c_str(), opt["nsamples"].c_str(), opt["seqlen"].c_str(), opt["batch"].c_str(), opt["epochs"].c_str(),
              opt["method"].c_str(), std::thread::hardware_concurrency());
  std::printf("%-12s %5s %8s %9s %9s %8s %7s %10s %10s  %s\n", "mode", "ranks", "wall s", "compute s", "s/unit", "FP pass", "eff.",
              "cache W", "cache R", "peak RSS growth per rank (MiB)");
  for (const auto& mode : split(opt["modes"])) {
    double base = 0;
    for (const auto& rs : split(opt["ranks"])) {
      const int ranks = std::stoi(rs);
      const fs::path run = dir / (mode + "-np" + rs);
      fs::remove_all(run);
      const std::string cmd =
          "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 QFORGE_THREADS=1 mpirun --oversubscribe --bind-to none -np " +
          rs + " " + qforge.string() + " quantize --log-level warn --model " + model.string() + " --out " + (run / "out").string() +
          " --job-dir " + (run / "job").string() + " --keep-cache false --method " + opt["method"] +
          " --wbits 4 --abits 4 --calib-data model:generate --nsamples " + opt["nsamples"] + " --calib-seqlen " + opt["seqlen"] +
          " --batch-size " + opt["batch"] + " --epochs " + opt["epochs"] + " --mode " + mode +
          (mode == "independent" ? " --team-size 1" : "") + " > " + (run.string() + ".log") + " 2>&1";
      fs::create_directories(run);
      const auto t0 = std::chrono::steady_clock::now();
      if (sh(cmd) != 0) {
        std::printf("%-12s %5d   failed (see %s.log)\n", mode.c_str(), ranks, run.string().c_str());
        continue;
      }
      const RunFigures f = figures_of(run / "job", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      const double compute = std::max(1e-3, f.compute + f.fp_pass);
      if (ranks == 1 || base == 0) base = compute * ranks;
      std::string rss;
      for (const auto& [r, g] : f.growth) rss += (rss.empty() ? "" : " ") + std::to_string(static_cast<int>(g / 1048576.0));
      std::printf("%-12s %5d %8.1f %9.1f %9.2f %8.1f %6.0f%% %8.1fMiB %8.1fMiB  %s\n", mode.c_str(), ranks, f.wall, f.compute,
                  f.unit_mean, f.fp_pass, 100.0 * base / (compute * ranks), f.written / 1048576.0, f.read / 1048576.0, rss.c_str());
    }
  }
  std::printf("eff. = (compute time on 1 rank) / (ranks x compute time on N ranks); compute = first assignment to last unit\n"
              "done (journal timestamps) plus the FP pass. Oversubscribed cores make it fall, not the engine.\n");
  if (opt["keep"].empty()) fs::remove_all(dir);
  return 0;
}
