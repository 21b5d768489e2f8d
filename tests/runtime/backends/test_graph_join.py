"""Joining two ONNX graphs into one session (runtime.backends.graph_join), and the pipeline that runs it."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.backends.graph_join import GraphJoinError, join_graphs
from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from runtime.backends.onnxruntime_joined import JoinedOnnxRuntimeBackend
from runtime.bundle.manifest import LOCAL_OUTPUTS
from runtime.engines import onnxruntime_pipeline
from runtime.image_io.readers import ArraySource
from runtime.segmenter import Segmenter, SegmenterOptions


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> bytes:
    """A small float model: ``inputs``/``outputs`` are (name, shape) pairs."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _first(opset: int = 17) -> bytes:
    """x -> t = x * w -> y = relu(t): y is the joint; 't' and the node name 'mul' are names the second reuses."""
    w = numpy_helper.from_array(np.array([2.0, -3.0], np.float32), "w")
    nodes = [helper.make_node("Mul", ["x", "w"], ["t"], name="mul"), helper.make_node("Relu", ["t"], ["y"], name="relu")]
    return _model(nodes, [("x", ["n", 2])], [("y", ["n", 2])], [w], opset)


def _second(joint_shape=("n", 2), output: str = "z") -> bytes:
    """y, b -> t = y + w -> z = t * b, with its own 't', 'w' and node name 'mul'."""
    w = numpy_helper.from_array(np.array([1.0, 1.0], np.float32), "w")
    nodes = [helper.make_node("Add", ["y", "w"], ["t"], name="add"), helper.make_node("Mul", ["t", "b"], [output], name="mul")]
    return _model(nodes, [("y", list(joint_shape)), ("b", ["n", 2])], [(output, ["n", 2])], [w])


def _run(model: bytes, feed: dict, outputs=None) -> list:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(outputs, feed)


def test_the_joined_graph_computes_what_the_two_compute_one_after_the_other():
    x = np.array([[1.0, 1.0], [-1.0, 2.0]], np.float32)
    b = np.array([[3.0, 3.0], [0.5, 0.5]], np.float32)
    joined = join_graphs(_first(), _second(), ["y"])
    model = onnx.load_model_from_string(joined.model)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x", "b"] and [o.name for o in model.graph.output] == ["z"]
    # the second graph's own 't', 'w' and node 'mul' were renamed; nothing of the first was
    assert {"t", "w", "joined/t", "joined/w"} <= {n for node in model.graph.node for n in (*node.input, *node.output)}
    assert sorted(node.name for node in model.graph.node) == ["joined/add", "joined/mul", "mul", "relu"]
    (y,) = _run(_first(), {"x": x})
    (expected,) = _run(_second(), {"y": y, "b": b})
    (z,) = _run(joined.model, {"x": x, "b": b})
    np.testing.assert_array_equal(z, expected)
    assert joined.joints["y"].dtype == np.float32 and joined.joints["y"].shape == ("n", 2)
    written = io.BytesIO()
    joined.write(written)
    assert written.getvalue() == joined.model


@pytest.mark.parametrize(
    "first, second, joints, message",
    [
        (_first(), _second(), ["nope"], "'nope' is not both an output of the first graph and an input of the second"),
        (_first(), _second(joint_shape=("n", 3)), ["y"], "'y' has one type where the first graph makes it and another"),
        (_first(), _second(output="x"), ["y"], r"the second graph's inputs or outputs \['x'\] are names the first graph uses"),
        (_first(opset=16), _second(), ["y"], "opset ai.onnx at versions 16 and 17"),
        (b"\xff\xff\xff", _second(), ["y"], "a model's bytes end inside a field"),
        (b"\x3a\x05\x2a\x03\x42\x01\xff", _second(), ["y"], "the first model could not be read"),  # a weight named b"\xff"
        (b"\x38\x01", _second(), ["y"], "the first model's graph has protobuf wire type 0, not 2"),
        (_first(), b"\x0a\x05ab", ["y"], "the second model is not a valid ONNX protobuf"),
    ],
)
def test_a_pair_that_cannot_be_joined_safely_is_refused(first, second, joints, message):
    with pytest.raises(GraphJoinError, match=message):
        join_graphs(first, second, joints)


def test_weights_in_external_files_are_not_joined():
    model = onnx.load_model_from_string(_first())
    weight = model.graph.initializer[0]
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="weights.bin")
    with pytest.raises(GraphJoinError, match="external files"):
        join_graphs(model.SerializeToString(), _second(), ["y"])


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("memory_file", [True, False], ids=["in-memory file", "bytes"])
def test_the_bundles_local_and_fusion_graphs_joined_give_the_same_logits(small_bundle, memory_file, monkeypatch):
    if memory_file and not (hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")):
        pytest.skip("no anonymous in-memory files here (Linux's memfd_create)")
    if not memory_file:
        monkeypatch.delattr(os, "memfd_create", raising=False)  # as on a system without them
    rng = np.random.default_rng(0)
    options = OrtOptions(threads=1)
    with OnnxRuntimeBackend(small_bundle / "local.onnx", options) as local, OnnxRuntimeBackend(small_bundle / "fusion.onnx", options) as fusion:
        size = local.input_metadata()["patches"].shape[2]
        patches = rng.standard_normal((2, 3, size, size), dtype=np.float32)
        grid = fusion.input_metadata()["global_features"].shape[1]
        global_features = rng.standard_normal((1, grid, 6, 5), dtype=np.float32)
        boxes = np.array([[0.0, 0.0, 0.5, 0.6], [0.4, 0.3, 1.0, 1.0]], np.float32)
        separate = fusion.infer({**local.infer({"patches": patches}), "global_features": global_features, "boxes": boxes})
        local_outputs = local.output_metadata()
    descriptors = _open_descriptors() if memory_file else None
    with JoinedOnnxRuntimeBackend(small_bundle / "local.onnx", small_bundle / "fusion.onnx", LOCAL_OUTPUTS, options) as joined:
        if memory_file:
            assert joined.session._model_path.startswith("/proc/self/fd/")  # read by ONNX Runtime, not copied in
            assert not joined.session._enable_fallback  # the path's number names no file of ours any more
            assert _open_descriptors() == descriptors  # the file is closed once the session holds the model
        assert set(joined.input_metadata()) == {"patches", "global_features", "boxes"}
        assert set(joined.output_metadata()) == {"logits"}
        assert joined.joint_metadata() == local_outputs
        assert joined.weight_bytes > (small_bundle / "local.onnx").stat().st_size
        together = joined.infer({"patches": patches, "global_features": global_features, "boxes": boxes})
        assert joined.session._model_bytes is None  # the serialized model is not kept beside the session
    np.testing.assert_array_equal(together["logits"], separate["logits"])


def test_the_cpu_pipeline_runs_fp32_joined_and_gives_the_mask_of_the_two_graphs(small_bundle):
    image = np.random.default_rng(3).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    with Segmenter(small_bundle, options=SegmenterOptions(batch_size=2)) as joined:
        scheduler = joined.pipeline.scheduler
        assert scheduler.patch_backend is not None and not scheduler.local_backend.is_active and not scheduler.fusion_backend.is_active
        mask = joined.segment(image)
    with Segmenter(small_bundle, options=SegmenterOptions(batch_size=2, join_patch_graphs=False)) as separate:
        assert separate.pipeline.scheduler.patch_backend is None
        np.testing.assert_array_equal(mask, separate.segment(image))


def test_a_pair_that_cannot_be_joined_runs_as_two_graphs_with_a_warning(small_bundle, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise GraphJoinError("both graphs define ['t']")

    monkeypatch.setattr("runtime.backends.onnxruntime_joined.join_graphs", refuse)
    image = np.random.default_rng(4).integers(0, 256, (200, 180, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger=onnxruntime_pipeline.__name__):
        with Segmenter(small_bundle, options=SegmenterOptions(batch_size=2)) as segmenter:
            scheduler = segmenter.pipeline.scheduler
            assert scheduler.patch_backend is None and scheduler.local_backend.is_active and scheduler.fusion_backend.is_active
            mask = scheduler.segment(ArraySource(image))
    assert "running the local and fusion graphs one after the other: both graphs define ['t']" in caplog.text
    monkeypatch.undo()
    with Segmenter(small_bundle, options=SegmenterOptions(batch_size=2)) as joined:
        np.testing.assert_array_equal(mask, joined.segment(image))


@pytest.mark.parametrize(
    "options, joined",
    [
        (SegmenterOptions(), True),
        (SegmenterOptions(join_patch_graphs=False), False),
        (SegmenterOptions(precision="int8"), False),
        (SegmenterOptions(precision="fp16"), False),
        (SegmenterOptions(provider="tensorrt"), False),
    ],
)
def test_only_fp32_on_the_cpu_provider_is_joined(options, joined):
    assert onnxruntime_pipeline.joins_patch_graphs(options) is joined


@pytest.mark.parametrize(
    "first, message",
    [(_first(), "'y' has one type where"), (b"\x0a\x05ab", "end inside a field"), (b"", "cannot map the graph file")],
    ids=["types differ", "not a model", "empty file"],
)
def test_the_joined_backend_refuses_with_a_join_error_that_names_the_problem(tmp_path, first, message):
    """The first graph is read through a memory map: a refusal must surface as itself, with nothing left mapped."""
    (tmp_path / "first.onnx").write_bytes(first)
    (tmp_path / "second.onnx").write_bytes(_second(joint_shape=("n", 3)))
    backend = JoinedOnnxRuntimeBackend(tmp_path / "first.onnx", tmp_path / "second.onnx", ["y"], OrtOptions(threads=1))
    with pytest.raises(GraphJoinError, match=message):
        backend.activate()
    assert not backend.is_active
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(tmp_path / "first.onnx") not in maps.read_text()


def _with_opsets(model: bytes, opsets: list[tuple[str, int]], ir_version: int | None = None) -> bytes:
    proto = onnx.load_model_from_string(model)
    del proto.opset_import[:]
    proto.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets)
    if ir_version is not None:
        proto.ir_version = ir_version
    return proto.SerializeToString()


def test_the_second_graphs_own_operator_sets_and_newer_ir_version_are_carried_over():
    second = _with_opsets(_second(), [("ai.onnx", 17), ("com.microsoft", 1)], ir_version=9)
    joined = onnx.load_model_from_string(join_graphs(_first(), second, ["y"]).model)
    assert sorted((o.domain, o.version) for o in joined.opset_import) == [("", 17), ("com.microsoft", 1)]
    assert joined.ir_version == 9


def test_the_default_operator_set_under_its_two_names_is_one_set():
    with pytest.raises(GraphJoinError, match="opset ai.onnx at versions 17 and 13"):
        join_graphs(_first(), _with_opsets(_second(), [("ai.onnx", 13)]), ["y"])


def test_a_renaming_that_would_meet_a_name_of_the_first_graph_is_refused():
    """The first graph already holds 'joined/w': the second's 'w' cannot take that name."""
    model = onnx.load_model_from_string(_first())
    model.graph.initializer.append(numpy_helper.from_array(np.array([5.0, 5.0], np.float32), "joined/w"))
    model.graph.node.append(helper.make_node("Add", ["y", "joined/w"], ["y2"], name="add"))
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 2]))
    with pytest.raises(GraphJoinError, match="already uses the prefix 'joined/'"):
        join_graphs(model.SerializeToString(), _second(), ["y"])


def test_names_both_graphs_define_are_not_renamed_inside_subgraphs():
    model = onnx.load_model_from_string(_second())
    branch = helper.make_graph([helper.make_node("Identity", ["t"], ["u"])], "branch", [], [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["n", 2])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    model.graph.initializer.append(cond)
    model.graph.node.append(helper.make_node("If", ["cond"], ["v"], then_branch=branch, else_branch=branch))
    with pytest.raises(GraphJoinError, match="subgraphs that may read them"):
        join_graphs(_first(), model.SerializeToString(), ["y"])
