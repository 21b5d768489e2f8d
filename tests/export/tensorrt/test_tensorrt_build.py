"""The engine build against a fake tensorrt module: profiles, network flags, config calls, DLA, timing cache, manifest stamp."""

from __future__ import annotations

import json
import struct

import pytest

from export.tensorrt.tensorrt_build import TensorRTBuildOptions, build_tensorrt_engines, optimization_profiles
from runtime.bundle.manifest import read_manifest, sha256_file
from runtime.cuda.recording import RecordingDevice
from runtime.errors import BundleError, GlsnetError, InputError
from tests.tensorrt_support import fake_tensorrt, make_manifest, scratch_need, write_fake_bundle

ALL = ("fp32", "fp16", "int8")


def bundle(tmp_path, precisions=ALL, calibration=True):
    return write_fake_bundle(tmp_path / "bundle", make_manifest(precisions=precisions), calibration)


def calls_named(trt, name):
    return [c for c in trt.calls if c[0] == name]


# ------------------------------------------------------------------------------- profiles


def test_profiles_follow_the_patch_geometry_batches_and_image_sizes():
    manifest = make_manifest()  # patch 64, width 4, skip 3, 3 classes
    options = TensorRTBuildOptions(min_batch=1, opt_batch=6, max_batch=12, opt_image_size=(2448, 2448), max_image_size=(4096, 3000))
    profiles = optimization_profiles(manifest, "fp32", options)
    assert profiles["global"]["image"] == ((1, 3, 64, 64), (1, 3, 2448, 2448), (1, 3, 4096, 3000))
    assert profiles["local"]["patches"] == ((1, 3, 64, 64), (6, 3, 64, 64), (12, 3, 64, 64))
    fusion = profiles["fusion"]
    assert fusion["global_features"] == ((1, 4, 2, 2), (1, 4, 77, 77), (1, 4, 128, 94))
    assert fusion["local_skip"] == ((1, 3, 16, 16), (6, 3, 16, 16), (12, 3, 16, 16))
    assert fusion["boxes"] == ((1, 4), (6, 4), (12, 4))
    assert set(fusion) == {"local_features", "local_skip", "global_features", "boxes"}


def test_dla_makes_the_local_profile_static_and_tiny_images_are_clamped_to_a_patch():
    manifest = make_manifest()
    options = TensorRTBuildOptions(opt_batch=4, max_batch=8, opt_image_size=(32, 32), max_image_size=(48, 500), dla_core=0)
    profiles = optimization_profiles(manifest, "fp32", options)
    assert profiles["local"]["patches"] == ((4, 3, 64, 64),) * 3
    assert profiles["fusion"]["boxes"] == ((1, 4), (4, 4), (8, 4))  # fusion stays on the GPU, dynamic
    assert profiles["global"]["image"] == ((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 500))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(min_batch=2, opt_batch=1), "1 <= min"),
        (dict(opt_image_size=(5000, 10)), "exceeds the maximum"),
        (dict(workspace=0), "workspace"),
        (dict(dla_core=-1), "dla-core"),
        (dict(optimization_level=9), "0..5"),
    ],
)
def test_build_options_are_validated(kwargs, message):
    with pytest.raises(InputError, match=message):
        TensorRTBuildOptions(**kwargs)


# ------------------------------------------------------------------------------- strongly typed builds


def test_tensorrt_10_fp16_build_is_strongly_typed_from_the_fp16_graphs(tmp_path):
    root = bundle(tmp_path)
    trt = fake_tensorrt("10.3.0")
    options = TensorRTBuildOptions(workspace=1 << 30, optimization_level=4)
    spec = build_tensorrt_engines(root, "fp16", options, trt=trt, device=RecordingDevice(name="NVIDIA RTX A4000", compute_capability="8.6"))

    assert calls_named(trt, "create_network") == [("create_network", 2)] * 3  # 1 << STRONGLY_TYPED
    assert [c[1] for c in calls_named(trt, "parse_from_file")] == [str(root / f"fp16/{r}.onnx") for r in ("global", "local", "fusion")]
    assert calls_named(trt, "set_flag") == []  # no precision flags: the precision is the graph's
    assert calls_named(trt, "set_memory_pool_limit") == [("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 1 << 30)] * 3
    assert calls_named(trt, "config.builder_optimization_level") == [("config.builder_optimization_level", 4)] * 3
    assert ("init_libnvinfer_plugins", "") in trt.calls
    shapes = {c[1]: c[2:] for c in calls_named(trt, "set_shape")}
    profiles = optimization_profiles(make_manifest(precisions=ALL), "fp16", options)
    assert shapes["patches"] == profiles["local"]["patches"] and shapes["image"] == profiles["global"]["image"]
    assert len(calls_named(trt, "add_optimization_profile")) == 3

    assert spec.target == "tensorrt" and spec.precision == "fp16" and spec.dla_core is None
    assert (spec.tensorrt_version, spec.gpu_name, spec.compute_capability) == ("10.3.0", "NVIDIA RTX A4000", "8.6")
    assert spec.directory == "engines/nvidia-rtx-a4000_10.3.0/fp16"
    for role in ("global", "local", "fusion"):
        plan = root / spec.files[role]["file"]
        assert plan == root / spec.directory / f"{role}.plan"
        assert sha256_file(plan) == spec.files[role]["sha256"]
        assert json.loads(plan.read_text())["network_flags"] == 2
        largest = max(shapes[2][0] for shapes in spec.profiles[role]["inputs"].values())
        assert spec.profiles[role]["device_memory"] == scratch_need(role, largest) and spec.profiles[role]["typing"] == "strong"
    assert spec.profiles["local"]["inputs"]["patches"] == [[1, 3, 64, 64], [6, 3, 64, 64], [12, 3, 64, 64]]
    assert read_manifest(root).engines == (spec,)
    assert not list(root.rglob("*.tmp*"))  # everything was renamed into place


def test_tensorrt_11_creates_networks_without_flags_and_sets_no_precision(tmp_path):
    root = bundle(tmp_path)
    trt = fake_tensorrt("11.4.0.106")
    spec = build_tensorrt_engines(root, "int8", TensorRTBuildOptions(), trt=trt, device=RecordingDevice())
    assert calls_named(trt, "create_network") == [("create_network", 0)] * 3
    assert [c[1] for c in calls_named(trt, "parse_from_file")] == [str(root / f"int8/{r}.onnx") for r in ("global", "local", "fusion")]
    assert calls_named(trt, "set_flag") == [] and calls_named(trt, "config.int8_calibrator") == []
    assert spec.tensorrt_version == "11.4.0.106" and spec.directory.endswith("_11.4.0.106/int8")


def test_the_timing_cache_is_a_bundle_file_reused_by_the_next_build(tmp_path):
    root = bundle(tmp_path)
    device = RecordingDevice(name="Orin")
    first = fake_tensorrt("10.3.0")
    build_tensorrt_engines(root, "fp16", trt=first, device=device)
    cache = root / "engines" / "orin_10.3.0" / "timing.cache"
    assert calls_named(first, "create_timing_cache") == [("create_timing_cache", b"")]  # one cache shared by the 3 engines
    assert len(calls_named(first, "set_timing_cache")) == 3
    assert cache.read_bytes() == b"+timed"
    second = fake_tensorrt("10.3.0")
    build_tensorrt_engines(root, "fp32", trt=second, device=device)
    assert calls_named(second, "create_timing_cache") == [("create_timing_cache", b"+timed")]
    assert cache.read_bytes() == b"+timed+timed"
    third = fake_tensorrt("10.3.0")
    build_tensorrt_engines(root, "fp32", TensorRTBuildOptions(timing_cache=False), trt=third, device=device)
    assert calls_named(third, "create_timing_cache") == []


def test_rebuilding_replaces_the_stamp_and_other_precisions_are_kept(tmp_path):
    root = bundle(tmp_path)
    device = RecordingDevice()
    build_tensorrt_engines(root, "fp16", trt=fake_tensorrt("10.3.0"), device=device)
    build_tensorrt_engines(root, "int8", trt=fake_tensorrt("10.3.0"), device=device)
    again = build_tensorrt_engines(root, "fp16", trt=fake_tensorrt("10.3.0"), device=device)
    engines = read_manifest(root).engines
    assert sorted(e.precision for e in engines) == ["fp16", "int8"]
    assert again in engines


# ------------------------------------------------------------------------------- DLA


def test_tensorrt_10_dla_int8_uses_implicit_precision_and_the_calibration_cache(tmp_path):
    root = bundle(tmp_path)
    trt = fake_tensorrt("10.3.0")
    spec = build_tensorrt_engines(root, "int8", TensorRTBuildOptions(dla_core=1, opt_batch=4), trt=trt, device=RecordingDevice(name="Orin"))
    # the local engine: weakly typed network from the fp32 graph, FP16 + INT8 + GPU fallback, on DLA core 1
    assert [c[1] for c in calls_named(trt, "create_network")] == [2, 0, 2]
    assert [c[1] for c in calls_named(trt, "parse_from_file")] == [str(root / p) for p in ("int8/global.onnx", "local.onnx", "int8/fusion.onnx")]
    assert calls_named(trt, "set_flag") == [
        ("set_flag", trt.BuilderFlag.FP16),
        ("set_flag", trt.BuilderFlag.INT8),
        ("set_flag", trt.BuilderFlag.GPU_FALLBACK),
    ]
    assert ("config.default_device_type", trt.DeviceType.DLA) in trt.calls and ("config.DLA_core", 1) in trt.calls
    assert ("set_calibration_profile",) in trt.calls
    (read,) = calls_named(trt, "read_calibration_cache")
    cache_text, batch = read[1].decode(), read[2]
    assert cache_text.splitlines()[0] == "TRT-100300-EntropyCalibration2"  # re-stamped from the cache's 10.0.0
    assert f"patches: {struct.pack('>f', 2.0 / 127).hex()}" in cache_text  # amax 2.0 / 127, big-endian float32 hex
    assert batch is None  # the calibrator never hands TensorRT a batch: it cannot calibrate by itself
    assert spec.dla_core == 1 and spec.directory.endswith("/int8-dla1")
    assert spec.profiles["local"]["device"] == "dla" and spec.profiles["local"]["typing"] == "implicit"
    assert spec.profiles["local"]["inputs"]["patches"] == [[4, 3, 64, 64]] * 3
    assert spec.profiles["global"]["device"] == "gpu"


def test_tensorrt_11_builds_dla_engines_strongly_typed_and_refuses_dla_int8(tmp_path):
    root = bundle(tmp_path)
    trt = fake_tensorrt("11.4.1")
    spec = build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(dla_core=0), trt=trt, device=RecordingDevice())
    assert calls_named(trt, "create_network") == [("create_network", 0)] * 3
    assert calls_named(trt, "set_flag") == [("set_flag", trt.BuilderFlag.GPU_FALLBACK)]
    assert spec.profiles["local"]["typing"] == "strong"
    with pytest.raises(InputError, match="no explicit"):
        build_tensorrt_engines(root, "int8", TensorRTBuildOptions(dla_core=0), trt=fake_tensorrt("11.4.1"), device=RecordingDevice())
    with pytest.raises(InputError, match="does not support DLA"):
        build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(dla_core=0), trt=fake_tensorrt("11.2.0"), device=RecordingDevice())


# ------------------------------------------------------------------------------- failures


def test_missing_graphs_caches_and_parser_or_builder_failures_are_clear(tmp_path):
    fp32_only = bundle(tmp_path / "a", precisions=("fp32",))
    with pytest.raises(BundleError, match="no fp16 graphs.*glsnet-export build BUNDLE --fp16"):
        build_tensorrt_engines(fp32_only, "fp16", trt=fake_tensorrt(), device=RecordingDevice())

    no_cache = bundle(tmp_path / "b", calibration=False)
    with pytest.raises(InputError, match=r"local.calib.cache: no calibration cache.*--int8"):
        build_tensorrt_engines(no_cache, "int8", TensorRTBuildOptions(dla_core=0), trt=fake_tensorrt(), device=RecordingDevice())

    broken = bundle(tmp_path / "c")
    (broken / "fp16" / "local.onnx").write_text(json.dumps({"error": "Unsupported ONNX op RoiAlign"}))
    with pytest.raises(BundleError, match="does not match the manifest"):  # edited after export: checksum first
        build_tensorrt_engines(broken, "fp16", trt=fake_tensorrt(), device=RecordingDevice())

    refused = write_fake_bundle(tmp_path / "d", make_manifest(precisions=ALL).replace())
    trt = fake_tensorrt()
    trt.OnnxParser.parse_from_file = lambda self, path: self.errors.append("In node 3 (RoiAlign): unsupported") or False
    with pytest.raises(BundleError, match=r"ONNX parser refused the graph: In node 3 \(RoiAlign\)"):
        build_tensorrt_engines(refused, "fp16", trt=trt, device=RecordingDevice())

    trt = fake_tensorrt()
    trt.Builder.build_serialized_network = lambda self, network, config: None
    with pytest.raises(GlsnetError, match="could not build the fp16 global engine"):
        build_tensorrt_engines(refused, "fp16", trt=trt, device=RecordingDevice())
    assert read_manifest(refused).engines == ()  # nothing stamped for a failed build


def test_a_cache_for_the_running_tensorrt_is_replayed_unchanged_and_a_malformed_one_is_refused(tmp_path, caplog):
    from calibration.calibration_cache import CalibrationCache

    root = bundle(tmp_path)
    CalibrationCache.from_amax({"patches": 4.0}, "10.3.0").write(root / "int8" / "local.calib.cache")
    trt = fake_tensorrt("10.3.0")
    build_tensorrt_engines(root, "int8", TensorRTBuildOptions(dla_core=0), trt=trt, device=RecordingDevice())
    (read,) = calls_named(trt, "read_calibration_cache")
    assert read[1] == (root / "int8" / "local.calib.cache").read_bytes()  # byte for byte: nothing re-stamped
    assert "re-stamping" not in caplog.text

    (root / "int8" / "local.calib.cache").write_text("TRT-100300-EntropyCalibration2\npatches 3c810204\n")
    with pytest.raises(InputError, match="line 2 'patches 3c810204' is not '<tensor>: <8 hex digits>'"):
        build_tensorrt_engines(root, "int8", TensorRTBuildOptions(dla_core=0), trt=fake_tensorrt("10.3.0"), device=RecordingDevice())


# ------------------------------------------------------------------------------- line-by-line fixes (issue 25)


def test_the_strict_fp32_reference_build_clears_tf32_and_lower_precisions_keep_it(tmp_path):
    """TF32 is on by default in TensorRT: an fp32 'reference' engine would round inner products to 10-bit mantissas."""
    root = bundle(tmp_path)
    trt = fake_tensorrt("10.3.0")
    build_tensorrt_engines(root, "fp32", TensorRTBuildOptions(), trt=trt, device=RecordingDevice(name="NVIDIA H100"))
    assert calls_named(trt, "clear_flag") == [("clear_flag", trt.BuilderFlag.TF32)] * 3
    trt = fake_tensorrt("11.4.0")
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(), trt=trt, device=RecordingDevice(name="NVIDIA H100"))
    assert calls_named(trt, "clear_flag") == []


def test_one_build_and_the_engines_it_opens_use_one_tensorrt_logger(tmp_path):
    """TensorRT keeps one logger per process; a second ILogger is ignored (with a warning) after the first."""
    from runtime.engines.tensorrt_pipeline import TensorRTPipeline, TensorRTPipelineOptions

    root = bundle(tmp_path)
    device = RecordingDevice(name="NVIDIA H100")
    trt = fake_tensorrt("10.3.0", device=device)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(verbose=True), trt=trt, device=device)
    build_tensorrt_engines(root, "int8", TensorRTBuildOptions(), trt=trt, device=device)
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=device, trt=trt):
        pass
    assert len(calls_named(trt, "Logger")) == 1


def _with_tensorrt_int8_graphs(root):
    """The bundle as glsnet-export build --int8 now leaves it: the Q/DQ graphs in fp16 under int8/tensorrt/."""
    import shutil

    from runtime.bundle.manifest import write_manifest

    manifest = read_manifest(root)
    graphs = {}
    for role in ("global", "local", "fusion"):
        relative = f"int8/tensorrt/{role}.onnx"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "int8" / f"{role}.onnx", root / relative)
        graphs[role] = {"file": relative, "sha256": sha256_file(root / relative)}
    write_manifest(root, manifest.replace(calibration={"int8": {"tensorrt_graphs": graphs}}))
    return root


def test_strongly_typed_int8_engines_build_from_the_qdq_graphs_in_fp16(tmp_path, caplog):
    root = _with_tensorrt_int8_graphs(bundle(tmp_path))
    trt = fake_tensorrt("11.4.0.106")
    build_tensorrt_engines(root, "int8", TensorRTBuildOptions(), trt=trt, device=RecordingDevice())
    assert [c[1] for c in calls_named(trt, "parse_from_file")] == [str(root / f"int8/tensorrt/{r}.onnx") for r in ("global", "local", "fusion")]
    assert "older build" not in caplog.text

    trt = fake_tensorrt("10.3.0")  # DLA on TensorRT 10: the local engine stays implicit from the fp32 graph
    build_tensorrt_engines(root, "int8", TensorRTBuildOptions(dla_core=1), trt=trt, device=RecordingDevice(name="Orin"))
    expected = ("int8/tensorrt/global.onnx", "local.onnx", "int8/tensorrt/fusion.onnx")
    assert [c[1] for c in calls_named(trt, "parse_from_file")] == [str(root / p) for p in expected]

    (root / "int8" / "tensorrt" / "fusion.onnx").write_text("{}")
    with pytest.raises(BundleError, match=r"int8/tensorrt/fusion.onnx: sha256 .* does not match"):
        build_tensorrt_engines(root, "int8", TensorRTBuildOptions(), trt=fake_tensorrt("11.4.0.106"), device=RecordingDevice())


def test_a_bundle_without_them_builds_from_the_fp32_based_graphs_with_a_warning(tmp_path, caplog):
    root = bundle(tmp_path)
    trt = fake_tensorrt("11.4.0.106")
    build_tensorrt_engines(root, "int8", TensorRTBuildOptions(), trt=trt, device=RecordingDevice())
    assert [c[1] for c in calls_named(trt, "parse_from_file")] == [str(root / f"int8/{r}.onnx") for r in ("global", "local", "fusion")]
    assert "no int8 graph in fp16 for TensorRT (an older build)" in caplog.text and "--int8" in caplog.text
