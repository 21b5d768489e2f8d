"""Whole-image inference in PyTorch: the reference every exported path is compared with.

It chains the branches exactly as the runtime chains the three graphs: global features once,
local and fusion per batch of patches, bilinear upsampling of the stride-4 logits to the patch,
and pyramid-weighted blending (runtime.algorithm.stitching) of overlapping patches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from glsnet.model import GLSNet
from runtime.algorithm.patch_grid import make_grid
from runtime.algorithm.stitching import patch_weights


def pad_to_grid(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero-pad a normalised [C, H, W] image at the bottom/right so that one patch fits."""
    _, h, w = image.shape
    return F.pad(image, (0, max(0, patch_size - w), 0, max(0, patch_size - h)))


@torch.no_grad()
def predict_logits(model: GLSNet, image: torch.Tensor | np.ndarray, batch_size: int = 6) -> torch.Tensor:
    """Normalised image [C, H, W] -> blended logits [K, H, W] (float32, on the CPU; computed where the image is)."""
    model.eval()
    image = torch.as_tensor(image, dtype=torch.float32)
    c = model.config
    _, height, width = image.shape
    grid = make_grid(height, width, c.patch_size, c.min_overlap)
    padded = pad_to_grid(image, c.patch_size)
    global_features = model.global_branch(padded[None])
    where = padded.device
    weights = torch.from_numpy(np.array(patch_weights(c.patch_size))).to(where)
    total = torch.zeros(c.num_classes, grid.padded_height, grid.padded_width, device=where)
    weight_sum = torch.zeros(grid.padded_height, grid.padded_width, device=where)
    origins = grid.origins()
    p = c.patch_size
    for start in range(0, len(origins), batch_size):
        batch = origins[start : start + batch_size]
        patches = torch.stack([padded[:, y : y + p, x : x + p] for y, x in batch])
        boxes = torch.from_numpy(grid.boxes(list(range(start, start + len(batch))))).to(where)
        local_features, local_skip = model.local_branch(patches)
        logits = model.fusion(local_features, local_skip, global_features, boxes)
        logits = F.interpolate(logits, size=(p, p), mode="bilinear", align_corners=False)
        for (y, x), patch_logits in zip(batch, logits):
            total[:, y : y + p, x : x + p] += patch_logits * weights
            weight_sum[y : y + p, x : x + p] += weights
    return (total / weight_sum)[:, :height, :width].cpu()


def predict_mask(model: GLSNet, image: torch.Tensor | np.ndarray, batch_size: int = 6) -> np.ndarray:
    """Normalised image [C, H, W] -> uint8 class-index mask [H, W]."""
    return predict_logits(model, image, batch_size).argmax(0).to(torch.uint8).numpy()
