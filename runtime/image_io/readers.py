"""Image inputs as row-readable sources, so the pipeline reads only the rows it needs.

TIFF and GeoTIFF (tiled or striped, contiguous or separate planes) are read window by window with
tifffile: a row range decodes only the tiles or strips that cross it. PNG and JPEG are decoded
whole with Pillow, under an explicit pixel limit instead of Pillow's process-wide default.
Every source yields [rows, width, bands] arrays; band selection happens at normalisation.
"""

from __future__ import annotations

import errno
import math
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from runtime.errors import InputError

# PNG/JPEG are decoded whole: 500 megapixels is 1.5 GB of RGB. Larger scenes belong in a tiled TIFF.
DEFAULT_MAX_PIXELS = 500_000_000
TIFF_SUFFIXES = (".tif", ".tiff")
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")

# GeoTIFF georeferencing tags copied from an input TIFF to the masks written for it. GDAL_NODATA and
# GDAL_METADATA are not copied: they describe the input's pixel values, not a class-index mask.
GEO_TAGS = {
    33550: "ModelPixelScale",
    33922: "ModelTiepoint",
    34264: "ModelTransformation",
    34735: "GeoKeyDirectory",
    34736: "GeoDoubleParams",
    34737: "GeoAsciiParams",
}


class ImageSource(Protocol):
    """What the pipeline reads: a size, a band count, and rows on demand (thread-safe)."""

    name: str
    height: int
    width: int
    bands: int
    geotags: list[tuple[int, str, int, Any, bool]]  # tifffile extratags to copy onto outputs

    def read_rows(self, top: int, bottom: int) -> np.ndarray: ...

    def close(self) -> None: ...


def _check_size(name: str, height: int, width: int, bands: int) -> None:
    if height <= 0 or width <= 0 or bands <= 0:
        raise InputError(f"{name}: the image is empty ({height} x {width} pixels, {bands} band(s)); expected at least 1 x 1")


class ArraySource:
    """An in-memory [H, W] or [H, W, C] array."""

    def __init__(self, array: np.ndarray, name: str = "array") -> None:
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise InputError(f"{name}: expected an image of shape [H, W] or [H, W, C], got shape {array.shape}")
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise InputError(f"{name}: pixel type {array.dtype} is not numeric")
        _check_size(name, *array.shape)
        self.array = array
        self.name = name
        self.height, self.width, self.bands = array.shape
        self.geotags: list = []

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        return self.array[top:bottom]

    def close(self) -> None:
        pass


class PillowSource(ArraySource):
    """PNG or JPEG decoded whole by Pillow."""

    def __init__(self, path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(_decode_with_pillow(path, max_pixels), name=str(path))


_PILLOW_LIMIT_LOCK = threading.Lock()


def _decode_with_pillow(path: Path, max_pixels: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    with _PILLOW_LIMIT_LOCK:  # our explicit limit replaces Pillow's global one while the header is read
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        except UnidentifiedImageError as exc:
            raise InputError(f"{path}: not a readable PNG/JPEG image ({exc}); expected a PNG, JPEG or TIFF file") from exc
        except OSError as exc:
            raise InputError(f"{path}: cannot be read: the file is corrupt or truncated ({exc})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        width, height = image.size
        _check_size(str(path), height, width, 1)
        if max_pixels is not None and width * height > max_pixels:
            raise InputError(
                f"{path}: {width} x {height} = {width * height:,} pixels is above the limit of {max_pixels:,} for "
                "PNG/JPEG (decoded whole); raise it with --max-pixels or convert the image to a tiled TIFF"
            )
        try:
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                image = image.convert("RGBA" if image.mode == "PA" else "RGB")
            pixels = np.asarray(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{path}: the image data is corrupt or truncated ({exc}); re-export or re-download it") from exc
    return pixels


class TiffSource:
    """A TIFF/GeoTIFF read window by window: only the tiles or strips that cross the rows asked for.

    ``path`` may be an open binary file (an object-store file read by ranges); ``name`` then names it in errors.
    """

    def __init__(self, path: Path | BinaryIO, name: str | None = None) -> None:
        import tifffile

        self.name = name or str(path)
        try:
            self._file = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
            raise InputError(f"{self.name}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
        try:
            if not self._file.pages:
                raise InputError(f"{self.name}: not a readable TIFF: it has no image pages (corrupt or truncated file)")
            page = self._file.pages.first
            self._page = page
            planes, depth, height, width, contig = page.shaped
            if depth != 1:
                raise InputError(f"{self.name}: volumetric TIFFs (depth {depth}) are not supported; expected a 2-D image")
            self.height, self.width = int(height), int(width)
            self.bands = int(planes * contig)
            _check_size(self.name, self.height, self.width, self.bands)
            self.dtype = page.dtype
            if self.dtype is None or not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)):
                raise InputError(f"{self.name}: TIFF pixel type {page.dtype} is not supported; expected integer or float samples")
            self._separate = planes > 1
            if page.is_tiled:
                self._seg_rows, self._seg_cols = page.tilelength, math.ceil(self.width / page.tilewidth)
            else:
                rows = page.rowsperstrip or self.height
                self._seg_rows, self._seg_cols = min(rows, self.height), 1
            self._segments_per_plane = math.ceil(self.height / self._seg_rows) * self._seg_cols
            if len(page.dataoffsets) != self._segments_per_plane * planes:
                raise InputError(
                    f"{self.name}: the TIFF has {len(page.dataoffsets)} data segments, expected "
                    f"{self._segments_per_plane * planes}; the file is corrupt or uses an unsupported layout"
                )
            self.geotags = [_tag_tuple(page.tags[code]) for code in GEO_TAGS if code in page.tags]
        except BaseException:
            self._file.close()
            raise
        self._lock = threading.Lock()

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        top, bottom = max(0, top), min(self.height, bottom)
        out = np.zeros((max(0, bottom - top), self.width, self.bands), dtype=self.dtype)
        if bottom <= top:
            return out
        first, last = top // self._seg_rows, (bottom - 1) // self._seg_rows
        planes = self.bands if self._separate else 1
        for plane in range(planes):
            for seg_row in range(first, last + 1):
                for seg_col in range(self._seg_cols):
                    index = plane * self._segments_per_plane + seg_row * self._seg_cols + seg_col
                    self._paste(index, top, bottom, out)
        return out

    def _paste(self, index: int, top: int, bottom: int, out: np.ndarray) -> None:
        page = self._page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:
            return  # an empty (sparse) segment reads as zeros
        with self._lock:
            handle = self._file.filehandle
            handle.seek(offset)
            data = handle.read(count)
        try:
            segment, (plane, _, y, x, _), _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise InputError(
                f"{self.name}: segment {index} cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt, "
                "or its compression needs the imagecodecs package (pip install imagecodecs)"
            ) from exc
        if segment is None:
            return
        segment = segment[0]  # [rows, cols, samples]
        rows = slice(max(top, y), min(bottom, y + segment.shape[0], self.height))
        cols = min(self.width - x, segment.shape[1])
        if rows.stop <= rows.start or cols <= 0:
            return
        block = segment[rows.start - y : rows.stop - y, :cols]
        if self._separate:
            out[rows.start - top : rows.stop - top, x : x + cols, plane] = block[..., 0]
        else:
            out[rows.start - top : rows.stop - top, x : x + cols] = block

    def close(self) -> None:
        self._file.close()


def _tag_tuple(tag) -> tuple[int, str, int, Any, bool]:
    """A tifffile tag as an ``extratags`` entry for TiffWriter.write."""
    value = tag.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return (tag.code, "s", 0, value, True)
    dtype = {2: "s", 3: "H", 4: "I", 11: "f", 12: "d", 16: "Q"}.get(int(tag.dtype), "d")
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return (tag.code, dtype, len(values), values, True)


def is_symlink_loop(path: Path) -> bool:
    """True when resolving ``path`` runs into a cycle of symbolic links (ELOOP), which exists() reports as missing."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def open_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageSource:
    """A row-readable source for a PNG, JPEG or (Geo)TIFF file; clear errors for anything else."""
    path = Path(path)
    if is_symlink_loop(path):
        raise InputError(f"{path}: a symbolic link loop (the link points, directly or not, at itself); fix or remove the link")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); expected a PNG, JPEG or TIFF image")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return TiffSource(path)
    if suffix in PILLOW_SUFFIXES:
        return PillowSource(path, max_pixels)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] in (b"II", b"MM"):
        return TiffSource(path)
    return PillowSource(path, max_pixels)
