"""Sizes of every buffer the GPU schedule allocates, from the manifest alone (no TensorRT, no GPU).

The stream scheduler allocates exactly what ``plan_buffers`` lists, so the byte counts here are
the schedule's real I/O footprint; what they leave out is each engine's scratch memory
(``device_memory_size_v2``, known only once an engine exists) and the engines' weights.

Only the image's pixels go up and uint8 mask rows come down; everything between stays on the
device (runtime.algorithm.device_stitching). Device buffers: the pixels as read (uint8 for most
images) and the normalised, padded image (one each); the global features (one); ``PATCH_SLOTS``
batches of patches cut on the device, so that batch k+1 is cut while batch k runs; ``lookahead``
ring slots of local outputs and boxes, so that local batches can run ahead of the global branch;
one batch of logits; the stitching band (logit sums and weight sums, one patch high) and one
band of mask rows. Pinned host staging: the pixels once, the boxes twice (tiny, double-buffered)
and ``MASK_SLOTS`` bands of mask rows. A caller that hands the scheduler an already normalised
image (``pixels=None``) stages that instead of the pixels. When the writers want colours, the palette is
mapped on the device too: one band of colour rows there and ``MASK_SLOTS`` pinned bands of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from runtime.algorithm.patch_grid import make_grid
from runtime.bundle.manifest import (
    FUSION_INPUTS,
    FUSION_OUTPUT,
    GLOBAL_INPUT,
    GLOBAL_OUTPUT,
    LOCAL_INPUT,
    LOCAL_OUTPUTS,
    GraphSpec,
    Manifest,
    PatchSpec,
    TensorSpec,
)
from runtime.errors import BundleError, InputError

HOST_SLOTS = 2  # double-buffered pinned staging of the boxes
PATCH_SLOTS = 2  # device patch buffers: batch k+1 is cut on the copy stream while batch k runs
MASK_SLOTS = 4  # pinned bands of mask rows in flight to the host (a batch may finish several grid rows)
DEFAULT_LOOKAHEAD = 2
IMAGE_PIXELS = "image/pixels"
STITCH_TOTAL = "stitch/total"
STITCH_WEIGHTS = "stitch/weight_sum"
STITCH_MASK = "stitch/mask"
STITCH_COLOUR = "stitch/colour"

_ONNX_DTYPES = {
    "float": "float32",
    "tensor(float)": "float32",
    "float16": "float16",
    "tensor(float16)": "float16",
    "half": "float16",
    "int64": "int64",
    "tensor(int64)": "int64",
    "int32": "int32",
    "tensor(int32)": "int32",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}


def numpy_dtype(name: str) -> np.dtype:
    """A manifest dtype ('float32', 'float16', ONNX's 'tensor(float)' or 'FLOAT') as a numpy dtype."""
    key = str(name).strip().lower()
    try:
        return np.dtype(_ONNX_DTYPES.get(key, key))
    except TypeError as exc:
        raise BundleError(f"the manifest names tensor dtype {name!r}, which is not a numpy or ONNX dtype") from exc


def tensor_shape(spec: TensorSpec, role: str, batch: int, padded_hw: tuple[int, int], patch: PatchSpec) -> tuple[int, ...]:
    """The concrete shape of a graph tensor for ``batch`` patches of an image padded to ``padded_hw``.

    Symbolic dims are resolved by position: axis 0 is the batch (1 for the whole-image tensors), axes
    2 and 3 are the image (global input), the feature map (global features) or the patch at the
    tensor's stride (local and fusion tensors).
    """
    height, width = padded_hw
    whole_image = role == "global" or spec.name == GLOBAL_OUTPUT
    strides = {
        LOCAL_INPUT: 1,
        LOCAL_OUTPUTS[0]: patch.feature_stride,
        LOCAL_OUTPUTS[1]: patch.output_stride,
        FUSION_OUTPUT: patch.output_stride,
    }
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
            continue
        if axis == 0:
            shape.append(1 if whole_image else batch)
        elif len(spec.shape) == 4 and axis in (2, 3) and spec.name == GLOBAL_INPUT:
            shape.append(height if axis == 2 else width)
        elif len(spec.shape) == 4 and axis in (2, 3) and spec.name == GLOBAL_OUTPUT:
            shape.append(math.ceil((height if axis == 2 else width) / patch.feature_stride))
        elif len(spec.shape) == 4 and axis in (2, 3) and spec.name in strides:
            shape.append(math.ceil(patch.size / strides[spec.name]))
        else:
            raise BundleError(
                f"{role} graph: cannot size dimension {axis} ({dim!r}) of tensor {spec.name!r} {spec.shape}; "
                "only the batch and the image/feature sizes may be dynamic"
            )
    return tuple(shape)


@dataclass(frozen=True)
class Allocation:
    """``copies`` buffers of one tensor's shape, on the device or pinned on the host."""

    key: str  # "<role>/<tensor>"
    shape: tuple[int, ...]
    dtype: np.dtype
    copies: int
    pinned: bool

    @property
    def nbytes(self) -> int:
        """Bytes of one copy."""
        return int(math.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def total_bytes(self) -> int:
        return self.nbytes * self.copies


@dataclass(frozen=True)
class BufferPlan:
    batch: int
    padded_height: int
    padded_width: int
    lookahead: int
    allocations: tuple[Allocation, ...]

    def device(self, key: str) -> Allocation:
        return self._find(key, pinned=False)

    def host(self, key: str) -> Allocation:
        return self._find(key, pinned=True)

    @property
    def device_bytes(self) -> int:
        return sum(a.total_bytes for a in self.allocations if not a.pinned)

    @property
    def pinned_bytes(self) -> int:
        return sum(a.total_bytes for a in self.allocations if a.pinned)

    def _find(self, key: str, pinned: bool) -> Allocation:
        for allocation in self.allocations:
            if allocation.key == key and allocation.pinned == pinned:
                return allocation
        where = "pinned" if pinned else "device"
        raise KeyError(f"no {where} allocation {key!r} in the buffer plan")


def graph_tensors(graph: GraphSpec) -> dict[str, TensorSpec]:
    return {t.name: t for t in (*graph.inputs, *graph.outputs)}


@dataclass(frozen=True)
class PixelLayout:
    """The pixels the scheduler uploads: ``channels`` samples of ``dtype`` per pixel (uint8 for most images)."""

    channels: int
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.channels < 1:
            raise InputError(f"an image needs at least one band, got {self.channels}")


DEFAULT_PIXELS = PixelLayout(3, np.uint8)  # most images: what a plan assumes before the image's first rows are read


def plan_buffers(
    manifest: Manifest,
    precision: str,
    batch: int,
    image_hw: tuple[int, int],
    lookahead: int = DEFAULT_LOOKAHEAD,
    pixels: PixelLayout | None = DEFAULT_PIXELS,
    colour_channels: int = 0,
) -> BufferPlan:
    """Every buffer of the GPU schedule for ``batch`` patches of an image of ``image_hw`` (unpadded) pixels.

    ``pixels``: the layout of the uploaded pixels; None when the caller uploads an already
    normalised image (then the normalised image is staged instead). ``colour_channels``: the
    palette's channels when colour rows are made on the device (0: none).
    """
    if batch < 1 or lookahead < 1:
        raise InputError(f"batch ({batch}) and lookahead ({lookahead}) must be at least 1")
    patch = manifest.patch
    grid = make_grid(image_hw[0], image_hw[1], patch.size, patch.min_overlap)
    padded = (grid.padded_height, grid.padded_width)
    tensors = {role: graph_tensors(manifest.graph(role, precision)) for role in ("global", "local", "fusion")}

    def allocation(role: str, name: str, copies: int, pinned: bool) -> Allocation:
        spec = tensors[role].get(name)
        if spec is None:
            raise BundleError(f"the {precision} {role} graph has no tensor {name!r} (it has {sorted(tensors[role])})")
        shape = tensor_shape(spec, role, batch, padded, patch)
        return Allocation(f"{role}/{name}", shape, numpy_dtype(spec.dtype), copies, pinned)

    boxes = FUSION_INPUTS[3]
    k, p = manifest.num_classes, patch.size
    stitching = (
        Allocation(STITCH_TOTAL, (k, p, padded[1]), np.dtype(np.float32), 1, False),
        Allocation(STITCH_WEIGHTS, (p, padded[1]), np.dtype(np.float32), 1, False),
        Allocation(STITCH_MASK, (p, image_hw[1]), np.dtype(np.uint8), 1, False),
        Allocation(STITCH_MASK, (p, image_hw[1]), np.dtype(np.uint8), MASK_SLOTS, True),
    )
    if colour_channels:
        shape = (p, image_hw[1], colour_channels)
        stitching += (
            Allocation(STITCH_COLOUR, shape, np.dtype(np.uint8), 1, False),
            Allocation(STITCH_COLOUR, shape, np.dtype(np.uint8), MASK_SLOTS, True),
        )
    if pixels is not None:
        shape = (image_hw[0], image_hw[1], pixels.channels)
        upload: tuple[Allocation, ...] = (
            Allocation(IMAGE_PIXELS, shape, pixels.dtype, 1, False),
            Allocation(IMAGE_PIXELS, shape, pixels.dtype, 1, True),
        )
    else:
        upload = (allocation("global", GLOBAL_INPUT, 1, pinned=True),)
    allocations = (
        allocation("global", GLOBAL_INPUT, 1, pinned=False),
        allocation("global", GLOBAL_OUTPUT, 1, pinned=False),
        allocation("local", LOCAL_INPUT, PATCH_SLOTS, pinned=False),
        allocation("local", LOCAL_OUTPUTS[0], lookahead, pinned=False),
        allocation("local", LOCAL_OUTPUTS[1], lookahead, pinned=False),
        allocation("fusion", boxes, lookahead, pinned=False),
        allocation("fusion", FUSION_OUTPUT, 1, pinned=False),
        *upload,
        allocation("fusion", boxes, HOST_SLOTS, pinned=True),
        *stitching,
    )
    return BufferPlan(batch, padded[0], padded[1], lookahead, allocations)


def largest_batch_within(
    manifest: Manifest,
    precision: str,
    image_hw: tuple[int, int],
    budget_bytes: int,
    scratch_bytes: Callable[[int], int] | int = 0,
    max_batch: int = 64,
    lookahead: int = DEFAULT_LOOKAHEAD,
) -> int:
    """The largest batch whose device buffers plus engine scratch memory fit ``budget_bytes``.

    ``scratch_bytes`` is the engines' context memory: a number, or a function of the batch. Raises
    InputError when not even one patch fits, naming the bytes needed.
    """
    def needed(batch: int) -> int:
        scratch = scratch_bytes(batch) if callable(scratch_bytes) else scratch_bytes
        return plan_buffers(manifest, precision, batch, image_hw, lookahead).device_bytes + int(scratch)

    if needed(1) > budget_bytes:
        raise InputError(
            f"a memory budget of {budget_bytes / 2**20:.0f} MiB cannot hold even one patch for a "
            f"{image_hw[0]} x {image_hw[1]} image ({needed(1) / 2**20:.0f} MiB needed); raise the budget"
        )
    best = 1
    for batch in range(2, max_batch + 1):
        if needed(batch) > budget_bytes:
            break
        best = batch
    return best
