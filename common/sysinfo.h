// Process and machine facts for HELLO messages, the journal and benchmarks (Linux /proc).
#pragma once

#include <cstdint>
#include <string>

namespace qforge {

std::uint64_t current_rss_bytes();  // resident set now
std::uint64_t peak_rss_bytes();     // high-water mark of the resident set (getrusage)
std::uint64_t total_memory_bytes(); // physical memory of the machine
std::string host_name();

}  // namespace qforge
