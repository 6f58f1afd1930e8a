#include "partition/plan.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "common/error.h"
#include "common/strings.h"

namespace qforge::partition {

using nlohmann::json;

namespace {

constexpr int kPlanVersion = 1;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return b <= 0 ? 0 : (a + b - 1) / b; }

std::int64_t shape_elements(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

// Trainable parameters of one block (the header's Ptrain): transforms, then LWC clipping.
std::int64_t block_trainable_parameters(const LlamaConfig& c, const PlanOptions& o) {
  const std::int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  const std::int64_t d = c.head_dim, kv_heads = c.num_key_value_heads;
  std::int64_t n = o.affine_matrices ? 2 * h * h + 2 * kv_heads * d * d + 2 * h + kv : 4 * h + q + 2 * kv;
  // {out, in} of q, k, v, o, gate, up, down.
  const std::int64_t linears[7][2] = {{q, h}, {kv, h}, {kv, h}, {h, q}, {f, h}, {f, h}, {h, f}};
  for (const auto& l : linears) n += 2 * l[0] * (o.group_size > 0 ? ceil_div(l[1], o.group_size) : 1);
  return n;
}

// Rows each rank of a team holds, rank 0 first (see the header's data layout).
std::vector<std::int64_t> team_rows(const PlanOptions& o, int team) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(team), 0);
  if (o.nsamples <= 0) return rows;
  const std::int64_t steps = o.nsamples / o.batch_size, leftover = o.nsamples % o.batch_size;
  for (int r = 0; r < team; ++r) {
    const std::int64_t per_step = o.batch_size / team + (r < o.batch_size % team ? 1 : 0);
    rows[static_cast<std::size_t>(r)] = per_step * steps + leftover / team + (r < leftover % team ? 1 : 0);
  }
  return rows;
}

std::string list_names(const std::vector<std::string>& names) {
  std::string out;
  const std::size_t shown = std::min<std::size_t>(names.size(), 10);
  for (std::size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > shown) out += ", ... (" + std::to_string(names.size() - shown) + " more)";
  return out;
}

template <class T>
T get_field(const json& j, const std::string& name, const std::string& where) {
  if (!j.is_object() || !j.contains(name)) throw InputError("plan.json", where + name, "missing");
  try {
    return j.at(name).get<T>();
  } catch (const json::exception& e) {
    throw InputError("plan.json", where + name, std::string("wrong type: ") + e.what());
  }
}

}  // namespace

EngineMode parse_engine_mode(const std::string& name) {
  if (name == "sequential") return EngineMode::kSequential;
  if (name == "independent") return EngineMode::kIndependent;
  throw InputError("", "--mode", "unknown engine mode '" + name + "' (expected sequential or independent)");
}

const char* engine_mode_name(EngineMode mode) {
  return mode == EngineMode::kSequential ? "sequential" : "independent";
}

int resolve_team_size(const PlanOptions& o) {
  const std::string r = std::to_string(o.ranks);
  if (o.ranks < 1) throw InputError("", "--ranks", "must be at least 1 (got " + r + ")");
  if (o.team_size < 0) throw InputError("", "--team-size", "must be at least 1, or 0 for the mode's default");
  const bool seq = o.mode == EngineMode::kSequential;
  const int team = o.team_size > 0 ? o.team_size : (seq ? o.ranks : 1);
  const std::string t = std::to_string(team);
  if (seq && team != o.ranks) {
    throw InputError("", "--team-size",
                     "sequential mode runs one chain of blocks, so its one team must be all " + r + " ranks; with " +
                         t + " per team the other ranks would idle (use --mode independent for several teams)");
  }
  if (o.ranks % team != 0) {
    throw InputError("", "--team-size", "team size " + t + " does not divide the " + r + " ranks");
  }
  if (o.nsamples < 0) throw InputError("", "--nsamples", "must not be negative");
  if (o.seqlen < 0) throw InputError("", "--seqlen", "must not be negative");
  if (o.epochs < 0) throw InputError("", "--epochs", "must not be negative");
  if (o.group_size < 0) throw InputError("", "--group-size", "must not be negative (0 = per channel)");
  if (o.cache_bytes_per_value != 2 && o.cache_bytes_per_value != 4) {
    throw InputError("", "--cache-dtype", "cache values must be 2 (bf16) or 4 (fp32) bytes");
  }
  const std::string b = std::to_string(o.batch_size);
  if (o.batch_size < 1) throw InputError("", "--batch-size", "must be at least 1 (got " + b + ")");
  if (o.nsamples > 0) {
    if (o.seqlen < 1) throw InputError("", "--seqlen", "must be at least 1 when there are calibration samples");
    if (o.batch_size < team) {
      // The two ways out: a batch that feeds every rank, or teams small enough for this batch.
      const std::string fix = seq ? "pass --batch-size " + t + " (or more), or --mode independent (each rank calibrates "
                                    "its own blocks, on the FP model's activations)"
                                  : "pass --batch-size " + t + " (or more), or a smaller --team-size";
      throw InputError("", "--batch-size",
                       "batch " + b + " is smaller than the team of " + t +
                           " ranks: every rank needs at least one sequence of each step's batch; " + fix);
    }
  }
  if (o.training()) {
    if (o.nsamples < 1) throw InputError("", "--nsamples", "training needs at least one calibration sample");
    if (o.batch_size > o.nsamples) {
      throw InputError("", "--batch-size",
                       "batch " + b + " is larger than the " + std::to_string(o.nsamples) +
                           " calibration samples: no optimiser step could be filled");
    }
  }
  return team;
}

Plan make_block_plan(const ModelIndex& index, const PlanOptions& options) {
  std::vector<std::pair<int, int>> units;
  for (int b = 0; b < index.num_blocks(); ++b) units.emplace_back(b, 1);
  return make_plan(index, options, units);
}

Plan make_plan(const ModelIndex& index, const PlanOptions& options, const std::vector<std::pair<int, int>>& unit_blocks) {
  Plan plan;
  plan.options = options;
  plan.team_size = resolve_team_size(options);
  plan.teams = options.ranks / plan.team_size;
  plan.samples_per_team_rank = team_rows(options, plan.team_size);

  const LlamaConfig& c = index.config();
  const std::int64_t n = options.nsamples, t = options.seqlen, h = c.hidden_size;
  const std::int64_t rows0 = plan.samples_per_team_rank.empty() ? 0 : plan.samples_per_team_rank.front();
  const std::int64_t step_rows = ceil_div(std::min(options.batch_size, n), plan.team_size);
  const bool training = options.training();
  const double tokens = static_cast<double>(n) * static_cast<double>(t);
  const std::uint64_t streams = 4 + (options.aug_loss ? 1 : 0);
  const std::uint64_t activations = static_cast<std::uint64_t>(rows0 * t * h) * 4 * streams;
  const std::uint64_t step_activations =
      static_cast<std::uint64_t>(step_rows * t * (16 * h + 4 * c.intermediate_size + 2 * c.num_attention_heads * t)) *
      4 * 3;
  const std::int64_t trainable_per_block = training ? block_trainable_parameters(c, options) : 0;

  for (const auto& [first, count] : unit_blocks) {
    WorkUnit u;
    u.id = static_cast<int>(plan.units.size());
    u.first_block = first;
    u.num_blocks = count;
    for (int b = first; b < first + count && b < index.num_blocks(); ++b) {
      for (const auto& tensor : index.block(b)) {
        u.tensors.push_back(tensor.name);
        u.parameters += shape_elements(tensor.shape);
        u.weight_bytes += tensor.nbytes;
      }
    }
    const auto p = static_cast<std::uint64_t>(u.parameters);
    u.forward_flops = 2.0 * static_cast<double>(u.parameters) * tokens +
                      u.num_blocks * 4.0 * static_cast<double>(n) * static_cast<double>(t) * static_cast<double>(t) *
                          static_cast<double>(c.q_dim());
    u.train_flops = training ? options.epochs * 3.0 * u.forward_flops : 0.0;
    const std::uint64_t trainable = static_cast<std::uint64_t>(trainable_per_block * u.num_blocks) * 4 * 4;
    // A joint unit back-propagates through all of its blocks: their intermediates are held together.
    const std::uint64_t step = step_activations * static_cast<std::uint64_t>(u.num_blocks) + (training ? 4 * p * 3 : 0);
    u.peak_bytes = 4 * p * 2 + trainable + activations + step;
    plan.rank_peak_bytes = std::max(plan.rank_peak_bytes, u.peak_bytes);
    plan.units.push_back(std::move(u));
  }
  for (const auto& tensor : index.globals()) plan.global_tensors.push_back(tensor.name);

  const auto stream_bytes = static_cast<std::uint64_t>(n * t * h) * static_cast<std::uint64_t>(options.cache_bytes_per_value);
  // The FP pass writes every block boundary (joint units are chosen after it); MRECG probes in
  // sequential mode need it for the probe samples only.
  const auto boundaries = static_cast<std::uint64_t>(std::max(0, index.num_blocks() - 1));
  if (options.mode == EngineMode::kSequential) {
    const std::int64_t probe = std::min(options.probe_samples, n);
    plan.cache_disk_bytes = std::max<std::uint64_t>(
        2 * 2 * stream_bytes, boundaries * static_cast<std::uint64_t>(probe * t * h) * static_cast<std::uint64_t>(options.cache_bytes_per_value));
  } else {
    plan.cache_disk_bytes = boundaries * stream_bytes;
  }
  check_plan_coverage(plan, index);
  return plan;
}

void check_plan_coverage(const Plan& plan, const ModelIndex& index) {
  std::map<std::string, int> count;  // every index tensor, with how often the plan names it
  for (const auto& t : index.globals()) count[t.name] = 0;
  for (int b = 0; b < index.num_blocks(); ++b) {
    for (const auto& t : index.block(b)) count[t.name] = 0;
  }
  std::vector<std::string> unknown, duplicated, missing;
  auto visit = [&](const std::string& name) {
    auto it = count.find(name);
    if (it == count.end()) {
      unknown.push_back(name);
    } else if (++it->second == 2) {
      duplicated.push_back(name);
    }
  };
  int next_block = 0;
  std::string range_error;
  for (const auto& u : plan.units) {
    for (const auto& name : u.tensors) visit(name);
    if (range_error.empty() && (u.first_block != next_block || u.num_blocks < 1)) {
      range_error = "unit " + std::to_string(u.id) + " covers blocks " + std::to_string(u.first_block) + "+" +
                    std::to_string(u.num_blocks) + " but block " + std::to_string(next_block) + " comes next";
    }
    next_block = u.first_block + u.num_blocks;
  }
  if (range_error.empty() && next_block != index.num_blocks()) {
    range_error = "units end at block " + std::to_string(next_block) + " of " + std::to_string(index.num_blocks());
  }
  for (const auto& name : plan.global_tensors) visit(name);
  for (const auto& [name, n] : count) {
    if (n == 0) missing.push_back(name);
  }
  if (missing.empty() && duplicated.empty() && unknown.empty() && range_error.empty()) return;
  std::string msg = "plan does not cover the model's tensors exactly once:";
  if (!missing.empty()) msg += " missing " + list_names(missing) + ";";
  if (!duplicated.empty()) msg += " duplicated " + list_names(duplicated) + ";";
  if (!unknown.empty()) msg += " not in the model " + list_names(unknown) + ";";
  if (!range_error.empty()) msg += " " + range_error + ";";
  msg.pop_back();
  throw InternalError(msg);
}

json Plan::to_json() const {
  const PlanOptions& o = options;
  json opts = {{"mode", engine_mode_name(o.mode)},
               {"ranks", o.ranks},
               {"team_size", o.team_size},
               {"nsamples", o.nsamples},
               {"seqlen", o.seqlen},
               {"batch_size", o.batch_size},
               {"epochs", o.epochs},
               {"trains", o.trains},
               {"aug_loss", o.aug_loss},
               {"cache_bytes_per_value", o.cache_bytes_per_value},
               {"affine_matrices", o.affine_matrices},
               {"group_size", o.group_size}, {"probe_samples", o.probe_samples}};
  json units_json = json::array();
  for (const auto& u : units) {
    units_json.push_back({{"id", u.id},
                          {"first_block", u.first_block},
                          {"num_blocks", u.num_blocks},
                          {"tensors", u.tensors},
                          {"parameters", u.parameters},
                          {"weight_bytes", u.weight_bytes},
                          {"train_flops", u.train_flops},
                          {"forward_flops", u.forward_flops},
                          {"peak_bytes", u.peak_bytes}});
  }
  return {{"version", kPlanVersion},
          {"options", opts},
          {"teams", teams},
          {"team_size", team_size},
          {"units", units_json},
          {"global_tensors", global_tensors},
          {"samples_per_team_rank", samples_per_team_rank},
          {"rank_peak_bytes", rank_peak_bytes},
          {"cache_disk_bytes", cache_disk_bytes}};
}

Plan Plan::from_json(const json& j) {
  if (!j.is_object()) throw InputError("plan.json", "", "must be a JSON object");
  const int version = get_field<int>(j, "version", "");
  if (version != kPlanVersion) {
    throw InputError("plan.json", "version", "unknown plan version " + std::to_string(version));
  }
  Plan p;
  const json o = get_field<json>(j, "options", "");
  PlanOptions& po = p.options;
  const std::string mode = get_field<std::string>(o, "mode", "options.");
  if (mode != "sequential" && mode != "independent") throw InputError("plan.json", "options.mode", "unknown mode " + mode);
  po.mode = parse_engine_mode(mode);
  po.ranks = get_field<int>(o, "ranks", "options.");
  po.team_size = get_field<int>(o, "team_size", "options.");
  po.nsamples = get_field<std::int64_t>(o, "nsamples", "options.");
  po.seqlen = get_field<std::int64_t>(o, "seqlen", "options.");
  po.batch_size = get_field<std::int64_t>(o, "batch_size", "options.");
  po.epochs = get_field<int>(o, "epochs", "options.");
  po.trains = get_field<bool>(o, "trains", "options.");
  po.aug_loss = get_field<bool>(o, "aug_loss", "options.");
  po.cache_bytes_per_value = get_field<int>(o, "cache_bytes_per_value", "options.");
  po.affine_matrices = get_field<bool>(o, "affine_matrices", "options.");
  po.group_size = get_field<std::int64_t>(o, "group_size", "options.");
  po.probe_samples = o.value("probe_samples", std::int64_t{0});
  p.teams = get_field<int>(j, "teams", "");
  p.team_size = get_field<int>(j, "team_size", "");
  const json units = get_field<json>(j, "units", "");
  if (!units.is_array()) throw InputError("plan.json", "units", "must be an array");
  for (std::size_t i = 0; i < units.size(); ++i) {
    const std::string w = "units[" + std::to_string(i) + "].";
    const json& uj = units[i];
    WorkUnit u;
    u.id = get_field<int>(uj, "id", w);
    u.first_block = get_field<int>(uj, "first_block", w);
    u.num_blocks = get_field<int>(uj, "num_blocks", w);
    u.tensors = get_field<std::vector<std::string>>(uj, "tensors", w);
    u.parameters = get_field<std::int64_t>(uj, "parameters", w);
    u.weight_bytes = get_field<std::uint64_t>(uj, "weight_bytes", w);
    u.train_flops = get_field<double>(uj, "train_flops", w);
    u.forward_flops = get_field<double>(uj, "forward_flops", w);
    u.peak_bytes = get_field<std::uint64_t>(uj, "peak_bytes", w);
    p.units.push_back(std::move(u));
  }
  p.global_tensors = get_field<std::vector<std::string>>(j, "global_tensors", "");
  p.samples_per_team_rank = get_field<std::vector<std::int64_t>>(j, "samples_per_team_rank", "");
  p.rank_peak_bytes = get_field<std::uint64_t>(j, "rank_peak_bytes", "");
  p.cache_disk_bytes = get_field<std::uint64_t>(j, "cache_disk_bytes", "");
  return p;
}

std::string format_plan_report(const Plan& plan) {
  const PlanOptions& o = plan.options;
  std::ostringstream out;
  out << "plan: " << plan.units.size() << " work units, mode " << engine_mode_name(o.mode) << ", " << plan.teams
      << (plan.teams == 1 ? " team" : " teams") << " of " << plan.team_size << (plan.team_size == 1 ? " rank" : " ranks")
      << " (" << o.ranks << " in all)\n";
  char line[256];
  std::snprintf(line, sizeof line, "%6s  %-9s %14s %11s %14s %14s %11s\n", "unit", "blocks", "params", "MiB",
                "train GFLOP", "fwd GFLOP", "peak MiB");
  out << line;
  std::uint64_t peak_unit = 0;
  for (const auto& u : plan.units) {
    const std::string blocks = u.num_blocks == 1 ? std::to_string(u.first_block)
                                                 : std::to_string(u.first_block) + "-" +
                                                       std::to_string(u.first_block + u.num_blocks - 1);
    std::snprintf(line, sizeof line, "%6d  %-9s %14lld %11.1f %14.1f %14.1f %11.1f\n", u.id, blocks.c_str(),
                  static_cast<long long>(u.parameters), static_cast<double>(u.weight_bytes) / (1024.0 * 1024.0),
                  u.train_flops / 1e9, u.forward_flops / 1e9, static_cast<double>(u.peak_bytes) / (1024.0 * 1024.0));
    out << line;
    if (u.peak_bytes == plan.rank_peak_bytes) peak_unit = static_cast<std::uint64_t>(u.id);
  }
  out << "samples per rank of a team:";
  for (std::int64_t r : plan.samples_per_team_rank) out << " " << r;
  out << " (nsamples " << o.nsamples << ", seqlen " << o.seqlen << ", batch " << o.batch_size << ", epochs "
      << o.epochs << (o.training() ? ", training" : ", no training") << ")\n";
  out << "estimated peak memory per rank: " << format_mib(plan.rank_peak_bytes);
  if (!plan.units.empty()) out << " (unit " << peak_unit << ")";
  out << "\n";
  out << "activation cache on disk: " << format_mib(plan.cache_disk_bytes) << "\n";
  out << "globals (written at assembly): " << list_names(plan.global_tensors) << "\n";

  std::map<std::string, int> seen;
  std::vector<std::string> duplicated;
  std::size_t total = 0;
  auto visit = [&](const std::string& name) {
    ++total;
    if (++seen[name] == 2) duplicated.push_back(name);
  };
  for (const auto& u : plan.units) {
    for (const auto& name : u.tensors) visit(name);
  }
  for (const auto& name : plan.global_tensors) visit(name);
  if (duplicated.empty()) {
    out << "coverage: " << total << " tensors, each exactly once\n";
  } else {
    out << "coverage: " << total << " tensor names, DUPLICATED: " << list_names(duplicated) << "\n";
  }
  return out.str();
}

}  // namespace qforge::partition
