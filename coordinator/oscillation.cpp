#include "coordinator/oscillation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace qforge::coordinator {

using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<double> numbers(const json& a) {
  std::vector<double> v;
  for (const auto& x : a) v.push_back(x.is_number() ? x.get<double>() : kNaN);
  return v;
}

json nullable(const std::vector<double>& v) {
  json a = json::array();
  for (double x : v) a.push_back(std::isnan(x) ? json() : json(x));
  return a;
}

}  // namespace

std::pair<double, int> curve_drops(const std::vector<double>& v) {
  double total = 0;
  int count = 0;
  for (std::size_t i = 0; i + 1 < v.size(); ++i) {
    if (std::isnan(v[i]) || std::isnan(v[i + 1]) || v[i + 1] >= v[i]) continue;
    total += v[i] - v[i + 1];
    ++count;
  }
  return {total, count};
}

json oscillation_report(const std::map<int, json>& probes, const json& selection, const std::map<int, json>& units) {
  int blocks = 0;
  for (const auto& [u, rec] : units) {
    for (const auto& b : rec.at("report").at("blocks")) blocks = std::max(blocks, b.get<int>() + 1);
  }
  for (const auto& [b, rec] : probes) blocks = std::max(blocks, b + 1);
  std::vector<double> probe(static_cast<std::size_t>(blocks), kNaN), final(static_cast<std::size_t>(blocks), kNaN);
  std::vector<int> unit_of(static_cast<std::size_t>(blocks), -1);
  for (const auto& [b, rec] : probes) probe[static_cast<std::size_t>(b)] = rec.at("capacity_loss").get<double>();
  json unit_list = json::array();
  for (const auto& [u, rec] : units) {
    const json& rep = rec.at("report");
    const json& bl = rep.at("blocks");
    for (std::size_t i = 0; i < bl.size(); ++i) {
      const int b = bl[i].get<int>();
      unit_of[static_cast<std::size_t>(b)] = u;
      if (rep.contains("block_losses")) final[static_cast<std::size_t>(b)] = rep["block_losses"][i].at("normalized").get<double>();
    }
    unit_list.push_back({{"unit", u}, {"blocks", bl}, {"initial_loss", rep.value("initial_loss", json())},
                         {"final_loss", rep.value("final_loss", json())}});
  }
  json per_block = json::array();
  for (int b = 0; b < blocks; ++b) {
    const auto i = static_cast<std::size_t>(b);
    per_block.push_back({{"block", b}, {"unit", unit_of[i] < 0 ? json() : json(unit_of[i])},
                         {"probe", std::isnan(probe[i]) ? json() : json(probe[i])},
                         {"final", std::isnan(final[i]) ? json() : json(final[i])}});
  }
  const auto [fd, fn] = curve_drops(final);
  const auto [pd, pn] = curve_drops(probe);
  double fmax = 0;
  for (double x : final) {
    if (!std::isnan(x)) fmax = std::max(fmax, x);
  }
  json report = {{"version", 1},
                 {"blocks", per_block},
                 {"units", unit_list},
                 {"probe", nullable(probe)},
                 {"final", nullable(final)},
                 {"summary", {{"final_max", fmax}, {"final_last", blocks ? (std::isnan(final.back()) ? json() : json(final.back())) : json()},
                              {"final_drops", fn}, {"final_drop_total", fd}, {"probe_drops", pn}, {"probe_drop_total", pd}}}};
  if (selection.is_object()) {
    report["selection"] = {{"capacity", selection.at("capacity")}, {"topk", selection.at("topk")},
                           {"max_blocks", selection.at("max_blocks")}, {"differentials", selection.at("differentials")},
                           {"selected", selection.at("selected")}, {"dropped", selection.at("dropped")},
                           {"units", selection.at("units")}};
  } else {
    report["selection"] = nullptr;
  }
  return report;
}

std::string oscillation_svg(const std::string& title, const std::vector<PlotSeries>& series,
                            const std::vector<std::pair<int, int>>& joint_units) {
  const double W = 720, H = 400, left = 70, right = 20, top = 40, bottom = 60;
  std::size_t n = 0;
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const auto& s : series) {
    n = std::max(n, s.values.size());
    for (double v : s.values) {
      if (!std::isnan(v) && v > 0) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
  }
  if (!(hi > 0)) lo = 1e-3, hi = 1;
  double llo = std::floor(std::log10(lo)), lhi = std::ceil(std::log10(hi));
  if (lhi <= llo) lhi = llo + 1;
  const double pw = W - left - right, ph = H - top - bottom;
  auto xpos = [&](double b) { return left + (n > 1 ? b / static_cast<double>(n - 1) : 0.5) * pw; };
  auto ypos = [&](double v) { return top + (1.0 - (std::log10(v) - llo) / (lhi - llo)) * ph; };
  std::ostringstream o;
  char buf[256];
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << title << "</text>\n";
  const double half = n > 1 ? pw / static_cast<double>(n - 1) / 2 : pw / 2;
  for (const auto& [first, count] : joint_units) {
    if (count < 2) continue;
    std::snprintf(buf, sizeof buf, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#f2d7a6\" opacity=\"0.6\"/>\n",
                  xpos(first) - half, top, xpos(first + count - 1) - xpos(first) + 2 * half, ph);
    o << buf;
  }
  for (double e = llo; e <= lhi + 1e-9; e += 1) {
    const double y = ypos(std::pow(10.0, e));
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>\n", left, y, W - right, y, left - 6, y + 4, static_cast<int>(e));
    o << buf;
  }
  for (std::size_t b = 0; b < n; ++b) {
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%zu</text>\n", xpos(static_cast<double>(b)), H - bottom + 16, b);
    o << buf;
  }
  std::snprintf(buf, sizeof buf, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", left, top, pw, ph);
  o << buf;
  o << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - bottom + 34 << "\" text-anchor=\"middle\">block (shaded: joint units)</text>\n";
  o << "<text transform=\"translate(16," << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">normalised loss MSE / mean(y_fp\xc2\xb2)</text>\n";
  for (std::size_t si = 0; si < series.size(); ++si) {
    const auto& s = series[si];
    std::string pts;
    for (std::size_t b = 0; b < s.values.size(); ++b) {
      if (std::isnan(s.values[b]) || s.values[b] <= 0) continue;
      std::snprintf(buf, sizeof buf, "%.1f,%.1f ", xpos(static_cast<double>(b)), ypos(s.values[b]));
      pts += buf;
      std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", xpos(static_cast<double>(b)), ypos(s.values[b]), s.color.c_str());
      o << buf;
    }
    o << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"2\" points=\"" << pts << "\"/>\n";
    const double ly = H - 12.0, lx = left + static_cast<double>(si) * pw / static_cast<double>(std::max<std::size_t>(1, series.size()));
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>", lx, ly - 4, lx + 20, ly - 4, s.color.c_str());
    o << buf << "<text x=\"" << lx + 24 << "\" y=\"" << ly << "\">" << s.label << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

std::string oscillation_svg(const json& report, const std::string& title) {
  std::vector<PlotSeries> series;
  const std::vector<double> probe = numbers(report.at("probe"));
  if (std::any_of(probe.begin(), probe.end(), [](double v) { return !std::isnan(v); })) {
    series.push_back({"probe (each block alone, FP input)", probe, "#888888"});
  }
  series.push_back({"final (quantized stream)", numbers(report.at("final")), "#c0392b"});
  std::vector<std::pair<int, int>> joint;
  for (const auto& u : report.at("units")) {
    const auto& bl = u.at("blocks");
    joint.emplace_back(bl.front().get<int>(), static_cast<int>(bl.size()));
  }
  return oscillation_svg(title, series, joint);
}

}  // namespace qforge::coordinator
