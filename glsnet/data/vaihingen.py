"""ISPRS Vaihingen folders: IRRG true orthophoto tiles and RGB-coded label tiles, matched by file name.

Layout (as the ISPRS archives unpack, renamed to two short folders)::

    <root>/top/top_mosaic_09cm_area1.tif   IRRG image, uint8 [H, W, 3] (near-infrared, red, green)
    <root>/gts/top_mosaic_09cm_area1.tif   labels, RGB-coded with VAIHINGEN_PALETTE

Any ``*.tif``/``*.tiff`` name works as long as both folders use it. Use the full ground truth or
the eroded ("noBoundary") one as ``gts/``, as your protocol requires. The 6 classes get their own
configuration (``glsnet.data.datasets.DATASETS["vaihingen"].config()``): the bands are read in file
order (IR, R, G) and normalised with the ImageNet statistics, as is usual with ImageNet weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glsnet.data.datasets import ISPRS_CLASSES, ISPRS_PALETTE
from glsnet.data.palette import Palette
from glsnet.data.scenes import FolderScenes, ScenePair, check_folder, check_same_size, colour_coded_labels
from runtime.errors import InputError

VAIHINGEN_CLASSES = ISPRS_CLASSES
VAIHINGEN_PALETTE: Palette = ISPRS_PALETTE
IMAGE_FOLDER = "top"
LABEL_FOLDER = "gts"
SUFFIXES = (".tif", ".tiff")


def read_tiff(path: Path) -> np.ndarray:
    """Pixels of a TIFF file as uint8 [H, W, C]; InputError naming the file if unreadable or not 8-bit."""
    import tifffile

    try:
        pixels = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise InputError(f"{path}: not a readable TIFF file ({exc})") from exc
    if pixels.dtype != np.uint8:
        raise InputError(f"{path}: expected 8-bit pixels, found {pixels.dtype}; convert the tile to uint8")
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[2] not in (3, 4):
        pixels = np.moveaxis(pixels, 0, -1)  # planar [C, H, W] storage
    return pixels


def vaihingen_pairs(root: str | Path) -> tuple[ScenePair, ...]:
    """(image, label) tiles matched by name, checked to be complete and of equal sizes."""
    root = check_folder(root, "Vaihingen")
    images = check_folder(root / IMAGE_FOLDER, f"Vaihingen image ({IMAGE_FOLDER}/)")
    labels = check_folder(root / LABEL_FOLDER, f"Vaihingen label ({LABEL_FOLDER}/)")
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in SUFFIXES):
        mask = labels / image.name
        if not mask.is_file():
            raise InputError(f"{image}: image without a label tile; expected {LABEL_FOLDER}/{image.name}")
        pair = ScenePair(image.stem, image, mask)
        check_same_size(pair)
        pairs.append(pair)
    if not pairs:
        raise InputError(f"{images}: no .tif tiles found; expected {IMAGE_FOLDER}/<name>.tif with {LABEL_FOLDER}/<name>.tif")
    return tuple(pairs)


def vaihingen_scenes(root: str | Path) -> FolderScenes:
    """A Vaihingen folder as Scenes (labels 0..5 in VAIHINGEN_CLASSES order)."""
    return FolderScenes(vaihingen_pairs(root), read_tiff, colour_coded_labels(read_tiff, VAIHINGEN_PALETTE))
