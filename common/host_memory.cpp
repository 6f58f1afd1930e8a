#include "common/host_memory.h"

#if defined(__GLIBC__)
#include <malloc.h>

#include <climits>
#endif

namespace qforge {

void keep_freed_host_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);             // large blocks come from the heap (brk), where freed space is reused
  mallopt(M_TRIM_THRESHOLD, INT_MAX);  // and the heap's top is not handed back after every large free
  mallopt(M_TOP_PAD, 64 << 20);       // grow it in 64 MiB steps
#endif
}

}  // namespace qforge
