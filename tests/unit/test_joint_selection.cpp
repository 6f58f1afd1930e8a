// MRECG joint-unit selection: differentials, top-k, merges under the size cap, ties, k = 0 and a k
// larger than possible. Hand-worked cases.
#include <gtest/gtest.h>

#include "partition/joint_selection.h"

namespace qforge::partition {
namespace {

using Units = std::vector<std::pair<int, int>>;

TEST(JointSelection, TopKMergesTheLargestCapacityJumps) {
  // D = {+0.1, -0.2, +0.5, +0.05, +0.3}: the top 2 are boundaries 2 (blocks 2-3) and 4 (blocks 4-5).
  const std::vector<double> cap = {0.1, 0.2, 0.0, 0.5, 0.55, 0.85};
  const auto s = select_joint_units(cap, 2, 3);
  ASSERT_EQ(s.differentials.size(), 5u);
  EXPECT_NEAR(s.differentials[2], 0.5, 1e-12);
  EXPECT_EQ(s.selected, (std::vector<int>{2, 4}));
  EXPECT_EQ(s.units, (Units{{0, 1}, {1, 1}, {2, 2}, {4, 2}}));
}

TEST(JointSelection, ZeroKIsTheBlockPlanAndLargeKTakesEveryPositiveJump) {
  const std::vector<double> cap = {0.3, 0.2, 0.4, 0.1};
  EXPECT_EQ(select_joint_units(cap, 0, 3).units, (Units{{0, 1}, {1, 1}, {2, 1}, {3, 1}}));
  const auto all = select_joint_units(cap, 99, 3);  // only D_1 = +0.2 is positive
  EXPECT_EQ(all.selected, (std::vector<int>{1}));
  EXPECT_EQ(all.units, (Units{{0, 1}, {1, 2}, {3, 1}}));
}

TEST(JointSelection, TheCapDropsTheLowerMergeThatWouldExceedIt) {
  // Rising capacities (binary fractions, so the differences are exact): D = {1/8, 3/8, 1/4, 1/8}.
  const std::vector<double> cap = {0.0, 0.125, 0.5, 0.75, 0.875};
  const auto s = select_joint_units(cap, 3, 2);
  // Order: D_1, D_2, then D_3 and D_0 tie at 1/8 -> the larger ℓ_{i+1} wins: D_3 (ℓ_4 = 7/8).
  EXPECT_EQ(s.selected, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(s.dropped, (std::vector<int>{2}));  // {1,2} + 3 would be 3 blocks > 2
  EXPECT_EQ(s.units, (Units{{0, 1}, {1, 2}, {3, 2}}));
  // With a cap of 3 the chain 1-2-3 forms; then D_3 would make 4 blocks and is dropped.
  const auto t = select_joint_units(cap, 3, 3);
  EXPECT_EQ(t.dropped, (std::vector<int>{3}));
  EXPECT_EQ(t.units, (Units{{0, 1}, {1, 3}, {4, 1}}));
}

TEST(JointSelection, EqualJumpsBreakTiesDeterministically) {
  // Equal D and equal ℓ_{i+1} at two boundaries: the lower boundary wins.
  const std::vector<double> cap = {0.0, 1.0, 0.0, 1.0};
  const auto s = select_joint_units(cap, 1, 3);  // D_0 = D_2 = 1, ℓ_1 = ℓ_3 = 1
  EXPECT_EQ(s.selected, (std::vector<int>{0}));
  EXPECT_EQ(s.units, (Units{{0, 2}, {2, 1}, {3, 1}}));
  // A uniform model's data-free capacity (equal everywhere) has no positive D: the block plan.
  EXPECT_EQ(select_joint_units(std::vector<double>(32, 2.0), 4, 3).units.size(), 32u);
}

TEST(JointSelection, DefaultKFollowsTheBlockCount) {
  EXPECT_EQ(default_joint_topk(6), 1);
  EXPECT_EQ(default_joint_topk(32), 4);
  EXPECT_EQ(default_joint_topk(80), 10);
}

}  // namespace
}  // namespace qforge::partition
