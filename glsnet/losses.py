"""GLSNet's training loss: focal loss (weight 1.0, gamma 6) on the fused logits plus two auxiliary
focal losses (weight 0.15 each) on the global and local branches' own predictions (paper values).

Every prediction is upsampled bilinearly to its label map, so all three losses are measured at
full label resolution and pixels labelled ``ignore_index`` (patch padding) count nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glsnet.model import GLSNetOutput


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 6.0, ignore_index: int = 255) -> torch.Tensor:
    """mean over non-ignored pixels of -(1 - p_t)^gamma log p_t; logits [N, K, ...], target [N, ...].

    gamma = 0 is cross-entropy. With no labelled pixel the loss is 0 (still attached to the graph).
    """
    valid = target != ignore_index
    log_probs = F.log_softmax(logits, dim=1)
    log_pt = log_probs.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    loss = -log_pt if gamma == 0 else -((1.0 - log_pt.exp()) ** gamma) * log_pt
    count = valid.sum()
    if count == 0:
        return logits.sum() * 0.0
    return (loss * valid).sum() / count


def _resized(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@dataclass
class LossParts:
    total: torch.Tensor
    main: torch.Tensor
    global_aux: torch.Tensor
    local_aux: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "main", "global_aux", "local_aux")}


class GLSNetLoss(nn.Module):
    """focal(fused logits, patch labels) + aux_weight * (focal(global aux, crop labels) + focal(local aux, patch labels))."""

    def __init__(self, gamma: float = 6.0, aux_weight: float = 0.15, ignore_index: int = 255) -> None:
        super().__init__()
        self.gamma = gamma
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    def forward(self, output: GLSNetOutput, patch_labels: torch.Tensor, crop_labels: torch.Tensor) -> LossParts:
        """``patch_labels`` [B, P, P] and ``crop_labels`` [H, W] (the global branch's whole input)."""
        patch_size = tuple(patch_labels.shape[-2:])
        main = focal_loss(_resized(output.logits, patch_size), patch_labels, self.gamma, self.ignore_index)
        global_aux = focal_loss(
            _resized(output.global_aux, tuple(crop_labels.shape[-2:])), crop_labels.reshape(1, *crop_labels.shape[-2:]),
            self.gamma, self.ignore_index,
        )
        local_aux = focal_loss(_resized(output.local_aux, patch_size), patch_labels, self.gamma, self.ignore_index)
        total = main + self.aux_weight * (global_aux + local_aux)
        return LossParts(total, main, global_aux, local_aux)
