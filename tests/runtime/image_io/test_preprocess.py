"""normalize: band selection and normalisation, into a fresh array or in place into a caller's (strided) buffer."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.bundle.manifest import Normalization
from runtime.image_io.preprocess import normalize

NORM = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=255.0, bands=(2, 0, 3))


def reference(pixels: np.ndarray, norm: Normalization) -> np.ndarray:
    """The whole-image formula: select, cast, centre, scale, move bands first."""
    mean = np.asarray(norm.mean, dtype=np.float32) * norm.scale
    inv_std = 1.0 / (np.asarray(norm.std, dtype=np.float32) * norm.scale)
    return np.ascontiguousarray(((pixels[:, :, list(norm.bands)].astype(np.float32) - mean) * inv_std).transpose(2, 0, 1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_normalize_equals_the_whole_image_formula_bit_for_bit(dtype):
    pixels = (np.random.default_rng(3).random((37, 53, 4)) * 250).astype(dtype)
    out = normalize(pixels, NORM)
    assert out.dtype == np.float32 and out.shape == (3, 37, 53) and out.flags.c_contiguous
    np.testing.assert_array_equal(out.view(np.uint32), reference(pixels, NORM).view(np.uint32))


def test_normalize_writes_into_a_strided_view_and_leaves_the_rest():
    """The runtime's padded strips: the image's rows and columns of a larger zeroed buffer."""
    pixels = np.random.default_rng(4).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    padded = np.zeros((3, 24, 40), dtype=np.float32)
    returned = normalize(pixels, NORM, out=padded[:, :20, :30])
    assert np.shares_memory(returned, padded)
    np.testing.assert_array_equal(padded[:, :20, :30], reference(pixels, NORM))
    assert not padded[:, 20:].any() and not padded[:, :, 30:].any()


def test_normalize_refuses_an_output_of_the_wrong_shape_or_type():
    pixels = np.zeros((8, 9, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"float32 \(3, 8, 9\)"):
        normalize(pixels, NORM, out=np.zeros((3, 8, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="float64"):
        normalize(pixels, NORM, out=np.zeros((3, 8, 9), dtype=np.float64))
