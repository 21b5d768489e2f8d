"""One labelled scene -> one training sample: a window of it, its patch grid and B of its patches.

The window is what the global branch sees: the whole image in the paper's training mode (or the
largest window a memory budget allows), a small random crop in the fast crop mode
(glsnet.training). The local branch sees ``patches_per_step`` patches of the window, laid out by
the same patch grid (runtime.algorithm.patch_grid) and normalised the same way (runtime.image_io.preprocess) as at
inference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from glsnet.config import GLSNetConfig
from runtime.algorithm.patch_grid import make_grid
from runtime.image_io.preprocess import normalize


@dataclass
class TrainingSample:
    image: torch.Tensor  # [1, C, H, W] normalised crop, zero-padded (bottom/right) to at least one patch
    patches: torch.Tensor  # [B, C, P, P] patches of ``image``
    boxes: torch.Tensor  # [B, 4] float32 x1, y1, x2, y2 of each patch in ``image`` pixels
    patch_labels: torch.Tensor  # [B, P, P] int64; padding is ignore_index
    crop_labels: torch.Tensor  # [H, W] int64 labels of ``image``; padding is ignore_index

    def _map(self, function) -> "TrainingSample":
        return TrainingSample(*(function(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def pin_memory(self) -> "TrainingSample":
        """Page-locked copies, so ``to(cuda, non_blocking=True)`` overlaps the copy with compute."""
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device, channels_last: bool = False) -> "TrainingSample":
        """The sample on ``device`` (asynchronously from pinned memory); images channels-last if asked."""
        moved = self._map(lambda t: t.to(device, non_blocking=True))
        if channels_last:
            moved.image = moved.image.contiguous(memory_format=torch.channels_last)
            moved.patches = moved.patches.contiguous(memory_format=torch.channels_last)
        return moved


def random_crop(
    image: np.ndarray, labels: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` (or (height, width)) window at a random position (the whole axis where the
    scene is smaller)."""
    size_y, size_x = (size, size) if isinstance(size, int) else size
    height, width = labels.shape
    y = int(rng.integers(0, height - size_y + 1)) if height > size_y else 0
    x = int(rng.integers(0, width - size_x + 1)) if width > size_x else 0
    return image[y : y + size_y, x : x + size_x], labels[y : y + size_y, x : x + size_x]


def make_sample(
    image: np.ndarray,
    labels: np.ndarray,
    config: GLSNetConfig,
    crop_size: int | tuple[int, int],
    patches_per_step: int,
    rng: np.random.Generator,
) -> TrainingSample:
    """Crop (``crop_size``: a side or (height, width); at least the scene keeps it whole), normalise, lay
    out the patch grid and pick ``patches_per_step`` of its patches (all if fewer)."""
    image, labels = random_crop(image, labels, crop_size, rng)
    height, width = labels.shape
    grid = make_grid(height, width, config.patch_size, config.min_overlap)
    pixels = np.zeros((config.in_channels, grid.padded_height, grid.padded_width), dtype=np.float32)
    pixels[:, :height, :width] = normalize(image, config.normalization)
    target = np.full((grid.padded_height, grid.padded_width), config.ignore_index, dtype=np.int64)
    target[:height, :width] = labels
    chosen = np.sort(rng.choice(len(grid), size=min(patches_per_step, len(grid)), replace=False))
    origins = grid.origins()
    p = config.patch_size
    windows = [(slice(origins[i][0], origins[i][0] + p), slice(origins[i][1], origins[i][1] + p)) for i in chosen]
    return TrainingSample(
        image=torch.from_numpy(pixels)[None],
        patches=torch.from_numpy(np.stack([pixels[:, ys, xs] for ys, xs in windows])),
        boxes=torch.from_numpy(grid.boxes(chosen)),
        patch_labels=torch.from_numpy(np.stack([target[ys, xs] for ys, xs in windows])),
        crop_labels=torch.from_numpy(target),
    )
