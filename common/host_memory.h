// How this process's heap treats large host buffers.
//
// glibc serves every allocation above 32 MiB with a fresh mmap and unmaps it on free, so each large tensor
// of a step (a 7B-shaped block's weights, their fake-quantized copies and gradients: 45-180 MB each) costs
// its size in page faults and zero-filling every time it is allocated: on the 2-core reference machine a
// fused fake-quant of a [4096, 4096] weight took 44 ms that way and 10 ms from reused memory
// (bench_fake_quant). Calibration and eval allocate tensors of the same few shapes over and over, so
// keeping freed memory for reuse is what they want; the cost is that the resident set does not shrink
// after a peak (peak RSS, what a job's memory request must cover, is unchanged).
#pragma once

namespace qforge {

// Serve large allocations from the heap and never trim it (mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD -1).
// Call once at the start of main, before other threads allocate. No effect outside glibc.
void keep_freed_host_memory();

}  // namespace qforge
