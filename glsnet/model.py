"""GLSNet: ResNet18 on the whole image, ResNet50 on its patches, GL-Deep Fusion on top.

Reads top to bottom: branches -> model -> builder. The three exported graphs are exactly
``GlobalBranch``, ``LocalBranch`` and ``GLDeepFusion``; the runtime chains them the same way
``glsnet.inference`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from glsnet.backbones import ResNetEncoder
from glsnet.config import GLSNetConfig
from glsnet.fpn import FPNEncoder
from glsnet.fusion import GLDeepFusion, conv_bn_relu


def encoder(config: GLSNetConfig, name: str, weights: str | Path | None) -> nn.Module:
    """The backbone ``name`` (ImageNet ``weights`` if given), followed by a feature pyramid when ``config.fpn``."""
    resnet = ResNetEncoder(name, config.in_channels, weights)
    return FPNEncoder(resnet, config.width) if config.fpn else resnet


class GlobalBranch(nn.Module):
    """Shallow backbone over the whole, full-resolution image -> [1, d, H/32, W/32] global features."""

    def __init__(self, backbone: ResNetEncoder, width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = conv_bn_relu(backbone.out_channels[-1], width, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(image)[-1])


class LocalBranch(nn.Module):
    """Deep backbone over patches -> tokens [B, d, P/32, P/32] and stride-4 skip features."""

    def __init__(self, backbone: ResNetEncoder, width: int, skip_width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = conv_bn_relu(backbone.out_channels[-1], width, kernel_size=1)
        self.skip = conv_bn_relu(backbone.out_channels[0], skip_width, kernel_size=1)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(patches)
        return self.neck(features[-1]), self.skip(features[0])


@dataclass
class GLSNetOutput:
    logits: torch.Tensor  # [B, K, P/4, P/4] fused patch logits
    global_aux: torch.Tensor  # [1, K, H/32, W/32] from the global branch alone
    local_aux: torch.Tensor  # [B, K, P/32, P/32] from the local branch alone
    global_features: torch.Tensor | None = None  # [1, d, H/32, W/32], for GLNet's feature-map regulariser
    local_features: torch.Tensor | None = None  # [B, d, P/32, P/32]
    boxes: torch.Tensor | None = None  # [B, 4] the patches' boxes


class GLSNet(nn.Module):
    """The dual-branch network; ``__init__`` only wires parts sized from the backbones' metadata."""

    def __init__(
        self,
        config: GLSNetConfig,
        global_weights: str | Path | None = None,
        local_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        c = config
        self.global_branch = GlobalBranch(encoder(c, c.global_backbone, global_weights), c.width)
        self.local_branch = LocalBranch(encoder(c, c.local_backbone, local_weights), c.width, c.skip_width)
        self.fusion = GLDeepFusion(c.width, c.skip_width, c.head_width, c.num_classes, c.context)
        self.global_aux = nn.Conv2d(c.width, c.num_classes, kernel_size=1)
        self.local_aux = nn.Conv2d(c.width, c.num_classes, kernel_size=1)

    def forward(self, image: torch.Tensor, patches: torch.Tensor, boxes: torch.Tensor) -> GLSNetOutput:
        """Training forward: one normalised image [1, C, H, W], B of its patches and their boxes [B, 4]."""
        return self.patch_outputs(self.global_branch(image), patches, boxes)

    def patch_outputs(self, global_features: torch.Tensor, patches: torch.Tensor, boxes: torch.Tensor) -> GLSNetOutput:
        """The outputs for B patches given the image's global features (computed once per image, so that
        the patches of one image can be trained in several chunks; glsnet.training)."""
        local_features, local_skip = self.local_branch(patches)
        logits = self.fusion(local_features, local_skip, global_features, boxes)
        return GLSNetOutput(
            logits, self.global_aux(global_features), self.local_aux(local_features), global_features, local_features, boxes,
        )

    def parameter_groups(self, global_lr: float, local_lr: float) -> list[dict]:
        """Adam groups: the local branch (and its aux head) at ``local_lr``; the global branch, the
        fusion and the global aux head at ``global_lr``."""
        local_params = list(self.local_branch.parameters()) + list(self.local_aux.parameters())
        ids = {id(p) for p in local_params}
        global_params = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": global_params, "lr": global_lr}, {"params": local_params, "lr": local_lr}]


def build_glsnet(config: GLSNetConfig | None = None, **weights: str | Path | None) -> GLSNet:
    """GLSNet from a config (the paper's Shallow-Deep default); ``global_weights``/``local_weights``
    may name local ImageNet state-dict files."""
    return GLSNet(config or GLSNetConfig(), **weights)
