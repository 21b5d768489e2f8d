"""The C++ runtime on an ONNX Runtime engine build's global stage graphs (files global_stage0..N-1), as the Python
runtime's loader picks them, for fp32 graphs, fp16 and int8 builds: it names what it loaded, plans as Python does, and
writes the masks `glsnet run` writes, byte for byte. Its sessions run without common-subexpression elimination, as
the Python runtime's do (an int8 graph's Q/DQ pairs stay fusable into integer kernels). `glsnet run` keeps an int8
build's activations in the shared arena, as it does fp32's, with the same mask.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from export.build import BuildOptions, build_precision
from runtime.backends.onnxruntime import QDQ_BLOCKING_OPTIMIZERS
from runtime.bundle.manifest import read_manifest
from runtime.image_io.readers import open_image
from runtime.segmenter import Segmenter, SegmenterOptions
from tests.export.test_build_precision import LENIENT, calibrated, copy_bundle, scene_files  # noqa: F401  (fixtures)
from tests.runtime.backends.session_config import shared_arena_states
from tests.runtime.cpp.c_abi import LOG_CALLBACK, LOG_INFO, OptionsWithLog
from tests.runtime.cpp.test_cpp_runtime import CApi, PlanInfo, _build, _scene

ENGINES = "engines/onnxruntime_cpu"
CSE_KEY = "optimization.disable_specified_optimizers"  # onnxruntime_session_options_config_keys.h, what the C++ sets


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    return _build("cpp")


@pytest.fixture(scope="module")
def engine_bundle(calibrated, tmp_path_factory) -> Path:  # noqa: F811
    """The small bundle with fp16 and int8 ONNX Runtime builds, each with its global stage graphs."""
    bundle = copy_bundle(calibrated, tmp_path_factory.mktemp("engines") / "bundle")
    for precision in ("fp16", "int8"):
        build_precision(bundle, BuildOptions(precision=precision, thresholds=LENIENT, target="onnxruntime", whole_images=False))
    return bundle


def _loaded(api: CApi, bundle: Path, precision: str) -> list[str]:
    """The runtime's own INFO messages while glsnet_open loads ``precision``."""
    messages: list[str] = []

    @LOG_CALLBACK
    def collect(user_data, level, message):
        if level == LOG_INFO and message.startswith(b"global branch:"):
            messages.append(message.decode())

    options = OptionsWithLog()
    api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.precision = precision.encode()
    options.log_callback, options.log_level = collect, LOG_INFO
    handle = ctypes.c_void_p()
    assert api.lib.glsnet_open(str(bundle).encode(), ctypes.byref(options), ctypes.byref(handle)) == 0, api.lib.glsnet_last_error()
    api.lib.glsnet_close(handle)
    return messages


@pytest.fixture(scope="module")
def api(cpp_build) -> CApi:
    api = CApi(cpp_build)
    api.lib.glsnet_options_init_sized.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return api


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_glsnet_cpp_loads_the_stage_graphs_the_python_runtime_loads(api, engine_bundle, precision):
    manifest = read_manifest(engine_bundle)
    count = len(manifest.global_stages[precision])
    assert count == len(manifest.global_stages["fp32"]) > 1
    with Segmenter(engine_bundle, precision=precision) as segmenter:
        python_stages = [str(g.path) for g in segmenter.graphs.global_stages]
    assert len(python_stages) == count
    if precision == "fp32":  # no fp32 build: the manifest's stage graphs
        source = "the fp32 graphs"
    else:
        source = f"the onnxruntime {precision} build in {ENGINES}/{precision}"
        assert python_stages == [str(engine_bundle / ENGINES / precision / f"global_stage{i}.onnx") for i in range(count)]
    assert _loaded(api, engine_bundle, precision) == [
        f"global branch: {count} stage graphs of {source} ({python_stages[0]} .. {python_stages[-1]})"
    ]


def test_a_build_without_all_its_stages_runs_its_single_global_graph_in_both(api, engine_bundle, tmp_path):
    bundle = copy_bundle(engine_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    engine = next(e for e in manifest["engines"] if e["target"] == "onnxruntime" and e["precision"] == "int8")
    del engine["files"]["global_stage1"]
    (bundle / "manifest.json").unlink()  # a hard link to the shared bundle's manifest: write a file of its own
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with Segmenter(bundle, precision="int8") as segmenter:
        assert segmenter.graphs.global_stages == ()
        single = str(segmenter.graphs.global_graph)
    assert _loaded(api, bundle, "int8") == [f"global branch: the single global graph of the onnxruntime int8 build in {ENGINES}/int8 ({single})"]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_plans_and_masks_equal_glsnet_runs_on_the_engine_build(api, cpp_build, engine_bundle, tmp_path, precision):
    height, width = 700, 260  # the staged plan bands the global branch at this height
    with Segmenter(engine_bundle, precision=precision) as segmenter:
        plan = segmenter.plan(height, width)
    handle = ctypes.c_void_p()
    options = OptionsWithLog()
    api.lib.glsnet_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.precision = precision.encode()
    assert api.lib.glsnet_open(str(engine_bundle).encode(), ctypes.byref(options), ctypes.byref(handle)) == 0, api.lib.glsnet_last_error()
    try:
        info = PlanInfo(struct_size=ctypes.sizeof(PlanInfo))
        assert api.lib.glsnet_plan(handle, height, width, ctypes.byref(info)) == 0
    finally:
        api.lib.glsnet_close(handle)
    assert plan.staged
    assert (info.batch_size, info.global_band_rows, info.estimate_bytes) == (plan.batch_size, plan.global_band_rows or 0, plan.estimate_bytes)

    image = tmp_path / "scene.png"
    Image.fromarray(_scene(height, width, seed=21)).save(image)
    env = dict(os.environ, COLUMNS="200")
    py = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(image), "-b", str(engine_bundle), "-o", str(tmp_path / "py"),
                         "--precision", precision, "--no-color"], capture_output=True, text=True, env=env)
    cpp = subprocess.run([str(cpp_build / "glsnet-cpp"), "run", str(image), "-b", str(engine_bundle), "-o", str(tmp_path / "cpp"),
                          "--precision", precision, "--no-color"], capture_output=True, text=True)
    assert py.returncode == 0 and cpp.returncode == 0, py.stderr + cpp.stderr
    masks = [open_image(tmp_path / side / "scene_mask.png") for side in ("py", "cpp")]
    a, b = (m.read_rows(0, m.height) for m in masks)
    assert len(np.unique(a)) >= 2 and np.array_equal(a, b), f"{precision}: {np.mean(a == b):.6%} of pixels agree"


def test_an_int8_build_keeps_its_activations_in_the_shared_arena_with_the_same_mask(engine_bundle):
    image = _scene(700, 260, seed=22)
    masks = {}
    for keep in (False, True):
        with Segmenter(engine_bundle, options=SegmenterOptions(precision="int8", threads=1, keep_activations=keep)) as segmenter:
            scheduler = segmenter.pipeline.scheduler
            assert scheduler.patch_backend is None  # int8 runs the local and fusion graphs as two sessions
            states = shared_arena_states(scheduler)  # local, fusion and the global stages
            assert len(states) == 2 + len(scheduler.global_stages) > 2 and states == [(keep, keep)] * len(states)
            masks[keep] = segmenter.segment(image)
    assert len(np.unique(masks[False])) >= 2 and np.array_equal(masks[True], masks[False])


def _kept_float_convs(graph: Path, out: Path, options: ort.SessionOptions, **session: object) -> int:
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"], **session)
    return sum(node.op_type in ("Conv", "FusedConv") for node in onnx.load(str(out)).graph.node)


def test_the_session_config_key_the_cpp_runtime_sets_keeps_int8_convolutions_integer(engine_bundle, tmp_path):
    """The ONNX Runtime the runtimes load honours the config key as the Python runtime's disabled_optimizers: without
    it common-subexpression elimination leaves float convolutions in the int8 graph; with it, as with the Python
    runtime's setting, none but those the build kept in float."""
    graph = engine_bundle / read_manifest(engine_bundle).graphs["int8"]["local"].file
    default = _kept_float_convs(graph, tmp_path / "default.onnx", ort.SessionOptions())
    keyed = ort.SessionOptions()
    keyed.add_session_config_entry(CSE_KEY, ",".join(QDQ_BLOCKING_OPTIMIZERS))
    with_key = _kept_float_convs(graph, tmp_path / "key.onnx", keyed)
    python = _kept_float_convs(graph, tmp_path / "python.onnx", ort.SessionOptions(), disabled_optimizers=list(QDQ_BLOCKING_OPTIMIZERS))
    assert with_key == python < default, (default, with_key, python)


def test_int8_graphs_without_a_build_give_glsnet_runs_mask_in_glsnet_cpp(cpp_build, engine_bundle, tmp_path):
    """The raw Q/DQ int8 graphs (no ONNX Runtime build): ONNX Runtime fuses them when each session loads, and without
    common-subexpression elimination in both runtimes the fused graphs are the same. Measured once with glsnet-cpp
    built without the config key: 99.50% and 99.63% of pixels agreed on these two scenes, instead of all of them."""
    bundle = copy_bundle(engine_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = [e for e in manifest["engines"] if e["precision"] != "int8"]
    (bundle / "manifest.json").unlink()  # a hard link to the shared bundle's manifest: write a file of its own
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    env = dict(os.environ, COLUMNS="200")
    for height, width, seed in ((700, 260, 21), (1000, 900, 5)):
        image = tmp_path / f"scene{height}.png"
        Image.fromarray(_scene(height, width, seed=seed)).save(image)
        args = [str(image), "-b", str(bundle), "--precision", "int8", "--no-color"]
        py = subprocess.run([sys.executable, "-m", "runtime.cli", "run", *args, "-o", str(tmp_path / "py")], capture_output=True, text=True, env=env)
        cpp = subprocess.run([str(cpp_build / "glsnet-cpp"), "run", *args, "-o", str(tmp_path / "cpp")], capture_output=True, text=True)
        assert py.returncode == 0 and cpp.returncode == 0, py.stderr + cpp.stderr
        a, b = (open_image(tmp_path / side / f"scene{height}_mask.png") for side in ("py", "cpp"))
        a, b = a.read_rows(0, a.height), b.read_rows(0, b.height)
        assert np.array_equal(a, b), f"{height} x {width}: {np.mean(a == b):.6%} of pixels agree"
