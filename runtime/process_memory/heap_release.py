"""Handing freed heap memory back to the system (glibc), so RSS follows what the runtime really holds.

glibc keeps freed blocks in its arenas (one per thread that allocated) instead of returning them,
so a process's RSS stays near its highest point. Two measured remedies, both no-ops off glibc:

- ``fixed_mmap_threshold``: glibc serves blocks over M_MMAP_THRESHOLD with their own mmap, returned
  on free, but raises that threshold each time such a block is freed, so ONNX Runtime's activation
  buffers (MBs, freed after every run) soon come from the arenas and stay resident. Fixing it at
  128 KiB (mallopt, which also stops the raising): peak RSS 948 MB instead of 1457 MB on the default
  bundle at 2448 x 2448 (MALLOC_MMAP_THRESHOLD_ has the same effect from the environment).
- ``release_free_heap`` (malloc_trim): after loading the sessions 385 MB is resident, of which it
  gives back 172 MB (the parsed ONNX models, ONNX Runtime's load-time copies). The runtime calls it
  where a large working set has just been freed: after loading, after the global branch, after each
  fused batch.
"""

from __future__ import annotations

import ctypes
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024


@functools.lru_cache(maxsize=1)
def _glibc():
    # the symbols the process already has (libc is linked into the interpreter), not a library search:
    # ctypes.util.find_library runs /sbin/ldconfig, a new process on every start
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS), or Windows
        return None
    return libc


def release_free_heap() -> bool:
    """Return free heap pages to the system; True when glibc's malloc_trim ran."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.lru_cache(maxsize=1)
def fixed_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve blocks over ``threshold`` bytes by mmap for the rest of the process (once); True when set."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1)
