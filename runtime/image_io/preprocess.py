"""Pixels to network input: band selection and normalisation, identical for training, export and runtime.

The normalisation always comes from the caller (the bundle's manifest or the training config):
there is no default, so no code path can silently feed a model statistics it was not trained with.
"""

from __future__ import annotations

import numpy as np

from runtime.bundle.manifest import Normalization
from runtime.errors import InputError

# The ImageNet statistics the backbones were pretrained with: the training config's default
# (glsnet.config), recorded in every bundle's manifest from there.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_bands(band_count: int, norm: Normalization, name: str = "the image") -> None:
    """Refuse an image that lacks a band the model reads, with a hint only when one can help."""
    if max(norm.bands) < band_count:
        return
    needed = len(norm.bands)
    if band_count < needed:
        raise InputError(
            f"{name}: the image has {band_count} band(s) but the model reads {needed} ({list(norm.bands)}); "
            f"it needs an image with at least {needed} bands"
        )
    raise InputError(
        f"{name}: the image has {band_count} band(s) but the model reads bands {list(norm.bands)}; "
        f"choose {needed} bands that exist, e.g. --bands {','.join(str(i) for i in range(needed))}"
    )


def normalize(pixels: np.ndarray, norm: Normalization, out: np.ndarray | None = None) -> np.ndarray:
    """[H, W, C] image (any integer or float dtype) -> float32 [len(bands), H, W] network input.

    ``out`` (float32 [len(bands), H, W], any strides): written in place and returned. Band by band,
    with no temporary of the image's size: the runtime normalises every strip it reads, and each
    temporary was a fresh mapping the kernel zeroed.
    """
    if not isinstance(norm, Normalization):
        raise TypeError(f"normalize() needs the model's Normalization, got {type(norm).__name__}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise InputError(f"expected an image of shape [H, W, C], got shape {pixels.shape}")
    check_bands(pixels.shape[2], norm)
    expected = (len(norm.bands), *pixels.shape[:2])
    if out is None:
        out = np.empty(expected, dtype=np.float32)
    elif out.shape != expected or out.dtype != np.float32:
        raise ValueError(f"normalize() writes float32 {expected}, got {out.dtype} {out.shape}")
    mean = np.asarray(norm.mean, dtype=np.float32) * norm.scale
    inv_std = 1.0 / (np.asarray(norm.std, dtype=np.float32) * norm.scale)
    for channel, band in enumerate(norm.bands):
        np.subtract(pixels[:, :, band], mean[channel], out=out[channel], dtype=np.float32)
        out[channel] *= inv_std[channel]
    return out
