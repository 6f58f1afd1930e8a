// Run under mpirun by tests/mpi/test_team_step_mpi.cpp: every rank takes its share of the one-step
// problem (tests/support/one_step.h) with the engine's MPI team reducer, and rank 0 writes the reduced
// loss and gradients to the safetensors file named by argv[1].
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include "common/mpi_comm.h"
#include "worker/threads.h"
#include "storage/safetensors.h"
#include "tests/support/one_step.h"
#include "worker/team_reducer.h"

int main(int argc, char** argv) {
  qforge::MpiSession session(&argc, &argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: one_step_probe OUT.safetensors\n");
    return 2;
  }
  try {
    qforge::worker::configure_threads(1);  // the per-sample work must equal the in-process team of one's
    qforge::MpiComm team = qforge::MpiComm::duplicate(MPI_COMM_WORLD);
    qforge::worker::TransportTeamReducer reducer(team, std::chrono::seconds(120), {}, "one-step probe");
    qforge::test::OneStepProblem p;
    const auto out = qforge::test::one_step(p, team.size(), team.rank(), &reducer);
    if (team.rank() == 0) {
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (std::size_t i = 0; i < out.gradients.size(); ++i) {
        if (out.gradients[i].defined()) tensors.emplace_back("grad." + std::to_string(i), out.gradients[i]);
      }
      char loss[32];  // %.17g round-trips a double exactly (qforge's safetensors holds no F64)
      std::snprintf(loss, sizeof loss, "%.17g", out.loss);
      qforge::storage::write_safetensors(argv[1], tensors, {{"ranks", std::to_string(team.size())}, {"loss", loss}});
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "one_step_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}
