"""DeepGlobe Land Cover folders: ``<id>_sat.jpg`` satellite images beside ``<id>_mask.png`` RGB masks.

``<id>_sat.png`` is accepted too (the synthetic folders use it, being lossless). Masks use the
DeepGlobe palette (glsnet.config.DEEPGLOBE_PALETTE), decoded by glsnet.data.palette.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glsnet.config import DEEPGLOBE_PALETTE
from glsnet.data.palette import Palette
from glsnet.data.scenes import FolderScenes, ScenePair, check_folder, check_same_size, colour_coded_labels
from runtime.errors import InputError

IMAGE_SUFFIXES = ("_sat.jpg", "_sat.png")
MASK_SUFFIX = "_mask.png"


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] pixels of a JPEG/PNG file; InputError naming the file if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except OSError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc


def deepglobe_pairs(folder: str | Path) -> tuple[ScenePair, ...]:
    """The folder's (image, mask) pairs sorted by id, checked to be complete and of equal sizes."""
    folder = check_folder(folder, "DeepGlobe")
    pairs = []
    for image in sorted(p for p in folder.iterdir() if p.name.endswith(IMAGE_SUFFIXES)):
        name = image.name[: image.name.rindex("_sat.")]
        mask = folder / f"{name}{MASK_SUFFIX}"
        if not mask.is_file():
            raise InputError(f"{image}: image without a mask; expected {mask.name} beside it")
        pair = ScenePair(name, image, mask)
        check_same_size(pair)
        pairs.append(pair)
    if not pairs:
        raise InputError(
            f"{folder}: no DeepGlobe images found; expected <id>_sat.jpg (or .png) files with <id>_mask.png masks"
        )
    return tuple(pairs)


def deepglobe_scenes(folder: str | Path, palette: Palette = DEEPGLOBE_PALETTE) -> FolderScenes:
    """A DeepGlobe folder as Scenes (labels 0..6: unknown, urban, agriculture, rangeland, forest, water, barren)."""
    return FolderScenes(deepglobe_pairs(folder), read_rgb, colour_coded_labels(read_rgb, palette))
