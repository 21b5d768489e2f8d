"""INT8 graphs for TensorRT: the gated Q/DQ placement and scales carried into the fp16 graph (opset 19, fp16 scales)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from calibration.tensorrt_int8 import FP16_SCALE_OPSET, qdq_scales, write_tensorrt_int8_graph  # noqa: E402
from export.tensorrt.tensorrt_compat import check_graph_file, check_model  # noqa: E402
from runtime.errors import BundleError  # noqa: E402

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def _qdq_graph(path):
    """x -> Q/DQ -> Conv (int8 weights, per-channel DQ, float bias) -> Relu -> Q/DQ -> ReduceMean -> y: the fp32-based
    placement calibration/int8.py writes, with a reduction the fp16 policy keeps in fp32."""
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (6, 4, 3, 3), dtype=np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
        numpy_helper.from_array(weights, "w_q"),
        numpy_helper.from_array(np.linspace(1e-3, 4e-3, 6).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(6, np.int8), "w_zero"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(0.05, np.float32), "r_scale"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zero"], ["x_dq"], name="x_DQ"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="w_DQ", axis=0),
        helper.make_node("Conv", ["x_dq", "w", "bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "r_scale", "zero"], ["r_q"], name="r_Q"),
        helper.make_node("DequantizeLinear", ["r_q", "r_scale", "zero"], ["r_dq"], name="r_DQ"),
        helper.make_node("ReduceMean", ["r_dq"], ["y"], name="mean", axes=[2, 3], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", F, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["batch", 6, 1, 1])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values} | {i.name: i.data_type for i in inferred.graph.initializer}


def _run(path, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_tensorrt_graph_quantizes_in_fp16_with_the_gated_placement_and_scales(tmp_path):
    source = _qdq_graph(tmp_path / "int8.onnx")
    result = write_tensorrt_int8_graph(source, tmp_path / "tensorrt" / "g.onnx")
    before, after = onnx.load(str(source)), onnx.load(str(result.path))
    assert [o.version for o in after.opset_import if o.domain in ("", "ai.onnx")] == [FP16_SCALE_OPSET]
    ops = lambda m: [n.op_type for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Conv")]  # noqa: E731
    assert sorted(ops(after)) == sorted(ops(before))  # the same placement (the order is topological, not the same)
    old, new = qdq_scales(before), qdq_scales(after)
    assert new.keys() == old.keys()
    for name, values in new.items():  # the gated scales, rounded to float16
        assert values.dtype == np.float16 and np.array_equal(values, old[name].astype(np.float16))
    types = _types(after)
    conv = next(n for n in after.graph.node if n.op_type == "Conv")
    assert types[conv.input[0]] == H and types[conv.input[1]] == H and types[conv.output[0]] == H  # int8 in, fp16 out
    relu = next(n for n in after.graph.node if n.op_type == "Relu")
    assert types[relu.output[0]] == H  # an op no Q/DQ covers runs in fp16, not fp32
    mean = next(n for n in after.graph.node if n.op_type == "ReduceMean")
    assert types[mean.input[0]] == F and len(mean.input) == 2  # kept fp32 by the fp16 policy; axes moved to an input (opset 18)
    assert "mean" in result.fp32_nodes
    assert types["x"] == F and types["y"] == F  # the graph's I/O stays fp32, as the manifest says


def test_the_tensorrt_graph_computes_what_the_gated_graph_computes(tmp_path):
    source = _qdq_graph(tmp_path / "int8.onnx")
    target = write_tensorrt_int8_graph(source, tmp_path / "g.onnx").path
    x = np.random.default_rng(1).uniform(-2.5, 2.5, (2, 4, 8, 8)).astype(np.float32)
    expected, got = _run(source, x), _run(target, x)
    assert got.dtype == np.float32 and got.shape == expected.shape == (2, 6, 1, 1)
    # one int8 step (0.05) of the second Q/DQ is the most fp16 rounding can move a value across a rounding boundary
    assert np.abs(got - expected).max() < 0.05 and np.abs(got - expected).mean() < 0.01


def test_the_tensorrt_graph_passes_both_parsers_and_a_scale_of_another_type_than_its_input_fails(tmp_path):
    source = _qdq_graph(tmp_path / "int8.onnx")
    target = write_tensorrt_int8_graph(source, tmp_path / "g.onnx").path
    report = check_graph_file(target, dim_names=("batch",))
    assert report, report.lines()
    # what the parser would get from a plain opset raise without the fp16 scales: fp16 data, fp32 scale
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zero"], ["y"], name="dq"),
    ]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "zero")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", H, [1, 4])], [helper.make_tensor_value_info("y", F, [1, 4])], inits)
    report = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    assert [e.where for e in report.errors] == ["q [QuantizeLinear]"] and "scale is f32 but its input is f16" in report.errors[0].message


def test_a_graph_without_qdq_is_refused_with_the_fix(tmp_path):
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", F, [1, 4])],
                          [helper.make_tensor_value_info("y", F, [1, 4])]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(BundleError, match=r"plain.onnx: holds no Q/DQ nodes.*--int8"):
        write_tensorrt_int8_graph(tmp_path / "plain.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
