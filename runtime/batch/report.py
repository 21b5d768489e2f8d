"""What happened to each scene of a batch: one JSON line per scene, and the summary printed at the end.

The report is a log: each line is written whole and flushed when its scene ends, so an interrupted
run still leaves the scenes it finished. Each run appends its own section, opened by a line
``{"run": ..., "started": ...}``, so a re-run never overwrites what an earlier run recorded. In an
object store (no append there) the report is kept in the driver's scratch and uploaded whole,
at most every UPLOAD_EVERY_S seconds and at the end.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from runtime.batch.storage import Location, read_bytes, upload
from runtime.byte_sizes import format_bytes

REPORT_NAME = "batch-report.jsonl"
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
UPLOAD_EVERY_S = 10.0


@dataclass(frozen=True)
class SceneResult:
    """One scene's outcome, as the report's line records it."""

    input: str
    outputs: list[str]
    status: str  # ok, failed or skipped
    error: str | None = None
    seconds: float = 0.0
    worker: str | None = None  # worker-<n>, the actor that segmented it (restarts keep the name)
    node: str | None = None  # host name
    node_id: str | None = None  # Ray's node id
    pid: int | None = None
    peak_rss_bytes: int | None = None  # the worker process's peak while on this scene
    peak_rss_per_scene: bool = True  # False: the process's lifetime peak (no per-scene reset here)
    attempts: int = 1  # tries, node losses included
    deaths: list[str] = field(default_factory=list)  # per earlier try that died: worker, node id and Ray's cause of death

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


class ReportWriter:
    """``OUT/batch-report.jsonl``: this run's section appended, scene by scene."""

    def __init__(self, location: Location, scratch: str | None = None) -> None:
        self.location = location
        self.run = uuid.uuid4().hex[:12]
        self._last_upload = 0.0
        if location.is_local:
            self.local = location.local_path
            os.makedirs(os.path.dirname(self.local), exist_ok=True)
        else:
            os.makedirs(scratch or tempfile.gettempdir(), exist_ok=True)
            fd, self.local = tempfile.mkstemp(dir=scratch, prefix=".batch-report.", suffix=".jsonl")
            with os.fdopen(fd, "wb") as handle:
                try:
                    handle.write(read_bytes(location))
                except FileNotFoundError:
                    pass
        self._file: IO[str] = open(self.local, "a", encoding="utf-8")
        header = {"run": self.run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "driver": f"{socket.gethostname()}:{os.getpid()}"}
        self._file.write(json.dumps(header) + "\n")
        self._flush(force=True)

    def write(self, result: SceneResult) -> None:
        self._file.write(result.to_json() + "\n")
        self._flush()

    def _flush(self, force: bool = False) -> None:
        self._file.flush()
        if not self.location.is_local and (force or time.monotonic() - self._last_upload >= UPLOAD_EVERY_S):
            upload(self.local, self.location)
            self._last_upload = time.monotonic()

    def close(self) -> None:
        try:
            self._flush(force=True)
        finally:
            self._file.close()
            if not self.location.is_local:
                os.unlink(self.local)

    def __enter__(self) -> "ReportWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_report(text: str) -> list[dict]:
    """Every section of a report: the run header lines and the scene lines, in order."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class BatchSummary:
    """Counts and timings of one run, for the closing table and for callers (tests, bench)."""

    results: list[SceneResult] = field(default_factory=list)
    wall_seconds: float = 0.0  # the whole run, Ray start-up and worker start included
    processing_seconds: float = 0.0  # from the first scene handed to a worker to the last result
    worker_deaths: int = 0

    def add(self, result: SceneResult) -> None:
        self.results.append(result)

    @property
    def counts(self) -> Counter:
        return Counter(r.status for r in self.results)

    @property
    def failed(self) -> list[SceneResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def processed(self) -> int:
        """Scenes this run worked on (done or failed), skipped ones left out."""
        return sum(1 for r in self.results if r.status != SKIPPED)

    @property
    def scenes_per_minute(self) -> float:
        """Scenes done per minute of processing (start-up left out: it is paid once per run, not per scene)."""
        done = self.counts[OK]
        return 60.0 * done / self.processing_seconds if self.processing_seconds > 0 and done else 0.0

    def per_worker(self) -> dict[str, dict]:
        """worker -> scenes done, seconds spent, and the peak RSS seen on any of its scenes."""
        table: dict[str, dict] = {}
        for r in self.results:
            if r.worker is None or r.status == SKIPPED:
                continue
            row = table.setdefault(r.worker, {"scenes": 0, "seconds": 0.0, "peak_rss_bytes": 0, "nodes": set()})
            row["scenes"] += 1
            row["seconds"] += r.seconds
            row["peak_rss_bytes"] = max(row["peak_rss_bytes"], r.peak_rss_bytes or 0)
            row["nodes"].add(r.node or "?")
        return dict(sorted(table.items(), key=lambda item: _worker_number(item[0])))


def _worker_number(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def print_summary(summary: BatchSummary, report: Path | Location, console) -> None:
    """The closing table: scenes by status, throughput, per-worker peak RSS, then each failure."""
    from rich.table import Table

    counts = summary.counts
    table = Table(title="glsnet batch", show_header=True)
    for column in ("scenes", "done", "failed", "skipped", "worker deaths", "wall", "processing", "scenes/min"):
        table.add_column(column, justify="right")
    table.add_row(
        str(len(summary.results)),
        str(counts[OK]),
        str(counts[FAILED]),
        str(counts[SKIPPED]),
        str(summary.worker_deaths),
        f"{summary.wall_seconds:.1f} s",
        f"{summary.processing_seconds:.1f} s",
        f"{summary.scenes_per_minute:.1f}",
    )
    console.print(table)
    workers = summary.per_worker()
    if workers:
        table = Table(show_header=True)
        for column in ("worker", "node", "scenes", "busy", "peak RSS"):
            table.add_column(column, justify="right" if column in ("scenes", "busy", "peak RSS") else "left")
        for name, row in workers.items():
            table.add_row(name, ", ".join(sorted(row["nodes"])), str(row["scenes"]), f"{row['seconds']:.1f} s", format_bytes(row["peak_rss_bytes"]))
        console.print(table)
    for result in summary.failed:
        console.print(f"[red]failed[/red] {result.input}: {result.error}", markup=True, highlight=False)
    console.print(f"report: {report}", highlight=False)
