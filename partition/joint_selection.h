// MRECG joint-unit selection (algorithms.md §4.6, "MRECG-LLM"): from a per-block module capacity
// (the probe's normalised reconstruction loss ℓ_i, or a data-free parameters × bits figure), the
// differentials D_i = ℓ_{i+1} − ℓ_i between adjacent blocks; the top-k positive ones are selected and
// their block pairs merged into joint units, in descending D order, dropping a merge that would make a
// unit longer than the cap. Pure and deterministic: ties go to the larger ℓ_{i+1}, then the lower i.
// This is the policy only; the engine probes (worker/calibrator.h probe_block), journals the choice
// (coordinator: joint_selection) and trains each joint unit as one (worker/calibrator.h UnitTrainer).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace qforge::partition {

struct JointSelection {
  std::vector<double> differentials;         // D_i for i = 0..L-2
  std::vector<int> selected;                 // boundaries i (pair i, i+1) chosen, in selection order
  std::vector<int> dropped;                  // selected boundaries whose merge would exceed the cap
  std::vector<std::pair<int, int>> units;    // (first block, number of blocks), covering 0..L-1 in order
};

// Default k: max(1, round(L / 8)).
int default_joint_topk(int blocks);

// `capacity` has one value per block. topk = 0 gives one unit per block; a topk larger than the number
// of positive differentials takes them all. max_blocks >= 1.
JointSelection select_joint_units(const std::vector<double>& capacity, int topk, int max_blocks);

// Dry-run / status text: per block the value ranked (`kind` says which: the probe's normalised loss
// or the data-free capacity), the differentials, what was selected or dropped, and the units.
std::string format_joint_report(const std::vector<double>& values, const JointSelection& selection, const std::string& kind,
                                int topk, int max_blocks);

}  // namespace qforge::partition
