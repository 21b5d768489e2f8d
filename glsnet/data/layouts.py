"""Which reader a data folder needs, and the check that a model's classes match the folder's labels."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from glsnet.config import DEEPGLOBE_CLASSES, GLSNetConfig
from glsnet.data.deepglobe import deepglobe_scenes
from glsnet.data.scenes import FolderScenes
from glsnet.data.vaihingen import VAIHINGEN_CLASSES, vaihingen_scenes
from runtime.errors import InputError


class Layout(str, Enum):
    DEEPGLOBE = "deepglobe"  # <id>_sat.jpg + <id>_mask.png
    VAIHINGEN = "vaihingen"  # top/<name>.tif + gts/<name>.tif


LAYOUT_CLASSES = {Layout.DEEPGLOBE: DEEPGLOBE_CLASSES, Layout.VAIHINGEN: VAIHINGEN_CLASSES}


def open_scenes(layout: Layout, folder: str | Path, config: GLSNetConfig) -> FolderScenes:
    """The folder's scenes; InputError when ``config`` predicts other classes than the layout labels."""
    layout = Layout(layout)
    if tuple(config.classes) != LAYOUT_CLASSES[layout]:
        raise InputError(
            f"{folder}: a {layout.value} folder is labelled {list(LAYOUT_CLASSES[layout])} but the model predicts "
            f"{list(config.classes)}; pick the matching --layout, or a configuration made for this dataset"
        )
    if layout is Layout.VAIHINGEN:
        return vaihingen_scenes(folder)
    return deepglobe_scenes(folder, config.palette)
