"""The global stage graphs at int8: the global graph's ranges and exclusions under the stages' names, so the
chained stages compute exactly what the int8 global graph computes, as integer kernels."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from calibration.accuracy_gate import PrecisionThresholds
from calibration.data_readers import TileFeeds, cpu_session, fp32_sessions
from calibration.int8 import Int8Options, build_int8_graphs, node_groups
from calibration.integer_kernels import count_kernels, optimise_for_cpu
from calibration.stage_graphs import StageMatchError, correspondence, load_graph
from calibration.tiles import CALIBRATION, HOLDOUT, TileOptions, sample_tiles
from runtime.bundle.manifest import GLOBAL_INPUT, GLOBAL_STAGE_INPUT, graph_path, read_manifest

NO_GATE = PrecisionThresholds(min_agreement=0.0, max_miou_drop=None)


@pytest.fixture(scope="module")
def feeds(small_bundle):
    from glsnet.data.synthetic import synthetic_scene

    manifest = read_manifest(small_bundle)
    scenes = [synthetic_scene(256, 256, seed=s) for s in (4, 5)]
    tiles = sample_tiles([i for i, _ in scenes], manifest, TileOptions(count=8, holdout=4, scene_size=256, seed=0), labels=[l for _, l in scenes])
    reference = fp32_sessions(small_bundle, manifest)
    return manifest, TileFeeds(tiles, manifest, CALIBRATION, reference), TileFeeds(tiles, manifest, HOLDOUT, reference)


def _stages(bundle, manifest):
    return tuple(graph_path(bundle, s.graph) for s in manifest.global_stages["fp32"])


def _chain(paths, image):
    x = image
    for path in paths:
        (x,) = cpu_session(path).run(None, {GLOBAL_STAGE_INPUT: x})
    return x


def test_int8_stages_chain_to_the_int8_global_graph_in_integers(small_bundle, feeds, tmp_path):
    manifest, calibration, holdout = feeds
    fp32 = {"global": graph_path(small_bundle, manifest.graph("global"))}
    stages = _stages(small_bundle, manifest)
    groups = node_groups(onnx.load(str(fp32["global"])), Int8Options().op_types("global"))
    kept = tuple(groups["/backbone/layer2/layer2.0"])  # one block left in float, as the sensitivity check would
    built = build_int8_graphs(fp32, tmp_path, calibration, holdout, Int8Options(nodes_to_exclude=kept), NO_GATE, global_stages=stages)
    assert [p.name for p in built.stages] == [p.name for p in stages] and all(p.parent == tmp_path for p in built.stages)
    image = next(calibration.feeds("global"))[GLOBAL_INPUT]
    (whole,) = cpu_session(built.graphs["global"]).run(None, {GLOBAL_INPUT: image})
    np.testing.assert_array_equal(_chain(built.stages, image), whole)  # same scales, same kernels: bit for bit
    float_convs = []
    for k, path in enumerate(built.stages):
        engine = tmp_path / f"engine{k}.onnx"
        optimise_for_cpu(path, engine)
        float_convs += count_kernels(engine).float_convs
    match = correspondence(load_graph(fp32["global"]), load_graph(stages[1]))  # layer2 is stage 1
    assert len(kept) == 4  # the block's two convolutions, its shortcut and its Add
    assert sorted(match.nodes[name] for name in float_convs) == sorted(n for n in kept if n.endswith("/Conv"))


def test_a_stage_from_another_model_is_refused(small_bundle, tmp_path):
    manifest = read_manifest(small_bundle)
    stage = load_graph(_stages(small_bundle, manifest)[0])
    whole = load_graph(graph_path(small_bundle, manifest.graph("global")))
    for init in stage.graph.initializer:
        if init.raw_data and len(init.dims) == 4:
            weights = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(weights + 1.0, init.name))
            break
    with pytest.raises(StageMatchError, match="no convolution of the global graph"):
        correspondence(whole, stage)
