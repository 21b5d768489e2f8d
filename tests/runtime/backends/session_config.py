"""Reading back the config entries a backend's ONNX Runtime session was created with, and whether a scheduler's
sessions are on the shared arena."""

from __future__ import annotations

from typing import Iterable

from runtime.algorithm.scheduler import Scheduler
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.backends.shared_arena import SHARED_ARENA_ENTRIES


def session_config_entries(backend: OnnxRuntimeBackend, keys: Iterable[str]) -> dict[str, str]:
    """The entries among ``keys`` that the backend's session was given, with their values."""
    options = backend.session.get_session_options()
    found = {}
    for key in keys:
        try:
            found[key] = options.get_session_config_entry(key)
        except Exception:  # noqa: BLE001  ONNX Runtime raises for a key that was never set
            pass
    return found


def shared_arena_states(scheduler: Scheduler) -> list[tuple[bool, bool]]:
    """For each session the scheduler opened (the joined one or local and fusion, then the global stages): whether its
    options ask for the shared arena, and whether the session was given the arena's config entries."""
    backends = [scheduler.patch_backend, scheduler.local_backend, scheduler.fusion_backend, *(s.backend for s in scheduler.global_stages)]
    return [
        (b.options.shared_arena, session_config_entries(b, SHARED_ARENA_ENTRIES) == SHARED_ARENA_ENTRIES)
        for b in backends
        if b is not None and b.is_active
    ]
