#include "common/host_memory.h"

#include <cstdlib>  // defines __GLIBC__ on glibc systems (the test below needs a libc header first)

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qforge {

void keep_freed_host_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);             // large blocks come from the heap (brk), where freed space is reused
  mallopt(M_TRIM_THRESHOLD, -1);      // and its top is never handed back (mallopt(3): -1 disables trimming)
  mallopt(M_TOP_PAD, 64 << 20);       // grow it in 64 MiB steps
#endif
}

}  // namespace qforge
