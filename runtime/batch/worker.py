"""One batch worker: a Segmenter opened once, segmenting whole scenes one after another.

A plain class, so it imports without Ray; runtime.batch.dispatcher wraps it as a Ray actor. Anything a scene
raises is caught here and returned as that scene's failure: only the death of the process itself
(killed, out of memory, node lost) reaches the driver as an error, which then retries the scene on
another worker.

Object storage: a TIFF is read by ranges through fsspec (only the strips or tiles each band of
rows needs); a PNG/JPEG (decoded whole anyway) is downloaded to node-local scratch first. Outputs
for an object store are written to node-local scratch, then uploaded one by one, the stats JSON
last: it is the commit marker that resume reads. Local outputs are written in place, atomically, as
`glsnet run` writes them. Each worker's scratch is ``<scratch>/work/<node>-<pid>/``: a worker
starting on a node removes the folders of that node's dead workers (the only processes that can
tell a dead pid of this node), never another node's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.batch.bundle_fetch import BundleRef, local_bundle
from runtime.batch.report import FAILED, OK, SceneResult
from runtime.batch.storage import Location, download, upload
from runtime.errors import GlsnetError, InputError
from runtime.image_io.readers import TIFF_SUFFIXES, TiffSource, open_image
from runtime.image_io.writers import OutputOptions
from runtime.options import SegmenterOptions
from runtime.process_memory import peak_rss
from runtime.segmenter import Segmenter

SCRATCH_ENV = "GLSNET_SCRATCH"  # node-local scratch folder (default: the system temporary folder)
FAULT_HANG_ENV = "GLSNET_BATCH_FAULT_HANG"  # fault injection for tests: a scene of this file name hangs
RANGE_BLOCK_BYTES = 4 * 1024 * 1024  # one ranged read of a remote TIFF fetches at least this much


def scratch_root() -> str:
    """This node's scratch folder: $GLSNET_SCRATCH, else <tmp>/glsnet-scratch."""
    return os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), "glsnet-scratch")


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs; sent to the driver when the worker is ready."""

    name: str
    node: str  # host name
    node_id: str | None  # Ray's node id (None outside Ray)
    pid: int


@dataclass(frozen=True)
class Scene:
    """One scene to segment: its input, the output folder, and which attempt this is."""

    input: Location
    output_dir: Location
    attempt: int = 1  # every try, node losses included
    charged: int = 1  # the tries that count against --retries (a lost or preempted node does not)


class SceneWorker:
    """Holds one Segmenter for the whole batch (the bundle is fetched, opened and its graphs verified once)."""

    def __init__(self, name: str, bundle: BundleRef, options: SegmenterOptions, outputs: OutputOptions, provenance: dict[str, Any]) -> None:
        self.info = WorkerInfo(name, socket.gethostname(), _ray_node_id(), os.getpid())
        self.scratch = scratch_root()
        work_root = os.path.join(self.scratch, "work")
        os.makedirs(work_root, exist_ok=True)
        _sweep_dead_workers(work_root)
        self.work = os.path.join(work_root, f"{_host_tag()}-{os.getpid()}")
        os.makedirs(self.work, exist_ok=True)
        self.segmenter = Segmenter(local_bundle(bundle, self.scratch, options.precision), options=options)
        self.outputs = outputs
        self.provenance = provenance

    def ready(self) -> WorkerInfo:
        return self.info

    def segment(self, scene: Scene) -> SceneResult:
        """Segment one scene and put its outputs in place; a failure of the scene is returned, not raised."""
        per_scene = peak_rss.reset_peak()
        start = time.perf_counter()
        outputs: list[str] = []
        error = None
        try:
            if os.environ.get(FAULT_HANG_ENV) == scene.input.name:
                signal.pause()  # a hung scene, for the deadline's tests: only the driver's kill ends it
            outputs = self._segment(scene)
        except GlsnetError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001  a scene's own failure must not stop the batch: record it
            error = f"{scene.input}: {type(exc).__name__}: {exc}"
        finally:
            _empty(self.work)
        return SceneResult(
            input=str(scene.input),
            outputs=outputs,
            status=OK if error is None else FAILED,
            error=error,
            seconds=round(time.perf_counter() - start, 3),
            worker=self.info.name,
            node=self.info.node,
            node_id=self.info.node_id,
            pid=self.info.pid,
            peak_rss_bytes=peak_rss.peak_bytes(),
            peak_rss_per_scene=per_scene,
            attempts=scene.attempt,
        )

    def _segment(self, scene: Scene) -> list[str]:
        out = scene.output_dir
        with self._opened(scene.input) as source:
            if out.is_local:
                paths = self.outputs.paths_for(Path(scene.input.name), Path(out.local_path))
                self.segmenter.segment_source(source, paths, self.outputs, provenance=self.provenance)
                return [str(p) for p in paths.written()]
            staged = self.outputs.paths_for(Path(scene.input.name), Path(self.work))
            self.segmenter.segment_source(source, staged, self.outputs, provenance=self.provenance)
        uploaded = []
        for path in staged.written():  # the stats JSON last: the scene is done only once it is there
            target = out.join(path.name)
            upload(str(path), target)
            uploaded.append(str(target))
        return uploaded

    @contextlib.contextmanager
    def _opened(self, image: Location):
        max_pixels = self.segmenter.options.max_pixels
        if image.is_local:
            source = open_image(image.local_path, max_pixels)
        elif os.path.splitext(image.name)[1].lower() in TIFF_SUFFIXES:
            fs, path = image.filesystem()
            try:
                handle = fs.open(path, "rb", block_size=RANGE_BLOCK_BYTES, cache_type="bytes")
            except FileNotFoundError:
                raise InputError(f"{image}: no such object") from None
            try:
                source = TiffSource(handle, name=str(image))
            except BaseException:
                handle.close()
                raise
            source = _ClosingBoth(source, handle)
        else:
            local = os.path.join(self.work, image.name)
            try:
                download(image, local)
            except FileNotFoundError:
                raise InputError(f"{image}: no such object") from None
            source = open_image(local, max_pixels)
        try:
            yield source
        finally:
            source.close()

    def shutdown(self) -> None:
        """Close the Segmenter and remove this worker's scratch folder (the driver calls it before ending the actor)."""
        self.segmenter.close()
        shutil.rmtree(self.work, ignore_errors=True)

    close = shutdown


class _ClosingBoth:
    """A TIFF source over a remote file: closing it closes the file too."""

    def __init__(self, source: TiffSource, handle) -> None:
        self._source, self._handle = source, handle

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            self._handle.close()


def _ray_node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001  outside Ray (tests of the plain class) there is no node id
        return None


def _host_tag() -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:48] or "host"


def _sweep_dead_workers(work_root: str) -> None:
    """Remove the scratch folders of this host's workers whose process is gone."""
    host = _host_tag()
    for entry in os.listdir(work_root):
        tag, _, pid = entry.rpartition("-")
        if tag != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(work_root, entry), ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's


def _empty(folder: str) -> None:
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
