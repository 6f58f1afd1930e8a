// The plan: the work units of a quantization job with their cost and memory estimates, built from
// the model index alone. Pure (no I/O, no MPI, no LibTorch), so `--dry-run` can print it for a model
// that does not fit on this machine, and the job directory keeps it as plan.json.
//
// A work unit is a run of adjacent decoder blocks (first_block, num_blocks): one block, or several for
// an MRECG joint unit (partition/joint_selection.h); every estimate below sums over a unit's blocks. The globals (embeddings, final norm, lm_head) belong to no unit: the coordinator writes them
// at assembly.
//
// Data layout the estimates assume (worker::DataSplit): a team of K ranks splits every optimiser
// step's global batch of B sequences, rank r holding B/K (+1 for the first B%K ranks) of them; the
// N % B samples that fill no whole step are split the same way. So rank 0 holds the most rows:
//   rows_0 = ceil(B/K) * floor(N/B) + ceil((N%B)/K)
//
// Memory model, per rank, per unit (an honest UPPER estimate, used as a test bound; not a tight one).
// T = seqlen, H = hidden_size, I = intermediate_size, P = the unit's parameters, all values fp32:
//   weights     = 4*P * 2                      FP weights + the folded/quantized result copy
//   trainable   = Ptrain * 4 * 4               parameter, gradient, two AdamW moments (training only)
//   activations = rows_0 * T * H * 4 * S       S streams held at once: x_fp, x_q, y_fp, x_q_next (4),
//                                              +1 (y_fp on x_q) with aug_loss
//   step        = n * b * T * (16H + 4I + 2*heads*T) * 4 * 3  +  (training ? 4*P*3 : 0)   n = blocks of the unit
//                 b = ceil(min(B, N)/K) sequences per step; per token a block's forward keeps about
//                 16 H-wide and 4 I-wide intermediates and the heads x T attention probabilities
//                 (scores and softmax), x3 for forward + backward; training also holds the
//                 transformed and fake-quantized weights and their gradients in the graph.
// Ptrain per block (upper: counts every optional transform of the method family):
//   diagonal LET (OmniQuant):   4H (two norm scales + shifts) + q_dim + 2*kv_dim (v/o and q/k transforms)
//   affine_matrices (AffineQuant): 2H^2 + 2*kv_heads*head_dim^2 (v/o and q/k matrices) + 2H + kv_dim
//   plus LWC: 2 values per output row per group over the seven linears (group_size 0 = per channel).
// Without data (nsamples = 0: RTN) activations and step are 0.
//
// Cost model (double FLOPs; attention counted without the causal halving):
//   forward_flops = 2*P*tokens + num_blocks * 4 * N * T^2 * q_dim        tokens = N*T, all samples
//   train_flops   = training ? epochs * 3 * forward_flops : 0             (backward = 2x forward)
//
// Cache disk (HDF5 activation cache in the job dir), V = N*T*H*cache_bytes_per_value per stream:
//   sequential:  2 boundaries x 2 streams (fp, q) = 4V         (the unit's input and output boundary),
//                or, when larger, the MRECG probes' FP pass: (blocks - 1) * V * probe_samples / N
//   independent: the FP stream at every block boundary = (blocks - 1) * V (after an MRECG selection
//                the boundaries inside joint units are deleted)
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "partition/model_index.h"

namespace qforge::partition {

enum class EngineMode { kSequential, kIndependent };
// "sequential" | "independent"; InputError("--mode") otherwise.
EngineMode parse_engine_mode(const std::string& name);
const char* engine_mode_name(EngineMode mode);

struct PlanOptions {
  EngineMode mode = EngineMode::kSequential;
  int ranks = 1;                 // MPI ranks
  int team_size = 0;             // ranks per team; 0 = all ranks in sequential, 1 in independent
  std::int64_t nsamples = 0;     // calibration sequences (0: no data, e.g. RTN)
  std::int64_t seqlen = 0;
  std::int64_t batch_size = 1;   // global batch (sequences per optimiser step)
  int epochs = 0;                // 0 = no training (RTN or forward-only)
  bool trains = false;           // method has learnable transforms/clipping
  bool aug_loss = false;
  int cache_bytes_per_value = 4; // 4 fp32, 2 bf16
  bool affine_matrices = false;  // AffineQuant: full HxH and head_dim x head_dim matrices are trainable
  std::int64_t group_size = 0;   // weight quantization group (0 = per channel): sizes the LWC parameters
  std::int64_t probe_samples = 0; // MRECG probes in sequential mode: samples the FP pass caches at every boundary

  // Training happens only when the method has something to train and there are epochs to run.
  bool training() const { return trains && epochs > 0; }
};

struct WorkUnit {
  int id = 0;
  int first_block = 0;
  int num_blocks = 1;
  std::vector<std::string> tensors;  // checkpoint tensor names this unit reads and rewrites
  std::int64_t parameters = 0;
  std::uint64_t weight_bytes = 0;    // as stored in the checkpoint
  double train_flops = 0;            // whole unit, all epochs (see the cost model above)
  double forward_flops = 0;          // one forward over all samples
  std::uint64_t peak_bytes = 0;      // this unit's per-rank memory estimate (the model above)
};

struct Plan {
  PlanOptions options;
  int teams = 1;       // resolved
  int team_size = 1;   // resolved
  std::vector<WorkUnit> units;
  std::vector<std::string> global_tensors;  // embeddings, final norm, lm_head: written by the coordinator at assembly
  // Estimates
  std::vector<std::int64_t> samples_per_team_rank;  // rows each rank of a team holds, rank 0 (the most) first
  std::uint64_t rank_peak_bytes = 0;                // max over units of WorkUnit::peak_bytes
  std::uint64_t cache_disk_bytes = 0;               // peak bytes of the HDF5 cache in the job dir

  // Round trip; plan.json in the job dir. from_json throws InputError("plan.json", field, ...) on a
  // malformed or other-version document.
  nlohmann::json to_json() const;
  static Plan from_json(const nlohmann::json& j);
};

// Resolves team_size and checks the options, throwing InputError naming the flag ("--team-size",
// "--batch-size", ...) on impossible ones: ranks < 1; team_size not dividing ranks; sequential mode
// with a team smaller than all ranks (there is one chain of blocks, the other ranks would idle);
// with data, a batch smaller than the team (a rank with no rows); when training, a batch larger
// than nsamples. Returns the resolved team size.
int resolve_team_size(const PlanOptions& options);

// One unit per decoder block, in block order, with the estimates above. Checks coverage before returning.
Plan make_block_plan(const ModelIndex& index, const PlanOptions& options);
// The same for given units (first block, number of blocks), e.g. MRECG joint units.
Plan make_plan(const ModelIndex& index, const PlanOptions& options, const std::vector<std::pair<int, int>>& units);

// Every tensor of the index (blocks and globals) is covered exactly once by units ∪ global_tensors,
// and the units' block ranges tile 0..num_blocks-1 in order; throws InternalError listing the
// missing / duplicated / unknown names (or the bad range) otherwise.
void check_plan_coverage(const Plan& plan, const ModelIndex& index);

// Human-readable dry-run text: one line per unit (id, blocks, params, MiB, GFLOP), resolved teams,
// samples per rank, estimated peak memory per rank, cache disk, and "coverage: N tensors, each exactly
// once" (or the duplicated names, for a plan that was not checked).
std::string format_plan_report(const Plan& plan);

}  // namespace qforge::partition
