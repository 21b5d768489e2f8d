"""How much of the image the global branch can train on: the whole image, or the largest window a memory budget allows.

The paper's global branch sees the whole ultra-high-resolution image each step. Its training memory
grows with the pixels: every activation the backward pass needs is kept. ``activation_bytes_per_pixel``
measures that on two small probes (the bytes autograd saves for the global branch, its auxiliary head and
loss, counted with ``torch.autograd.graph.saved_tensors_hooks``) and takes the slope between them: the
saved weights, the same at every size, drop out. ``global_window`` then gives the whole image when it
fits the budget, else the largest window of the image's aspect ratio (a multiple of the stride, at least
one patch) that does.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from glsnet.losses import focal_loss
from glsnet.model import GLSNet

PROBES = (128, 256)  # px of the two square probe images (multiples of the stride: no rounding between them)
STRIDE = 32


def saved_bytes(model: GLSNet, side: int, gamma: float = 6.0) -> int:
    """Bytes autograd saves for the global branch + global aux head + focal loss on a ``side`` px square image."""
    branch = copy.deepcopy(model.global_branch).train()  # a copy: the probe must not move BatchNorm statistics
    head = copy.deepcopy(model.global_aux)
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    image = torch.randn(1, model.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(1, side, side, dtype=torch.int64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = head(branch(image))
        logits = torch.nn.functional.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
        focal_loss(logits, labels, gamma)
    return saved


def activation_bytes_per_pixel(model: GLSNet, gamma: float = 6.0) -> float:
    """Saved bytes per input pixel in training mode: the slope between the two probes, so weights do not count."""
    small, large = (saved_bytes(model, side, gamma) for side in PROBES)
    return (large - small) / (PROBES[1] ** 2 - PROBES[0] ** 2)


@dataclass(frozen=True)
class GlobalWindow:
    height: int
    width: int
    whole: bool  # the window is the whole image
    needed_mib: float  # estimated activation memory of the whole image
    window_mib: float  # ... and of the window

    def describe(self, image_height: int, image_width: int, budget_mib: float | None) -> str:
        if self.whole:
            return f"global branch: the whole {image_width} x {image_height} px image (~{self.needed_mib:,.0f} MiB of activations)"
        over = budget_mib is not None and self.window_mib > budget_mib
        return (
            f"global branch: {self.width} x {self.height} px windows of the {image_width} x {image_height} px image, "
            f"less than the paper's whole image: it needs ~{self.needed_mib:,.0f} MiB of activations, over the "
            f"--global-memory-mib budget of {budget_mib:,.0f} MiB (window ~{self.window_mib:,.0f} MiB"
            + (", still over the budget: a window holds at least one patch)" if over else ")")
        )


def global_window(height: int, width: int, bytes_per_pixel: float, budget_mib: float | None, patch_size: int) -> GlobalWindow:
    """The whole image if it fits ``budget_mib`` (None: no budget), else the largest fitting window of its aspect."""
    mib = bytes_per_pixel / 2**20
    needed = height * width * mib
    if budget_mib is None or needed <= budget_mib:
        return GlobalWindow(height, width, True, needed, needed)
    scale = math.sqrt(budget_mib / needed)
    fit = lambda side: min(side, max(patch_size, int(side * scale) // STRIDE * STRIDE))  # noqa: E731
    h, w = fit(height), fit(width)
    return GlobalWindow(h, w, (h, w) == (height, width), needed, h * w * mib)
