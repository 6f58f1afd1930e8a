// Pins the compute thread count of LibTorch (intra-op, OpenMP, MKL) and any OpenBLAS in this process.
//
// Results of BLAS reductions depend on the thread count, so a resumed run must use the same count
// as the first one; and ranks sharing a machine must not each start one thread per core.
#pragma once

namespace qforge::worker {

// threads <= 0 means: QFORGE_THREADS from the environment if set, else the number of cores.
// Returns the count that was applied.
int configure_threads(int threads);

}  // namespace qforge::worker
