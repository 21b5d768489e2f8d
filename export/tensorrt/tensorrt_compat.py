"""Will TensorRT's ONNX parser take these graphs? A static check against its documented operator tables.

The tables are transcribed from onnx/onnx-tensorrt ``docs/operators.md``: TensorRT 10.x is the
10.0 GA table, the oldest 10.x parser, with its restrictions (later 10.x releases, such as the
10.3 of JetPack 6, only add operators and lift restrictions: no row of 10.0 is "N" in 10.15); TensorRT 11.x is the 10.15 GA table plus what the 11.0 release notes add (Swish), with
the opset range of NVIDIA's 11.x ONNX opset guide (9..25). Beyond operator names the check covers
what the parser or an optimisation profile cannot take: the opset, custom domains, data types an
op does not support (an int64 tensor into a float-only op), axes that must be build-time
constants, Resize/pooling/LayerNormalization/Q-DQ restrictions, graph inputs of unknown rank or
with dynamic dims other than the named ones, DOUBLE tensors, and data-dependent shapes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from runtime.errors import InputError
from runtime.optional_import import require

# Operator -> tensor types its data input may have (operators.md "Supported Types"), TensorRT 10.0 GA.
_TRT10_TABLE = """
    Abs f32 f16 bf16 i32 i64
    Acos f32 f16 bf16
    Acosh f32 f16 bf16
    Add f32 f16 bf16 i32 i64
    And bool
    ArgMax f32 f16 bf16 i32 i64
    ArgMin f32 f16 bf16 i32 i64
    Asin f32 f16 bf16
    Asinh f32 f16 bf16
    Atan f32 f16 bf16
    Atanh f32 f16 bf16
    AveragePool f32 f16 bf16
    BatchNormalization f32 f16 bf16
    Cast f32 f16 bf16 i32 i64 u8 bool
    CastLike f32 f16 bf16 i32 i64 u8 bool
    Ceil f32 f16 bf16
    Celu f32 f16 bf16
    Clip f32 f16 bf16
    Concat f32 f16 bf16 i32 i64 bool
    Constant f32 f16 bf16 i32 i64 bool
    ConstantOfShape f32
    Conv f32 f16 bf16
    ConvTranspose f32 f16 bf16
    Cos f32 f16 bf16
    Cosh f32 f16 bf16
    CumSum f32 f16 bf16
    DepthToSpace f32 f16 bf16 i32 i64
    DequantizeLinear i8 f8 i4
    Div f32 f16 bf16 i32 i64
    Dropout f32 f16 bf16
    Einsum f32 f16 bf16
    Elu f32 f16 bf16
    Equal f32 f16 bf16 i32 i64
    Erf f32 f16 bf16
    Exp f32 f16 bf16
    Expand f32 f16 bf16 i32 i64 bool
    EyeLike f32 f16 bf16 i32 i64 bool
    Flatten f32 f16 bf16 i32 i64 bool
    Floor f32 f16 bf16
    GRU f32 f16 bf16
    Gather f32 f16 bf16 i32 i64 bool
    GatherElements f32 f16 bf16 i32 i64 bool
    GatherND f32 f16 bf16 i32 i64 bool
    Gelu f32 f16 bf16 i8 i32 i64
    Gemm f32 f16 bf16
    GlobalAveragePool f32 f16 bf16
    GlobalLpPool f32 f16 bf16
    GlobalMaxPool f32 f16 bf16
    Greater f32 f16 bf16 i32 i64
    GreaterOrEqual f32 f16 bf16 i32 i64
    GridSample f32 f16
    GroupNormalization f32 f16 bf16
    HardSigmoid f32 f16 bf16
    HardSwish f32 f16 bf16
    Hardmax f32 f16 bf16
    Identity f32 f16 bf16 i32 i64 bool
    If f32 f16 bf16 i32 i64 bool
    ImageScaler f32 f16 bf16
    InstanceNormalization f32 f16 bf16
    IsInf f32 f16 bf16
    IsNaN f32 f16 bf16 i32 i64
    LRN f32 f16 bf16
    LSTM f32 f16 bf16
    LayerNormalization f32 f16 bf16
    LeakyRelu f32 f16 bf16
    Less f32 f16 bf16 i32 i64
    LessOrEqual f32 f16 bf16 i32 i64
    Log f32 f16 bf16
    LogSoftmax f32 f16 bf16
    Loop f32 f16 bf16 i32 i64 bool
    LpNormalization f32 f16 bf16
    LpPool f32 f16 bf16
    MatMul f32 f16 bf16
    Max f32 f16 bf16 i32 i64
    MaxPool f32 f16 bf16
    Mean f32 f16 bf16 f8 i32 i64
    MeanVarianceNormalization f32 f16 bf16
    Min f32 f16 bf16 i32 i64
    Mish f32 f16
    Mod f32 f16 bf16 i32 i64
    Mul f32 f16 bf16 i32 i64
    Neg f32 f16 bf16 i32 i64
    NonMaxSuppression f32 f16
    NonZero f32 f16
    Not bool
    OneHot f32 f16 bf16 i32 i64 bool
    Or bool
    PRelu f32 f16 bf16
    Pad f32 f16 bf16 i32 i64
    ParametricSoftplus f32 f16 bf16
    Pow f32 f16 bf16
    QuantizeLinear f32 f16 bf16
    RNN f32 f16 bf16
    RandomNormal f32 f16 bf16
    RandomNormalLike f32 f16 bf16
    RandomUniform f32 f16 bf16
    RandomUniformLike f32 f16 bf16
    Range f32 f16 bf16 i32 i64
    Reciprocal f32 f16 bf16
    ReduceL1 f32 f16 bf16 i32 i64
    ReduceL2 f32 f16 bf16 i32 i64
    ReduceLogSum f32 f16 bf16 i32 i64
    ReduceLogSumExp f32 f16 bf16 i32 i64
    ReduceMax f32 f16 bf16 i32 i64
    ReduceMean f32 f16 bf16 i32 i64
    ReduceMin f32 f16 bf16 i32 i64
    ReduceProd f32 f16 bf16 i32 i64
    ReduceSum f32 f16 bf16 i32 i64
    ReduceSumSquare f32 f16 bf16 i32 i64
    Relu f32 f16 bf16 i32 i64
    Reshape f32 f16 bf16 i32 i64 bool
    Resize f32 f16 bf16
    ReverseSequence f32 f16 bf16 i32 i64 bool
    RoiAlign f32 f16
    Round f32 f16 bf16
    ScaledTanh f32 f16 bf16
    Scan f32 f16 bf16
    Scatter f32 f16 bf16 i32 i64
    ScatterElements f32 f16 bf16 i32 i64
    ScatterND f32 f16 bf16 i32 i64
    Selu f32 f16 bf16
    Shape f32 f16 bf16 i32 i64 bool
    Shrink f32 f16 bf16 i32 i64
    Sigmoid f32 f16 bf16
    Sign f32 f16 bf16 i32 i64
    Sin f32 f16 bf16
    Sinh f32 f16 bf16
    Size f32 f16 bf16 i32 i64 bool
    Slice f32 f16 bf16 i32 i64 bool
    Softmax f32 f16 bf16
    Softplus f32 f16 bf16
    Softsign f32 f16 bf16
    SpaceToDepth f32 f16 bf16 i32 i64
    Split f32 f16 bf16 i32 i64 bool
    Sqrt f32 f16 bf16
    Squeeze f32 f16 bf16 i32 i64 bool
    Sub f32 f16 bf16 i32 i64
    Sum f32 f16 bf16 i32 i64
    Tan f32 f16 bf16
    Tanh f32 f16 bf16
    ThresholdedRelu f32 f16 bf16
    Tile f32 f16 bf16 i32 i64 bool
    TopK f32 f16 bf16 i32 i64
    Transpose f32 f16 bf16 i32 i64 bool
    Trilu f32 f16 bf16 i32 i64 bool
    Unsqueeze f32 f16 bf16 i32 i64 bool
    Upsample f32 f16 bf16
    Where f32 f16 bf16 i32 i64 bool
    Xor bool
"""

# TensorRT 10.15 GA operators.md rows that differ from 10.0, and Swish from the 11.0 release notes.
_TRT11_CHANGES = """
    Attention f32 f16 bf16 i8 f8
    BlackmanWindow f32 f16
    ConstantOfShape f32 f16 bf16 f8 i4 i32 i64 bool
    Constant f32 f16 bf16 f8 i4 i32 i64 bool
    DeformConv f32 f16
    DequantizeLinear i8 f8 i4
    HammingWindow f32 f16
    HannWindow f32 f16
    Pow f32 f16 bf16 i32 i64
    RMSNormalization f32 f16 bf16
    RotaryEmbedding f32 f16 bf16
    STFT f32
    Swish f32 f16 bf16
    TensorScatter f32 f16 bf16 i32
"""


def _parse_table(text: str) -> dict[str, frozenset[str]]:
    rows = {}
    for line in text.strip().splitlines():
        op, *types = line.split()
        rows[op] = frozenset(types)
    return rows


@dataclass(frozen=True)
class ParserSpec:
    """What one TensorRT release line's ONNX parser accepts."""

    name: str
    min_opset: int
    max_opset: int
    operators: dict[str, frozenset[str]]  # op -> supported data-input types
    constant_axes: frozenset[str]  # ops whose axes (or K/depth) input must be a build-time constant
    source: str


_REDUCE_OPS = frozenset(
    f"Reduce{kind}" for kind in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum", "SumSquare")
)

TENSORRT_10 = ParserSpec(
    name="TensorRT 10.x",
    min_opset=9,
    max_opset=20,
    operators=_parse_table(_TRT10_TABLE),
    constant_axes=_REDUCE_OPS | {"Squeeze", "Unsqueeze", "Slice", "Pad", "CumSum", "TopK", "OneHot"},
    source="onnx-tensorrt 10.0-GA docs/operators.md",
)
TENSORRT_11 = ParserSpec(
    name="TensorRT 11.x",
    min_opset=9,
    max_opset=25,
    operators={**_parse_table(_TRT10_TABLE), **_parse_table(_TRT11_CHANGES)},
    constant_axes=_REDUCE_OPS | {"Squeeze", "Unsqueeze", "CumSum", "TopK", "OneHot"},
    source="onnx-tensorrt 10.15-GA docs/operators.md + TensorRT 11.0 release notes; opset guide 11.x",
)
PARSERS = {"10": TENSORRT_10, "11": TENSORRT_11}

# Ops the parser maps to a plugin: the plugin library must be loaded, and strongly typed or DLA
# builds may lack it (DESIGN.md: RoiAlign becomes ROIAlign_TRT).
PLUGIN_OPS = {"RoiAlign": "ROIAlign_TRT"}
# Ops whose output shape depends on the data: TensorRT needs an output allocator for them.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique"})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
# ONNX TensorProto.DataType -> the short names of the tables.
_TYPE_NAMES = {1: "f32", 2: "u8", 3: "i8", 6: "i32", 7: "i64", 9: "bool", 10: "f16", 11: "f64", 16: "bf16", 17: "f8", 18: "f8", 19: "f8", 20: "f8", 22: "i4"}
IO_TYPES = frozenset({"f32", "f16", "bf16", "i32", "i64", "u8", "bool"})
# Which input carries the data whose type the table restricts (default: input 0).
_DATA_INPUT = {"Where": 1}
_UNTYPED_OPS = frozenset({"Shape", "Size", "Identity", "If", "Loop", "Scan", "Constant", "ConstantOfShape", "Cast", "CastLike"})


@dataclass(frozen=True)
class CompatIssue:
    severity: str  # "error": the parser or builder refuses it; "warning": it builds, with a caveat
    graph: str
    where: str  # node name and op, or the graph input
    message: str
    parsers: tuple[str, ...]

    def line(self) -> str:
        return f"{self.severity.upper():7} | {self.graph} | {', '.join(self.parsers)} | {self.where}: {self.message}"


@dataclass(frozen=True)
class CompatReport:
    graph: str
    op_counts: dict[str, int] = field(default_factory=dict)
    issues: tuple[CompatIssue, ...] = ()
    parsers: tuple[str, ...] = ()

    @property
    def errors(self) -> tuple[CompatIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")

    @property
    def warnings(self) -> tuple[CompatIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "warning")

    def __bool__(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        status = "PASSED" if self else "FAILED"
        head = f"{status} | {self.graph} | {', '.join(self.parsers)} | {sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types"
        return [head] + [i.line() for i in self.issues]

DEFAULT_DIM_NAMES = frozenset({"batch", "height", "width", "feat_height", "feat_width"})
# Input index of the tensor that must be a build-time constant, for the ops in ParserSpec.constant_axes.
_CONSTANT_INPUT = {"Squeeze": 1, "Unsqueeze": 1, "Slice": 3, "Pad": 3, "CumSum": 1, "TopK": 1, "OneHot": 1}


def _all_nodes(graph: Any) -> Iterable[Any]:
    """Every node, including those of If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _tensor_types(model: Any) -> dict[str, str]:
    graph = model.graph
    types: dict[str, str] = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        types[value.name] = _TYPE_NAMES.get(value.type.tensor_type.elem_type, f"type{value.type.tensor_type.elem_type}")
    for init in graph.initializer:
        types[init.name] = _TYPE_NAMES.get(init.data_type, f"type{init.data_type}")
    return types


def _constants(model: Any) -> dict[str, Any]:
    """Build-time constants: initializers and Constant node outputs (name -> TensorProto)."""
    found = {init.name: init for init in model.graph.initializer}
    for node in _all_nodes(model.graph):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = attr.t
    return found


def _attr(node: Any, name: str, default: Any = None) -> Any:
    onnx = require("onnx", "the TensorRT compatibility check")
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def check_model(
    model: Any,
    graph: str = "graph",
    parsers: Iterable[str] = ("10", "11"),
    dim_names: Iterable[str] | None = DEFAULT_DIM_NAMES,
) -> CompatReport:
    """Check one ONNX ModelProto against the TensorRT parsers named in ``parsers`` ("10", "11").

    ``dim_names``: the symbolic input dims an optimisation profile will cover; None accepts any name.
    """
    onnx = require("onnx", "the TensorRT compatibility check")
    unknown = [p for p in parsers if p not in PARSERS]
    if unknown:
        raise InputError(f"unknown TensorRT parser(s) {unknown}; choose from {sorted(PARSERS)}")
    specs = [PARSERS[p] for p in parsers]
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot follow is still checked, with fewer types
        inferred = model
    types = _tensor_types(inferred)
    constants = _constants(model)
    consumed = {name for node in _all_nodes(model.graph) for name in node.input} | {o.name for o in model.graph.output}
    issues: list[CompatIssue] = []

    def add(severity: str, where: str, message: str, which: Iterable[ParserSpec] = specs) -> None:
        names = tuple(s.name for s in which)
        if names:
            issues.append(CompatIssue(severity, graph, where, message, names))

    opset = _opset(model)
    add("error", "opset", f"opset {opset} is outside the parser's range", [s for s in specs if not s.min_opset <= opset <= s.max_opset])
    _check_io(model, types, dim_names, add)
    if "f64" in types.values():
        add("warning", "types", "DOUBLE tensors: TensorRT casts them to FLOAT, clamping to +-FLT_MAX")
    nodes = list(_all_nodes(model.graph))
    for node in nodes:
        where = f"{node.name or '(unnamed)'} [{node.op_type}]"
        if node.domain not in ("", "ai.onnx"):
            add("error", where, f"custom domain {node.domain!r}: TensorRT parses it only through a plugin of that name")
            continue
        add("error", where, "operator not supported by the ONNX parser", [s for s in specs if node.op_type not in s.operators])
        _check_types(node, types, specs, where, add)
        _check_constant_inputs(node, constants, specs, where, add)
        _check_restrictions(node, constants, consumed, types, opset, where, add)
    return CompatReport(
        graph=graph,
        op_counts=dict(Counter(n.op_type for n in nodes).most_common()),
        issues=tuple(issues),
        parsers=tuple(s.name for s in specs),
    )


def _check_io(model: Any, types: dict[str, str], dim_names: Iterable[str] | None, add: Any) -> None:
    allowed = None if dim_names is None else set(dim_names)
    initializers = {i.name for i in model.graph.initializer}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            where = f"graph {kind} {value.name!r}"
            dtype = types.get(value.name, "?")
            if dtype not in IO_TYPES:
                add("error", where, f"type {dtype} cannot be a network {kind}; use float32/float16/int32/int64/uint8/bool")
            tensor_type = value.type.tensor_type
            if not tensor_type.HasField("shape"):
                add("error" if kind == "input" else "warning", where, "unknown rank: an optimisation profile needs the rank")
                continue
            if kind == "output":
                continue
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value"):
                    if dim.dim_value <= 0:
                        add("error", where, f"axis {axis} has size {dim.dim_value}")
                elif not dim.dim_param:
                    add("error", where, f"axis {axis} is dynamic and unnamed; name it so a profile can cover it")
                elif allowed is not None and dim.dim_param not in allowed:
                    add("error", where, f"axis {axis} is dynamic as {dim.dim_param!r}, not one of the profiled dims {sorted(allowed)}")


def _check_types(node: Any, types: dict[str, str], specs: list[ParserSpec], where: str, add: Any) -> None:
    if node.op_type in _UNTYPED_OPS:
        return
    index = _DATA_INPUT.get(node.op_type, 0)
    if len(node.input) <= index or not node.input[index]:
        return
    dtype = types.get(node.input[index])
    if dtype is None:
        return
    bad = [s for s in specs if node.op_type in s.operators and dtype not in s.operators[node.op_type]]
    if bad:
        allowed = sorted(bad[0].operators[node.op_type])
        add("error", where, f"input {node.input[index]!r} is {dtype}; the parser supports {', '.join(allowed)} here", bad)


def _check_constant_inputs(node: Any, constants: dict[str, Any], specs: list[ParserSpec], where: str, add: Any) -> None:
    index = _CONSTANT_INPUT.get(node.op_type, 1 if node.op_type.startswith("Reduce") else None)
    if index is None or len(node.input) <= index or not node.input[index]:
        return
    if node.input[index] in constants:
        return
    bad = [s for s in specs if node.op_type in s.constant_axes]
    add("error", where, f"input {index} ({node.input[index]!r}) must be a build-time constant (initializer)", bad)


def _check_restrictions(
    node: Any, constants: dict[str, Any], consumed: set[str], types: dict[str, str], opset: int, where: str, add: Any
) -> None:
    op = node.op_type
    if op in PLUGIN_OPS:
        add("warning", where, f"parsed as the {PLUGIN_OPS[op]} plugin: the plugin library must be loaded (initLibNvInferPlugins)")
    if op in DATA_DEPENDENT_OPS:
        add("warning", where, "output shape depends on the data: needs an output allocator, defeats static memory planning")
    if op in CONTROL_FLOW_OPS:
        add("warning", where, "control flow: builds, but is slow and restricted in TensorRT")
    if op == "Resize":
        mode = _attr(node, "mode", "nearest")
        coordinate = _attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        if mode not in RESIZE_MODES:
            add("error", where, f"mode {mode!r}; supported: {sorted(RESIZE_MODES)}")
        if coordinate not in RESIZE_COORDINATE_MODES:
            add("error", where, f"coordinate_transformation_mode {coordinate!r}; supported: {sorted(RESIZE_COORDINATE_MODES)}")
        if mode == "nearest" and nearest not in RESIZE_NEAREST_MODES:
            add("error", where, f"nearest_mode {nearest!r}; supported: {sorted(RESIZE_NEAREST_MODES)}")
        if _attr(node, "antialias", 0):
            add("error", where, "antialiasing is not supported")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            add("error", where, "keep_aspect_ratio_policy must be 'stretch'")
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            add("error", where, f"{len(kernel)}D pooling; only 2D or 3D is supported")
        if any(d != 1 for d in _attr(node, "dilations", [])):
            add("error", where, "dilations must be empty or all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1] in consumed:
            add("error", where, "the Indices output is not supported")
    if op == "LayerNormalization" and any(name in consumed for name in node.output[1:]):
        add("error", where, "only the first output (Y) is supported")
    if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero = constants.get(node.input[2])
        if zero is None:
            add("error", where, "zero point must be a constant zero")
        else:
            from onnx import numpy_helper

            if numpy_helper.to_array(zero).any():
                add("error", where, "zero point must be zero (symmetric quantization)")
    if op == "QuantizeLinear" and opset >= 19 and len(node.input) > 1:
        data, scale = types.get(node.input[0]), types.get(node.input[1])
        if data and scale and data != scale:
            # onnx-tensorrt casts a Q scale to the input's type only below opset 19; a strongly typed network refuses the mismatch
            add("error", where, f"scale is {scale} but its input is {data}: from opset 19 on they must have one type")
    if op == "DequantizeLinear" and types.get(node.input[0]) == "u8":
        add("error", where, "uint8 quantized data: TensorRT supports int8 Q/DQ only")
    if op == "Cast":
        target = _TYPE_NAMES.get(_attr(node, "to", 1), "?")
        if target == "f64":
            add("warning", where, "cast to DOUBLE: TensorRT computes it as FLOAT")
        elif target not in IO_TYPES:
            add("error", where, f"cast to {target} is not supported")
    if op == "TopK" and _attr(node, "sorted", 1) != 1:
        add("error", where, "sorted must be 1")
    if op == "ScatterND" and _attr(node, "reduction", "none") != "none":
        add("error", where, "reduction other than 'none' is not supported")
    if op == "GridSample" and opset >= 20:
        add("warning", where, "opset >= 20 renamed GridSample's modes; TensorRT reads only the mode name: stay at opset <= 19")


def check_graph_file(
    path: str | Path, role: str | None = None, parsers: Iterable[str] = ("10", "11"), dim_names: Iterable[str] | None = DEFAULT_DIM_NAMES
) -> CompatReport:
    """Check one .onnx file (weights are not needed, so external data is not loaded)."""
    onnx = require("onnx", "the TensorRT compatibility check")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({exc})") from exc
    return check_model(model, graph=role or path.name, parsers=parsers, dim_names=dim_names)


def check_bundle(bundle_dir: str | Path, precision: str = "fp32", parsers: Iterable[str] = ("10", "11")) -> list[CompatReport]:
    """Check the three graphs of one precision in a bundle, and its global stage graphs if any (checksums verified first)."""
    from runtime.bundle.manifest import GRAPH_ROLES, graph_path, read_manifest

    manifest = read_manifest(bundle_dir)
    specs = [(role, manifest.graph(role, precision)) for role in GRAPH_ROLES]
    specs += [(f"global stage {i}", stage.graph) for i, stage in enumerate(manifest.global_stages.get(precision, ()))]
    reports = []
    for role, spec in specs:
        names = {d for t in spec.inputs for d in t.shape if isinstance(d, str)}
        reports.append(check_graph_file(graph_path(bundle_dir, spec), role=f"{precision}/{role}", parsers=parsers, dim_names=names))
    return reports
