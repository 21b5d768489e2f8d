"""The GPU schedule: four CUDA streams, only pixels in and mask rows out, the host never waiting on the GPU's work.

Per image (every wait below is device-side, ``stream_wait_event``, unless it says "host"):
1. Stream "global": the pixels go up once from pinned staging (uint8 for most images: 18 MB for a
   2448 x 2448 RGB scene, where a normalised float32 copy would be 72 MB), are normalised and
   zero-padded on the device (event "image ready"), then the global engine runs (event G). Its
   features stay on the device for every fusion batch.
2. Stream "copy": after "image ready", cuts each batch's patches out of the normalised image on the
   device into one of two device patch buffers, so batch k+1 is cut while the local engine runs
   batch k; it waits for the local engine to have read a buffer before cutting into it again.
3. Stream "local": the first ``lookahead`` local batches run at once, not waiting for G; the boxes
   (a few bytes) go up from double-buffered pinned staging; local outputs go to a ring of
   ``lookahead`` slots. A slot is refilled only after the fusion that read it has run.
4. Stream "fusion": waits once for G, then per batch for that batch's local outputs; runs fusion,
   then the stitching (runtime.algorithm.device_stitching): upsampling, pyramid blending into a
   band one patch high, and, when a grid row is complete, argmax of the finished rows into a
   device mask band, copied to a pinned mask slot (event "rows ready"). When the writers want
   colours (a palette given), the palette is mapped on the device too and the colour rows follow the
   mask rows to a pinned slot of their own; they are handed out together as a ColouredBand.
5. The host hands out mask rows as their copies land (host waits only on "rows ready", and before
   refilling a pinned boxes slot whose previous copy has not run).

Local and fusion on separate streams let a DLA (Jetson) or the GPU run the local batch k+1 while
fusion k runs; they must then not share engine scratch memory (runtime.engines.tensorrt_pipeline).
Written against the Device interface (runtime.cuda.device), asynchronous engines (anything with
``enqueue(inputs, outputs, stream)``) and array code in the device's array module, never against
TensorRT or CuPy, so it runs unchanged on the recording fake in tests, where its masks equal the
CPU Stitcher's bit for bit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np

from runtime.algorithm.device_buffers import (
    DEFAULT_LOOKAHEAD,
    HOST_SLOTS,
    IMAGE_PIXELS,
    MASK_SLOTS,
    PATCH_SLOTS,
    STITCH_COLOUR,
    STITCH_MASK,
    STITCH_TOTAL,
    STITCH_WEIGHTS,
    Allocation,
    BufferPlan,
    PixelLayout,
    plan_buffers,
)
from runtime.algorithm.device_stitching import (
    DeviceConstants,
    DeviceStitcher,
    FinishedRows,
    colour_rows,
    cut_patches,
    normalize_into,
)
from runtime.algorithm.patch_grid import PatchGrid
from runtime.algorithm.patch_schedule import ROLES, RowBand, batches, grid_for
from runtime.bundle.manifest import (
    FUSION_INPUTS,
    FUSION_OUTPUT,
    GLOBAL_INPUT,
    GLOBAL_OUTPUT,
    LOCAL_INPUT,
    LOCAL_OUTPUTS,
    Manifest,
    Normalization,
)
from runtime.cuda.device import Device, DeviceBuffer, DeviceTensor
from runtime.errors import InputError
from runtime.image_io.coloured_band import ColouredBand

__all__ = ["AsyncEngine", "ROLES", "RowBand", "StreamScheduleOptions", "StreamScheduler"]

STREAMS = ("global", "copy", "local", "fusion")


class AsyncEngine(Protocol):
    """What the schedule needs from an engine: queue one run on a stream, device tensors in and out."""

    name: str

    def enqueue(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], stream: Any) -> None: ...


@dataclass(frozen=True)
class StreamScheduleOptions:
    batch_size: int = 6
    lookahead: int = DEFAULT_LOOKAHEAD  # local batches queued ahead of the first fusion
    fixed_batch: bool = False  # engines with a static batch (DLA): pad the last batch up to batch_size

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lookahead < 1:
            raise InputError(f"batch size ({self.batch_size}) and lookahead ({self.lookahead}) must be at least 1")


class _Buffers:
    """The device buffers and pinned staging of one BufferPlan."""

    def __init__(self, device: Device, plan: BufferPlan) -> None:
        self.plan = plan
        self.device: dict[str, list[DeviceBuffer]] = {}
        self.host: dict[str, list[np.ndarray]] = {}
        for allocation in plan.allocations:
            if allocation.pinned:
                self.host[allocation.key] = [device.alloc_pinned(allocation.shape, allocation.dtype) for _ in range(allocation.copies)]
            else:
                self.device[allocation.key] = [device.alloc_device(allocation.nbytes) for _ in range(allocation.copies)]

    def tensor(self, key: str, batch: int | None = None, slot: int = 0) -> DeviceTensor:
        """Device slot ``slot`` of ``key``, shaped for ``batch`` items (the plan's batch when None)."""
        allocation = self.plan.device(key)
        return DeviceTensor(self.device[key][slot], _with_batch(allocation, batch), allocation.dtype)

    def staging(self, key: str, slot: int, batch: int | None = None) -> np.ndarray:
        array = self.host[key][slot]
        return array if batch is None else array[:batch]

    def free(self, device: Device) -> None:
        for buffers in self.device.values():
            for buffer in buffers:
                device.free(buffer)
        for arrays in self.host.values():
            for array in arrays:
                device.free(array)
        self.device.clear()
        self.host.clear()


def _with_batch(allocation: Allocation, batch: int | None) -> tuple[int, ...]:
    return allocation.shape if batch is None else (batch, *allocation.shape[1:])


@dataclass
class _Image:
    """What the schedule of the image in flight needs between its batches."""

    grid: PatchGrid
    buffers: _Buffers
    batches: list[list[int]]
    stitcher: DeviceStitcher
    pending: deque  # (mask slot, FinishedRows) whose copies are queued, oldest first
    ready: list  # (top, rows) copied out of pinned memory, not yet handed out
    palette: Any = None  # the palette on the device when colour rows are made there
    masks_queued: int = 0


class StreamScheduler:
    """Segments images with three asynchronous engines on one device; pixels in, uint8 mask rows out."""

    def __init__(
        self,
        device: Device,
        engines: Mapping[str, AsyncEngine],
        manifest: Manifest,
        precision: str = "fp32",
        options: StreamScheduleOptions = StreamScheduleOptions(),
        streams: Mapping[str, Any] | None = None,
    ) -> None:
        """``streams``: the four streams by name (global, copy, local, fusion) when the engines are bound to
        given streams (ONNX Runtime's user_compute_stream); they stay the caller's. None: the scheduler makes its own."""
        missing = [role for role in ROLES if role not in engines]
        if missing:
            raise InputError(f"the stream scheduler needs engines for {ROLES}; missing {missing}")
        self.device = device
        self.engines = dict(engines)
        self.manifest = manifest
        self.precision = precision
        self.options = options
        if streams is not None and set(streams) != set(STREAMS):
            raise InputError(f"the stream scheduler runs on the streams {STREAMS}; got {sorted(streams)}")
        self._owns_streams = streams is None
        self.streams = dict(streams) if streams is not None else {name: device.create_stream(name) for name in STREAMS}
        self.global_stream, self.copy_stream = self.streams["global"], self.streams["copy"]
        self.local_stream, self.fusion_stream = self.streams["local"], self.streams["fusion"]
        lookahead = options.lookahead
        self.image_ready = device.create_event()
        self.global_done = device.create_event()
        self.patches_ready = [device.create_event() for _ in range(PATCH_SLOTS)]
        self.patches_free = [device.create_event() for _ in range(PATCH_SLOTS)]
        self.local_done = [device.create_event() for _ in range(lookahead)]
        self.fusion_done = [device.create_event() for _ in range(lookahead)]
        self.boxes_free = [device.create_event() for _ in range(HOST_SLOTS)]
        self.rows_ready = [device.create_event() for _ in range(MASK_SLOTS)]
        self._buffers: _Buffers | None = None
        self._key: tuple | None = None
        self._constants: DeviceConstants | None = None
        self._image: _Image | None = None

    # -------------------------------------------------------------- public
    def iter_pixel_rows(
        self,
        height: int,
        width: int,
        layout: PixelLayout,
        write_pixels: Callable[[np.ndarray], None],
        normalization: Normalization,
        progress: Callable[[int, int], None] | None = None,
        palette: np.ndarray | None = None,
    ) -> Iterator[RowBand]:
        """Yield (first row, uint8 class indices [rows, width]) top to bottom as rows are finished.

        ``write_pixels(target)`` fills the image's pixels as read, [height, width, channels] of
        ``layout.dtype``, into ``target``, a pinned array: the only copy of the image on the host.
        Normalisation (``normalization``, the bundle's or a --bands choice) happens on the device.
        ``palette`` (uint8 [classes, 3]): map it on the device too; each band is then a ColouredBand.
        """
        if palette is not None:
            palette = np.ascontiguousarray(palette, dtype=np.uint8)
            if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
                raise InputError(f"a palette is uint8 [classes, 3], got shape {palette.shape}")
        buffers = self._buffers_for(height, width, layout, 0 if palette is None else palette.shape[1])
        self.settle()
        self.device.make_current()
        host = buffers.staging(IMAGE_PIXELS, 0)
        write_pixels(host)
        device_pixels = buffers.tensor(IMAGE_PIXELS)
        image = buffers.tensor(f"global/{GLOBAL_INPUT}")
        self.device.memcpy_htod_async(device_pixels, host, self.global_stream)
        constants = self._device_constants()

        def normalise() -> None:
            normalize_into(self.device.array(device_pixels), normalization, self.device.array(image)[0], self.device.array_module(), constants)

        self.device.launch(self.global_stream, normalise, "normalize")
        yield from self._schedule(height, width, buffers, progress, palette)

    def iter_rows(
        self,
        height: int,
        width: int,
        write_image: Callable[[np.ndarray], None],
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[RowBand]:
        """The same rows from an image normalised on the host (a reference, or a caller with its own preprocessing).

        ``write_image(target)`` fills the normalised image into ``target`` [C, padded H, padded W], a
        zeroed pinned array, at [:, :height, :width].
        """
        buffers = self._buffers_for(height, width, None)
        self.settle()
        self.device.make_current()
        host_image = buffers.staging(f"global/{GLOBAL_INPUT}", 0)
        host_image[...] = 0
        write_image(host_image[0])
        self.device.memcpy_htod_async(buffers.tensor(f"global/{GLOBAL_INPUT}"), host_image, self.global_stream)
        yield from self._schedule(height, width, buffers, progress)

    def run(self, image: np.ndarray) -> Iterator[RowBand]:
        """Finished mask rows of a normalised image [C, H, W] already in memory."""
        if image.ndim != 3:
            raise InputError(f"expected a normalised image [C, H, W], got shape {image.shape}")
        _, height, width = image.shape

        def write_image(target: np.ndarray) -> None:
            target[:, :height, :width] = image

        return self.iter_rows(height, width, write_image)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """The whole uint8 mask [H, W] of a normalised image [C, H, W]."""
        return _collect(self.run(image), image.shape[1:])

    def segment_pixels(self, pixels: np.ndarray, normalization: Normalization) -> np.ndarray:
        """The whole uint8 mask [H, W] of pixels [H, W, C] (or [H, W]), normalised on the device."""
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3:
            raise InputError(f"expected pixels [H, W, C] or [H, W], got shape {pixels.shape}")
        height, width, channels = pixels.shape

        def write_pixels(target: np.ndarray) -> None:
            target[...] = pixels

        rows = self.iter_pixel_rows(height, width, PixelLayout(channels, pixels.dtype), write_pixels, normalization)
        return _collect(rows, (height, width))

    @property
    def plan(self) -> BufferPlan | None:
        """The buffer plan of the last image size run (None before the first image)."""
        return self._buffers.plan if self._buffers is not None else None

    def close(self) -> None:
        self.settle()
        if self._buffers is not None:
            self._buffers.free(self.device)
            self._buffers = None
        events = (
            self.image_ready,
            self.global_done,
            *self.patches_ready,
            *self.patches_free,
            *self.local_done,
            *self.fusion_done,
            *self.boxes_free,
            *self.rows_ready,
        )
        for event in events:
            self.device.destroy_event(event)
        if self._owns_streams:
            for stream in self.streams.values():
                self.device.destroy_stream(stream)

    def __enter__(self) -> "StreamScheduler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- the schedule
    def _schedule(
        self,
        height: int,
        width: int,
        buffers: _Buffers,
        progress: Callable[[int, int], None] | None,
        palette: np.ndarray | None = None,
    ) -> Iterator[RowBand]:
        """Everything after the normalised image is queued on the global stream."""
        grid = grid_for(self.manifest, height, width)
        device = self.device
        device.record_event(self.image_ready, self.global_stream)
        self._enqueue_global(buffers)
        device.stream_wait_event(self.copy_stream, self.image_ready)
        stitcher = DeviceStitcher(
            device,
            grid,
            self.manifest.num_classes,
            buffers.tensor(STITCH_TOTAL),
            buffers.tensor(STITCH_WEIGHTS),
            buffers.tensor(STITCH_MASK),
            self._device_constants(),
        )
        stitcher.reset(self.fusion_stream)
        on_device = None if palette is None else self._device_constants().get(("palette", palette.tobytes()), lambda: palette)
        self._image = image = _Image(grid, buffers, self._batches(grid), stitcher, deque(), [], on_device)
        plan = image.batches
        lookahead = self.options.lookahead
        queued = 0
        for k in range(min(lookahead, len(plan))):
            self._enqueue_local(k, plan[k], grid, buffers)
        for k, batch in enumerate(plan):
            self._enqueue_fusion(k, len(batch), buffers, wait_for_global=k == 0)
            queued += len(batch)
            if k + lookahead < len(plan):
                self._enqueue_local(k + lookahead, plan[k + lookahead], grid, buffers)
            yield from self._hand_out(image, keep=1)
            if progress is not None:
                progress(queued, len(grid))
        yield from self._hand_out(image, keep=0)
        self._image = None

    def _enqueue_global(self, buffers: _Buffers) -> None:
        stream = self.global_stream
        image = buffers.tensor(f"global/{GLOBAL_INPUT}")
        features = buffers.tensor(f"global/{GLOBAL_OUTPUT}")
        self.engines["global"].enqueue({GLOBAL_INPUT: image}, {GLOBAL_OUTPUT: features}, stream)
        self.device.record_event(self.global_done, stream)

    def _enqueue_local(self, k: int, indices: list[int], grid: PatchGrid, buffers: _Buffers) -> None:
        device, b = self.device, len(indices)
        run, ring, box_slot = self._run_batch(b), k % self.options.lookahead, k % HOST_SLOTS
        patches = self._cut_patches(k, indices, grid, buffers)
        device.event_synchronize(self.boxes_free[box_slot])  # host: the copy that last read this pinned slot has run
        boxes = buffers.staging(f"fusion/{FUSION_INPUTS[3]}", box_slot, run)
        boxes[:b] = grid.boxes(indices)
        if run > b:  # padding of a static-batch engine: a valid box, never stitched
            boxes[b:] = boxes[0]
        stream = self.local_stream
        device.stream_wait_event(stream, self.fusion_done[ring])  # the fusion that read this ring slot has run
        device.memcpy_htod_async(buffers.tensor(f"fusion/{FUSION_INPUTS[3]}", run, ring), boxes, stream)
        device.record_event(self.boxes_free[box_slot], stream)
        slot = k % PATCH_SLOTS
        device.stream_wait_event(stream, self.patches_ready[slot])
        outputs = {name: buffers.tensor(f"local/{name}", run, ring) for name in LOCAL_OUTPUTS}
        self.engines["local"].enqueue({LOCAL_INPUT: patches}, outputs, stream)
        device.record_event(self.patches_free[slot], stream)
        device.record_event(self.local_done[ring], stream)

    def _cut_patches(self, k: int, indices: list[int], grid: PatchGrid, buffers: _Buffers) -> DeviceTensor:
        """Queue on the copy stream: batch k's patches cut from the normalised image into device slot k % 2."""
        device, stream, slot = self.device, self.copy_stream, k % PATCH_SLOTS
        device.stream_wait_event(stream, self.patches_free[slot])  # the local engine has read this slot's last batch
        patches = buffers.tensor(f"local/{LOCAL_INPUT}", self._run_batch(len(indices)), slot)
        image = buffers.tensor(f"global/{GLOBAL_INPUT}")
        origins = grid.origins()
        where = [origins[i] for i in indices]

        def cut() -> None:
            cut_patches(device.array(image)[0], where, grid.patch_size, device.array(patches))

        device.launch(stream, cut, "cut")
        device.record_event(self.patches_ready[slot], stream)
        return patches

    def _enqueue_fusion(self, k: int, b: int, buffers: _Buffers, wait_for_global: bool) -> None:
        device, stream = self.device, self.fusion_stream
        ring, run = k % self.options.lookahead, self._run_batch(b)
        if wait_for_global:
            device.stream_wait_event(stream, self.global_done)  # device-side: the host does not block
        device.stream_wait_event(stream, self.local_done[ring])
        inputs = {
            LOCAL_OUTPUTS[0]: buffers.tensor(f"local/{LOCAL_OUTPUTS[0]}", run, ring),
            LOCAL_OUTPUTS[1]: buffers.tensor(f"local/{LOCAL_OUTPUTS[1]}", run, ring),
            GLOBAL_OUTPUT: buffers.tensor(f"global/{GLOBAL_OUTPUT}"),
            FUSION_INPUTS[3]: buffers.tensor(f"fusion/{FUSION_INPUTS[3]}", run, ring),
        }
        logits = buffers.tensor(f"fusion/{FUSION_OUTPUT}", run)
        self.engines["fusion"].enqueue(inputs, {FUSION_OUTPUT: logits}, stream)
        device.record_event(self.fusion_done[ring], stream)
        assert self._image is not None
        self._image.stitcher.add(logits, b, stream, self._copy_rows)

    def _copy_rows(self, rows: FinishedRows) -> None:
        """Queue the copy of a finished band of mask rows to a pinned slot (after the argmax, same stream)."""
        image = self._image
        assert image is not None
        if len(image.pending) == MASK_SLOTS:  # every pinned slot is in flight: take the oldest first
            self._take(image)
        slot = image.masks_queued % MASK_SLOTS
        image.masks_queued += 1
        target = image.buffers.staging(STITCH_MASK, slot, rows.count)
        device, stream = self.device, self.fusion_stream
        device.memcpy_dtoh_async(target, rows.mask, stream)
        if image.palette is not None:
            colours = image.buffers.tensor(STITCH_COLOUR, rows.count)

            def paint() -> None:
                device.array(colours)[...] = colour_rows(device.array(rows.mask), image.palette, device.array_module())

            device.launch(stream, paint, "colour")  # after the argmax on the same stream, before the next one
            device.memcpy_dtoh_async(image.buffers.staging(STITCH_COLOUR, slot, rows.count), colours, stream)
        device.record_event(self.rows_ready[slot], stream)
        image.pending.append((slot, rows))

    def _take(self, image: _Image) -> None:
        slot, rows = image.pending.popleft()
        self.device.event_synchronize(self.rows_ready[slot])  # host: this band's copies have landed
        mask = image.buffers.staging(STITCH_MASK, slot, rows.count).copy()
        if image.palette is None:
            image.ready.append((rows.top, mask))
        else:
            image.ready.append(ColouredBand(rows.top, mask, image.buffers.staging(STITCH_COLOUR, slot, rows.count).copy()))

    def _hand_out(self, image: _Image, keep: int) -> Iterator[RowBand]:
        """Rows that have landed, leaving the ``keep`` newest copies in flight (0: all, at the end)."""
        while len(image.pending) > keep:
            self._take(image)
        ready, image.ready = image.ready, []
        yield from ready

    # -------------------------------------------------------------- helpers
    def _run_batch(self, b: int) -> int:
        return self.options.batch_size if self.options.fixed_batch else b

    def _batches(self, grid: PatchGrid) -> list[list[int]]:
        return [list(indices) for indices in batches(len(grid), self.options.batch_size)]

    def _device_constants(self) -> DeviceConstants:
        if self._constants is None:
            self._constants = DeviceConstants(self.device.array_module(), self.device.constant)
        return self._constants

    def _buffers_for(self, height: int, width: int, layout: PixelLayout | None, colour_channels: int = 0) -> _Buffers:
        key = (height, width, layout, colour_channels)
        if self._buffers is None or self._key != key:
            self.settle()
            if self._buffers is not None:
                self._buffers.free(self.device)
                self._buffers = None
            plan = plan_buffers(
                self.manifest, self.precision, self.options.batch_size, (height, width), self.options.lookahead, layout, colour_channels
            )
            self._buffers = _Buffers(self.device, plan)
            self._key = key
        return self._buffers

    def settle(self) -> None:
        """Wait for every stream, e.g. when an earlier run() was abandoned before its last batch (or, by a pipeline
        whose schedulers share engines and scratch memory, before another scheduler takes over)."""
        for stream in self.streams.values():
            self.device.synchronize(stream)
        self._image = None


def _collect(rows: Iterator[RowBand], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for top, band in rows:
        mask[top : top + band.shape[0]] = band
    return mask
