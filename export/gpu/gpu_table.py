"""gpu-check's one table: every engine this machine has, and PyTorch eager in the same precision, measured alike.

Per row, on the first image (a 2448 x 2448 DeepGlobe scene, or a seeded one): whole-image latency
(median of ``repeats`` runs after a warm-up), once with the pixels already decoded and once
decoding the file in each run; images per second with two images in flight (two threads, each
decoding then segmenting); peak device memory as the framework's allocator sees it (PyTorch's
caching allocator, or the schedule's Device allocations) and as NVML sees the whole process; and
the pixel agreement with the CPU fp32 reference. A candidate whose pieces are missing is skipped
with one line (the row says "not run" and why); one that fails is reported "failed" with its error
in one line; neither stops the rest. The table is printed, written as JSON and drawn as a PNG chart.

The harness knows nothing of engines: a ``Candidate`` says what is missing and opens a ``Runner``
(segment, synchronise, peak memory, close). Tests run it on the CPU with fake runners; the real
candidates are in export.gpu.gpu_table_candidates.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from runtime.accuracy.comparison import pixel_agreement
from runtime.atomic_file import write_bytes_atomic, write_text_atomic

NOT_RUN = "not run"
FAILED = "failed"
RAN = "ran"
IN_FLIGHT = 2


class Runner(Protocol):
    """One way of segmenting whole images on the GPU, opened and warm; ``segment`` may be called from two threads."""

    def segment(self, pixels: np.ndarray) -> np.ndarray: ...

    def synchronize(self) -> None: ...

    def reset_peak(self) -> None: ...

    def peak_allocator_bytes(self) -> int | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Candidate:
    """A table row to be: its label, and how to find out whether it can run and to open it."""

    engine: str  # "PyTorch", "ONNX Runtime CUDA", "TensorRT", "PyTorch eager"
    precision: str  # "fp32 (TF32)", "fp16", "int8"
    missing: Callable[[], str | None]
    open: Callable[[], Runner]


@dataclass(frozen=True)
class Image:
    """The measured image: its name, its pixels, and how to decode it again (for the decode-included timing)."""

    name: str
    pixels: np.ndarray
    decode: Callable[[], np.ndarray]


@dataclass(frozen=True)
class Row:
    engine: str
    precision: str
    status: str
    reason: str = ""
    latency_ms: float | None = None
    latency_with_decode_ms: float | None = None
    images_per_s: float | None = None
    peak_allocator_mb: float | None = None
    peak_process_mb: float | None = None  # NVML: the whole process on the GPU
    agreement: float | None = None
    runs_ms: list[float] = field(default_factory=list)


class MemorySampler(Protocol):
    """The whole process's device memory, sampled while a row runs (NVML on a GPU)."""

    def start(self) -> None: ...

    def stop(self) -> int | None: ...


class NvmlSampler:
    """Peak GPU memory of this process from NVML (nvidia-ml-py's ``pynvml``), sampled every ``period_s`` in a thread."""

    def __init__(self, ordinal: int = 0, period_s: float = 0.005) -> None:
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(ordinal)
        self.period_s = period_s
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _used(self) -> int:
        for process in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if process.pid == os.getpid() and process.usedGpuMemory is not None:
                return int(process.usedGpuMemory)
        return 0

    def start(self) -> None:
        self._peak = self._used()
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(self.period_s):
                self._peak = max(self._peak, self._used())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return max(self._peak, self._used())


def nvml_sampler() -> tuple[MemorySampler | None, str | None]:
    """NVML's sampler, or None and why not (one line)."""
    try:
        return NvmlSampler(), None
    except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound...: the reason is the point
        return None, f"NVML unavailable ({type(exc).__name__}: {exc}); install nvidia-ml-py for whole-process peaks"


def _timed(run: Callable[[], Any], synchronize: Callable[[], None], repeats: int) -> tuple[float, list[float], Any]:
    runs, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        synchronize()
        runs.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(runs), 1), [round(r, 1) for r in runs], result


def measure(candidate: Candidate, image: Image, reference: np.ndarray, repeats: int, sampler: MemorySampler | None, in_flight_images: int) -> Row:
    """One row: open, warm up, time with and without decoding, two images in flight, peaks, agreement."""
    runner = candidate.open()
    try:
        if sampler is not None:
            sampler.start()
        runner.reset_peak()
        runner.segment(image.pixels)  # warm-up: lazy set-up, autotuning, graph capture
        runner.synchronize()
        latency, runs, mask = _timed(lambda: runner.segment(image.pixels), runner.synchronize, repeats)
        with_decode, _, _ = _timed(lambda: runner.segment(image.decode()), runner.synchronize, repeats)

        def one() -> None:
            runner.segment(image.decode())
            runner.synchronize()

        started = time.perf_counter()
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            for future in [pool.submit(one) for _ in range(in_flight_images)]:
                future.result()
        per_second = in_flight_images / (time.perf_counter() - started)
        allocator = runner.peak_allocator_bytes()
        process = sampler.stop() if sampler is not None else None
    finally:
        runner.close()
    return Row(
        candidate.engine,
        candidate.precision,
        RAN,
        latency_ms=latency,
        latency_with_decode_ms=with_decode,
        images_per_s=round(per_second, 2),
        peak_allocator_mb=None if allocator is None else round(allocator / 2**20, 1),
        peak_process_mb=None if process is None else round(process / 2**20, 1),
        agreement=round(pixel_agreement(reference, mask), 5),
        runs_ms=runs,
    )


def run_table(
    candidates: Sequence[Candidate],
    image: Image,
    reference: np.ndarray,
    repeats: int = 5,
    sampler: MemorySampler | None = None,
    in_flight_images: int = 4,
    say: Callable[[str], None] = print,
) -> list[Row]:
    """Every candidate's row, in order; what is missing is skipped with one line, what fails is reported, never fatal."""
    rows = []
    for candidate in candidates:
        label = f"{candidate.engine} {candidate.precision}"
        reason = candidate.missing()
        if reason is not None:
            say(f"gpu-check: {label}: not run: {reason}")
            rows.append(Row(candidate.engine, candidate.precision, NOT_RUN, reason))
            continue
        try:
            rows.append(measure(candidate, image, reference, repeats, sampler, in_flight_images))
        except Exception as exc:  # noqa: BLE001 - one engine failing must not stop the others
            line = f"{type(exc).__name__}: {exc}".splitlines()[0]
            say(f"gpu-check: {label}: failed: {line}")
            rows.append(Row(candidate.engine, candidate.precision, FAILED, line))
    return rows


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: Sequence[Row], title: str) -> str:
    """The table on the console; also returned as text (what the closing note quotes)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    columns = ("engine", "precision", "status", "latency ms", "with decode ms", "images/s (2 in flight)", "peak MB allocator", "peak MB process (NVML)", "agreement vs CPU fp32")
    for column in columns:
        table.add_column(column)
    for r in rows:
        status = r.status if r.status == RAN else f"{r.status}: {r.reason}"
        table.add_row(
            escape(r.engine), escape(r.precision), escape(status), _number(r.latency_ms, 1), _number(r.latency_with_decode_ms, 1), _number(r.images_per_s, 2),
            _number(r.peak_allocator_mb, 0), _number(r.peak_process_mb, 0), _number(r.agreement, 5),
        )
    console = Console(width=220, record=True)
    console.print(table)
    return console.export_text()


def write_report(rows: Sequence[Row], out: Path, context: dict[str, Any]) -> Path:
    """gpu_table.json: the rows and what they were measured on."""
    path = out / "gpu_table.json"
    write_text_atomic(path, json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return path


def write_chart(rows: Sequence[Row], out: Path, say: Callable[[str], None] = print) -> Path | None:
    """gpu_table.png: latency and peak memory per row that ran; skipped with one line without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("gpu-check: chart not drawn: matplotlib is not installed (pip install 'glsnet-deploy[bench]')")
        return None
    ran = [r for r in rows if r.status == RAN]
    labels = [f"{r.engine}\n{r.precision}" for r in ran]
    figure, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(ran) + 4), 4.5))
    left.bar(labels, [r.latency_ms or 0 for r in ran], label="decoded")
    left.bar(labels, [max(0.0, (r.latency_with_decode_ms or 0) - (r.latency_ms or 0)) for r in ran], bottom=[r.latency_ms or 0 for r in ran], label="+ decode")
    left.set_ylabel("whole-image latency, ms (median)")
    left.legend()
    right.bar(labels, [r.peak_allocator_mb or 0 for r in ran], label="allocator")
    right.plot(labels, [r.peak_process_mb or 0 for r in ran], "ko", label="process (NVML)")
    right.set_ylabel("peak device memory, MB")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    path = out / "gpu_table.png"
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
    return path
