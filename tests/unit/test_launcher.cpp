// Launcher detection from the environment: mpirun, srun, alone, and mpirun inside a Slurm allocation.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "common/error.h"
#include "common/launcher.h"

namespace qforge {
namespace {

LauncherInfo detect(const std::map<std::string, std::string>& vars) {
  return detect_launcher([&vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(Launcher, AloneWhenNoLauncherVariables) {
  const auto i = detect({{"HOME", "/root"}});
  EXPECT_EQ(i.kind, LauncherKind::kAlone);
  EXPECT_EQ(i.size, 1);
  EXPECT_EQ(i.local_rank, 0);
}

TEST(Launcher, MpirunGivesOpenMpiRanks) {
  const auto i = detect({{"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                         {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(i.kind, LauncherKind::kMpirun);
  EXPECT_EQ(i.rank, 3);
  EXPECT_EQ(i.size, 4);
  EXPECT_EQ(i.local_rank, 1);
  EXPECT_EQ(i.local_size, 2);
  EXPECT_TRUE(i.slurm_job_id.empty());
}

TEST(Launcher, SrunStepGivesSlurmRanks) {
  const auto i = detect({{"SLURM_JOB_ID", "77"}, {"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "5"}, {"SLURM_NPROCS", "8"},
                         {"SLURM_LOCALID", "1"}, {"SLURM_TASKS_PER_NODE", "4(x2)"}, {"PMIX_RANK", "5"}});
  EXPECT_EQ(i.kind, LauncherKind::kSrun);
  EXPECT_EQ(i.rank, 5);
  EXPECT_EQ(i.size, 8);
  EXPECT_EQ(i.local_rank, 1);
  EXPECT_EQ(i.local_size, 4);
  EXPECT_EQ(i.slurm_job_id, "77");
}

TEST(Launcher, MpirunInsideASlurmAllocationIsMpirun) {
  // A batch script's environment (its own step 'batch') plus mpirun's variables: mpirun wins.
  const auto i = detect({{"SLURM_JOB_ID", "77"}, {"SLURM_STEP_ID", "4294967291"}, {"SLURM_PROCID", "0"},
                         {"SLURM_NPROCS", "1"}, {"SLURM_LOCALID", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                         {"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  EXPECT_EQ(i.kind, LauncherKind::kMpirun);
  EXPECT_EQ(i.rank, 1);
  EXPECT_EQ(i.size, 2);
  EXPECT_EQ(i.slurm_job_id, "77");
}

TEST(Launcher, BatchScriptOutsideAStepIsAlone) {
  EXPECT_EQ(detect({{"SLURM_JOB_ID", "77"}, {"SLURM_NTASKS", "2"}}).kind, LauncherKind::kAlone);
}

TEST(Launcher, DevicesAndBadValues) {
  EXPECT_EQ(device_for_local_rank(3, 2), 1);
  EXPECT_EQ(device_for_local_rank(0, 0), -1);
  EXPECT_THROW(detect({{"OMPI_COMM_WORLD_SIZE", "four"}}), InputError);
  EXPECT_STREQ(launcher_name(LauncherKind::kSrun), "srun");
}

}  // namespace
}  // namespace qforge
