"""GLSNet's training loss: focal loss (weight 1.0, gamma 6) on the fused logits plus two auxiliary
focal losses on the global and local branches' own predictions.

The paper's 0.15 has two readings (``AuxMode``, docs/model.md): ``implemented``, each auxiliary loss
weighted 0.15; ``glnet``, as GLNet's code (which GLSNet builds on) weighs its terms: auxiliary losses at
1.0 plus 0.15 x a feature-map regulariser, the mean squared difference between the local branch's
tokens and the global branch's tokens at the same pixels (the centre of the fusion's aligned crop).

Every prediction is upsampled bilinearly to its label map, so all three losses are measured at
full label resolution and pixels labelled ``ignore_index`` (patch padding) count nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from glsnet.model import GLSNet, GLSNetOutput


class AuxMode(str, Enum):
    IMPLEMENTED = "implemented"  # main + w * (global aux + local aux), w = 0.15
    GLNET = "glnet"  # main + 1.0 * (global aux + local aux) + w * feature-map regulariser, w = 0.15


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
    fmreg: torch.Tensor | None = None  # GLNet's feature-map regulariser (aux mode glnet only)

    def as_floats(self) -> dict[str, float]:
        names = ("total", "main", "global_aux", "local_aux") + (("fmreg",) if self.fmreg is not None else ())
        return {k: float(getattr(self, k).detach()) for k in names}


def feature_map_regulariser(model: GLSNet, output: GLSNetOutput) -> torch.Tensor:
    """Mean squared difference between each patch's local tokens and the global tokens at the same pixels."""
    local = output.local_features
    h, w = int(local.shape[-2]), int(local.shape[-1])
    crop = model.fusion.crop
    margin_y, margin_x = crop.margins(h, w)
    aligned = crop(output.global_features, output.boxes, h, w)  # [B, d, h + 2my, w + 2mx]
    aligned = aligned[:, :, margin_y : margin_y + h, margin_x : margin_x + w]
    return F.mse_loss(local.float(), aligned.float())


class GLSNetLoss(nn.Module):
    """focal(fused logits, patch labels) + aux_weight * (focal(global aux, crop labels) + focal(local aux, patch labels))."""

    def __init__(
        self, gamma: float = 6.0, aux_weight: float = 0.15, ignore_index: int = 255,
        aux_mode: AuxMode = AuxMode.IMPLEMENTED, model: GLSNet | None = None,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.aux_mode = AuxMode(aux_mode)
        if self.aux_mode is AuxMode.GLNET and model is None:
            raise ValueError("aux mode glnet needs the model (its fusion's crop aligns the feature maps)")
        self._model = [model]  # a list: not registered as a submodule

    def forward(self, output: GLSNetOutput, patch_labels: torch.Tensor, crop_labels: torch.Tensor) -> LossParts:
        """``patch_labels`` [B, P, P] and ``crop_labels`` [H, W] (the global branch's whole input)."""
        patch_size = tuple(patch_labels.shape[-2:])
        main = focal_loss(_resized(output.logits, patch_size), patch_labels, self.gamma, self.ignore_index)
        global_aux = focal_loss(
            _resized(output.global_aux, tuple(crop_labels.shape[-2:])), crop_labels.reshape(1, *crop_labels.shape[-2:]),
            self.gamma, self.ignore_index,
        )
        local_aux = focal_loss(_resized(output.local_aux, patch_size), patch_labels, self.gamma, self.ignore_index)
        if self.aux_mode is AuxMode.IMPLEMENTED:
            total = main + self.aux_weight * (global_aux + local_aux)
            return LossParts(total, main, global_aux, local_aux)
        fmreg = feature_map_regulariser(self._model[0], output)
        total = main + global_aux + local_aux + self.aux_weight * fmreg
        return LossParts(total, main, global_aux, local_aux, fmreg)
