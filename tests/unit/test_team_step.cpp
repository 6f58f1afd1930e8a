// One optimiser step is the same computation on a team of 1 and a team of 3: the loss and every
// gradient of the transform/clipping parameters after the team all-reduce agree within the bound that
// fp32 (fp64 for the loss) summation of the same per-sample terms in another order allows (derived in
// tests/support/one_step.h). Ranks are threads of this process (an InProcessNetwork, common/transport.h:
// the fake ranks of the in-process engine tests too); the same check runs through `mpirun -np 3` in
// tests/mpi. The shares are uneven (5 samples on 3 ranks: 2 + 2 + 1), so
// averaging per rank instead of per sample is visible, and so are a dropped or double-counted share:
// the last test proves the comparison catches each of them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <thread>

#include "tests/support/one_step.h"
#include "worker/team_reducer.h"

namespace qforge {
namespace {

using test::OneStepProblem;
using test::StepOutcome;

using test::OneComputeThread;

// Wraps a member of an in-process team and corrupts what it contributes, to show the check can fail.
class CorruptingReducer : public worker::TeamReducer {
 public:
  CorruptingReducer(worker::TeamReducer& inner, double contribution_scale, double result_scale)
      : inner_(inner), contribution_(contribution_scale), result_(result_scale) {}
  void sum(std::vector<at::Tensor>& t) override {
    for (auto& x : t) x.mul_(contribution_);
    inner_.sum(t);
    for (auto& x : t) x.mul_(result_);
  }
  void max(std::vector<at::Tensor>& t) override { inner_.max(t); }

 private:
  worker::TeamReducer& inner_;
  double contribution_, result_;
};

// Runs one step on every rank of an in-process team of `k`; returns each rank's outcome. `wrap`
// (optional) may replace a rank's reducer.
std::vector<StepOutcome> team_step(const OneStepProblem& p, int k,
                                   const std::function<std::unique_ptr<worker::TeamReducer>(int, worker::TeamReducer&)>& wrap = {}) {
  InProcessNetwork team(k);
  std::vector<std::unique_ptr<worker::PackedTeamReducer>> members;
  std::vector<std::unique_ptr<worker::TeamReducer>> wrapped;
  for (int r = 0; r < k; ++r) {
    members.push_back(std::make_unique<worker::TransportTeamReducer>(team.endpoint(r), std::chrono::seconds(60),
                                                                     Transport::Poll{}, "one step"));
    wrapped.push_back(wrap ? wrap(r, *members.back()) : nullptr);
  }
  std::vector<StepOutcome> out(static_cast<std::size_t>(k));
  std::vector<std::thread> threads;
  for (int r = 0; r < k; ++r) {
    threads.emplace_back([&, r] {
      at::set_num_threads(1);
      auto* reducer = wrapped[r] ? wrapped[r].get() : static_cast<worker::TeamReducer*>(members[r].get());
      out[static_cast<std::size_t>(r)] = test::one_step(p, k, r, reducer);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

TEST(TeamStep, ThreeRanksEqualOneRankWithinTheSummationOrderBound) {
  OneComputeThread one;
  OneStepProblem p;
  const StepOutcome single = test::one_step(p, 1, 0, nullptr);
  const auto shares = test::sample_shares(p);
  const auto team = team_step(p, 3);
  // Every rank of the team ends with the same reduced numbers, bit for bit.
  for (std::size_t r = 1; r < team.size(); ++r) {
    EXPECT_EQ(team[r].loss, team[0].loss);
    for (std::size_t i = 0; i < team[0].gradients.size(); ++i) {
      EXPECT_TRUE(at::equal(team[r].gradients[i], team[0].gradients[i])) << "rank " << r << " parameter " << i;
    }
  }
  EXPECT_EQ(test::compare_steps(team[0], single, shares), "");
  // The shares really are the parts of the whole: not all zero, and the whole is not one share.
  ASSERT_FALSE(single.gradients.empty());
  double total = 0;
  for (const auto& g : single.gradients) total += g.abs().sum().item<double>();
  EXPECT_GT(total, 0.0);
  EXPECT_GT(single.loss, shares[0].loss);
}

TEST(TeamStep, ATeamOfOneWithMicroBatchesEqualsItsSamplesSummed) {
  OneComputeThread one;
  OneStepProblem p;
  const auto shares = test::sample_shares(p);
  // Adding the shares in sample order is exactly what autograd's accumulation over micro-batches does.
  StepOutcome summed = shares[0];
  for (std::size_t k = 1; k < shares.size(); ++k) {
    summed.loss += shares[k].loss;
    for (std::size_t i = 0; i < summed.gradients.size(); ++i) summed.gradients[i] = summed.gradients[i] + shares[k].gradients[i];
  }
  const StepOutcome single = test::one_step(p, 1, 0, nullptr);
  EXPECT_EQ(single.loss, summed.loss);
  for (std::size_t i = 0; i < single.gradients.size(); ++i) EXPECT_TRUE(at::equal(single.gradients[i], summed.gradients[i])) << i;
}

TEST(TeamStep, TheComparisonCatchesADroppedADoubledOrARankAveragedShare) {
  OneComputeThread one;
  OneStepProblem p;
  const StepOutcome single = test::one_step(p, 1, 0, nullptr);
  const auto shares = test::sample_shares(p);
  auto corrupt = [](int bad_rank, double contribution, double result) {
    return [=](int r, worker::TeamReducer& inner) -> std::unique_ptr<worker::TeamReducer> {
      if (bad_rank >= 0 && r != bad_rank) return std::make_unique<CorruptingReducer>(inner, 1.0, result);
      return std::make_unique<CorruptingReducer>(inner, contribution, result);
    };
  };
  // Rank 2's share dropped; rank 0's counted twice.
  EXPECT_NE(test::compare_steps(team_step(p, 3, corrupt(2, 0.0, 1.0))[0], single, shares), "");
  EXPECT_NE(test::compare_steps(team_step(p, 3, corrupt(0, 2.0, 1.0))[0], single, shares), "");
  // Averaged by rank: each rank normalises by its own sample count and the team takes the mean of
  // ranks. Ranks 0 and 1 hold 2 samples, rank 2 holds 1 (their sums scaled by 5/2, 5/2, 5/1, then /3).
  auto by_rank = [](int r, worker::TeamReducer& inner) -> std::unique_ptr<worker::TeamReducer> {
    return std::make_unique<CorruptingReducer>(inner, r < 2 ? 2.5 : 5.0, 1.0 / 3.0);
  };
  EXPECT_NE(test::compare_steps(team_step(p, 3, by_rank)[0], single, shares), "");
}

}  // namespace
}  // namespace qforge
