// Handing freed heap back to the system (glibc's malloc_trim), so RSS follows what the runtime really holds:
// called where a large working set has just been freed (after loading, after the global branch, after each
// fused batch), as the Python runtime does (runtime/process_memory/heap_release.py). A no-op off glibc.
#pragma once
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace glsnet {

inline void release_free_heap() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace glsnet
