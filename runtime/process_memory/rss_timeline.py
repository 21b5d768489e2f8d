"""Resident memory over time, tagged with what the runtime is doing, so a peak has a name.

The scheduler marks its phases (``with phase("global"): ...``); the global and local branches run
at once, so a sample is tagged with every phase active when it was taken ("global+local batch").
``RssSampler`` reads /proc/self/statm from a daemon thread (Linux; elsewhere it records nothing)
at a fixed interval. Marking costs a lock and a counter, so phases are always marked.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

PHASES = ("global", "local batch", "fusion", "local and fusion", "stitching", "writing")
IDLE = "idle"
DEFAULT_INTERVAL_S = 0.02

_active: Counter = Counter()
_lock = threading.Lock()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark ``name`` active in this process while the block runs (re-entrant, any thread)."""
    with _lock:
        _active[name] += 1
    try:
        yield
    finally:
        with _lock:
            _active[name] -= 1
            if _active[name] <= 0:
                del _active[name]


def active_phases() -> str:
    """The phases active now, in PHASES order, joined by '+'; 'idle' when none."""
    with _lock:
        names = [p for p in PHASES if p in _active] + sorted(n for n in _active if n not in PHASES)
    return "+".join(names) or IDLE


def current_rss_bytes() -> int | None:
    """This process's resident set size now, or None where /proc is absent."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Timeline:
    """Samples of (seconds since start, RSS bytes, active phases)."""

    interval_s: float
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)

    def add(self, t: float, rss: int, phases: str) -> None:
        self.times.append(t)
        self.rss.append(rss)
        self.phases.append(phases)

    def peak(self) -> dict:
        """The highest sample: its time, bytes and phases (empty when nothing was sampled)."""
        if not self.rss:
            return {}
        i = max(range(len(self.rss)), key=self.rss.__getitem__)
        return {"t_s": self.times[i], "rss_bytes": self.rss[i], "phases": self.phases[i]}

    def peak_by_phase(self) -> dict[str, int]:
        """Highest RSS seen under each phase tag."""
        out: dict[str, int] = {}
        for rss, tag in zip(self.rss, self.phases):
            out[tag] = max(out.get(tag, 0), rss)
        return out

    def to_dict(self) -> dict:
        return {
            "interval_s": self.interval_s,
            "times": self.times,
            "rss": self.rss,
            "phases": self.phases,
            "peak": self.peak(),
            "peak_by_phase": self.peak_by_phase(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Timeline":
        return cls(float(data["interval_s"]), list(data["times"]), list(data["rss"]), list(data["phases"]))


class RssSampler:
    """``with RssSampler() as s: ...`` samples this process's RSS every ``interval_s``; ``s.timeline``."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.timeline = Timeline(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glsnet-rss-sampler", daemon=True)
        self._start = 0.0

    def __enter__(self) -> "RssSampler":
        self._start = time.perf_counter()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None:
            self.timeline.add(time.perf_counter() - self._start, rss, active_phases())

    def _run(self) -> None:
        while not self._stop.wait(self.timeline.interval_s):
            self.sample()


def plot_timelines(timelines: dict[str, Timeline], path: Path, title: str) -> Path | None:
    """A PNG of RSS (MB) over time per run, coloured by phase; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from runtime.atomic_file import atomic_path

    tags = sorted({t for tl in timelines.values() for t in tl.phases})
    colours = {tag: plt.cm.tab10(i % 10) for i, tag in enumerate(tags)}
    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 2.6 * len(timelines)), squeeze=False)
    for ax, (name, tl) in zip(axes[:, 0], timelines.items()):
        mb = [r / 1e6 for r in tl.rss]
        ax.plot(tl.times, mb, color="0.6", linewidth=0.8)
        for tag in tags:
            xs = [t for t, p in zip(tl.times, tl.phases) if p == tag]
            ys = [m for m, p in zip(mb, tl.phases) if p == tag]
            if xs:
                ax.scatter(xs, ys, s=4, color=colours[tag], label=tag)
        peak = tl.peak()
        if peak:
            ax.annotate(f"peak {peak['rss_bytes'] / 1e6:.0f} MB ({peak['phases']})", (peak["t_s"], peak["rss_bytes"] / 1e6),
                        textcoords="offset points", xytext=(5, -12), fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("RSS MB")
        ax.legend(fontsize=7, markerscale=3, loc="lower right")
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
