"""Which reader a data folder needs, and the check that a model's classes match the folder's labels."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from glsnet.config import GLSNetConfig
from glsnet.data.datasets import DATASETS, DatasetInfo
from glsnet.data.deepglobe import deepglobe_scenes
from glsnet.data.mmseg import SPLITS, mmseg_scenes
from glsnet.data.scenes import Scenes
from glsnet.data.vaihingen import vaihingen_scenes
from runtime.errors import InputError


class Layout(str, Enum):
    DEEPGLOBE = "deepglobe"  # <id>_sat.jpg + <id>_mask.png
    VAIHINGEN = "vaihingen"  # top/<name>.tif + gts/<name>.tif (RGB-coded)
    MMSEG_VAIHINGEN = "mmseg-vaihingen"  # img_dir/{train,val} + ann_dir/{train,val}, class-index PNGs
    MMSEG_POTSDAM = "mmseg-potsdam"
    MMSEG_LOVEDA = "mmseg-loveda"

    @property
    def dataset(self) -> DatasetInfo:
        return DATASETS[self.value.removeprefix("mmseg-")]

    @property
    def is_mmseg(self) -> bool:
        return self.value.startswith("mmseg-")


def open_scenes(layout: Layout, folder: str | Path, config: GLSNetConfig, splits: tuple[str, ...] = SPLITS) -> Scenes:
    """The folder's scenes; InputError when ``config`` predicts other classes than the layout labels.

    ``splits`` chooses the mmsegmentation splits read (other layouts have none).
    """
    layout = Layout(layout)
    classes = layout.dataset.classes
    if tuple(config.classes) != classes:
        raise InputError(
            f"{folder}: a {layout.value} folder is labelled {list(classes)} but the model predicts "
            f"{list(config.classes)}; pick the matching --layout, or a configuration made for this dataset"
        )
    if layout.is_mmseg:
        return mmseg_scenes(folder, len(classes), splits, config.ignore_index)
    if layout is Layout.VAIHINGEN:
        return vaihingen_scenes(folder)
    return deepglobe_scenes(folder, config.palette)
