"""Opening bundles: checksum-verified graph sets, and optimized ONNX Runtime graphs preferred when built."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from runtime.bundle.loader import Bundle, open_bundle
from runtime.bundle.manifest import EngineSpec, read_manifest, sha256_file, write_manifest
from runtime.errors import BundleError, InputError


@pytest.fixture()
def bundle_copy(small_bundle, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(small_bundle, path)
    return path


def test_graph_set_is_verified_and_cached(small_bundle):
    bundle = open_bundle(small_bundle)
    assert open_bundle(bundle) is bundle
    graphs = bundle.graph_set("fp32")
    assert graphs.source == "graphs"
    assert {graphs.path(r).name for r in ("global", "local", "fusion")} == {"global.onnx", "local.onnx", "fusion.onnx"}
    assert bundle.graph_set("fp32") is graphs
    assert bundle.precisions == ("fp32",)
    assert bundle.tensorrt_cache_dir == small_bundle / "engines" / "ort-tensorrt-cache"


def test_unknown_or_absent_precision(small_bundle):
    bundle = Bundle(small_bundle)
    with pytest.raises(InputError, match="not one of"):
        bundle.graph_set("bf16")
    with pytest.raises(BundleError, match="no fp16 graphs.*glsnet-export build"):
        bundle.graph_set("fp16")


def test_missing_graph_file(bundle_copy):
    (bundle_copy / "local.onnx").unlink()
    with pytest.raises(BundleError, match="missing; the bundle is incomplete"):
        Bundle(bundle_copy).graph_set("fp32")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a GLSNet bundle"):
        Bundle(tmp_path)


def _with_ort_engine(bundle_dir, files):
    manifest = read_manifest(bundle_dir)
    engine = EngineSpec(target="onnxruntime", precision="fp32", directory="engines/onnxruntime-fp32", files=files)
    write_manifest(bundle_dir, dataclasses.replace(manifest, engines=(engine,)))


def test_optimized_onnxruntime_graphs_are_preferred(bundle_copy):
    engine_dir = bundle_copy / "engines" / "onnxruntime-fp32"
    engine_dir.mkdir(parents=True)
    files = {}
    for role in ("global", "local", "fusion"):
        target = engine_dir / f"{role}.ort.onnx"
        shutil.copy(bundle_copy / f"{role}.onnx", target)
        files[role] = {"file": target.name, "sha256": sha256_file(target)}
    files["fusion"]["file"] = "engines/onnxruntime-fp32/fusion.ort.onnx"  # a path relative to the bundle works too
    _with_ort_engine(bundle_copy, files)
    graphs = Bundle(bundle_copy).graph_set("fp32")
    assert graphs.source == "onnxruntime engine in engines/onnxruntime-fp32"
    assert graphs.global_graph == engine_dir / "global.ort.onnx"
    assert graphs.fusion_graph == engine_dir / "fusion.ort.onnx"


def test_optimized_graph_with_a_bad_checksum_is_refused(bundle_copy):
    engine_dir = bundle_copy / "engines" / "onnxruntime-fp32"
    engine_dir.mkdir(parents=True)
    for role in ("global", "local", "fusion"):
        shutil.copy(bundle_copy / f"{role}.onnx", engine_dir / f"{role}.onnx")
    files = {role: {"file": f"{role}.onnx", "sha256": "0" * 64} for role in ("global", "local", "fusion")}
    _with_ort_engine(bundle_copy, files)
    with pytest.raises(BundleError, match="does not match the manifest"):
        Bundle(bundle_copy).graph_set("fp32")
    _with_ort_engine(bundle_copy, {"global": files["global"]})
    with pytest.raises(BundleError, match="lacks"):
        Bundle(bundle_copy).graph_set("fp32")
