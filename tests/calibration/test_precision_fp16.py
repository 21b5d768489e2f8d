"""FP16 conversion: runs in ONNX Runtime on the CPU, keeps the fp32 policy (softmax, LayerNorm, crop arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from calibration.data_readers import cpu_session  # noqa: E402
from calibration.fp16 import (  # noqa: E402
    FLOAT,
    FLOAT16,
    FP16Options,
    box_arithmetic_nodes,
    convert_graph_to_fp16,
    convert_model_to_fp16,
    decomposed_layernorm_nodes,
    name_nodes,
    remove_fp16_round_trips,
)
from runtime.bundle.manifest import graph_path, read_manifest  # noqa: E402
from runtime.errors import BundleError  # noqa: E402


def elem_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }


@pytest.fixture(scope="module")
def fp16_graphs(small_bundle, tmp_path_factory):
    manifest = read_manifest(small_bundle)
    out = tmp_path_factory.mktemp("fp16")
    return {
        role: (graph_path(small_bundle, manifest.graph(role)), convert_graph_to_fp16(graph_path(small_bundle, manifest.graph(role)), out / f"{role}.onnx"))
        for role in ("global", "local", "fusion")
    }


def test_fp16_graphs_run_on_the_cpu_with_fp32_io(fp16_graphs, small_bundle):
    manifest = read_manifest(small_bundle)
    rng = np.random.default_rng(0)
    p = manifest.patch.size
    image = rng.standard_normal((1, 3, 192, 256)).astype(np.float32)
    patches = rng.standard_normal((3, 3, p, p)).astype(np.float32)
    outputs = {}
    for role, feed in (("global", {"image": image}), ("local", {"patches": patches})):
        fp32_path, result = fp16_graphs[role]
        model = onnx.load(str(result.path))
        onnx.checker.check_model(model)
        assert any(init.data_type == FLOAT16 for init in model.graph.initializer)  # weights really are fp16
        assert all(t.type.tensor_type.elem_type == FLOAT for t in [*model.graph.input, *model.graph.output])
        reference = cpu_session(fp32_path).run(None, feed)
        got = cpu_session(result.path).run(None, feed)
        for r, g in zip(reference, got):
            assert g.dtype == np.float32 and g.shape == r.shape
            assert np.abs(g - r).max() <= 2e-2 * np.abs(r).max()
        outputs[role] = reference
    local_features, local_skip = outputs["local"]
    boxes = np.array([[0, 0, p, p], [64, 32, 64 + p, 32 + p], [128, 64, 128 + p, 64 + p]], np.float32)
    feed = {"local_features": local_features, "local_skip": local_skip, "global_features": outputs["global"][0], "boxes": boxes}
    fp32_path, result = fp16_graphs["fusion"]
    reference = cpu_session(fp32_path).run(None, feed)[0]
    got = cpu_session(result.path).run(None, feed)[0]
    assert np.abs(got - reference).max() <= 2e-2 * np.abs(reference).max()
    assert (got.argmax(1) == reference.argmax(1)).mean() > 0.99


def test_fusion_policy_keeps_softmax_layernorm_and_box_arithmetic_in_fp32(fp16_graphs):
    fp32_path, result = fp16_graphs["fusion"]
    original = onnx.load(str(fp32_path))
    name_nodes(original)
    reasons = result.reasons()
    assert reasons.get("box arithmetic", 0) > 5 and reasons.get("op Softmax", 0) == 3
    assert reasons.get("op LayerNormalization", 0) + reasons.get("decomposed LayerNorm", 0) >= 3
    converted = onnx.load(str(result.path))
    types = elem_types(converted)
    box_nodes = {name for name, why in box_arithmetic_nodes(original).items() if why == "box arithmetic"}
    kept = [node for node in converted.graph.node if node.name in box_nodes]
    assert len(kept) > 5
    produced = [types[out] for node in kept for out in node.output if out in types]
    assert FLOAT in produced and FLOAT16 not in produced  # every box-arithmetic node computes in fp32
    for node in converted.graph.node:  # the boxes are never rounded to fp16 on their way in
        if node.op_type == "Cast" and "boxes" in node.input:
            assert node.attribute[0].i == FLOAT
        if node.op_type in ("Softmax", "LayerNormalization"):
            assert all(types.get(i, FLOAT) == FLOAT for i in node.input if i)


def test_crop_weights_stay_exact_above_2048_px(tmp_path):
    """fp16 spaces numbers 2 px apart above 2048: a box at x=2049 must not become 2048."""
    torch = pytest.importorskip("torch")
    from glsnet.fusion import GlobalCrop

    class Crop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.crop = GlobalCrop(context=0.25)

        def forward(self, features, boxes):
            return self.crop(features, boxes, 4, 4)

    features = torch.randn(1, 8, 80, 80)
    boxes = torch.tensor([[2049.0, 2051.0, 2177.0, 2179.0], [2301.0, 1025.0, 2429.0, 1153.0]])
    path = tmp_path / "crop.onnx"
    torch.onnx.export(Crop(), (features, boxes), str(path), input_names=["global_features", "boxes"], output_names=["crop"],
                      opset_version=17, dynamo=False, dynamic_axes={"boxes": {0: "b"}})
    result = convert_graph_to_fp16(path, tmp_path / "crop16.onnx")
    assert result.reasons().get("box arithmetic", 0) > 0
    feed = {"global_features": features.numpy(), "boxes": boxes.numpy()}
    exact = cpu_session(path).run(None, feed)[0]
    fp16 = cpu_session(result.path).run(None, feed)[0]
    rounded = cpu_session(path).run(None, {**feed, "boxes": boxes.numpy().astype(np.float16).astype(np.float32)})[0]
    shift = np.abs(rounded - exact).max()
    assert shift > 1e-2  # rounding the boxes would be visible
    assert np.abs(fp16 - exact).max() < shift / 5


def _decomposed_layernorm_model():
    h = onnx.helper
    nodes = [
        h.make_node("ReduceMean", ["x"], ["mean"], axes=[-1], name="mean"),
        h.make_node("Sub", ["x", "mean"], ["d"], name="sub"),
        h.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
        h.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], name="var"),
        h.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        h.make_node("Sqrt", ["ve"], ["std"], name="sqrt"),
        h.make_node("Div", ["d", "std"], ["n"], name="div"),
        h.make_node("Mul", ["n", "gamma"], ["g"], name="scale"),
        h.make_node("Add", ["g", "beta"], ["y0"], name="shift"),
        h.make_node("Relu", ["y0"], ["y"], name="relu"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        onnx.numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        onnx.numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
        onnx.numpy_helper.from_array(np.zeros(16, np.float32), "beta"),
    ]
    graph = h.make_graph(
        nodes, "ln", [h.make_tensor_value_info("x", FLOAT, ["n", 16])], [h.make_tensor_value_info("y", FLOAT, ["n", 16])], inits
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_decomposed_layernorm_is_found_and_kept_fp32(tmp_path):
    model = _decomposed_layernorm_model()
    assert decomposed_layernorm_nodes(model) == {"mean", "sub", "pow", "var", "add_eps", "sqrt", "div", "scale", "shift"}
    converted, reasons = convert_model_to_fp16(model, FP16Options())
    onnx.checker.check_model(converted)
    types = elem_types(converted)
    assert reasons["sub"] == "decomposed LayerNorm" and "relu" not in reasons
    produced = {node.name: types[node.output[0]] for node in converted.graph.node if node.output[0] in types}
    assert all(produced[name] == FLOAT for name in ("mean", "sub", "pow", "div", "scale", "shift"))
    assert produced["relu"] == FLOAT16
    path = tmp_path / "ln16.onnx"
    onnx.save(converted, str(path))
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32) * 300 + 1000  # fp16 variance would overflow
    y = cpu_session(path).run(None, {"x": x})[0]
    expected = np.maximum((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5), 0)
    assert np.abs(y - expected).max() < 1e-2


def test_round_trips_through_fp16_are_removed():
    h = onnx.helper
    nodes = [
        h.make_node("Cast", ["x"], ["x16"], to=FLOAT16, name="c16"),
        h.make_node("Cast", ["x16"], ["x32"], to=FLOAT, name="c32"),
        h.make_node("Relu", ["x32"], ["y"], name="relu"),
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", FLOAT, [3])], [h.make_tensor_value_info("y", FLOAT, [3])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    assert remove_fp16_round_trips(model) == 1
    assert [n.name for n in model.graph.node] == ["relu"] and list(model.graph.node[0].input) == ["x"]


def test_refuses_a_graph_that_is_already_fp16(fp16_graphs, tmp_path):
    _, result = fp16_graphs["global"]
    with pytest.raises(BundleError, match="already holds fp16"):
        convert_graph_to_fp16(result.path, tmp_path / "again.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(BundleError, match="not a readable ONNX"):
        convert_graph_to_fp16(bad, tmp_path / "out.onnx")
