// The one-step property of tests/unit/test_team_step.cpp through the engine's MPI reducer: a team of
// three processes (`mpirun -np 3`, uneven shares 2 + 2 + 1) ends one optimiser step with the loss and
// gradients of a team of one, within the bound of fp32 summation in another order.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "storage/safetensors.h"
#include "tests/support/one_step.h"
#include "tests/support/run_command.h"
#include "tests/support/test_data.h"

namespace qforge {
namespace {

TEST(TeamStepMpi, ThreeProcessesEqualOneRankWithinTheSummationOrderBound) {
  const auto dir = test::make_temp_dir("team-step-mpi");
  const auto file = dir / "np3.safetensors";
  auto r = test::run_command(test::mpirun_prefix(3) + test::shell_quote(QFORGE_ONE_STEP_PROBE) + " " +
                             test::shell_quote(file.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  storage::SafetensorsFile f(file);
  EXPECT_EQ(f.metadata().at("ranks"), "3");

  test::OneComputeThread one;  // as the probe's ranks (configure_threads(1))
  test::OneStepProblem p;
  const test::StepOutcome single = test::one_step(p, 1, 0, nullptr);
  const auto shares = test::sample_shares(p);

  test::StepOutcome team;
  team.loss = std::stod(f.metadata().at("loss"));
  for (std::size_t i = 0; i < single.gradients.size(); ++i) {
    const std::string name = "grad." + std::to_string(i);
    team.gradients.push_back(f.find(name) ? f.load(name) : at::Tensor());
  }
  EXPECT_EQ(test::compare_steps(team, single, shares), "");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qforge
