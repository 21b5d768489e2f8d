"""The host-side steps of the runtime algorithm written as array code that runs where the arrays live.

Normalisation, padding, patch cutting, bilinear upsampling, pyramid blending, argmax and colour
mapping, for the GPU schedule (runtime.algorithm.stream_scheduler): with CuPy (or, at gpu-check's
CUDA-only level, PyTorch) arrays they run on the GPU, so only the image's pixels go up and uint8
mask rows come down. Every function takes an Array API namespace ``xp`` (array_api_compat's
wrapper of numpy, CuPy or torch: ``Device.array_module()``) and repeats, operation for operation
and in the same float32 precision, what runtime.image_io.preprocess.normalize and
runtime.algorithm.stitching do on the host, so the masks equal the CPU Stitcher's: with numpy (the
recording fake's memory) bit for bit, which the tests check; on a GPU each step is its own
elementwise kernel (no fused multiply-add across the steps), with IEEE float32 division and a
first-maximum argmax, the same operations.

``DeviceStitcher`` keeps the Stitcher's bookkeeping (band top, next patch, finished rows) on the
host, where it depends only on the patch grid, and queues the arithmetic on a stream through
``Device.launch``; its band of blended logits and weights lives in device buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

from runtime.algorithm.patch_grid import PatchGrid
from runtime.algorithm.stitching import patch_weights, upsample_taps
from runtime.bundle.manifest import Normalization
from runtime.cuda.device import Device, DeviceTensor, Stream
from runtime.errors import InputError

# Samples normalised at a time on the device: each float32 temporary is at most 16 MiB, a few of them
# well inside the device plan's headroom (runtime.algorithm.memory_budget.DEVICE_HEADROOM) on any GPU.
NORMALIZE_CHUNK_ELEMENTS = 1 << 22

__all__ = [
    "DeviceConstants",
    "DeviceStitcher",
    "FinishedRows",
    "colour_rows",
    "cut_patches",
    "normalization_constants",
    "normalize_into",
    "upsample_logits_xp",
]


def normalization_constants(norm: Normalization) -> tuple[np.ndarray, np.ndarray]:
    """float32 (mean * scale, 1 / (std * scale)) per model band, computed exactly as preprocess.normalize does."""
    mean = np.asarray(norm.mean, dtype=np.float32) * norm.scale
    inv_std = 1.0 / (np.asarray(norm.std, dtype=np.float32) * norm.scale)
    return mean.astype(np.float32), inv_std.astype(np.float32)


class DeviceConstants:
    """Small constant arrays uploaded once per device (weights, taps, normalisation, palette).

    ``to_device`` uploads a numpy array (``Device.constant``); the default is ``xp.asarray``.
    """

    def __init__(self, xp: ModuleType, to_device: Callable[[np.ndarray], Any] | None = None) -> None:
        self.xp = xp
        self.to_device = to_device or xp.asarray
        self._cache: dict[tuple, Any] = {}

    def get(self, key: tuple, make: Callable[[], np.ndarray]) -> Any:
        if key not in self._cache:
            self._cache[key] = self.to_device(np.ascontiguousarray(make()))
        return self._cache[key]

    def weights(self, patch: int) -> Any:
        return self.get(("weights", patch), lambda: patch_weights(patch))

    def taps(self, n: int, size: int) -> tuple[Any, Any, Any, Any]:
        lower, upper, w0, w1 = upsample_taps(n, size)
        return (
            self.get(("lower", n, size), lambda: lower),
            self.get(("upper", n, size), lambda: upper),
            self.get(("w0", n, size), lambda: w0),
            self.get(("w1", n, size), lambda: w1),
        )

    def column_taps(self, n: int, size: int) -> tuple[Any, Any]:
        """(w0, w1) as [size, 1] columns, for resampling along the height."""
        _, _, w0, w1 = upsample_taps(n, size)
        return self.get(("w0col", n, size), lambda: w0[:, None]), self.get(("w1col", n, size), lambda: w1[:, None])


def normalize_into(
    pixels: Any,
    norm: Normalization,
    out: Any,
    xp: ModuleType,
    constants: DeviceConstants | None = None,
    chunk_elements: int = NORMALIZE_CHUNK_ELEMENTS,
) -> None:
    """Pixels [H, W, C] (any dtype) -> ``out`` [len(bands), Hp, Wp]: normalised, zero-padded bottom/right.

    ``(float32(pixel) - mean) * inv_std`` in float32, as preprocess.normalize, then stored in
    ``out``'s dtype (fp16 engines take fp16: the same rounding as assigning into fp16 staging).
    Done in bands of rows of at most ``chunk_elements`` selected samples (at least one row), so the
    temporaries (the selected bands, two float32 copies) stay bounded whatever the image's height:
    the device plan has no room for image-sized ones.
    """
    height, width = pixels.shape[:2]
    if out.shape[1] < height or out.shape[2] < width:
        raise InputError(f"a normalised image buffer {out.shape} cannot hold {height} x {width} pixels")
    constants = constants or DeviceConstants(xp)
    mean_np, inv_np = normalization_constants(norm)
    mean = constants.get(("mean", tuple(mean_np.tolist())), lambda: mean_np)
    inv_std = constants.get(("inv_std", tuple(inv_np.tolist())), lambda: inv_np)
    bands = constants.get(("bands", norm.bands), lambda: np.asarray(norm.bands, dtype=np.int64))
    out[...] = 0
    step = max(1, chunk_elements // max(1, width * len(norm.bands)))
    for top in range(0, height, step):
        bottom = min(top + step, height)
        selected = xp.take(pixels[top:bottom], bands, axis=2)
        normalised = (xp.astype(selected, xp.float32) - mean) * inv_std
        out[:, top:bottom, :width] = xp.astype(xp.permute_dims(normalised, (2, 0, 1)), out.dtype)


def cut_patches(image: Any, origins: list[tuple[int, int]], patch: int, out: Any) -> None:
    """Patches [b, C, P, P] of a padded image [C, Hp, Wp] at ``origins`` into ``out`` (rows past b are zeroed)."""
    for j, (y, x) in enumerate(origins):
        out[j] = image[:, y : y + patch, x : x + patch]
    if out.shape[0] > len(origins):
        out[len(origins) :] = 0


def upsample_logits_xp(logits: Any, size: int, xp: ModuleType, constants: DeviceConstants | None = None) -> Any:
    """runtime.algorithm.stitching.upsample_logits in array module ``xp``: width first, then height, float32."""
    constants = constants or DeviceConstants(xp)
    logits = xp.astype(logits, xp.float32, copy=False)
    lo, up, w0, w1 = constants.taps(logits.shape[-1], size)
    wide = xp.take(logits, lo, axis=-1) * w0 + xp.take(logits, up, axis=-1) * w1
    lo, up, _, _ = constants.taps(logits.shape[-2], size)
    w0, w1 = constants.column_taps(logits.shape[-2], size)
    return xp.take(wide, lo, axis=-2) * w0 + xp.take(wide, up, axis=-2) * w1


def colour_rows(mask: Any, palette: Any, xp: ModuleType) -> Any:
    """uint8 [rows, W, 3] colours of class indices, as runtime.image_io.writers maps them (clamped to the palette)."""
    indices = xp.clip(xp.astype(xp.reshape(mask, (-1,)), xp.int64), 0, palette.shape[0] - 1)
    return xp.reshape(xp.take(palette, indices, axis=0), (*mask.shape, palette.shape[1]))


@dataclass(frozen=True)
class FinishedRows:
    """Image rows [top, top + count) whose class indices a queued argmax writes into ``mask`` [count, W]."""

    top: int
    count: int
    mask: DeviceTensor


class DeviceStitcher:
    """The Stitcher's blending band in device memory, its arithmetic queued on a stream.

    ``total`` [K, P, Wp] float32 and ``weight_sum`` [P, Wp] float32 hold the band; ``mask`` [P, W]
    uint8 receives each finished band's class indices. ``add`` queues one batch of logits and
    returns the finished bands whose argmax it queued, in order; the caller copies each ``mask``
    to the host before the next ``add`` may overwrite it (the copy queued on the same stream).
    """

    def __init__(
        self,
        device: Device,
        grid: PatchGrid,
        num_classes: int,
        total: DeviceTensor,
        weight_sum: DeviceTensor,
        mask: DeviceTensor,
        constants: DeviceConstants | None = None,
    ) -> None:
        p = grid.patch_size
        expected = {"total": (num_classes, p, grid.padded_width), "weight_sum": (p, grid.padded_width), "mask": (p, grid.width)}
        for name, tensor in (("total", total), ("weight_sum", weight_sum), ("mask", mask)):
            if tuple(tensor.shape) != expected[name]:
                raise InputError(f"device stitcher: {name} buffer has shape {tensor.shape}, expected {expected[name]}")
        self.device = device
        self.grid = grid
        self.num_classes = num_classes
        self.band_rows = p
        self.top = 0
        self.next_index = 0
        self.origins = grid.origins()
        self._total, self._weight_sum, self._mask = total, weight_sum, mask
        self.constants = constants or DeviceConstants(device.array_module(), device.constant)

    def reset(self, stream: Stream) -> None:
        """Queue zeroing of the band (a new image)."""
        self.top = 0
        self.next_index = 0

        def zero() -> None:
            self.device.array(self._total)[...] = 0
            self.device.array(self._weight_sum)[...] = 0

        self.device.launch(stream, zero, "stitch:reset")

    def add(
        self,
        logits: DeviceTensor,
        count: int,
        stream: Stream,
        on_finished: Callable[[FinishedRows], None],
    ) -> None:
        """Queue blending of the first ``count`` patch logits [B, K, h, w]; ``on_finished`` queues each band's copy.

        ``on_finished`` is called (on the host, at once) after the argmax of a finished band has been
        queued, so the copy it queues on ``stream`` runs after the argmax and before the next band's.
        """
        if self.next_index + count > len(self.origins):
            raise InputError(f"device stitcher got {self.next_index + count} patches for a grid of {len(self.origins)}")
        p = self.grid.patch_size
        steps: list[tuple[int, int, int]] = []  # (patch in batch, band row, column) per patch, then finalize between rows
        first = 0
        for j in range(count):
            index = self.next_index
            y, x = self.origins[index]
            if y + p - self.top > self.band_rows:
                raise InputError(f"patch {index} at row {y} lies beyond the stitching band starting at {self.top}")
            steps.append((j, y - self.top, x))
            self.next_index += 1
            if self.next_index % self.grid.cols == 0:
                bottom = min(self.grid.final_row_after(self.grid.grid_row_of(index)), self.grid.padded_height)
                self._queue_blend(logits, first, steps, stream)
                steps, first = [], j + 1
                finished = self._queue_finalize(bottom, stream)
                if finished is not None:
                    on_finished(finished)
        if steps:
            self._queue_blend(logits, first, steps, stream)

    @property
    def done(self) -> bool:
        return self.next_index == len(self.grid)

    # -------------------------------------------------------------- queued arithmetic
    def _queue_blend(self, logits: DeviceTensor, first: int, steps: list[tuple[int, int, int]], stream: Stream) -> None:
        p = self.grid.patch_size
        device, constants = self.device, self.constants
        last = steps[-1][0] + 1

        def blend() -> None:
            xp = device.array_module()
            weights = constants.weights(p)
            upsampled = upsample_logits_xp(device.array(logits)[first:last], p, xp, constants)
            total, weight_sum = device.array(self._total), device.array(self._weight_sum)
            for j, row, x in steps:
                total[:, row : row + p, x : x + p] += upsampled[j - first] * weights
                weight_sum[row : row + p, x : x + p] += weights

        device.launch(stream, blend, "stitch:blend")

    def _queue_finalize(self, bottom: int, stream: Stream) -> FinishedRows | None:
        count = bottom - self.top
        if count <= 0:
            return None
        top = self.top
        keep = self.band_rows - count
        image_rows = max(0, min(bottom, self.grid.height) - top)
        width = self.grid.width
        device = self.device

        def finalize() -> None:
            total, weight_sum = device.array(self._total), device.array(self._weight_sum)
            xp = device.array_module()
            if image_rows:
                blended = total[:, :count] / weight_sum[None, :count]
                device.array(self._mask)[:image_rows] = xp.astype(xp.argmax(blended[:, :image_rows, :width], axis=0), xp.uint8)
            # the band moves up by ``count`` rows; copies first, as source and target overlap
            total[:, :keep] = xp.asarray(total[:, count:], copy=True)
            total[:, keep:] = 0.0
            weight_sum[:keep] = xp.asarray(weight_sum[count:], copy=True)
            weight_sum[keep:] = 0.0

        device.launch(stream, finalize, "stitch:argmax")
        self.top = bottom
        if image_rows == 0:
            return None
        rows = DeviceTensor(self._mask.buffer, (image_rows, width), np.uint8)
        return FinishedRows(top, image_rows, rows)
