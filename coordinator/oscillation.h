// The oscillation report (MRECG, algorithms.md §4.1): the normalised reconstruction loss across depth,
// block by block, as the probes saw it (each block alone on FP inputs: the module capacity the joint
// units were selected from) and as the finished units left it (every block's output on the quantized
// stream against the FP stream, inside joint units too). Block-wise PTQ shows the second curve rising
// and falling; MRECG's claim is that joint units across the largest capacity drops flatten it.
//
// Built from journal records only (probe_done, joint_selection, unit_done), so the coordinator (at
// assembly) and `qforge status` (from a job directory) produce the same report. Written as
// oscillation.json and oscillation.svg, a plot a browser opens, to the job directory and the output.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace qforge::coordinator {

// `probes`: block -> probe_done record; `selection`: the joint_selection record (null without MRECG);
// `units`: unit -> unit_done record (the unit's report holds "blocks" and "block_losses").
nlohmann::json oscillation_report(const std::map<int, nlohmann::json>& probes, const nlohmann::json& selection,
                                  const std::map<int, nlohmann::json>& units);

// Total of the drops of a depth curve, sum_i max(0, v_i - v_{i+1}), and how many there are: 0 for a
// curve that only rises.
std::pair<double, int> curve_drops(const std::vector<double>& values);

struct PlotSeries {
  std::string label;
  std::vector<double> values;  // per block; NaN = no point
  std::string color;
};
// A self-contained SVG line plot of normalised loss (log scale) against block, with the joint units
// shaded.
std::string oscillation_svg(const std::string& title, const std::vector<PlotSeries>& series,
                            const std::vector<std::pair<int, int>>& joint_units);

// The report's own plot: probe curve and final curve.
std::string oscillation_svg(const nlohmann::json& report, const std::string& title);

}  // namespace qforge::coordinator
