"""The input/output contract of each exported graph, and the checks every exported graph passes.

Shared by the export of the three graphs (onnx_export), the global stage graphs (global_stages) and
the bundle writer, which import it and never each other's callers: the arrows run one way.
"""

from __future__ import annotations

from typing import Any

from runtime.bundle.manifest import (
    FUSION_INPUTS,
    FUSION_OUTPUT,
    GLOBAL_INPUT,
    GLOBAL_OUTPUT,
    GRAPH_ROLES,
    LOCAL_INPUT,
    LOCAL_OUTPUTS,
    TensorSpec,
)
from runtime.errors import GlsnetError, InputError
from runtime.optional_import import require


class ExportError(GlsnetError):
    """An exported graph does not have the inputs, outputs or dims the bundle contract requires."""


def graph_io(role: str, config: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Expected (inputs, outputs) of one graph for a GLSNetConfig; str dims are the named dynamic axes."""
    c = config
    p, s, f = c.patch_size, 4, 32
    tokens = -(-p // f)  # ResNet: ceil at every stride-2 step
    skip = -(-p // s)
    global_features = TensorSpec(GLOBAL_OUTPUT, "float32", (1, c.width, "feat_height", "feat_width"))
    local_features = TensorSpec(LOCAL_OUTPUTS[0], "float32", ("batch", c.width, tokens, tokens))
    local_skip = TensorSpec(LOCAL_OUTPUTS[1], "float32", ("batch", c.skip_width, skip, skip))
    if role == "global":
        return (TensorSpec(GLOBAL_INPUT, "float32", (1, c.in_channels, "height", "width")),), (global_features,)
    if role == "local":
        return (TensorSpec(LOCAL_INPUT, "float32", ("batch", c.in_channels, p, p)),), (local_features, local_skip)
    if role == "fusion":
        boxes = TensorSpec(FUSION_INPUTS[3], "float32", ("batch", 4))
        logits = TensorSpec(FUSION_OUTPUT, "float32", ("batch", c.num_classes, skip, skip))
        return (local_features, local_skip, global_features, boxes), (logits,)
    raise InputError(f"unknown graph role {role!r}; roles are {GRAPH_ROLES}")


def dynamic_axes(specs: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]]:
    return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in specs}


def simplify(proto: Any) -> Any:
    """Constant folding and dead-code removal with onnxslim (shape ops of the trace fold away)."""
    onnxslim = require("onnxslim", "graph simplification")
    try:
        return onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises assorted types
        raise ExportError(f"onnxslim could not simplify the graph ({type(exc).__name__}: {exc}); export with --no-simplify") from exc


def _dims(value_info: Any) -> tuple[int | str | None, ...]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return ()
    out: list[int | str | None] = []
    for d in tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return tuple(out)


def conform_io(proto: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], role: str) -> Any:
    """Check every graph input/output against the contract and give dynamic output dims their names.

    An input or output dim that is fixed where the contract says dynamic means the exporter froze
    it (the dynamo pitfall with ``torch.as_tensor(x.shape[-1])``): that is refused here.
    """
    onnx = require("onnx", "ONNX export")
    for kind, actual, expected in (("input", proto.graph.input, inputs), ("output", proto.graph.output, outputs)):
        names = [v.name for v in actual]
        if names != [t.name for t in expected]:
            raise ExportError(f"{role} graph: {kind}s are {names}, expected {[t.name for t in expected]}")
        for value, spec in zip(actual, expected):
            if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise ExportError(f"{role} graph: {kind} {spec.name!r} is not float32")
            dims = _dims(value)
            if len(dims) != len(spec.shape):
                raise ExportError(f"{role} graph: {kind} {spec.name!r} has rank {len(dims)} {dims}, expected {spec.shape}")
            for axis, (got, want) in enumerate(zip(dims, spec.shape)):
                if isinstance(want, int) and got != want:
                    raise ExportError(f"{role} graph: {kind} {spec.name!r} axis {axis} is {got}, expected {want}")
                if isinstance(want, str) and isinstance(got, int):
                    raise ExportError(
                        f"{role} graph: {kind} {spec.name!r} axis {axis} ({want}) was frozen to {got} by the "
                        "exporter; the graph would only accept the example's size. Use symbolic sizes in the "
                        "model (no torch.as_tensor of a shape) or export with the other exporter"
                    )
                if isinstance(want, str) and kind == "input" and got != want:
                    raise ExportError(f"{role} graph: input {spec.name!r} axis {axis} is named {got!r}, expected {want!r}")
            dim_protos = value.type.tensor_type.shape.dim
            for axis, want in enumerate(spec.shape):
                if isinstance(want, str):
                    dim_protos[axis].ClearField("dim_value")
                    dim_protos[axis].dim_param = want
    return proto


def check_graph(proto: Any, role: str) -> None:
    """The ONNX checker plus strict shape inference; any failure is an ExportError."""
    onnx = require("onnx", "ONNX export")
    try:
        onnx.checker.check_model(proto, full_check=False)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"{role} graph fails the ONNX checker or shape inference: {exc}") from exc
