"""Folders as mmsegmentation's dataset converters write them, for ISPRS Vaihingen, ISPRS Potsdam and LoveDA.

Layout (tools/dataset_converters/{vaihingen,potsdam,loveda}.py)::

    <root>/img_dir/train/<name>.png    image tiles (Vaihingen: IRRG; Potsdam: RGB; LoveDA: RGB)
    <root>/img_dir/val/<name>.png
    <root>/ann_dir/train/<name>.png    single-channel class-index labels
    <root>/ann_dir/val/<name>.png

Labels are stored with mmsegmentation's ``reduce_zero_label`` convention, which all three datasets
use: file value 0 is "no label" (ISPRS: the eroded boundaries; LoveDA: no-data) and becomes the
ignore index, value v >= 1 is class v - 1 of the dataset's class list. The ISPRS converters map
the RGB ground truth so that class v - 1 follows (impervious, building, low_vegetation, tree, car,
clutter), the order of mmsegmentation's ISPRS datasets and of glsnet.data.datasets.

Images may also be TIFF (``.tif``/``.tiff``) and have any number of bands (Potsdam's RGBIR
tiles have four); the model's ``bands`` pick the ones it reads (``--bands``). Training uses
``train/`` for training and ``val/`` for validation; evaluation and calibration read the split asked.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from glsnet.data.scenes import FolderScenes, ScenePair, check_folder, check_same_size
from runtime.errors import InputError
from runtime.image_io.readers import open_image

SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".tif", ".tiff")
NO_LABEL = 0


def read_pixels(path: Path) -> np.ndarray:
    """uint8 [H, W, C] with every band the file holds, read as the runtime reads images."""
    source = open_image(path)
    try:
        pixels = source.read_rows(0, source.height)
    finally:
        source.close()
    if pixels.dtype != np.uint8:
        raise InputError(f"{path}: expected 8-bit pixels, found {pixels.dtype}")
    return pixels


def read_index_labels(path: Path, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """uint8 class indices from a reduce_zero_label PNG: 0 -> ``ignore_index``, v -> v - 1; InputError on v > classes."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            values = np.array(image)
    except OSError as exc:
        raise InputError(f"{path}: not a readable label image ({exc})") from exc
    if values.ndim != 2:
        raise InputError(
            f"{path}: expected a single-channel class-index PNG (mmsegmentation ann_dir), got shape {values.shape}; "
            "RGB-coded masks belong to the original ISPRS layout (--layout vaihingen)"
        )
    too_big = values > num_classes
    if too_big.any():
        raise InputError(
            f"{path}: label value(s) {sorted(int(v) for v in np.unique(values[too_big]))[:5]} exceed the {num_classes} "
            f"classes (file values are 0 = no label, 1..{num_classes} = classes); pick the --layout of this dataset"
        )
    labels = values.astype(np.int16) - 1
    labels[values == NO_LABEL] = ignore_index
    return labels.astype(np.uint8)


def mmseg_pairs(root: str | Path, split: str) -> tuple[ScenePair, ...]:
    """(image, label) pairs of one split, matched by file stem, checked to be complete and of equal sizes."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; an mmsegmentation folder has {list(SPLITS)}")
    root = check_folder(root, "mmsegmentation dataset")
    images = check_folder(root / "img_dir" / split, f"image (img_dir/{split}/)")
    labels = check_folder(root / "ann_dir" / split, f"label (ann_dir/{split}/)")
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask = labels / f"{image.stem}.png"
        if not mask.is_file():
            raise InputError(f"{image}: image without a label; expected ann_dir/{split}/{mask.name}")
        pair = ScenePair(f"{split}/{image.stem}", image, mask)
        check_same_size(pair)
        pairs.append(pair)
    if not pairs:
        raise InputError(f"{images}: no image tiles found; expected img_dir/{split}/<name>.png with ann_dir/{split}/<name>.png")
    return tuple(pairs)


def mmseg_scenes(root: str | Path, num_classes: int, splits: tuple[str, ...] = SPLITS, ignore_index: int = 255) -> FolderScenes:
    """The chosen splits of an mmsegmentation folder (a missing val/ is fine when train/ exists, and vice versa);
    scenes are named '<split>/<stem>', and those of val/ are the ones training holds out."""
    root = Path(root)
    present = [s for s in splits if (root / "img_dir" / s).is_dir()] or list(splits[:1])
    pairs = tuple(p for split in present for p in mmseg_pairs(root, split))
    labels = functools.partial(read_index_labels, num_classes=num_classes, ignore_index=ignore_index)
    held_out = tuple(p.name for p in pairs if p.name.startswith("val/"))
    return FolderScenes(pairs, read_pixels, labels, held_out)
