"""One ONNX Runtime arena for every CPU session of the process, so each run reuses the pages earlier runs touched.

With no arena (the default, for bounded memory), every session run maps its activations afresh and hands them
back afterwards, and the kernel faults in and zeroes every page again: on the paper-size bundle, 5.6 GB per
2448 x 2448 image. The arena registered here allocates one region on first use (SHARED_ARENA_REGION_BYTES of
address space: only the pages a run touches become resident). Sessions that opt in allocate from it tensor by
tensor, with ONNX Runtime's memory pattern off: the pattern's one block per run would be placed beside the first
run's tensors instead of over them. Every run then lays its tensors out as the runs before it did, so the
resident pages stop at the most any graph needs at once, shared by all the graphs.

ONNX Runtime never shrinks an arena's first region, so the pages stay resident until the process ends: a
process that segments its images and exits (``glsnet run``) loses nothing, while a long-lived service holds
them between requests.
"""

from __future__ import annotations

import logging
import threading

# Address space reserved for the shared arena's one region; a request that does not fit in it adds a region.
SHARED_ARENA_REGION_BYTES = 1 << 30
# Session config entries that make a session allocate from the environment's arena, its weights excepted
# (they live as long as the session, and would pin parts of the region).
SHARED_ARENA_ENTRIES = {"session.use_env_allocators": "1", "session.use_device_allocator_for_initializers": "1"}

_lock = threading.Lock()
_registered: bool | None = None  # None: not tried yet; False: ONNX Runtime refused it

log = logging.getLogger(__name__)


def register_shared_arena(ort) -> bool:
    """Register the process's shared CPU arena in ONNX Runtime's environment, once (``ort``: the module).

    False when ONNX Runtime refused it (a host process registered a CPU allocator of its own first, say): the
    sessions then allocate as they would without it.
    """
    global _registered
    with _lock:
        if _registered is None:
            config = ort.OrtArenaCfg(
                {"arena_extend_strategy": 0, "initial_chunk_size_bytes": SHARED_ARENA_REGION_BYTES, "max_dead_bytes_per_chunk": 1 << 20}
            )
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            try:
                ort.create_and_register_allocator(memory, config)
                _registered = True
            except Exception as exc:  # noqa: BLE001  ONNX Runtime raises its own Fail type
                log.warning("activations are mapped afresh for every run: ONNX Runtime refused the shared arena (%s)", exc)
                _registered = False
        return _registered
