"""The pipeline creates the local graph's session beside the others on the CPU, one at a time on GPU providers."""

from __future__ import annotations

import threading

import pytest

from runtime.engines.onnxruntime_pipeline import activate_side_by_side


class _Recorder:
    """Stands in for a backend: records the thread its session was created on, optionally waits or fails."""

    def __init__(self, name: str, log: list, barrier: threading.Barrier | None = None, fail: bool = False) -> None:
        self.name, self.log, self.barrier, self.fail = name, log, barrier, fail

    def activate(self) -> "_Recorder":
        if self.barrier is not None:
            self.barrier.wait(timeout=10)  # both threads must be inside activate at once, or this times out
        self.log.append((self.name, threading.current_thread().name))
        if self.fail:
            raise RuntimeError(f"{self.name}: cannot load")
        return self


def test_on_the_cpu_the_first_session_is_created_while_the_others_are():
    log: list = []
    meet = threading.Barrier(2)
    activate_side_by_side(_Recorder("local", log, meet), (_Recorder("stage0", log, meet), _Recorder("fusion", log)), parallel=True)
    threads = dict(log)
    assert set(threads) == {"local", "stage0", "fusion"}
    assert threads["local"].startswith("glsnet-session")
    assert threads["stage0"] == threads["fusion"] == threading.current_thread().name


def test_gpu_providers_create_the_sessions_one_at_a_time_in_order():
    log: list = []
    activate_side_by_side(_Recorder("local", log), (_Recorder("stage0", log), _Recorder("fusion", log)), parallel=False)
    assert log == [(name, threading.current_thread().name) for name in ("local", "stage0", "fusion")]


@pytest.mark.parametrize("failing", ["local", "fusion"])
def test_a_session_that_fails_is_reported_after_the_other_thread_is_done(failing):
    log: list = []
    first = _Recorder("local", log, fail=failing == "local")
    rest = (_Recorder("stage0", log), _Recorder("fusion", log, fail=failing == "fusion"))
    with pytest.raises(RuntimeError, match=f"{failing}: cannot load"):
        activate_side_by_side(first, rest, parallel=True)
    assert {name for name, _ in log} == {"local", "stage0", "fusion"}  # nothing still loading when the error is raised
