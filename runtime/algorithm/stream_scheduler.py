"""The GPU schedule: global and local engines concurrently on two CUDA streams, fusion once the global features exist.

Per image:
1. Stream A ("global"): copy the padded image from pinned staging, run the global engine, record
   event G. Its features stay on the device.
2. Stream B ("local"): the first ``lookahead`` batches of patches are copied (from pinned,
   double-buffered staging) and run through the local engine *at once*: they do not wait for G.
3. Before the first fusion, stream B waits on G with ``stream_wait_event``, a device-side wait:
   the host never blocks on the global branch. Then per batch: fusion, logits copied back to
   pinned memory, and the next local batch.
4. The host stitches each batch's logits (runtime.algorithm.stitching.Stitcher) while the GPU works on
   the next ones, and hands out mask rows as soon as no later patch touches them.

Host waits are only those that protect reused memory: before refilling a staging slot (its
previous copy must have run) and before reading a batch's logits. Written against the Device
interface and asynchronous engines (anything with ``enqueue(inputs, outputs, stream)``), never
against TensorRT, so it runs unchanged on the recording fake in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np

from runtime.algorithm.device_buffers import DEFAULT_LOOKAHEAD, HOST_SLOTS, Allocation, BufferPlan, plan_buffers
from runtime.algorithm.patch_grid import PatchGrid
from runtime.algorithm.patch_schedule import ROLES, RowBand, batches, grid_for
from runtime.algorithm.stitching import Stitcher, upsample_logits
from runtime.bundle.manifest import (
    FUSION_INPUTS,
    FUSION_OUTPUT,
    GLOBAL_INPUT,
    GLOBAL_OUTPUT,
    LOCAL_INPUT,
    LOCAL_OUTPUTS,
    Manifest,
)
from runtime.cuda.device import Device, DeviceBuffer, DeviceTensor
from runtime.errors import InputError

__all__ = ["AsyncEngine", "ROLES", "RowBand", "StreamScheduleOptions", "StreamScheduler"]


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


class StreamScheduler:
    """Segments normalised images [C, H, W] with three asynchronous engines on one device."""

    def __init__(
        self,
        device: Device,
        engines: Mapping[str, AsyncEngine],
        manifest: Manifest,
        precision: str = "fp32",
        options: StreamScheduleOptions = StreamScheduleOptions(),
    ) -> None:
        missing = [role for role in ROLES if role not in engines]
        if missing:
            raise InputError(f"the stream scheduler needs engines for {ROLES}; missing {missing}")
        self.device = device
        self.engines = dict(engines)
        self.manifest = manifest
        self.precision = precision
        self.options = options
        self.global_stream = device.create_stream("global")
        self.local_stream = device.create_stream("local")
        self.global_done = device.create_event()
        self.staged_free = [device.create_event() for _ in range(HOST_SLOTS)]
        self.logits_ready = [device.create_event() for _ in range(HOST_SLOTS)]
        self._buffers: _Buffers | None = None
        self._size: tuple[int, int] | None = None

    # -------------------------------------------------------------- public
    def iter_rows(
        self,
        height: int,
        width: int,
        write_image: Callable[[np.ndarray], None],
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[RowBand]:
        """Yield (first row, uint8 class indices [rows, width]) top to bottom as rows are finished.

        ``write_image(target)`` fills the normalised image into ``target`` [C, padded H, padded W], a
        zeroed pinned array, at [:, :height, :width]; it is the only copy of the image on the host.
        ``progress(done, total)`` is called after each batch of patches is stitched.
        """
        grid = grid_for(self.manifest, height, width)
        buffers = self._buffers_for(height, width)
        self._settle()
        host_image = buffers.staging(f"global/{GLOBAL_INPUT}", 0)
        host_image[...] = 0
        write_image(host_image[0])

        self._enqueue_global(buffers, host_image)
        batches = self._batches(grid)
        stitcher = Stitcher(grid, self.manifest.num_classes)
        lookahead = self.options.lookahead
        done = 0
        for k in range(min(lookahead, len(batches))):
            self._enqueue_local(k, batches[k], grid, buffers, host_image)
        for k, batch in enumerate(batches):
            self._enqueue_fusion(k, len(batch), buffers, wait_for_global=k == 0)
            if k >= 1:
                yield from self._consume(k - 1, len(batches[k - 1]), buffers, stitcher)
                done += len(batches[k - 1])
                if progress is not None:
                    progress(done, len(grid))
            if k + lookahead < len(batches):
                self._enqueue_local(k + lookahead, batches[k + lookahead], grid, buffers, host_image)
        yield from self._consume(len(batches) - 1, len(batches[-1]), buffers, stitcher)
        if progress is not None:
            progress(len(grid), len(grid))

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
        mask = np.zeros(image.shape[1:], dtype=np.uint8)
        for row, rows in self.run(image):
            mask[row : row + rows.shape[0]] = rows
        return mask

    @property
    def plan(self) -> BufferPlan | None:
        """The buffer plan of the last image size run (None before the first image)."""
        return self._buffers.plan if self._buffers is not None else None

    def close(self) -> None:
        self._settle()
        if self._buffers is not None:
            self._buffers.free(self.device)
            self._buffers = None
        for event in (self.global_done, *self.staged_free, *self.logits_ready):
            self.device.destroy_event(event)
        self.device.destroy_stream(self.global_stream)
        self.device.destroy_stream(self.local_stream)

    def __enter__(self) -> "StreamScheduler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- the schedule
    def _enqueue_global(self, buffers: _Buffers, host_image: np.ndarray) -> None:
        stream = self.global_stream
        image = buffers.tensor(f"global/{GLOBAL_INPUT}")
        self.device.memcpy_htod_async(image, host_image, stream)
        features = buffers.tensor(f"global/{GLOBAL_OUTPUT}")
        self.engines["global"].enqueue({GLOBAL_INPUT: image}, {GLOBAL_OUTPUT: features}, stream)
        self.device.record_event(self.global_done, stream)

    def _enqueue_local(self, k: int, indices: list[int], grid: PatchGrid, buffers: _Buffers, host_image: np.ndarray) -> None:
        stream, slot, ring, b = self.local_stream, k % HOST_SLOTS, k % self.options.lookahead, len(indices)
        run = self._run_batch(b)
        self.device.event_synchronize(self.staged_free[slot])  # the copy that last read this slot has run
        patches = buffers.staging(f"local/{LOCAL_INPUT}", slot, run)
        p = grid.patch_size
        origins = grid.origins()
        for j, index in enumerate(indices):
            y, x = origins[index]
            patches[j] = host_image[0, :, y : y + p, x : x + p]
        boxes = buffers.staging(f"fusion/{FUSION_INPUTS[3]}", slot, run)
        boxes[:b] = grid.boxes(indices)
        if run > b:  # padding of a static-batch engine: blank patches with a valid box, never stitched
            patches[b:] = 0
            boxes[b:] = boxes[0]
        device_patches = buffers.tensor(f"local/{LOCAL_INPUT}", run)
        self.device.memcpy_htod_async(device_patches, patches, stream)
        self.device.memcpy_htod_async(buffers.tensor(f"fusion/{FUSION_INPUTS[3]}", run, ring), boxes, stream)
        self.device.record_event(self.staged_free[slot], stream)
        outputs = {name: buffers.tensor(f"local/{name}", run, ring) for name in LOCAL_OUTPUTS}
        self.engines["local"].enqueue({LOCAL_INPUT: device_patches}, outputs, stream)

    def _enqueue_fusion(self, k: int, b: int, buffers: _Buffers, wait_for_global: bool) -> None:
        stream, ring, slot, run = self.local_stream, k % self.options.lookahead, k % HOST_SLOTS, self._run_batch(b)
        if wait_for_global:
            self.device.stream_wait_event(stream, self.global_done)  # device-side: the host does not block
        inputs = {
            LOCAL_OUTPUTS[0]: buffers.tensor(f"local/{LOCAL_OUTPUTS[0]}", run, ring),
            LOCAL_OUTPUTS[1]: buffers.tensor(f"local/{LOCAL_OUTPUTS[1]}", run, ring),
            GLOBAL_OUTPUT: buffers.tensor(f"global/{GLOBAL_OUTPUT}"),
            FUSION_INPUTS[3]: buffers.tensor(f"fusion/{FUSION_INPUTS[3]}", run, ring),
        }
        logits = buffers.tensor(f"fusion/{FUSION_OUTPUT}", run)
        self.engines["fusion"].enqueue(inputs, {FUSION_OUTPUT: logits}, stream)
        self.device.memcpy_dtoh_async(buffers.staging(f"fusion/{FUSION_OUTPUT}", slot, b), logits, stream)
        self.device.record_event(self.logits_ready[slot], stream)

    def _consume(self, k: int, b: int, buffers: _Buffers, stitcher: Stitcher) -> Iterator[tuple[int, np.ndarray]]:
        slot = k % HOST_SLOTS
        self.device.event_synchronize(self.logits_ready[slot])
        logits = buffers.staging(f"fusion/{FUSION_OUTPUT}", slot, b).astype(np.float32)
        yield from stitcher.add(upsample_logits(logits, self.manifest.patch.size))

    # -------------------------------------------------------------- helpers
    def _run_batch(self, b: int) -> int:
        return self.options.batch_size if self.options.fixed_batch else b

    def _batches(self, grid: PatchGrid) -> list[list[int]]:
        return [list(indices) for indices in batches(len(grid), self.options.batch_size)]

    def _buffers_for(self, height: int, width: int) -> _Buffers:
        grid = grid_for(self.manifest, height, width)
        size = (grid.padded_height, grid.padded_width)
        if self._buffers is None or self._size != size:
            self._settle()
            if self._buffers is not None:
                self._buffers.free(self.device)
            plan = plan_buffers(self.manifest, self.precision, self.options.batch_size, (height, width), self.options.lookahead)
            self._buffers = _Buffers(self.device, plan)
            self._size = size
        return self._buffers

    def _settle(self) -> None:
        """Wait for both streams, e.g. when an earlier run() was abandoned before its last batch."""
        self.device.synchronize(self.global_stream)
        self.device.synchronize(self.local_stream)
