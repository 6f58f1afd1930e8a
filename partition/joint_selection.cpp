#include "partition/joint_selection.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "common/error.h"

namespace qforge::partition {

int default_joint_topk(int blocks) { return std::max(1, static_cast<int>(std::lround(blocks / 8.0))); }

JointSelection select_joint_units(const std::vector<double>& cap, int topk, int max_blocks) {
  QF_CHECK(topk >= 0 && max_blocks >= 1, "bad joint selection options");
  const int L = static_cast<int>(cap.size());
  JointSelection out;
  std::vector<int> candidates;
  for (int i = 0; i + 1 < L; ++i) {
    out.differentials.push_back(cap[static_cast<std::size_t>(i + 1)] - cap[static_cast<std::size_t>(i)]);
    if (out.differentials.back() > 0) candidates.push_back(i);
  }
  std::sort(candidates.begin(), candidates.end(), [&](int a, int b) {
    const double da = out.differentials[static_cast<std::size_t>(a)], db = out.differentials[static_cast<std::size_t>(b)];
    if (da != db) return da > db;
    const double la = cap[static_cast<std::size_t>(a + 1)], lb = cap[static_cast<std::size_t>(b + 1)];
    if (la != lb) return la > lb;
    return a < b;
  });
  if (static_cast<int>(candidates.size()) > topk) candidates.resize(static_cast<std::size_t>(topk));
  out.selected = candidates;

  // Union of adjacent blocks: start[b] is the first block of b's unit (units stay contiguous).
  std::vector<int> first(static_cast<std::size_t>(L)), last(static_cast<std::size_t>(L));
  std::iota(first.begin(), first.end(), 0);
  std::iota(last.begin(), last.end(), 0);
  auto head = [&](int b) { return first[static_cast<std::size_t>(b)]; };
  for (int i : candidates) {
    const int a = head(i), c = last[static_cast<std::size_t>(head(i + 1))];
    if (c - a + 1 > max_blocks) {
      out.dropped.push_back(i);
      continue;
    }
    for (int b = a; b <= c; ++b) first[static_cast<std::size_t>(b)] = a;
    last[static_cast<std::size_t>(a)] = c;
  }
  for (int b = 0; b < L;) {
    const int e = last[static_cast<std::size_t>(b)];
    out.units.emplace_back(b, e - b + 1);
    b = e + 1;
  }
  return out;
}

std::string format_joint_report(const std::vector<double>& values, const JointSelection& sel, const std::string& kind,
                                int topk, int max_blocks) {
  std::ostringstream out;
  char line[160];
  out << "MRECG joint reconstruction: top-" << topk << " differentials, units of at most " << max_blocks << " blocks, capacity from "
      << kind << "\n";
  out << "  block  " << (kind == "data-free" ? "-capacity      " : "normalised loss") << "  differential to next\n";
  for (std::size_t b = 0; b < values.size(); ++b) {
    std::string mark;
    if (std::find(sel.selected.begin(), sel.selected.end(), static_cast<int>(b)) != sel.selected.end()) {
      mark = std::find(sel.dropped.begin(), sel.dropped.end(), static_cast<int>(b)) != sel.dropped.end() ? "  selected, dropped (cap)"
                                                                                                          : "  selected";
    }
    if (b < sel.differentials.size()) {
      std::snprintf(line, sizeof line, "  %5zu  %15.6g  %+20.6g%s\n", b, values[b], sel.differentials[b], mark.c_str());
    } else {
      std::snprintf(line, sizeof line, "  %5zu  %15.6g\n", b, values[b]);
    }
    out << line;
  }
  out << "  units (" << sel.units.size() << "):";
  for (const auto& [first, n] : sel.units) {
    out << " " << (n > 1 ? "[" + std::to_string(first) + "-" + std::to_string(first + n - 1) + "]" : std::to_string(first));
  }
  out << "\n";
  return out.str();
}

}  // namespace qforge::partition
