"""ResNet encoders with one contract: forward -> [stride 4, 8, 16, 32] maps, out_channels, output_stride.

ImageNet weights are loaded from a local file when the user has one; nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet

from runtime.errors import CheckpointError, InputError

_BUILDERS: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
}


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its classifier, returning the four stage outputs."""

    output_stride = 32

    def __init__(self, name: str, in_channels: int = 3, weights: str | Path | None = None) -> None:
        super().__init__()
        if name not in _BUILDERS:
            raise InputError(f"unknown backbone {name!r}; choose one of {sorted(_BUILDERS)}")
        net = _BUILDERS[name](weights=None)
        if weights is not None:
            load_imagenet_weights(net, weights)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = net.layer1[0].expansion
        self.out_channels = tuple(c * expansion for c in (64, 128, 256, 512))
        self.reductions = (4, 8, 16, 32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def load_imagenet_weights(net: resnet.ResNet, path: str | Path) -> None:
    """Load a torchvision ImageNet state dict from a local file (weights_only, never downloaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ImageNet weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise CheckpointError(f"{path}: not a readable torch state dict ({exc})") from exc
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit {type(net).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
