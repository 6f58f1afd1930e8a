// Which calibration samples each rank of a data-parallel team holds. Pure.
//
// Optimiser step s uses the global batch of samples [s·B, (s+1)·B) whatever the team size, so runs
// with the same B on 1 or K ranks follow the same optimisation (up to summation order). Team rank r
// takes a contiguous piece of every step's batch (the first B mod K ranks one sample more) and the
// same share of the samples that fill no whole step (used for statistics and losses, not steps).
#pragma once

#include <cstdint>
#include <vector>

namespace qforge::partition {

// Samples per optimiser step held by team rank r.
std::int64_t local_batch(std::int64_t batch, int team_size, int r);
// Global sample ids held by team rank r, in the order the rank stores them: step by step, then its
// leftover share. Over all r the lists partition [0, samples).
std::vector<std::int64_t> team_rows(std::int64_t samples, std::int64_t batch, int team_size, int r);
// Contiguous near-equal split of `ids` into `parts` (for work without optimiser steps).
std::vector<std::int64_t> even_share(const std::vector<std::int64_t>& ids, int parts, int r);

}  // namespace qforge::partition
