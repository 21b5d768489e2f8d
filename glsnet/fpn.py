"""A feature pyramid over a ResNet, for the paper's Deep-Deep ablation (Table 4: ResNet50 / ResNet50
with FPN + GL-Deep Fusion).

The paper names the FPN but not its wiring, nor which level feeds the fusion. Ours: the usual FPN
top-down path (1 x 1 laterals to ``width`` channels, nearest upsampling, a 3 x 3 smoothing per merged
level), then a bottom-up path of 3 x 3 stride-2 convolutions back to stride 32 (as PANet), so the
stride-32 tokens GL-Deep Fusion reads carry every level. Each stride-2 convolution pads symmetrically,
so cell j still centres on pixel 32 j, as the plain ResNet's tokens do (docs/model.md). The encoder
keeps the backbones' contract: forward -> [stride 4, 8, 16, 32] maps, ``out_channels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glsnet.backbones import ResNetEncoder
from glsnet.fusion import conv_bn_relu


def _down(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


class FPNEncoder(nn.Module):
    """A ResNet encoder followed by an FPN (top-down) and a bottom-up path; four maps of ``width`` channels."""

    def __init__(self, resnet: ResNetEncoder, width: int) -> None:
        super().__init__()
        self.resnet = resnet
        self.name = resnet.name  # the backbone's; the pyramid shows in the type
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in resnet.out_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(width, width, kernel_size=3) for _ in range(3))  # stride 4, 8, 16
        self.down = nn.ModuleList(_down(width) for _ in range(3))  # 4 -> 8, 8 -> 16, 16 -> 32
        self.out_channels = (width,) * 4
        self.reductions = resnet.reductions

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = self.resnet(x)
        top = self.lateral[3](levels[3])
        pyramid = [top]
        for i in (2, 1, 0):
            height, width = levels[i].shape[-2:]
            # x2 nearest, cropped to the finer level (ceil halving makes it one row/column larger at odd sizes);
            # a fixed scale rather than a size keeps the exported graphs' static batch and channel axes
            upsampled = F.interpolate(top, scale_factor=2.0, mode="nearest")[:, :, :height, :width]
            top = self.lateral[i](levels[i]) + upsampled
            pyramid.insert(0, self.smooth[i](top))
        out = [pyramid[0]]
        for i in range(3):
            out.append(pyramid[i + 1] + self.down[i](out[-1]))
        return out
