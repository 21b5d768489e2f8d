"""The global stage graphs at int8: the global graph's ranges and exclusions under the stages' names, so the
chained stages compute exactly what the int8 global graph computes, as integer kernels."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from calibration.accuracy_gate import PrecisionThresholds
from calibration.data_readers import TileFeeds, cpu_session, fp32_sessions
from calibration.int8 import Int8Options, build_int8_graphs, node_groups, stem_convolutions
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
        match = correspondence(load_graph(fp32["global"]), load_graph(stages[k]))
        float_convs += [match.nodes[name] for name in count_kernels(engine).float_convs]
    assert len(kept) == 4  # the block's two convolutions, its shortcut and its Add
    stem = stem_convolutions(onnx.load(str(fp32["global"])))  # in stage 0, float by design
    assert sorted(float_convs) == sorted([*stem, *(n for n in kept if n.endswith("/Conv"))])


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


def _graph(nodes, inputs, outputs, initializers, prefix=""):
    """A small opset-17 model; ``prefix`` renames every node, tensor and initializer, as another export would."""
    from onnx import TensorProto, helper, numpy_helper

    def name(n):
        return prefix + n if n else n

    made = [helper.make_node(op, [name(i) for i in ins], [name(o) for o in outs], name=name(node_name)) for node_name, op, ins, outs in nodes]
    graph = helper.make_graph(
        made,
        "g",
        [helper.make_tensor_value_info(name(i), TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info(name(o), TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), name(k)) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _stage_of(nodes, inputs, outputs, initializers):
    """The whole graph and a renamed copy of it with its nodes in reverse order."""
    return _graph(nodes, inputs, outputs, initializers), _graph(nodes[::-1], inputs, outputs, initializers, prefix="s_")


WEIGHT = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1)
ZEROS = np.zeros((2, 2, 1, 1), np.float32)


def test_nodes_differing_in_constants_or_operand_order_map_to_their_own_counterparts():
    nodes = [
        ("conv", "Conv", ["x", "w"], ["a"]),
        ("mul1", "Mul", ["a", "c1"], ["m1"]),
        ("mul2", "Mul", ["a", "c2"], ["m2"]),
        ("sub12", "Sub", ["m1", "m2"], ["d12"]),
        ("sub21", "Sub", ["m2", "m1"], ["d21"]),
        ("add", "Add", ["d12", "d21"], ["y"]),
    ]
    whole = _graph(nodes, ["x"], ["y"], {"w": WEIGHT, "c1": [2.0], "c2": [3.0]})
    # the stage's initializers swap names (its mul1 reads s_c2 = 2.0), so only values can tell the two Muls apart
    swapped = [(n, op, [{"c1": "c2", "c2": "c1"}.get(i, i) for i in ins], outs) for n, op, ins, outs in nodes[::-1]]
    stage = _graph(swapped, ["x"], ["y"], {"w": WEIGHT, "c1": [3.0], "c2": [2.0]}, prefix="s_")
    match = correspondence(whole, stage)
    assert match.nodes == {f"s_{n}": n for n, *_ in nodes}
    assert all(match.tensors[f"s_{t}"] == t for t in ("x", "a", "m1", "m2", "d12", "d21", "y"))


def test_convolutions_with_equal_weights_are_told_apart_by_position():
    nodes = [
        ("conv", "Conv", ["x", "w"], ["a"]),
        ("zero1", "Conv", ["a", "z1"], ["b"]),
        ("zero2", "Conv", ["b", "z2"], ["y"]),
    ]
    whole, stage = _stage_of(nodes, ["x"], ["y"], {"w": WEIGHT, "z1": ZEROS, "z2": ZEROS})
    assert correspondence(whole, stage).nodes == {"s_conv": "conv", "s_zero1": "zero1", "s_zero2": "zero2"}


def test_nodes_nothing_tells_apart_are_refused_by_name():
    nodes = [
        ("conv", "Conv", ["x", "w"], ["a"]),
        ("zero1", "Conv", ["a", "z1"], ["b"]),
        ("zero2", "Conv", ["a", "z2"], ["c"]),
        ("add", "Add", ["b", "c"], ["y"]),
    ]
    whole, stage = _stage_of(nodes, ["x"], ["y"], {"w": WEIGHT, "z1": ZEROS, "z2": ZEROS})
    with pytest.raises(StageMatchError, match=r"stage node 's_zero\d' \(Conv\) matches 2 nodes of the global graph"):
        correspondence(whole, stage)


def test_tied_convolutions_not_reached_from_a_unique_one_are_refused():
    nodes = [
        ("zero1", "Conv", ["x", "z1"], ["a"]),
        ("zero2", "Conv", ["a", "z2"], ["y"]),
    ]
    whole, stage = _stage_of(nodes, ["x"], ["y"], {"z1": ZEROS, "z2": ZEROS})
    with pytest.raises(StageMatchError, match="share their weights with other convolutions"):
        correspondence(whole, stage)
