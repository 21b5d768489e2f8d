"""The bundle manifest: validation, round trip, checksums, and refusal of what this runtime cannot read."""

from __future__ import annotations

import copy
import hashlib
import json
import mmap
import shutil

import numpy as np
import pytest

from runtime.bundle.manifest import (
    SCHEMA_VERSION,
    GraphSpec,
    Manifest,
    Normalization,
    PatchSpec,
    TensorSpec,
    graph_path,
    manifest_from_dict,
    manifest_to_dict,
    read_manifest,
    sha256_file,
    write_manifest,
)
from runtime.errors import BundleError

ROLE_IO = {
    "global": ((("image", (1, 3, "height", "width")),), (("global_features", (1, 8, "feat_height", "feat_width")),)),
    "local": ((("patches", ("batch", 3, 64, 64)),), (("local_features", ("batch", 8, 2, 2)), ("local_skip", ("batch", 4, 16, 16)))),
    "fusion": (
        (
            ("local_features", ("batch", 8, 2, 2)),
            ("local_skip", ("batch", 4, 16, 16)),
            ("global_features", (1, 8, "feat_height", "feat_width")),
            ("boxes", ("batch", 4)),
        ),
        (("logits", ("batch", 2, 16, 16)),),
    ),
}


def _spec(role: str, file_sha: str) -> GraphSpec:
    inputs, outputs = ROLE_IO[role]
    return GraphSpec(
        file=f"{role}.onnx",
        precision="fp32",
        sha256=file_sha,
        inputs=tuple(TensorSpec(n, "float32", s) for n, s in inputs),
        outputs=tuple(TensorSpec(n, "float32", s) for n, s in outputs),
    )


@pytest.fixture()
def bundle(tmp_path):
    """A hand-made bundle: three small 'graph' files and a manifest naming them."""
    graphs = {}
    for role in ROLE_IO:
        path = tmp_path / f"{role}.onnx"
        path.write_bytes(f"graph bytes of {role}".encode() * 10)
        graphs[role] = _spec(role, sha256_file(path))
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        classes=("background", "road"),
        palette=((0, 0, 0), (255, 255, 255)),
        normalization=Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        patch=PatchSpec(size=64, min_overlap=8),
        graphs={"fp32": graphs},
        model={"width": 8},
        provenance={"checkpoint_sha256": "0" * 64, "toolkit_version": "0.1.0"},
    )
    write_manifest(tmp_path, manifest)
    return tmp_path, manifest


def _data(bundle_dir) -> dict:
    return json.loads((bundle_dir / "manifest.json").read_text())


def test_round_trip(bundle):
    directory, manifest = bundle
    assert read_manifest(directory) == manifest
    assert manifest_from_dict(manifest_to_dict(manifest)) == manifest
    assert read_manifest(directory).graph("fusion").input("boxes").shape == ("batch", 4)


def test_the_exported_manifest_validates_and_round_trips(small_bundle):
    manifest = read_manifest(small_bundle)
    assert manifest_from_dict(manifest_to_dict(manifest)) == manifest
    for role in ("global", "local", "fusion"):
        graph_path(small_bundle, manifest.graph(role))


def test_a_graph_with_one_byte_changed_is_refused(bundle):
    directory, manifest = bundle
    path = directory / "local.onnx"
    data = bytearray(path.read_bytes())
    data[7] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the manifest"):
        graph_path(directory, manifest.graph("local"))
    graph_path(directory, manifest.graph("global"))


def test_an_exported_graph_with_one_byte_changed_is_refused_by_the_runtime(small_bundle, tmp_path):
    from runtime.bundle.loader import Bundle

    copy_dir = tmp_path / "bundle"
    copy_dir.mkdir()
    shutil.copy(small_bundle / "manifest.json", copy_dir)
    for role in ("global", "local", "fusion"):
        (copy_dir / f"{role}.onnx").symlink_to(small_bundle / f"{role}.onnx")
    (copy_dir / "fusion.onnx").unlink()
    data = bytearray((small_bundle / "fusion.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy_dir / "fusion.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fusion.onnx: sha256"):
        Bundle(copy_dir).graph_set("fp32")


@pytest.mark.parametrize(
    "where",
    [
        lambda d: d,
        lambda d: d["normalization"],
        lambda d: d["patch"],
        lambda d: d["graphs"]["fp32"]["local"],
        lambda d: d["graphs"]["fp32"]["fusion"]["inputs"][3],
    ],
    ids=["top", "normalization", "patch", "graph", "tensor"],
)
def test_unknown_keys_are_refused(bundle, where):
    directory, _ = bundle
    data = _data(directory)
    where(data)["colour_space"] = "srgb"
    with pytest.raises(BundleError, match="unknown key"):
        manifest_from_dict(data)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1", True])
def test_another_schema_version_is_refused(bundle, version):
    directory, _ = bundle
    data = _data(directory)
    data["schema_version"] = version
    (directory / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="schema_version"):
        read_manifest(directory)


def _broken(data: dict, change) -> dict:
    data = copy.deepcopy(data)
    change(data)
    return data


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("classes"), "missing key"),
        (lambda d: d["palette"].pop(), "palette"),
        (lambda d: d["palette"][0].__setitem__(0, 300), "palette"),
        (lambda d: d["graphs"]["fp32"].pop("fusion"), "must be exactly"),
        (lambda d: d["graphs"].pop("fp32") and d["graphs"].__setitem__("fp16", {}), "must be exactly|fp32"),
        (lambda d: d["graphs"]["fp32"]["global"].__setitem__("file", "../elsewhere/global.onnx"), "relative path"),
        (lambda d: d["graphs"]["fp32"]["global"].__setitem__("file", "/abs/global.onnx"), "relative path"),
        (lambda d: d["graphs"]["fp32"]["global"].__setitem__("sha256", "abc"), "64 lowercase hex"),
        (lambda d: d["graphs"]["fp32"]["global"].__setitem__("precision", "fp16"), "precision field"),
        (lambda d: d["graphs"]["fp32"]["global"]["inputs"][0].__setitem__("name", "pixels"), "must have inputs"),
        (lambda d: d["graphs"]["fp32"]["local"]["outputs"].pop(), "must have inputs"),
        (lambda d: d["graphs"]["fp32"]["local"]["inputs"][0].__setitem__("shape", ["batch", 3, 0, 64]), "positive int"),
        (lambda d: d["graphs"]["fp32"]["local"]["inputs"][0].__setitem__("dtype", "float64"), "dtype"),
        (lambda d: d["graphs"]["fp32"]["local"].__setitem__("opset", "17"), "opset"),
        (lambda d: d["normalization"].__setitem__("std", [0.25, 0.0, 0.25]), "std is 0.0; expected a finite number > 0"),
        (lambda d: d["normalization"].__setitem__("mean", [0.5]), "one entry per band"),
        (lambda d: d["patch"].__setitem__("min_overlap", 64), "geometry"),
        (lambda d: d["patch"].__setitem__("size", 66), "geometry"),
        (lambda d: d.__setitem__("classes", []), "classes is empty|palette"),
        (lambda d: d["patch"].__setitem__("output_stride", 0), "output_stride"),
        (lambda d: d["patch"].__setitem__("feature_stride", 16), "feature_stride"),
        (lambda d: d["palette"][0].__setitem__(0, "red"), "palette needs one RGB triple of integers"),
        (lambda d: d.__setitem__("graphs", []), "graphs must be an object"),
        # values, not only types (issue 13)
        (lambda d: d["normalization"].__setitem__("scale", 0), "scale is 0; expected a finite number > 0"),
        (lambda d: d["normalization"].__setitem__("scale", -255.0), "scale is -255.0"),
        (lambda d: d["normalization"].__setitem__("scale", float("inf")), "scale is inf"),
        (lambda d: d["normalization"].__setitem__("std", [0.25, float("nan"), 0.25]), "std is nan"),
        (lambda d: d["normalization"].__setitem__("std", [0.25, -0.2, 0.25]), "std is -0.2"),
        (lambda d: d["normalization"].__setitem__("mean", [0.5, float("nan"), 0.5]), "mean is nan"),
        (lambda d: d["normalization"].__setitem__("mean", [0.5, True, 0.5]), "mean is True"),
        (lambda d: d["normalization"].__setitem__("bands", [0, -1, 2]), "band index is -1"),
        (lambda d: d["normalization"].__setitem__("bands", [0, True, 2]), "band index is True"),
        (lambda d: d["normalization"].__setitem__("bands", [0, 1.5, 2]), "band index is 1.5"),
        (lambda d: d.__setitem__("classes", "background"), "classes is str"),
        (lambda d: d.__setitem__("classes", [1] * len(d["classes"])), "list of non-empty class names"),
        (lambda d: d["palette"][0].__setitem__(0, True), "palette needs one RGB triple of integers"),
        (lambda d: d["patch"].__setitem__("size", True), "size is True"),
        (lambda d: d["patch"].__setitem__("min_overlap", False), "min_overlap is False"),
        (lambda d: d["graphs"]["fp32"]["local"].__setitem__("opset", True), "opset"),
        (lambda d: d.__setitem__("input_pixels", {"dtype": "uint7"}), "not a pixel type"),
        (lambda d: d.__setitem__("input_pixels", {"dtype": "uint16", "low": 10, "high": 10}), "range .* is empty"),
        (lambda d: d["graphs"]["fp32"]["fusion"]["outputs"][0]["shape"].__setitem__(1, 99), "the number of classes"),
        (lambda d: d["graphs"]["fp32"]["local"]["inputs"][0]["shape"].__setitem__(2, 60), "patch.size"),
        (
            lambda d: d.__setitem__(
                "engines",
                [{"target": "tensorrt", "precision": "fp16", "directory": "../../etc", "files": {}}],
            ),
            "relative path",
        ),
        (
            lambda d: d.__setitem__(
                "engines",
                [{"target": "tensorrt", "precision": "fp16", "directory": "engines/x", "files": {"local": {"file": "/etc/passwd", "sha256": "0" * 64}}}],
            ),
            "relative path",
        ),
    ],
)
def test_invalid_manifests_are_refused_with_the_key_named(bundle, change, message):
    directory, _ = bundle
    with pytest.raises(BundleError, match=message):
        manifest_from_dict(_broken(_data(directory), change))


def test_write_refuses_what_it_could_not_read_back(bundle, tmp_path):
    _, manifest = bundle
    bad = manifest.replace(palette=((0, 0, 0),))
    with pytest.raises(BundleError):
        write_manifest(tmp_path / "other", bad)
    assert not (tmp_path / "other" / "manifest.json").exists()


def test_a_directory_without_a_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a GLSNet bundle"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 7, 3 << 20])
@pytest.mark.parametrize("mappable", [True, False])
def test_sha256_file_is_the_files_sha256_mapped_or_read_in_blocks(tmp_path, monkeypatch, size, mappable):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "graph.onnx"
    path.write_bytes(data)
    if not mappable:  # a file system without mmap: read block by block instead

        def refuse(*args, **kwargs):
            raise OSError("mmap not supported")

        monkeypatch.setattr(mmap, "mmap", refuse)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
