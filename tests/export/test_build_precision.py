"""``glsnet-export build``: graphs registered and used by the runtime, gates that fail leave the bundle alone,
the ONNX Runtime build, degenerate calibration and bad input."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from calibration.accuracy_gate import GateThresholds, PrecisionThresholds
from calibration.tiles import TileOptions, calibrate_bundle
from export.build import BuildOptions, build_precision
from export.cli import app
from runtime.bundle.manifest import read_manifest, verify_file
from runtime.errors import AccuracyGateError, BundleError, InputError

TILES = TileOptions(count=12, holdout=6, scene_size=256, scenes_per_image=1, candidates_per_scene=24, seed=0)
LENIENT = GateThresholds(fp16=PrecisionThresholds(0.99, None), int8=PrecisionThresholds(0.5, None))


def cli(*args: str) -> tuple[int, str]:
    """Exit code and output of ``glsnet-export ARGS`` as a user sees them (errors mapped as runtime.cli_errors does)."""
    from runtime.cli_errors import exit_code
    from runtime.errors import GlsnetError

    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, GlsnetError):
        return exit_code(result.exception), f"{result.output}error: {result.exception}"
    return result.exit_code, result.output


def copy_bundle(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, copy_function=os.link)
    return target


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> list[Path]:
    from glsnet.data.synthetic import write_synthetic_folder

    return write_synthetic_folder(tmp_path_factory.mktemp("scenes"), count=3, height=256, width=256, seed=11)


@pytest.fixture(scope="module")
def calibrated(small_bundle, scene_files, tmp_path_factory) -> Path:
    bundle = copy_bundle(small_bundle, tmp_path_factory.mktemp("calibrated") / "bundle")
    calibrate_bundle(bundle, scene_files, TILES)
    return bundle


@pytest.fixture(scope="module")
def fp16_bundle(calibrated, tmp_path_factory):
    bundle = copy_bundle(calibrated, tmp_path_factory.mktemp("fp16") / "bundle")
    result = build_precision(bundle, BuildOptions(precision="fp16", thresholds=LENIENT, target="onnxruntime"))
    return bundle, result


def test_fp16_build_registers_graphs_the_runtime_uses(fp16_bundle, calibrated):
    from runtime.segmenter import Segmenter

    bundle, result = fp16_bundle
    manifest = read_manifest(bundle)
    assert set(manifest.graphs) == {"fp32", "fp16"}
    for role, spec in manifest.graphs["fp16"].items():
        assert spec.file == f"fp16/{role}.onnx" and spec.precision == "fp16"
        verify_file(bundle, spec.file, spec.sha256)
        assert spec.inputs == manifest.graphs["fp32"][role].inputs
    accuracy = manifest.accuracy["fp16"]
    assert accuracy["passed"] and not accuracy["forced"] and accuracy["images"]["agreement"] >= 0.99
    assert accuracy["details"]["kept_summary"]["box arithmetic"] > 0
    assert set(accuracy["graphs"]) == {"global", "local", "fusion"}
    engine = [e for e in manifest.engines if e.precision == "fp16"]
    assert len(engine) == 1 and engine[0].target == "onnxruntime" and engine[0].directory == "engines/onnxruntime_cpu/fp16"
    for entry in engine[0].files.values():
        verify_file(bundle, entry["file"], entry["sha256"])
    assert not [p for p in bundle.iterdir() if p.name.startswith(".build-")]  # staging removed
    image = np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)
    stages = manifest.global_stages["fp16"]
    assert [s.graph.file for s in stages] == [f"fp16/global_stage{i}.onnx" for i in range(4)]
    assert [(s.stride, s.halo) for s in stages] == [(s.stride, s.halo) for s in manifest.global_stages["fp32"]]
    for s in stages:
        verify_file(bundle, s.graph.file, s.graph.sha256)
    with Segmenter(bundle, precision="fp32") as fp32, Segmenter(bundle, precision="fp16") as fp16:
        assert fp16.graphs.source.startswith("onnxruntime engine")
        engine_dir = bundle / "engines/onnxruntime_cpu/fp16"
        assert [g.path for g in fp16.graphs.global_stages] == [engine_dir / f"global_stage{i}.onnx" for i in range(4)]  # banded stage by stage
        assert (fp32.segment(image) == fp16.segment(image)).mean() > 0.99
    assert read_manifest(calibrated).graphs.keys() == {"fp32"}  # the source bundle was not touched


def test_failed_gate_leaves_the_bundle_as_it_was(fp16_bundle, tmp_path):
    source, _ = fp16_bundle
    bundle = copy_bundle(source, tmp_path / "bundle")
    before = (bundle / "manifest.json").read_bytes()
    files_before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    impossible = dataclasses.replace(LENIENT, fp16=PrecisionThresholds(1.01, None))
    with pytest.raises(AccuracyGateError, match="fp16 graphs fail the accuracy gate"):
        build_precision(bundle, BuildOptions(precision="fp16", thresholds=impossible, target="onnxruntime", whole_images=False))
    assert (bundle / "manifest.json").read_bytes() == before
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == files_before
    forced = build_precision(bundle, BuildOptions(precision="fp16", thresholds=impossible, target="onnxruntime", whole_images=False, force=True))
    accuracy = read_manifest(bundle).accuracy["fp16"]
    assert accuracy["forced"] and not accuracy["passed"] and accuracy["failures"]
    assert forced.graphs["global"].sha256 == read_manifest(bundle).graphs["fp16"]["global"].sha256


def test_int8_build_writes_graphs_caches_and_manifest(calibrated, tmp_path):
    from calibration.calibration_cache import CalibrationCache

    bundle = copy_bundle(calibrated, tmp_path / "bundle")
    code, output = cli("build", str(bundle), "--int8", "--target", "onnxruntime", "--min-agreement", "0.5", "--tiles-only")
    assert code == 0, output
    assert "Accuracy gate" in output and "PASSED" in output
    manifest = read_manifest(bundle)
    assert set(manifest.graphs) == {"fp32", "int8"}
    entry = manifest.calibration["int8"]
    assert entry["tiles_sha256"] == manifest.calibration["tiles"]["sha256"]
    for role, cache in entry["tensorrt_caches"].items():
        path = verify_file(bundle, cache["file"], cache["sha256"])
        assert path == bundle / "int8" / f"{role}.calib.cache" and CalibrationCache.read(path).scales
    assert manifest.accuracy["int8"]["tiles"]["agreement"] >= 0.5 and manifest.accuracy["int8"]["images"] is None
    assert [e.precision for e in manifest.engines] == ["int8"]
    assert [s.graph.file for s in manifest.global_stages["int8"]] == [f"int8/global_stage{i}.onnx" for i in range(4)]
    for s in manifest.global_stages["int8"]:
        verify_file(bundle, s.graph.file, s.graph.sha256)
    kernels = manifest.engines[0].profiles["kernels"]
    for role in ("global", "local", "fusion"):
        assert f"onnxruntime int8 {role}: " in output and kernels[role]["integer"]["QLinearConv"] > 0
        assert set(kernels[role]["float_convs"]) <= set(entry["excluded_nodes"][role])  # only what the sensitivity check kept


def test_all_black_calibration_trips_the_gate(small_bundle, tmp_path):
    from PIL import Image

    bundle = copy_bundle(small_bundle, tmp_path / "bundle")
    black = []
    for i in range(3):
        path = tmp_path / f"black{i}.png"
        Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(path)
        black.append(path)
    calibrate_bundle(bundle, black, TILES)
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(AccuracyGateError, match="constant images"):
        build_precision(bundle, BuildOptions(precision="int8", thresholds=LENIENT, target="onnxruntime", whole_images=False))
    assert (bundle / "manifest.json").read_bytes() == before
    assert not (bundle / "int8").exists()


def test_bad_input(small_bundle, tmp_path):
    bundle = copy_bundle(small_bundle, tmp_path / "bundle")
    code, output = cli("build", str(bundle), "--int8")
    assert code == 1 and "glsnet-export calibrate" in output
    with pytest.raises(BundleError, match="calibrate"):
        build_precision(bundle, BuildOptions(precision="int8"))
    with pytest.raises(InputError):
        BuildOptions(precision="fp8")
    with pytest.raises(InputError):
        BuildOptions(precision="fp16", target="cuda")
    assert cli("build", str(bundle))[0] == 2  # neither --fp16 nor --int8
    assert cli("build", str(bundle), "--fp16", "--int8")[0] == 2
    assert cli("build", str(bundle), "--fp16", "--target", "cuda")[0] == 2
    assert cli("build", str(tmp_path / "nowhere"), "--fp16")[0] == 1
    (bundle / read_manifest(bundle).graph("fusion").file).unlink()
    with pytest.raises(BundleError, match="missing"):
        build_precision(bundle, BuildOptions(precision="fp16"))
    with pytest.raises(BundleError, match="manifest.json"):
        build_precision(tmp_path, BuildOptions(precision="fp16"))


def test_int8_build_writes_tensorrt_graphs_that_quantize_the_fp16_graph(calibrated, tmp_path):
    """TensorRT builds Q/DQ graphs strongly typed: from the fp32-based graph every unquantized op would run in fp32."""
    import onnx

    from calibration.tensorrt_int8 import FP16_SCALE_OPSET, qdq_scales
    from export.tensorrt.tensorrt_compat import check_graph_file

    bundle = copy_bundle(calibrated, tmp_path / "bundle")
    build_precision(bundle, BuildOptions(precision="int8", thresholds=LENIENT, target="onnxruntime", whole_images=False))
    manifest = read_manifest(bundle)
    entry = manifest.calibration["int8"]["tensorrt_graphs"]
    for role in ("global", "local", "fusion"):
        path = verify_file(bundle, entry[role]["file"], entry[role]["sha256"])
        assert path == bundle / "int8" / "tensorrt" / f"{role}.onnx"
        cpu = onnx.load(str(bundle / "int8" / f"{role}.onnx"), load_external_data=False)
        gpu = onnx.load(str(path), load_external_data=False)
        assert [o.version for o in gpu.opset_import if o.domain in ("", "ai.onnx")] == [FP16_SCALE_OPSET]
        count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
        assert count(gpu, "QuantizeLinear") == count(cpu, "QuantizeLinear") > 0
        assert count(gpu, "DequantizeLinear") == count(cpu, "DequantizeLinear")
        scales = qdq_scales(gpu)
        assert {str(v.dtype) for v in scales.values()} == {"float16"}
        assert all(np.array_equal(v, qdq_scales(cpu)[name].astype(np.float16)) for name, v in scales.items())
        assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in gpu.graph.initializer) > 0
        report = check_graph_file(path, role=f"int8 tensorrt/{role}", dim_names={d for t in manifest.graph(role).inputs for d in t.shape if isinstance(d, str)})
        assert report, report.lines()
    details = manifest.accuracy["int8"]["details"]["tensorrt_graphs"]
    assert details["scale_type"] == "float16" and details["tile_agreement_cpu"] > 0.5
    assert set(details["fp32_nodes"]["fusion"])  # softmax, LayerNorm, crop arithmetic stay fp32 as in the fp16 graph


def test_int8_gate_scores_whole_scenes_once_per_candidate(calibrated, tmp_path, monkeypatch):
    """The gate asks the scene judge again for the graphs the sensitivity check last judged: answered from memory."""
    import export.build as build

    calls: list[str] = []
    real = build.scene_masks

    def counted(stage, precision, tiles, threads):
        calls.append(precision)
        return real(stage, precision, tiles, threads)

    monkeypatch.setattr(build, "scene_masks", counted)
    bundle = copy_bundle(calibrated, tmp_path / "bundle")
    code, output = cli("build", str(bundle), "--int8", "--target", "onnxruntime", "--min-agreement", "0.5")
    assert code == 0, output
    assert calls == ["fp32", "int8"]
    assert read_manifest(bundle).accuracy["int8"]["images"] is not None


def test_int8_caches_cover_what_each_graph_needs(calibrated, tmp_path):
    """Every float tensor of the local branch (TensorRT reads its cache on DLA); the Q/DQ tensors of the fusion."""
    import onnx

    from calibration.calibration_cache import CalibrationCache
    from runtime.backends.tensorrt.engine_check import DLA_ROLE

    bundle = copy_bundle(calibrated, tmp_path / "bundle")
    code, output = cli("build", str(bundle), "--int8", "--target", "onnxruntime", "--min-agreement", "0.5", "--tiles-only")
    assert code == 0, output
    manifest = read_manifest(bundle)

    def conv_tensors(role: str) -> set[str]:
        graph = onnx.load(str(bundle / manifest.graph(role, "fp32").file)).graph
        weights = {init.name for init in graph.initializer}
        return {name for node in graph.node if node.op_type == "Conv" for name in (*node.input, *node.output) if name and name not in weights}

    def cached(role: str) -> set[str]:
        return set(CalibrationCache.read(bundle / "int8" / f"{role}.calib.cache").scales)

    assert DLA_ROLE == "local"
    local = onnx.load(str(bundle / manifest.graph("local", "fp32").file)).graph
    relus = {node.output[0] for node in local.node if node.op_type == "Relu"}
    assert conv_tensors("local") | relus <= cached("local")
    assert cached("fusion") <= conv_tensors("fusion") and cached("fusion")
