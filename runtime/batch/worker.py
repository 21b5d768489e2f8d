"""One batch worker: a Segmenter opened once, segmenting whole scenes one after another.

A plain class, so it imports without Ray; runtime.batch.dispatcher wraps it as a Ray actor. Anything a scene
raises is caught here and returned as that scene's failure: only the death of the process itself
(killed, out of memory, node lost) reaches the driver as an error, which then retries the scene on
another worker.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.batch.report import FAILED, OK, SceneResult
from runtime.errors import GlsnetError
from runtime.image_io.writers import OutputOptions
from runtime.options import SegmenterOptions
from runtime.process_memory import peak_rss
from runtime.segmenter import Segmenter


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs; sent to the driver when the worker is ready."""

    name: str
    node: str
    pid: int


@dataclass(frozen=True)
class Scene:
    """One scene to segment: its input, the output folder, and which attempt this is."""

    input: Path
    output_dir: Path
    attempt: int = 1


class SceneWorker:
    """Holds one Segmenter for the whole batch (the bundle is opened and its graphs verified once)."""

    def __init__(self, name: str, bundle: str, options: SegmenterOptions, outputs: OutputOptions, provenance: dict[str, Any]) -> None:
        self.info = WorkerInfo(name, socket.gethostname(), os.getpid())
        self.segmenter = Segmenter(bundle, options=options)
        self.outputs = outputs
        self.provenance = provenance

    def ready(self) -> WorkerInfo:
        return self.info

    def segment(self, scene: Scene) -> SceneResult:
        """Segment one scene and write its outputs atomically; a failure of the scene is returned, not raised."""
        per_scene = peak_rss.reset_peak()
        start = time.perf_counter()
        outputs: list[str] = []
        error = None
        try:
            paths = self.segmenter.segment_file(scene.input, scene.output_dir, self.outputs, provenance=self.provenance)
            outputs = [str(p) for p in paths.written()]
        except GlsnetError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001  a scene's own failure must not stop the batch: record it
            error = f"{scene.input}: {type(exc).__name__}: {exc}"
        return SceneResult(
            input=str(scene.input),
            outputs=outputs,
            status=OK if error is None else FAILED,
            error=error,
            seconds=round(time.perf_counter() - start, 3),
            worker=self.info.name,
            node=self.info.node,
            pid=self.info.pid,
            peak_rss_bytes=peak_rss.peak_bytes(),
            peak_rss_per_scene=per_scene,
            attempts=scene.attempt,
        )

    def close(self) -> None:
        self.segmenter.close()
