"""The manifest against its graphs at open time (issue 13, item 4): classes, patch size and dtypes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.backends.base import TensorMeta
from runtime.bundle.manifest import read_manifest
from runtime.engines.graph_contract import check_graph
from runtime.errors import BundleError
from runtime.segmenter import Segmenter, SegmenterOptions


def edited_bundle(small_bundle, tmp_path, change):
    """A copy of the small bundle whose manifest.json went through ``change`` (graphs untouched)."""
    copy = tmp_path / "edited"
    shutil.copytree(small_bundle, copy)
    data = json.loads((copy / "manifest.json").read_text())
    change(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def _tensor(data, role, name):
    spec = data["graphs"]["fp32"][role]
    return next(t for t in spec["inputs"] + spec["outputs"] if t["name"] == name)


def one_more_class(data):
    data["classes"].append("extra")
    data["palette"].append([1, 2, 3])
    _tensor(data, "fusion", "logits")["shape"][1] += 1


def larger_patch(data):
    data["patch"]["size"] += 32
    _tensor(data, "local", "patches")["shape"][2:] = [data["patch"]["size"]] * 2


def half_precision_input(data):
    _tensor(data, "local", "patches")["dtype"] = "float16"


def wider_skip(data):
    """The local graph's stride-4 output (a joint inside the joined session) declared one channel wider."""
    _tensor(data, "local", "local_skip")["shape"][1] += 1
    _tensor(data, "fusion", "local_skip")["shape"][1] += 1


def undeclared_dims(data):
    """Classes grown, with the manifest's own logits shape made dynamic, so only the graph can tell."""
    data["classes"].append("extra")
    data["palette"].append([1, 2, 3])
    _tensor(data, "fusion", "logits")["shape"][1] = "classes"


@pytest.mark.parametrize(
    "change, message",
    [
        (one_more_class, r"fusion.onnx: output 'logits' is declared with \d+ on axis 1"),
        (undeclared_dims, r"fusion.onnx: 'logits' has \d+ on axis 1 but there are \d+ classes in the manifest"),
        (larger_patch, r"local.onnx: input 'patches' is declared with 160 on axis 2"),
        (half_precision_input, r"local.onnx: input 'patches' is declared float16 in the manifest but the graph's is float32"),
        (wider_skip, r"(local.onnx: output|fusion.onnx: input) 'local_skip' is declared with \d+ on axis 1"),
    ],
)
@pytest.mark.parametrize("joined", [True, False], ids=["joined", "two sessions"])
def test_a_manifest_that_disagrees_with_its_graphs_is_refused_at_open(small_bundle, tmp_path, change, message, joined):
    bundle = edited_bundle(small_bundle, tmp_path, change)
    read_manifest(bundle)  # the manifest alone is consistent: only the graphs can refuse it
    with pytest.raises(BundleError, match=message):
        Segmenter(bundle, options=SegmenterOptions(join_patch_graphs=joined))


def test_the_exported_bundle_matches_its_graphs(small_bundle):
    with Segmenter(small_bundle) as segmenter:
        assert segmenter.segment(np.full((40, 50, 3), 90, np.uint8)).shape == (40, 50)


def test_check_graph_names_missing_tensors(small_bundle):
    manifest = read_manifest(small_bundle)
    meta = {"image": TensorMeta("image", np.dtype(np.float32), (1, 3, None, None))}
    with pytest.raises(BundleError, match="declares output 'global_features' but the graph's outputs are \\['features'\\]"):
        check_graph(manifest, "fp32", "global", meta, {"features": meta["image"]}, "global.onnx")
