"""Outputs of one segmented image: class mask, colour mask, overlay and per-class statistics.

Rows arrive top to bottom as the stitcher finishes them. TIFF outputs are written strip by strip
as they arrive (a writer thread feeds tifffile compressed strips), so their memory does not grow
with image height, and they carry the input's GeoTIFF/GDAL tags. PNG outputs are assembled whole
and saved at the end. Every file is written under a temporary name and all of them are renamed
together only when all are complete (runtime.atomic_file.replace_all): an image gets all its
outputs or none, and on any error (a full disk, a folder in the way, SIGTERM) no output file,
partial or not, is left behind. Temporary files of killed runs are removed by the next run.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from runtime.atomic_file import create_temporary, remove_stale_temporaries, replace_all
from runtime.bundle.manifest import Manifest
from runtime.errors import InputError
from runtime.image_io.coloured_band import ColouredBand
from runtime.image_io.readers import ImageSource

FORMATS = ("png", "tif")
DEFAULT_ROWS_PER_STRIP = 64


@dataclass(frozen=True)
class OutputPaths:
    """Where one image's outputs go (None: not written)."""

    mask: Path
    color: Path | None = None
    overlay: Path | None = None
    stats: Path | None = None

    def written(self) -> list[Path]:
        return [p for p in (self.mask, self.color, self.overlay, self.stats) if p is not None]


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write, in which format."""

    format: str = "png"
    color: bool = True
    overlay: bool = False
    stats: bool = False
    overlay_alpha: float = 0.5
    rows_per_strip: int = DEFAULT_ROWS_PER_STRIP
    display_bands: tuple[int, ...] | None = None  # input bands shown in the overlay (default: the model's)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"output format {self.format!r} is not one of {', '.join(FORMATS)}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise InputError(f"overlay alpha must be within [0, 1], got {self.overlay_alpha}")
        if self.rows_per_strip < 1:
            raise InputError(f"rows per strip must be >= 1, got {self.rows_per_strip}")

    def paths_for(self, input_path: Path, output_dir: Path | None) -> OutputPaths:
        """``<dir>/<stem>_mask.<fmt>`` and its siblings for ``input_path``."""
        if output_dir is None:
            raise InputError(f"{input_path}: no output folder given; pass one (e.g. -o out/)")
        if output_dir.exists() and not output_dir.is_dir():
            raise InputError(f"{output_dir}: exists and is not a folder; choose an output folder with -o")
        stem, fmt = input_path.stem, self.format
        return OutputPaths(
            mask=output_dir / f"{stem}_mask.{fmt}",
            color=output_dir / f"{stem}_color.{fmt}" if self.color else None,
            overlay=output_dir / f"{stem}_overlay.{fmt}" if self.overlay else None,
            stats=output_dir / f"{stem}_stats.json" if self.stats else None,
        )


class _WholeImageSink:
    """Collects rows into one array and saves it with Pillow at the end (PNG)."""

    def __init__(self, path: Path, height: int, width: int, channels: int, target: Path) -> None:
        self.path, self.target = path, target
        self.array = np.zeros((height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)

    def start(self) -> None:
        pass

    def write(self, top: int, rows: np.ndarray) -> None:
        self.array[top : top + len(rows)] = rows

    def close(self) -> None:
        from PIL import Image

        try:
            Image.fromarray(self.array).save(self.path, format="PNG")
        except OSError as exc:
            raise InputError(f"{self.target}: writing the PNG failed ({exc.strerror or exc})") from exc

    def abort(self) -> None:
        pass


_END = object()
_ABORT = object()


class _TiffStripSink:
    """Writes rows to a TIFF strip by strip from a writer thread, as soon as a strip is full."""

    def __init__(self, path: Path, height: int, width: int, channels: int, rows_per_strip: int, extratags: list, target: Path) -> None:
        self.path, self.target = path, target
        self.shape = (height, width, channels) if channels > 1 else (height, width)
        self.rows_per_strip = min(rows_per_strip, height)
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.extratags = extratags
        self.thread = threading.Thread(target=self._run, name=f"tiff-writer:{path.name}", daemon=True)

    def start(self) -> None:
        """Start the writer thread (after the caller has registered ``abort``, so a signal cannot orphan it)."""
        self.thread.start()

    def _strips(self) -> Iterator[bytes]:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise InputError(f"{self.target}: writing was aborted")
            yield zlib.compress(np.ascontiguousarray(item).tobytes())

    def _run(self) -> None:
        import tifffile

        try:
            with tifffile.TiffWriter(self.path, bigtiff=np.prod(self.shape) > 3_900_000_000) as tiff:
                tiff.write(
                    self._strips(),
                    shape=self.shape,
                    dtype=np.uint8,
                    rowsperstrip=self.rows_per_strip,
                    compression="zlib",
                    photometric="rgb" if len(self.shape) == 3 else "minisblack",
                    extratags=self.extratags,
                    metadata=None,
                )
        except BaseException as exc:  # re-raised in the caller's thread by close()
            self.error = exc
            _drain(self.queue)

    def _send(self, item: object) -> None:
        while True:
            if self.error is not None:
                raise InputError(f"{self.target}: writing the TIFF failed ({_reason(self.error)})") from self.error
            if not self.thread.is_alive():
                if item is _END:
                    return  # tifffile took its last strip and finished on its own
                raise InputError(f"{self.target}: the TIFF writer ended before all rows were written")
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def write(self, top: int, rows: np.ndarray) -> None:
        self.pending.append(rows)
        self.pending_rows += len(rows)
        while self.pending_rows >= self.rows_per_strip:
            block = np.concatenate(self.pending)
            self._send(block[: self.rows_per_strip])
            rest = block[self.rows_per_strip :]
            self.pending, self.pending_rows = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self.pending_rows:
            self._send(np.concatenate(self.pending))
            self.pending, self.pending_rows = [], 0
        self._send(_END)
        self.thread.join()
        if self.error is not None:
            raise InputError(f"{self.target}: writing the TIFF failed ({_reason(self.error)})") from self.error

    def abort(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                _drain(self.queue)
                self.queue.put(_ABORT, timeout=1.0)
            self.thread.join(timeout=10.0)


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _open_sink(path: Path, options: OutputOptions, height: int, width: int, channels: int, extratags: list, target: Path):
    if options.format == "tif":
        return _TiffStripSink(path, height, width, channels, options.rows_per_strip, extratags, target)
    return _WholeImageSink(path, height, width, channels, target)


def display_rgb(pixels: np.ndarray, bands: tuple[int, ...], scale: float) -> np.ndarray:
    """uint8 RGB view of input pixels [rows, W, C] for the overlay (grey repeated for one band)."""
    chosen = [b for b in bands[:3] if b < pixels.shape[2]] or [0]
    view = pixels[:, :, chosen]
    if view.dtype != np.uint8:
        view = np.clip(view.astype(np.float32) * (255.0 / scale), 0, 255).astype(np.uint8)
    if view.shape[2] == 1:
        view = np.repeat(view, 3, axis=2)
    elif view.shape[2] == 2:
        view = np.concatenate([view, view[:, :, :1]], axis=2)
    return view


def write_outputs(
    source: ImageSource,
    rows: Iterable[tuple[int, np.ndarray]],
    paths: OutputPaths,
    options: OutputOptions,
    manifest: Manifest,
    provenance: Mapping[str, Any] | None = None,
) -> OutputPaths:
    """Consume finished mask rows and write every requested output.

    A band that is a ColouredBand (a GPU pipeline mapped the palette on the device) gives its colour
    rows as they are; plain ``(top, mask)`` bands are coloured here with the manifest's palette.

    ``provenance`` (what produced the mask: glsnet batch records the bundle and options there) goes
    into the stats JSON under "provenance".

    Each file is written under a temporary name; when all are complete they are renamed together,
    all or none, so an error at any point leaves no output of this image. ``rows`` is closed
    on the way out, so a producer generator stops its worker threads before the source is closed.
    """
    palette = np.asarray(manifest.palette, dtype=np.uint8)
    bands = options.display_bands or manifest.normalization.bands
    height, width = source.height, source.width
    tags = source.geotags if options.format == "tif" else []
    counts = np.zeros(max(256, len(palette)), dtype=np.int64)
    with contextlib.ExitStack() as stack:
        if hasattr(rows, "close"):
            stack.callback(rows.close)  # registered first, so it runs last: after the sinks are aborted
        targets = {k: p for k, p in (("mask", paths.mask), ("color", paths.color), ("overlay", paths.overlay), ("stats", paths.stats)) if p is not None}
        temporary = {key: stack.enter_context(_temporary(path)) for key, path in targets.items()}
        sinks = {}
        for key, channels in (("mask", 1), ("color", 3), ("overlay", 3)):
            if key in temporary:
                sink = _open_sink(temporary[key], options, height, width, channels, tags, targets[key])
                stack.callback(sink.abort)
                sink.start()
                sinks[key] = sink
        written = 0
        for band in rows:
            top, mask = band
            if top != written:
                raise RuntimeError(f"rows arrived out of order: expected row {written}, got {top}")
            written += len(mask)
            sinks["mask"].write(top, mask)
            if "color" in sinks or "overlay" in sinks:
                # a GPU pipeline hands out the colours it mapped on the device; otherwise they are mapped here
                color = band.color if isinstance(band, ColouredBand) else palette[np.minimum(mask, len(palette) - 1)]
                if "color" in sinks:
                    sinks["color"].write(top, color)
                if "overlay" in sinks:
                    base = display_rgb(source.read_rows(top, top + len(mask)), bands, manifest.normalization.scale)
                    blend = (1.0 - options.overlay_alpha) * base + options.overlay_alpha * color
                    sinks["overlay"].write(top, np.round(blend).astype(np.uint8))
            counts += np.bincount(mask.ravel(), minlength=len(counts))[: len(counts)]
        if written != height:
            raise RuntimeError(f"{source.name}: {written} of {height} mask rows were produced")
        for sink in sinks.values():
            sink.close()
        if "stats" in temporary:
            statistics = class_statistics(source.name, counts, manifest, height, width)
            if provenance is not None:
                statistics["provenance"] = dict(provenance)
            text = json.dumps(statistics, indent=2) + "\n"
            try:
                temporary["stats"].write_text(text)
            except OSError as exc:
                raise InputError(f"{targets['stats']}: writing the statistics failed ({exc.strerror or exc})") from exc
        try:
            replace_all((temporary[key], targets[key]) for key in targets)
        except OSError as exc:
            raise InputError(
                f"{exc.filename or paths.mask}: cannot write an output here ({exc.strerror or exc}); "
                "no output of this image was written"
            ) from exc
    return paths


def class_statistics(name: str, counts: np.ndarray, manifest: Manifest, height: int, width: int) -> dict:
    """Per-class pixel counts and fractions of one mask."""
    total = height * width
    return {
        "image": name,
        "height": height,
        "width": width,
        "pixels": total,
        "classes": [
            {"index": i, "name": c, "pixels": int(counts[i]), "fraction": round(float(counts[i]) / total, 6)}
            for i, c in enumerate(manifest.classes)
        ],
    }


_SWEPT: set[Path] = set()
_SWEPT_LOCK = threading.Lock()


def _sweep_once(directory: Path) -> None:
    """Remove temporary files that killed runs left in ``directory`` (once per folder and process)."""
    key = directory.resolve()
    with _SWEPT_LOCK:
        if key in _SWEPT:
            return
        _SWEPT.add(key)
    remove_stale_temporaries(directory)


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A temporary file for output ``path``, removed on the way out unless it was renamed into place."""
    try:
        tmp = create_temporary(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write an output here ({exc.strerror or exc}); choose a writable folder with -o") from exc
    try:
        _sweep_once(path.parent)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
