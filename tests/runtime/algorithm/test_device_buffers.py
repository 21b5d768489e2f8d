"""Buffer sizing from the manifest: shapes per batch and image, bytes per tensor, pinned double buffering."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.algorithm.device_buffers import largest_batch_within, numpy_dtype, plan_buffers, tensor_shape
from runtime.bundle.manifest import TensorSpec
from runtime.errors import BundleError, InputError
from tests.tensorrt_support import make_manifest

GLSNET = dict(patch=508, overlap=50, width=256, skip=48, classes=7)  # the paper's configuration


def test_manifest_dtypes_are_read_in_numpy_and_onnx_spellings():
    assert numpy_dtype("float32") == np.float32
    assert numpy_dtype("tensor(float)") == np.float32
    assert numpy_dtype("FLOAT16") == np.float16
    with pytest.raises(BundleError, match="not a numpy or ONNX dtype"):
        numpy_dtype("quaternion")


def test_symbolic_dims_resolve_to_batch_image_and_feature_sizes():
    manifest = make_manifest(**GLSNET)
    patch = manifest.patch
    graphs = manifest.graphs["fp32"]
    padded = (2448, 2448)
    assert tensor_shape(graphs["global"].inputs[0], "global", 6, padded, patch) == (1, 3, 2448, 2448)
    assert tensor_shape(graphs["global"].outputs[0], "global", 6, padded, patch) == (1, 256, 77, 77)
    assert tensor_shape(graphs["local"].inputs[0], "local", 6, padded, patch) == (6, 3, 508, 508)
    assert [tensor_shape(t, "local", 6, padded, patch) for t in graphs["local"].outputs] == [(6, 256, 16, 16), (6, 48, 127, 127)]
    fusion = {t.name: tensor_shape(t, "fusion", 5, (600, 1000), patch) for t in graphs["fusion"].inputs}
    assert fusion["global_features"] == (1, 256, 19, 32)  # the whole image's features, not one per patch
    assert fusion["boxes"] == (5, 4)
    symbolic = TensorSpec("local_skip", "float32", ("batch", 48, "h", "w"))
    assert tensor_shape(symbolic, "local", 2, padded, patch) == (2, 48, 127, 127)
    with pytest.raises(BundleError, match="cannot size dimension 1"):
        tensor_shape(TensorSpec("patches", "float32", ("batch", "channels", 508, 508)), "local", 2, padded, patch)


def test_the_plan_of_the_paper_configuration_at_2448():
    manifest = make_manifest(**GLSNET)
    plan = plan_buffers(manifest, "fp32", batch=6, image_hw=(2448, 2448), lookahead=2)
    f = 4  # float32
    image = 3 * 2448 * 2448 * f
    features = 256 * 77 * 77 * f
    patches = 6 * 3 * 508 * 508 * f
    local = 6 * (256 * 16 * 16 + 48 * 127 * 127) * f
    boxes = 6 * 4 * f
    logits = 6 * 7 * 127 * 127 * f
    pixels = 2448 * 2448 * 3  # uint8, uploaded once
    band = 7 * 508 * 2448 * f + 508 * 2448 * f  # stitching: logit sums and weight sums, one patch high
    mask_band = 508 * 2448  # uint8 class indices
    assert plan.device("local/patches").nbytes == patches
    assert plan.device_bytes == pixels + image + features + 2 * patches + 2 * local + 2 * boxes + logits + band + mask_band
    assert plan.pinned_bytes == pixels + 2 * boxes + 4 * mask_band  # no patch, image or logit staging any more
    assert plan.device("local/local_skip").copies == 2 and plan.device("local/patches").copies == 2
    assert (plan.padded_height, plan.padded_width) == (2448, 2448)
    for key in ("local/local_skip", "fusion/logits", "local/patches", "global/image"):
        with pytest.raises(KeyError):
            plan.host(key)  # nothing but pixels, boxes and mask rows crosses the bus
    normalised = plan_buffers(manifest, "fp32", batch=6, image_hw=(2448, 2448), pixels=None)
    assert normalised.host("global/image").nbytes == image  # a caller that normalises on the host stages that instead


def test_images_smaller_than_a_patch_are_planned_padded_and_batch_grows_linearly():
    manifest = make_manifest(**GLSNET)
    small = plan_buffers(manifest, "fp32", batch=1, image_hw=(100, 300))
    assert small.device("global/image").shape == (1, 3, 508, 508)
    one, two = (plan_buffers(manifest, "fp32", batch=b, image_hw=(2448, 2448)).device_bytes for b in (1, 2))
    three = plan_buffers(manifest, "fp32", batch=3, image_hw=(2448, 2448)).device_bytes
    assert three - two == two - one > 0
    with pytest.raises(InputError, match="at least 1"):
        plan_buffers(manifest, "fp32", batch=0, image_hw=(10, 10))


def test_largest_batch_within_a_budget():
    manifest = make_manifest(**GLSNET)
    size = (2448, 2448)
    per_batch = plan_buffers(manifest, "fp32", 2, size).device_bytes - plan_buffers(manifest, "fp32", 1, size).device_bytes
    budget = plan_buffers(manifest, "fp32", 4, size).device_bytes + per_batch // 2
    assert largest_batch_within(manifest, "fp32", size, budget) == 4
    assert largest_batch_within(manifest, "fp32", size, budget, scratch_bytes=lambda b: b * per_batch) == 2
    assert largest_batch_within(manifest, "fp32", size, 10**12, max_batch=12) == 12
    with pytest.raises(InputError, match="cannot hold even one patch"):
        largest_batch_within(manifest, "fp32", size, 10**6)
