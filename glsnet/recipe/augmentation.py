"""GLNet's training augmentation: a horizontal flip and a rotation by 90, 180 or 270 degrees.

As GLNet's DeepGlobe loader draws them: flip with probability 0.5; with probability 0.5 a rotation,
its angle uniform over the three. Applied to the whole scene before the crop and the patches, on
both the image and its labels, exactly (array flips and rot90, no interpolation).
"""

from __future__ import annotations

import numpy as np


def flip_rot90(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image [H, W, C], labels [H, W]) flipped and/or rotated as ``rng`` draws; contiguous copies."""
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rng.random() < 0.5:
        turns = int(rng.integers(1, 4))
        image, labels = np.rot90(image, turns, axes=(0, 1)), np.rot90(labels, turns, axes=(0, 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)
