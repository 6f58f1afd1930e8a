// MRECG joint reconstruction in the engine: a joint unit's parameters all learn from the one
// unit-output loss, a joint unit of one block is the block-wise trainer, the job state runs FP pass ->
// probes -> journaled selection -> units (and replays it), and the oscillation report's arithmetic.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "coordinator/job_state.h"
#include "coordinator/oscillation.h"
#include "storage/hf_config.h"
#include "tests/support/small_model.h"
#include "worker/block_transforms.h"
#include "worker/calibrator.h"

namespace qforge {
namespace {

using nlohmann::json;

storage::LlamaConfig tiny_config() { return test::small_llama_config(4, 2, 3); }

struct JointFixture {
  storage::LlamaConfig c = tiny_config();
  std::vector<worker::BlockWeights> fp;
  std::vector<worker::ActStats> stats;
  std::vector<worker::CalibOptions> options;
  worker::RopeTables rope;
  at::Tensor x, y;

  JointFixture(int blocks, worker::Method method) {
    at::manual_seed(11);
    rope = worker::make_rope_tables(c, 8, at::kCPU);
    x = at::randn({4, 8, c.hidden_size});
    at::Tensor h = x;
    for (int b = 0; b < blocks; ++b) {
      fp.push_back(worker::BlockWeights::random(c, at::kFloat, 0.2, 0.1));
      stats.emplace_back();
      h = worker::accumulate_act_stats(c, fp.back(), h, rope, stats.back());
      worker::CalibOptions o;
      o.transform.method = method;
      o.transform.let = true;
      o.transform.lwc = true;
      o.weights.bits = 3;
      o.acts.bits = 6;
      o.epochs = 4;
      o.batch_size = 2;
      o.let_lr = 5e-3;
      options.push_back(o);
    }
    y = h.detach();
  }
};

// The acceptance: every LWC/LET/affine parameter of every block of a joint unit gets a gradient
// from the single loss at the unit output, the first block's included (it has no loss of its own).
TEST(JointUnit, EveryParameterOfEveryBlockGetsGradientFromTheUnitOutputLoss) {
  for (worker::Method m : {worker::Method::kOmniQuant, worker::Method::kAffineQuant}) {
    JointFixture f(3, m);
    worker::UnitTrainer trainer(f.c, f.fp, f.stats, f.options, f.rope);
    trainer.begin_epoch(3);  // last epoch: AffineQuant's band is full, so every matrix entry trains
    ASSERT_EQ(trainer.blocks(), 3);
    const double loss = trainer.step(f.x, f.y, {}, "joint test");
    EXPECT_GT(loss, 0.0);
    for (int b = 0; b < 3; ++b) {
      int count = 0;
      for (const auto& p : trainer.transforms(b).let_parameters()) {
        ASSERT_TRUE(p.grad().defined()) << "block " << b;
        EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0) << worker::method_name(m) << " block " << b << " LET tensor " << count;
        ++count;
      }
      for (const auto& p : trainer.transforms(b).lwc_parameters()) {
        ASSERT_TRUE(p.grad().defined()) << "block " << b;
        EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0) << worker::method_name(m) << " block " << b << " LWC tensor " << count;
        ++count;
      }
      EXPECT_GE(count, 14) << "block " << b;  // 7 linears x (upper, lower) clipping at least
    }
  }
}

// Joint training lowers the unit-output loss, and a unit of one block is exactly the block-wise path.
TEST(JointUnit, TrainingLowersTheUnitLossAndOneBlockEqualsBlockWise) {
  JointFixture f(2, worker::Method::kAffineQuant);
  const worker::UnitResult r = worker::calibrate_unit(f.c, f.fp, f.x, f.y, {}, f.stats, f.options, f.rope, "joint");
  ASSERT_EQ(r.blocks.size(), 2u);
  EXPECT_EQ(r.epoch_loss.size(), 4u);
  EXPECT_LT(r.final_loss, r.initial_loss);
  // The per-block curve inside the unit ends at the unit output: its last MSE is the unit's final loss.
  std::vector<worker::BlockWeights> q{r.blocks[0].weights, r.blocks[1].weights};
  const std::vector<worker::ActQuantSpec> acts{f.options[0].acts, f.options[1].acts};
  const auto curve = worker::chain_losses(f.c, f.fp, q, f.x, f.x, f.rope, acts, 2, nullptr, f.x.numel());
  ASSERT_EQ(curve.size(), 2u);
  EXPECT_NEAR(curve[1].mse, r.final_loss, 1e-6 * r.final_loss);  // fp32 sums taken in another order
  EXPECT_NEAR(curve[1].energy, f.y.pow(2).mean().item<double>(), 1e-6);
  // Given the FP unit output (as the engine passes it, so the last FP block is not run again) and the
  // training batch, the last point is the final loss bit for bit: the same forward, the same sums.
  const auto given = worker::chain_losses(f.c, f.fp, q, f.x, f.x, f.rope, acts, f.options[0].batch_size, nullptr,
                                          f.x.numel(), nullptr, f.y);
  EXPECT_EQ(given[1].mse, r.final_loss);
  EXPECT_EQ(given[0].mse, curve[0].mse);  // the first block's FP output is still computed
  // ... and a unit told that its caller measures leaves the final loss alone.
  const worker::UnitResult m = worker::calibrate_unit(f.c, f.fp, f.x, f.y, {}, f.stats, f.options, f.rope, "joint", nullptr,
                                                      nullptr, nullptr, worker::FinalLoss::kCallerMeasures);
  EXPECT_EQ(m.final_loss, 0.0);
  EXPECT_EQ(m.initial_loss, r.initial_loss);
  EXPECT_TRUE(at::equal(m.blocks[1].weights.down, r.blocks[1].weights.down));

  JointFixture g(1, worker::Method::kAffineQuant);
  const worker::UnitResult u = worker::calibrate_unit(g.c, g.fp, g.x, g.y, {}, g.stats, g.options, g.rope, "unit");
  const worker::BlockResult b = worker::calibrate_block(g.c, g.fp[0], g.x, g.y, {}, g.stats[0], g.options[0], g.rope, "block");
  EXPECT_EQ(u.final_loss, b.final_loss);
  EXPECT_TRUE(at::equal(u.blocks[0].weights.q, b.weights.q));
}

TEST(Probe, NormalisedLossIsTheQuantizationErrorOverTheOutputEnergy) {
  JointFixture f(1, worker::Method::kOmniQuant);
  const worker::ProbeResult p = worker::probe_block(f.c, f.fp[0], f.x, f.options[0], 0, f.rope, "probe");
  EXPECT_TRUE(p.epoch_loss.empty());  // zero epochs: initialisation and forward only
  EXPECT_NEAR(p.energy, f.y.pow(2).mean().item<double>(), 1e-6);
  EXPECT_NEAR(p.normalized, p.loss / p.energy, 1e-12);
  EXPECT_GT(p.loss, 0.0);
  // More bits, smaller error: the capacity signal orders bit widths the right way round.
  worker::CalibOptions o8 = f.options[0];
  o8.weights.bits = 8;
  o8.acts.bits = 16;
  EXPECT_LT(worker::probe_block(f.c, f.fp[0], f.x, o8, 0, f.rope, "probe8").normalized, p.normalized);
  // A short training probe reports its epochs.
  EXPECT_EQ(worker::probe_block(f.c, f.fp[0], f.x, f.options[0], 2, f.rope, "probe2").epoch_loss.size(), 2u);
}

json fp_slice(std::vector<std::int64_t> samples, int blocks, int attempt, int rank) {
  json files = json::array();
  for (int b = 1; b < blocks; ++b) {
    char name[64];
    std::snprintf(name, sizeof name, "b%04d-fp-a%06d-t%d.h5", b, attempt, rank);
    files.push_back({{"boundary", b}, {"file", name}});
  }
  return {{"type", "fp_slice_done"}, {"attempt", attempt}, {"rank", rank}, {"samples", samples}, {"files", files}};
}

json probe(int block, double loss) { return {{"type", "probe_done"}, {"attempt", 2}, {"block", block}, {"capacity_loss", loss}}; }

TEST(JobStateMrecg, SequentialProbesThenSelectionThenTheJointChain) {
  coordinator::JointSpec j;
  j.enabled = true;
  j.topk = 1;
  j.probe_samples = 2;
  coordinator::JobState st(4, true, 6, j);
  EXPECT_FALSE(st.units_ready());
  EXPECT_FALSE(st.all_units_done());
  // FP pass over the probe samples only, on every team.
  EXPECT_EQ(st.fp_missing_samples(), (std::vector<std::int64_t>{0, 1}));
  auto a = coordinator::schedule(st, {}, false, {0}, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].kind, coordinator::WorkKind::kFpPass);
  st.apply(fp_slice({0, 1}, 4, 1, 0));
  EXPECT_TRUE(st.fp_pass_complete());
  EXPECT_EQ(st.fp_pass_files(2), (std::vector<std::string>{"b0002-fp-a000001-t0.h5"}));
  EXPECT_EQ(st.probe_sample_ids(), (std::vector<std::int64_t>{0, 1}));
  a = coordinator::schedule(st, {}, false, {0}, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].kind, coordinator::WorkKind::kProbe);
  EXPECT_TRUE(coordinator::schedule(st, {}, true, {0}, 1).empty());  // probes in flight
  for (auto [b, l] : std::vector<std::pair<int, double>>{{0, 0.1}, {1, 0.3}, {2, 0.2}}) st.apply(probe(b, l));
  EXPECT_EQ(st.missing_probe_blocks(), (std::vector<int>{3}));
  EXPECT_FALSE(st.needs_selection());
  st.apply(probe(3, 0.25));
  EXPECT_TRUE(st.needs_selection());
  EXPECT_EQ(st.selection_values(), (std::vector<double>{0.1, 0.3, 0.2, 0.25}));
  EXPECT_TRUE(coordinator::schedule(st, {}, false, {0}, 1).empty());  // no units before the selection
  // The probe phase keeps the FP pass alive; nothing else exists yet.
  EXPECT_EQ(st.live_cache_files().size(), 3u);
  st.apply({{"type", "joint_selection"}, {"units", {{0, 2}, {2, 1}, {3, 1}}}});
  ASSERT_TRUE(st.units_ready());
  EXPECT_EQ(st.units(), 3);
  EXPECT_EQ(st.unit(0), (std::pair<int, int>{0, 2}));
  EXPECT_TRUE(st.live_cache_files().empty());  // sequential: the FP pass is dead after the selection
  a = coordinator::schedule(st, {}, false, {0}, 1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].unit, 0);
  // The joint unit 0 (blocks 0-1) writes boundary 2; unit 1 reads it.
  const json rank0 = {{"rank", 0}, {"files", {"b0002-fp-a000003-t0.h5", "b0002-q-a000003-t0.h5"}}};
  st.apply({{"type", "unit_done"}, {"unit", 0}, {"attempt", 3}, {"ranks", json::array({rank0})}});
  EXPECT_EQ(st.boundary_files(2, "q"), (std::vector<std::string>{"b0002-q-a000003-t0.h5"}));
  EXPECT_THROW(st.boundary_files(1, "q"), InternalError);  // inside the joint unit: never written
  EXPECT_EQ(coordinator::schedule(st, {}, false, {0}, 1)[0].unit, 1);
  EXPECT_THROW(st.apply({{"type", "joint_selection"}, {"units", {{0, 2}, {3, 1}}}}), InternalError);  // a gap
}

TEST(JobStateMrecg, IndependentKeepsOnlyUnitInputBoundariesAfterTheSelection) {
  coordinator::JointSpec j;
  j.enabled = true;
  j.topk = 1;
  j.probe_samples = 8;  // more than the samples: all of them
  coordinator::JobState st(4, false, 3, j);
  EXPECT_EQ(st.probe_sample_ids().size(), 3u);
  st.apply(fp_slice({0, 1, 2}, 4, 1, 0));
  for (int b = 0; b < 4; ++b) st.apply(probe(b, 0.1 * (b + 1)));
  EXPECT_EQ(st.live_cache_files().size(), 3u);
  st.apply({{"type", "joint_selection"}, {"units", {{0, 1}, {1, 2}, {3, 1}}}});
  EXPECT_EQ(st.live_cache_files(), (std::set<std::string>{"b0001-fp-a000001-t0.h5", "b0003-fp-a000001-t0.h5"}));
  const auto a = coordinator::schedule(st, {}, false, {0, 1, 2}, 3);
  ASSERT_EQ(a.size(), 3u);
  st.apply({{"type", "unit_done"}, {"unit", 1}, {"attempt", 3}, {"ranks", json::array()}});
  EXPECT_EQ(st.live_cache_files(), (std::set<std::string>{"b0003-fp-a000001-t0.h5"}));
}

TEST(JobStateMrecg, DataFreeCapacitiesNeedNoProbes) {
  coordinator::JointSpec j;
  j.enabled = true;
  j.topk = 1;
  j.data_dependent = false;
  j.data_free_capacity = {400, 400, 200, 400};  // block 2 at half the bits
  coordinator::JobState st(4, true, 5, j);
  EXPECT_TRUE(st.missing_probe_blocks().empty());
  EXPECT_TRUE(st.fp_pass_complete());  // sequential without probes: no FP pass
  EXPECT_TRUE(st.needs_selection());
  EXPECT_EQ(st.selection_values(), (std::vector<double>{-400, -400, -200, -400}));
}

TEST(Oscillation, DropsAndTheReportFromJournalRecords) {
  // Hand-worked: 1, 3, 2, 2, 5, 1 drops by 1 (3->2) and 4 (5->1).
  const auto [total, count] = coordinator::curve_drops({1, 3, 2, 2, 5, 1});
  EXPECT_DOUBLE_EQ(total, 5.0);
  EXPECT_EQ(count, 2);
  EXPECT_EQ(coordinator::curve_drops({1, 2, 3}).second, 0);
  std::map<int, json> probes{{0, probe(0, 0.1)}, {1, probe(1, 0.3)}, {2, probe(2, 0.2)}};
  json sel = {{"capacity", "probe"}, {"topk", 1}, {"max_blocks", 3}, {"differentials", {0.2, -0.1}},
              {"selected", {0}}, {"dropped", json::array()}, {"units", {{0, 2}, {2, 1}}}};
  auto bl = [](double v) { return json{{"mse", v}, {"energy", 1.0}, {"normalized", v}}; };
  std::map<int, json> units{
      {0, {{"report", {{"blocks", {0, 1}}, {"initial_loss", 0.5}, {"final_loss", 0.4}, {"block_losses", {bl(0.05), bl(0.4)}}}}}},
      {1, {{"report", {{"blocks", {2}}, {"initial_loss", 0.3}, {"final_loss", 0.25}, {"block_losses", {bl(0.25)}}}}}}};
  const json r = coordinator::oscillation_report(probes, sel, units);
  EXPECT_EQ(r["final"], (json{0.05, 0.4, 0.25}));
  EXPECT_EQ(r["blocks"][1]["unit"], 0);
  EXPECT_EQ(r["summary"]["final_drops"], 1);
  EXPECT_NEAR(r["summary"]["final_drop_total"].get<double>(), 0.15, 1e-12);
  EXPECT_EQ(r["summary"]["probe_drops"], 1);
  EXPECT_EQ(r["selection"]["units"], sel["units"]);
  const std::string svg = coordinator::oscillation_svg(r, "t");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("fill=\"#f2d7a6\""), std::string::npos);  // the joint unit is shaded
  EXPECT_EQ(svg.find("nan"), std::string::npos);
}

}  // namespace
}  // namespace qforge
