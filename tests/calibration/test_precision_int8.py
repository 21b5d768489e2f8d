"""INT8: Q/DQ graphs that run in ONNX Runtime on the CPU, TensorRT placement, the cache, the sensitivity check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from onnx import numpy_helper  # noqa: E402

from calibration.accuracy_gate import PrecisionThresholds, chain_scores  # noqa: E402
from calibration.calibration_cache import CalibrationCache  # noqa: E402
from calibration.data_readers import TileFeeds, cpu_session, fp32_sessions  # noqa: E402
from calibration.int8 import (  # noqa: E402
    Int8Options,
    QuantizationExtras,
    amax_of,
    build_int8_graphs,
    calibrate_ranges,
    node_groups,
    prepare_for_quantization,
    stem_convolutions,
)
from calibration.integer_kernels import count_kernels, optimise_for_cpu  # noqa: E402
from calibration.tiles import CALIBRATION, HOLDOUT, TileOptions, sample_tiles  # noqa: E402
from runtime.bundle.manifest import graph_path, read_manifest  # noqa: E402

ROLES = ("global", "local", "fusion")
NO_GATE = PrecisionThresholds(min_agreement=0.0, max_miou_drop=None)


@pytest.fixture(scope="module")
def setup(small_bundle):
    from glsnet.data.synthetic import synthetic_scene

    manifest = read_manifest(small_bundle)
    scenes = [synthetic_scene(256, 256, seed=s) for s in (1, 2, 3)]
    tiles = sample_tiles(
        [i for i, _ in scenes], manifest, TileOptions(count=16, holdout=8, scene_size=256, seed=0), labels=[l for _, l in scenes]
    )
    reference = fp32_sessions(small_bundle, manifest)
    calibration = TileFeeds(tiles, manifest, CALIBRATION, reference)
    holdout = TileFeeds(tiles, manifest, HOLDOUT, reference)
    fp32 = {role: graph_path(small_bundle, manifest.graph(role)) for role in ROLES}
    return manifest, tiles, calibration, holdout, fp32


@pytest.fixture(scope="module")
def int8(setup, tmp_path_factory):
    _, _, calibration, holdout, fp32 = setup
    out = tmp_path_factory.mktemp("int8")
    return build_int8_graphs(fp32, out, calibration, holdout, Int8Options(), NO_GATE)


def test_int8_graphs_run_on_the_cpu(setup, int8):
    _, _, _, holdout, _ = setup
    sessions = {role: cpu_session(int8.graphs[role]) for role in ROLES}
    for role in ROLES:
        feed = next(holdout.feeds(role))
        reference = holdout.reference[role].run(None, feed)
        got = sessions[role].run(None, feed)
        for r, g in zip(reference, got):
            assert g.dtype == np.float32 and g.shape == r.shape and np.isfinite(g).all()
            assert np.abs(g - r).mean() < 0.2 * np.abs(r).mean() + 1e-6  # quantized, not broken
    scores = chain_scores(holdout, sessions)
    assert scores.pixels > 0 and scores.agreement > 0.5
    assert int8.rounds[0]["agreement"] == pytest.approx(scores.agreement)
    # no gate asked for: nothing left in float but the stems (Int8Options.float_stem)
    stems = {role: list(stem_convolutions(onnx.load(str(setup[4][role])))) for role in ROLES}
    assert stems["global"] and stems["local"] and not stems["fusion"]
    assert int8.excluded == stems


def _initializer(model, name):
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def test_qdq_placement_follows_tensorrt_rules(int8):
    for role in ROLES:
        model = onnx.load(str(int8.graphs[role]))
        producers = {o: n for n in model.graph.node for o in n.output}
        nodes = model.graph.node
        quantize = [n for n in nodes if n.op_type == "QuantizeLinear"]
        dequantize = [n for n in nodes if n.op_type == "DequantizeLinear"]
        assert quantize and dequantize
        for node in quantize + dequantize:  # symmetric int8: every zero point is an int8 zero
            zero = _initializer(model, node.input[2])
            assert zero.dtype == np.int8 and not zero.any()
        for node in quantize:  # activations: one scale per tensor
            assert _initializer(model, node.input[1]).size == 1
        stems = set(stem_convolutions(model))
        convs = [n for n in nodes if n.op_type == "Conv" and n.name not in stems]
        for stem in (n for n in nodes if n.name in stems):  # left in float: reads the image and float weights
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in stem.input)
        for conv in convs:
            weight_dq = producers.get(conv.input[1])
            assert weight_dq is not None and weight_dq.op_type == "DequantizeLinear"
            weights = _initializer(model, weight_dq.input[0])
            assert weights.dtype == np.int8
            assert _initializer(model, weight_dq.input[1]).shape == (weights.shape[0],)  # per output channel
            if len(conv.input) > 2 and conv.input[2]:
                assert conv.input[2] not in producers or producers[conv.input[2]].op_type != "DequantizeLinear"  # float bias
            assert producers[conv.input[0]].op_type == "DequantizeLinear"  # activation input quantized
        if role == "fusion":
            for node in nodes:
                if node.op_type in ("Softmax", "LayerNormalization", "MatMul", "Div", "Clip", "Abs"):
                    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)


def _convs(path) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def test_optimised_int8_engines_run_every_convolution_as_an_integer_kernel(setup, int8, tmp_path):
    _, _, _, _, fp32 = setup
    for role in ROLES:
        assert count_kernels(fp32[role]).float_convs  # the count sees float convolutions where there are some
        engine = tmp_path / f"{role}.onnx"
        optimise_for_cpu(int8.graphs[role], engine)
        count = count_kernels(engine)
        stems = stem_convolutions(onnx.load(str(fp32[role])))
        assert count.float_convs == stems, f"{role}: convolutions left in float: {count.float_convs}"
        assert count.integer["QLinearConv"] == len(_convs(fp32[role])) - len(stems)
        if role != "fusion":
            assert count.integer["QLinearAdd"] > 0  # residual Adds in integers too
        else:
            assert count.float_matmuls  # the attention stays float on purpose


def test_int8_graphs_pass_the_tensorrt_parsers(int8):
    from export.tensorrt.tensorrt_compat import check_model

    for role in ROLES:
        report = check_model(onnx.load(str(int8.graphs[role])), f"int8/{role}")
        assert report, report.lines()
        assert report.op_counts["QuantizeLinear"] > 0


def test_calibration_cache_parses_back_to_the_same_scales(setup, int8, tmp_path):
    _, _, calibration, _, fp32 = setup
    prepared = prepare_for_quantization(fp32["local"], tmp_path / "local.prepared.onnx")
    ranges = calibrate_ranges(prepared, lambda: calibration.feeds("local"), Int8Options(), tmp_path)  # every float tensor
    amax = amax_of(ranges)
    cache = CalibrationCache.read(int8.caches["local"])  # the cache TensorRT reads on DLA: every float tensor too
    assert cache.algorithm == "EntropyCalibration2" and cache.version == 100000
    assert {"local_features", "local_skip"} <= set(cache.scales)
    assert set(cache.scales) == {name for name, value in amax.items() if value > 0}
    for name, scale in cache.scales.items():
        assert scale == np.float32(amax[name] / 127.0)  # calibration is deterministic, and the file exact
    text = int8.caches["local"].read_text()
    assert CalibrationCache.parse(text).scales == cache.scales


def test_extra_options_are_typed():
    extras = QuantizationExtras()
    ort = extras.to_ort()
    assert ort["ActivationSymmetric"] is True and ort["WeightSymmetric"] is True and ort["QuantizeBias"] is False
    assert set(ort) == {
        "ActivationSymmetric", "WeightSymmetric", "QDQKeepRemovableActivations", "QuantizeBias", "DedicatedQDQPair",
        "ForceQuantizeNoInputCheck", "AddQDQPairToWeight", "OpTypesToExcludeOutputQuantization", "QDQOpTypePerChannelSupportToAxis",
    }
    with pytest.raises(TypeError):
        QuantizationExtras(activation_symetric=True)  # a typo cannot pass silently
    with pytest.raises(dataclasses.FrozenInstanceError):
        extras.weight_symmetric = False  # type: ignore[misc]
    with pytest.raises(ValueError):
        Int8Options(method="kl-divergence")


def test_modelopt_is_optional(setup, tmp_path):
    from runtime.errors import MissingDependencyError
    from runtime.optional_import import available

    if available("modelopt.onnx.quantization"):
        pytest.skip("NVIDIA ModelOpt is installed here")
    _, _, calibration, holdout, fp32 = setup
    with pytest.raises(MissingDependencyError, match="nvidia-modelopt"):
        build_int8_graphs(fp32, tmp_path, calibration, holdout, Int8Options(use_modelopt=True), NO_GATE)


def test_node_groups_follow_the_modules(setup):
    _, _, _, _, fp32 = setup
    groups = node_groups(onnx.load(str(fp32["local"])), ("Conv",))
    assert len(groups["/backbone/layer1/layer1.0"]) == 4  # a bottleneck block's three convolutions and its shortcut's
    assert len(groups["/backbone/layer1/layer1.1"]) == 3 and "/neck" in groups
    assert sum(len(nodes) for nodes in groups.values()) == 55  # every convolution of ResNet-50 + neck + skip
    with_adds = node_groups(onnx.load(str(fp32["local"])), ("Conv", "Add"))
    assert with_adds["/backbone/layer1/layer1.0"][-1] == "/backbone/layer1/layer1.0/Add"  # the residual Add joins its block


def test_sensitivity_check_leaves_the_most_damaging_group_in_float(setup, tmp_path):
    _, _, calibration, holdout, fp32 = setup
    unreachable = PrecisionThresholds(min_agreement=1.01, max_miou_drop=None)
    options = Int8Options(max_excluded_groups=1)
    fusion_only = {"fusion": fp32["fusion"]}  # the other graphs stay fp32: three head groups to scan, fast
    built = build_int8_graphs(fusion_only, tmp_path / "int8", calibration, holdout, options, unreachable)
    assert len(built.rounds) == 2
    round1 = built.rounds[1]
    role, group = round1["graph"], round1["group"]
    assert round1["scan_gain"] > 0 and built.excluded[role] == round1["excluded"]
    assert set(round1["excluded"]) == set(node_groups(onnx.load(str(fp32[role])), options.op_types(role))[group])
    model = onnx.load(str(built.graphs[role]))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in built.excluded[role]:  # left in float: nothing it reads is dequantized
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
    assert role == "fusion" and set(built.excluded) == {"fusion"}
    assert built.rounds[0]["agreement"] < 1.0
    engine = tmp_path / "fusion.engine.onnx"
    optimise_for_cpu(built.graphs[role], engine)
    kept_convs = sorted(n for n in built.excluded[role] if n in _convs(fp32[role]))
    assert kept_convs and sorted(count_kernels(engine).float_convs) == kept_convs  # exactly those the check kept


def test_fusion_feeds_reuse_the_local_calibration_outputs(setup, tmp_path):
    """The local branch's calibration pass hands its fp32 outputs to the feeds: the fusion's feeds then run no local
    graph, and what they get is the reference's output (to float rounding: the calibration session is unoptimised)."""
    manifest, tiles, calibration, _, fp32 = setup
    reference = calibration.reference
    feeds = TileFeeds(tiles, manifest, CALIBRATION, reference, cache_bytes=1 << 30)
    prepared = prepare_for_quantization(fp32["local"], tmp_path / "local.prepared.onnx")
    calibrate_ranges(prepared, lambda: feeds.feeds("local"), Int8Options(), tmp_path, None, lambda i, t: feeds.remember("local", i, t))

    class Refuse:
        def run(self, *args, **kwargs):
            raise AssertionError("the fusion feeds ran the local graph again")

    expected = [reference["local"].run(None, feeds.local_feed(b)) for b in range(len(feeds.batches))]
    feeds.reference = {**reference, "local": Refuse()}
    fusion = list(feeds.feeds("fusion"))
    assert len(fusion) == len(feeds.batches) > 1
    for feed, (features, skip) in zip(fusion, expected):
        np.testing.assert_allclose(feed["local_features"], features, rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(feed["local_skip"], skip, rtol=2e-3, atol=1e-3)
    feeds.remember("fusion", 0, {"logits": np.zeros(1, np.float32)})  # other roles' outputs are not the feeds' business
    assert all(key[0] in ("global", "local") for key in feeds._cache)
