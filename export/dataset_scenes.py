"""Calibration scenes from a labelled dataset folder in any layout glsnet.data reads (DeepGlobe, ISPRS, mmsegmentation).

The folder's classes must be the bundle's; each scene comes with its class-index labels, so the
accuracy gate can score against them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.bundle.manifest import read_manifest
from runtime.errors import InputError


def read_dataset_scenes(
    bundle_dir: str | Path, folder: str | Path, layout: str, split: str = "train", max_scenes: int = 16, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """(images, labels, image files) of up to ``max_scenes`` scenes (a seeded choice, in name order) of ``folder``."""
    from glsnet.data.layouts import Layout, open_scenes

    try:
        chosen = Layout(layout)
    except ValueError:
        raise InputError(f"--layout {layout!r}: choose one of {[l.value for l in Layout]}") from None
    if max_scenes < 1:
        raise InputError(f"--max-scenes must be >= 1, got {max_scenes}")
    manifest = read_manifest(bundle_dir)
    dataset = chosen.dataset
    if tuple(manifest.classes) != dataset.classes:
        raise InputError(
            f"{folder}: a {chosen.value} folder is labelled {list(dataset.classes)} but the bundle {bundle_dir} predicts "
            f"{list(manifest.classes)}; calibrate with data of the model's classes"
        )
    config = dataset.config().replace(ignore_index=255)
    scenes = open_scenes(chosen, folder, config, splits=(split,))
    count = len(scenes.names)
    picked = sorted(np.random.default_rng(seed).choice(count, size=min(max_scenes, count), replace=False).tolist())
    pairs = [scenes.read(i) for i in picked]
    return [image for image, _ in pairs], [labels for _, labels in pairs], [scenes.source(i) for i in picked]
