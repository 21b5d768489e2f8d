"""Pixels to network input: band selection and normalisation, identical for training, export and runtime."""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError
from runtime.manifest import Normalization

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=255.0, bands=(0, 1, 2))


def normalize(pixels: np.ndarray, norm: Normalization = IMAGENET) -> np.ndarray:
    """[H, W, C] image (any integer or float dtype) -> float32 [len(bands), H, W] network input."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise InputError(f"expected an image of shape [H, W, C], got shape {pixels.shape}")
    if max(norm.bands) >= pixels.shape[2]:
        raise InputError(
            f"the image has {pixels.shape[2]} band(s) but the model reads bands {list(norm.bands)}; "
            "choose bands that exist (e.g. --bands 0,1,2)"
        )
    selected = pixels[:, :, list(norm.bands)]
    mean = np.asarray(norm.mean, dtype=np.float32) * norm.scale
    inv_std = 1.0 / (np.asarray(norm.std, dtype=np.float32) * norm.scale)
    out = (selected.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(out.transpose(2, 0, 1))
