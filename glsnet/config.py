"""GLSNet's configuration: one frozen dataclass that travels with every checkpoint and bundle."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runtime.bundle.manifest import Normalization
from runtime.errors import CheckpointError, InputError
from runtime.image_io.preprocess import IMAGENET_MEAN, IMAGENET_STD

DEEPGLOBE_CLASSES = ("unknown", "urban", "agriculture", "rangeland", "forest", "water", "barren")
DEEPGLOBE_PALETTE = (
    (0, 0, 0),
    (0, 255, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 255),
)

# The paper's ablation: (global backbone, local backbone).
VARIANTS: dict[str, tuple[str, str]] = {
    "shallow-deep": ("resnet18", "resnet50"),  # GLSNet
    "shallow-shallow": ("resnet18", "resnet18"),
    "deep-deep": ("resnet50", "resnet50"),
}
# Table 4's Deep-Deep also has an FPN in both branches (glsnet.fpn).
VARIANTS_WITH_FPN = frozenset({"deep-deep"})


@dataclass(frozen=True)
class GLSNetConfig:
    """Architecture and data conventions. Defaults are the paper's GLSNet on DeepGlobe."""

    classes: tuple[str, ...] = DEEPGLOBE_CLASSES
    palette: tuple[tuple[int, int, int], ...] = DEEPGLOBE_PALETTE
    global_backbone: str = "resnet18"
    local_backbone: str = "resnet50"
    width: int = 256  # d: the shared token width after each branch's 1x1 neck
    skip_width: int = 48  # channels of the local stride-4 skip fed to the head
    head_width: int = 128
    patch_size: int = 508
    min_overlap: int = 50
    context: float = 0.25  # global crop margin on each side, as a fraction of the patch size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bands: tuple[int, ...] = (0, 1, 2)
    ignore_index: int = 255
    fpn: bool = False  # both backbones followed by a feature pyramid (the paper's Deep-Deep, Table 4)

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.classes):
            raise InputError(f"config: {len(self.classes)} classes but {len(self.palette)} palette colours")
        if not len(self.mean) == len(self.std) == len(self.bands):
            raise InputError("config: mean, std and bands must have one entry per input band")
        if self.patch_size % 4:
            raise InputError(f"config: patch_size {self.patch_size} must be a multiple of 4 (logits at stride 4)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def normalization(self) -> Normalization:
        """The normalisation a model of this config expects; its bundle's manifest records the same."""
        return Normalization(mean=tuple(self.mean), std=tuple(self.std), scale=255.0, bands=tuple(self.bands))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "GLSNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{where}: unknown configuration key(s) {unknown}; known: {sorted(known)}")
        values = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "GLSNetConfig":
        return dataclasses.replace(self, **changes)


def with_bands(config: GLSNetConfig, bands: tuple[int, ...]) -> GLSNetConfig:
    """``config`` reading the image bands ``bands`` (file order, 0-based), e.g. (3, 0, 1) for IRRG from RGBIR.

    Three bands keep the ImageNet statistics (as is usual for IRRG with ImageNet weights); any other count
    uses ImageNet's statistics for the first three and their mean (0.449 / 0.226) for the rest, and the
    backbones' first convolution is then a new one, not ImageNet's.
    """
    if not bands or min(bands) < 0:
        raise InputError(f"--bands {list(bands)}: give one or more band indices >= 0, e.g. 0,1,2")
    extra_mean, extra_std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    mean = tuple(IMAGENET_MEAN[i] if i < 3 else round(extra_mean, 3) for i in range(len(bands)))
    std = tuple(IMAGENET_STD[i] if i < 3 else round(extra_std, 3) for i in range(len(bands)))
    return config.replace(bands=tuple(bands), mean=mean, std=std)


def variant(name: str, **changes: Any) -> GLSNetConfig:
    """The paper's named ablation variants, e.g. ``variant("deep-deep")``."""
    if name not in VARIANTS:
        raise InputError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    global_backbone, local_backbone = VARIANTS[name]
    changes = {"fpn": name in VARIANTS_WITH_FPN, **changes}
    return GLSNetConfig(global_backbone=global_backbone, local_backbone=local_backbone, **changes)


# A configuration small enough to train for a few steps on a 2-core CPU (tests, the demo).
SMALL = GLSNetConfig(width=64, skip_width=16, head_width=32, patch_size=128, min_overlap=16)
