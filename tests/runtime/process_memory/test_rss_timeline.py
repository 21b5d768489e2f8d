"""The RSS timeline: phases marked from any thread, samples tagged with them, the peak named."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime.process_memory.heap_release import release_free_heap
from runtime.process_memory.rss_timeline import IDLE, RssSampler, Timeline, active_phases, current_rss_bytes, phase, plot_timelines

pytestmark = pytest.mark.skipif(current_rss_bytes() is None, reason="no /proc/self/statm on this system")


def test_phases_nest_and_overlap_across_threads():
    assert active_phases() == IDLE
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with phase("global"):
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(5)
    with phase("fusion"), phase("fusion"):
        assert active_phases() == "global+fusion"  # PHASES order, each once
    assert active_phases() == "global"
    release.set()
    thread.join()
    assert active_phases() == IDLE


def test_the_sampler_sees_an_allocation_and_names_its_phase():
    with RssSampler(interval_s=0.005) as sampler:
        time.sleep(0.05)
        with phase("local batch"):
            block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
            time.sleep(0.15)
            del block
            # after earlier tests glibc may serve the block from free heap, where freeing it keeps it resident
            release_free_heap()
        time.sleep(0.05)
    tl = sampler.timeline
    assert len(tl.times) >= 10 and tl.times == sorted(tl.times)
    peak = tl.peak()
    assert peak["phases"] == "local batch"
    by_phase = tl.peak_by_phase()
    assert by_phase["local batch"] - by_phase[IDLE] > 50e6
    again = Timeline.from_dict(tl.to_dict())
    assert again.peak() == peak and again.phases == tl.phases


def test_plot_is_written_or_skipped_cleanly(tmp_path):
    tl = Timeline(0.1, [0.0, 0.1, 0.2], [10**8, 3 * 10**8, 2 * 10**8], ["idle", "global", "fusion"])
    path = plot_timelines({"run": tl}, tmp_path / "t.png", "test")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert path is None and not (tmp_path / "t.png").exists()
    else:
        assert path == tmp_path / "t.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
