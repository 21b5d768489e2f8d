"""The datasets GLSNet is scored on: class lists, palettes, and the classes the papers leave out of their means.

GLSNet's Table 2 reports Vaihingen over five classes (clutter left out); DeepGlobe results in this line
of work (GLNet, MagNet, GLSNet) average six classes (unknown left out). Potsdam follows the ISPRS
custom of Vaihingen; LoveDA's benchmark averages all seven classes. One rule by class name gives all
of these (runtime.accuracy.metrics.default_mean_exclusions: unknown and clutter are left out); it is only the
default: training and evaluation take an override (``--mean-exclude``).
"""

from __future__ import annotations

from dataclasses import dataclass

from glsnet.config import DEEPGLOBE_CLASSES, DEEPGLOBE_PALETTE, GLSNetConfig
from glsnet.data.palette import Palette
from runtime.accuracy.metrics import default_mean_exclusions
from runtime.errors import InputError

ISPRS_CLASSES = ("impervious", "building", "low_vegetation", "tree", "car", "clutter")
ISPRS_PALETTE: Palette = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
# LoveDA as mmsegmentation's LoveDADataset names and colours it (file values 1..7; 0 is no-data).
LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agricultural")
LOVEDA_PALETTE: Palette = (
    (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128),
)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    palette: Palette

    def config(self, base: GLSNetConfig | None = None) -> GLSNetConfig:
        """``base`` (default: the paper's GLSNet) with this dataset's classes and palette."""
        return (base or GLSNetConfig()).replace(classes=self.classes, palette=self.palette)


DATASETS: dict[str, DatasetInfo] = {
    "deepglobe": DatasetInfo("deepglobe", DEEPGLOBE_CLASSES, DEEPGLOBE_PALETTE),  # means: 6 classes, not unknown
    "vaihingen": DatasetInfo("vaihingen", ISPRS_CLASSES, ISPRS_PALETTE),  # GLSNet Table 2: 5 classes, not clutter
    "potsdam": DatasetInfo("potsdam", ISPRS_CLASSES, ISPRS_PALETTE),  # the ISPRS custom: 5 classes, not clutter
    "loveda": DatasetInfo("loveda", LOVEDA_CLASSES, LOVEDA_PALETTE),  # LoveDA benchmark: all 7 classes
}


def mean_exclusions(classes: tuple[str, ...], override: tuple[str, ...] | None = None) -> tuple[int, ...]:
    """Indices of the classes left out of the means: ``override`` names if given, else the papers' convention."""
    if override is None:
        return default_mean_exclusions(tuple(classes))
    unknown = [n for n in override if n not in classes]
    if unknown:
        raise InputError(f"--mean-exclude: {unknown} not among the model's classes {list(classes)}")
    return tuple(classes.index(n) for n in override)


def parse_class_names(text: str | None) -> tuple[str, ...] | None:
    """'clutter,car' -> ('clutter', 'car'); 'none' -> () (every class in the means); None -> None (the default)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    return tuple(n.strip() for n in text.split(",") if n.strip())
