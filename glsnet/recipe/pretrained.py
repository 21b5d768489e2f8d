"""The torchvision ImageNet files the backbones start from, recognised by sha256.

The paper starts both backbones from ImageNet without naming the files; torchvision's V1 files below
are the ones that existed when GLNet and GLSNet's baselines were trained (V2 came in 2021). Nothing is downloaded: the user fetches the file
once (URL below, or ``torchvision.models.resnet50(weights="IMAGENET1K_V1")`` on a machine with network,
which caches it under ``~/.cache/torch/hub/checkpoints/``) and passes its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.bundle.manifest import sha256_file
from runtime.errors import InputError


@dataclass(frozen=True)
class ImagenetFile:
    backbone: str
    file_name: str
    sha256: str
    size_bytes: int
    weights: str  # torchvision's enum member

    @property
    def url(self) -> str:
        return f"https://download.pytorch.org/models/{self.file_name}"


# torchvision's file names carry the first 8 hex digits of the sha256; the full digests and sizes
# agree across several public records of these files.
IMAGENET_FILES = (
    ImagenetFile("resnet18", "resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec", 46_830_571, "ResNet18_Weights.IMAGENET1K_V1"),
    ImagenetFile("resnet50", "resnet50-0676ba61.pth", "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a", 102_530_333, "ResNet50_Weights.IMAGENET1K_V1"),
    ImagenetFile("resnet50", "resnet50-11ad3fa6.pth", "11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca", 102_540_417, "ResNet50_Weights.IMAGENET1K_V2"),
)


def expected_files(backbone: str) -> list[ImagenetFile]:
    return [f for f in IMAGENET_FILES if f.backbone == backbone]


def describe_expected(backbone: str) -> str:
    files = expected_files(backbone)
    if not files:
        return f"a torchvision {backbone} ImageNet state dict"
    return " or ".join(f"{f.file_name} ({f.weights}, {f.url})" for f in files)


def check_weights_file(path: str | Path, backbone: str) -> ImagenetFile | None:
    """The known file ``path`` is (by sha256); InputError naming it if it is another backbone's or an unknown
    file for a backbone whose files are known; None for a backbone without known files (unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ImageNet weights file not found (expected {describe_expected(backbone)})")
    known = expected_files(backbone)
    if not known:
        return None
    digest = sha256_file(path)
    for entry in IMAGENET_FILES:
        if entry.sha256 == digest:
            if entry.backbone != backbone:
                raise InputError(f"{path}: these are {entry.backbone} weights ({entry.file_name}), the {backbone} backbone needs {describe_expected(backbone)}")
            return entry
    raise InputError(
        f"{path}: sha256 {digest} is not a known {backbone} ImageNet file; expected {describe_expected(backbone)} "
        "(a partial download or another file?)"
    )


def require_imagenet(global_backbone: str, local_backbone: str, global_weights: Path | None, local_weights: Path | None) -> None:
    """--preset paper without --no-pretrained: both files must be given; InputError naming the files expected."""
    missing = [
        f"--imagenet-{branch} ({describe_expected(backbone)})"
        for branch, backbone, given in (("global", global_backbone, global_weights), ("local", local_backbone, local_weights))
        if given is None
    ]
    if missing:
        raise InputError(
            "--preset paper starts both backbones from ImageNet, as the paper does; give " + " and ".join(missing)
            + ", or --no-pretrained to train from random weights (not the paper's)"
        )
