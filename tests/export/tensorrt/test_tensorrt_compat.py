"""The TensorRT 10.x/11.x ONNX-parser check: our graphs pass; hand-built graphs with what TensorRT lacks fail."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.tensorrt.tensorrt_compat import TENSORRT_10, TENSORRT_11, check_bundle, check_graph_file, check_model  # noqa: E402

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _io(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _relu_model(input_shape):
    return _model([helper.make_node("Relu", ["x"], ["y"])], [_io("x", input_shape)], [_io("y", input_shape)])


def test_the_exported_graphs_pass_both_parsers(small_bundle):
    reports = check_bundle(small_bundle)
    stages = [f"fp32/global stage {i}" for i in range(4)]
    assert [r.graph for r in reports] == ["fp32/global", "fp32/local", "fp32/fusion", *stages]
    for report in reports:
        assert report, report.lines()
        assert report.parsers == (TENSORRT_10.name, TENSORRT_11.name)
        assert set(report.op_counts) <= set(TENSORRT_10.operators)
    assert "RoiAlign" not in reports[2].op_counts and reports[2].op_counts["MatMul"] >= 2


def test_an_operator_tensorrt_lacks_fails():
    model = _model([helper.make_node("Det", ["x"], ["y"], name="det")], [_io("x", ["batch", 3, 3])], [_io("y", ["batch"])])
    report = check_model(model, "hand-made")
    assert not report
    assert len(report.errors) == 1 and report.errors[0].where == "det [Det]"
    assert report.errors[0].parsers == (TENSORRT_10.name, TENSORRT_11.name)
    assert any(line.startswith("FAILED") for line in report.lines())


def test_an_operator_only_newer_parsers_have_fails_for_10_only():
    model = _model([helper.make_node("Swish", ["x"], ["y"])], [_io("x", ["batch", 8])], [_io("y", ["batch", 8])], opset=24)
    report = check_model(model)
    assert {e.parsers for e in report.errors} == {(TENSORRT_10.name,)}


def test_a_custom_domain_op_fails():
    node = helper.make_node("ROIAlign_TRT", ["x"], ["y"], domain="trt.plugins")
    model = _model([node], [_io("x", ["batch", 8])], [_io("y", ["batch", 8])])
    model.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    assert "custom domain" in check_model(model).errors[0].message


def test_an_opset_beyond_tensorrt_10_fails_for_10_only():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_io("x", ["batch", 4])], [_io("y", ["batch", 4])], opset=22)
    report = check_model(model)
    assert [(e.where, e.parsers) for e in report.errors] == [("opset", (TENSORRT_10.name,))]


@pytest.mark.parametrize(
    "shape, message",
    [
        (None, "unknown rank"),
        ([1, None, 8], "dynamic and unnamed"),
        ([1, "N", 8], "not one of the profiled dims"),
    ],
)
def test_inputs_a_profile_cannot_cover_fail(shape, message):
    report = check_model(_relu_model(shape))
    assert not report and message in report.errors[0].message


def test_int64_into_a_float_only_op_fails():
    i64 = TensorProto.INT64
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [_io("a", [2, 3], i64), _io("b", [3, 2], i64)], [_io("y", [2, 2], i64)])
    errors = check_model(model).errors
    assert errors and "is i64" in errors[0].message


def test_resize_with_an_unsupported_mode_fails():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")
    model = _model([node], [_io("x", [1, 3, 8, 8])], [_io("y", [1, 3, 16, 16])], [scales])
    assert "mode 'cubic'" in check_model(model).errors[0].message


def test_axes_that_are_not_constants_fail_where_documented():
    # Slice's axes must be an initializer for the 10.0 parser; 11.x lifted that restriction.
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "starts", "ends", "axes"], ["y"]),
    ]
    consts = [numpy_helper.from_array(np.array([v], dtype=np.int64), n) for n, v in (("starts", 0), ("ends", 1))]
    model = _model(nodes, [_io("x", ["batch", 4]), _io("axes", [1], TensorProto.INT64)], [_io("y", [1], TensorProto.INT64)], consts)
    slice_errors = [e for e in check_model(model, dim_names=None).errors if "Slice" in e.where]
    assert [e.parsers for e in slice_errors] == [(TENSORRT_10.name,)]


def test_asymmetric_int8_quantization_fails_and_roialign_warns():
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")
    zero = numpy_helper.from_array(np.array(3, dtype=np.int8), "zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    model = _model(nodes, [_io("x", ["batch", 4])], [_io("y", ["batch", 4])], [scale, zero])
    assert {e.message for e in check_model(model).errors} == {"zero point must be zero (symmetric quantization)"}
    roi = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"])
    model = _model(
        [roi],
        [_io("x", [1, 8, 16, 16]), _io("rois", ["batch", 4]), _io("idx", ["batch"], TensorProto.INT64)],
        [_io("y", ["batch", 8, 4, 4])],
    )
    report = check_model(model)
    assert report and "ROIAlign_TRT" in report.warnings[0].message


def test_a_file_that_is_not_onnx_is_an_input_error(tmp_path):
    from runtime.errors import InputError

    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00\x01 not protobuf")
    with pytest.raises(InputError):
        check_graph_file(path)
