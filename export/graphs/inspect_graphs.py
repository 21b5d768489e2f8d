"""What is in a bundle: per graph, its tensors, operator counts, parameters and estimated FLOPs.

FLOPs are estimated at a stated example size (default: a 2448 x 2448 image, batch 6) from shapes
that ONNX shape inference derives once the named dims are fixed: 2 * multiply-accumulates of every
Conv, ConvTranspose, MatMul and Gemm. Elementwise ops, pooling, softmax and resize are left out
(a few percent at most here).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.bundle.manifest import GRAPH_ROLES, PRECISIONS, TensorSpec, graph_path, read_manifest
from runtime.errors import InputError
from runtime.optional_import import require

MATMUL_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# ONNX FLOAT, UINT8, INT8, FLOAT16, DOUBLE, BFLOAT16: weights (8-bit ones in Q/DQ graphs); int32/int64 are shapes
WEIGHT_TYPES = frozenset({1, 2, 3, 10, 11, 16})


@dataclass(frozen=True)
class ExampleSize:
    """The size FLOPs are counted at: one image of height x width, patches in batches of ``batch``."""

    height: int = 2448
    width: int = 2448
    batch: int = 6
    feature_stride: int = 32

    def __post_init__(self) -> None:
        if min(self.height, self.width, self.batch) < 1:
            raise InputError(f"example size must be positive, got {self.height} x {self.width}, batch {self.batch}")

    def dims(self) -> dict[str, int]:
        s = self.feature_stride
        return {
            "batch": self.batch,
            "height": self.height,
            "width": self.width,
            "feat_height": -(-self.height // s),
            "feat_width": -(-self.width // s),
        }

    def describe(self) -> str:
        return f"{self.height} x {self.width} image, batch {self.batch}"


@dataclass(frozen=True)
class GraphSummary:
    role: str
    precision: str
    file: str
    size_bytes: int
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_counts: dict[str, int] = field(default_factory=dict)
    parameters: int = 0
    flops: int = 0  # at the example size
    flops_complete: bool = True  # False when some Conv/MatMul shape could not be inferred (flops is then a lower bound)

    @property
    def nodes(self) -> int:
        return sum(self.op_counts.values())


def count_parameters(model: Any) -> int:
    """Elements of the weight initializers (float, or 8-bit in Q/DQ graphs); int32/int64 shape constants excluded."""
    return sum(math.prod(init.dims) for init in model.graph.initializer if init.data_type in WEIGHT_TYPES)


def estimate_flops(model: Any, dims: dict[str, int]) -> tuple[int, bool]:
    """(FLOPs, complete) of Conv/ConvTranspose/MatMul/Gemm with the named dims set to ``dims``."""
    onnx = require("onnx", "graph inspection")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes: dict[str, list[int | None]] = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        shape = []
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(dim.dim_value)
            else:
                shape.append(dims.get(dim.dim_param))
        shapes[value.name] = shape
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    total, complete = 0, True
    for node in inferred.graph.node:
        if node.op_type not in MATMUL_OPS:
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            complete = False
        else:
            total += flops
    return total, complete


def _known(shape: list[int | None] | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _node_flops(node: Any, shapes: dict[str, list[int | None]]) -> int | None:
    out = shapes.get(node.output[0])
    a = shapes.get(node.input[0])
    b = shapes.get(node.input[1])
    if node.op_type in ("Conv", "ConvTranspose"):
        if not (_known(out) and _known(b) and _known(a)):
            return None
        # Conv weight [Cout, Cin/g, k...]: each output element takes Cin/g * prod(k) MACs.
        # ConvTranspose weight [Cin, Cout/g, k...]: each input element scatters Cout/g * prod(k).
        if node.op_type == "Conv":
            return 2 * math.prod(out) * math.prod(b[1:])
        return 2 * math.prod(a) * math.prod(b[1:])
    if not (_known(out) and _known(a)):
        return None
    reduced = a[-1]
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        reduced = a[0] if trans_a else a[-1]
    return 2 * math.prod(out) * reduced


def summarize_graph(
    path: Path, role: str, precision: str, example: ExampleSize, spec: Any = None
) -> GraphSummary:
    """One graph file; ``spec`` (its manifest GraphSpec) supplies the named tensors and the file name."""
    onnx = require("onnx", "graph inspection")
    model = onnx.load(str(path))
    parameters = count_parameters(model)
    for init in model.graph.initializer:  # shape inference needs weights' dims only; keep integer shape constants
        if init.data_type in WEIGHT_TYPES:
            for data in ("raw_data", "float_data", "int32_data", "double_data"):
                init.ClearField(data)
    flops, complete = estimate_flops(model, example.dims())
    return GraphSummary(
        role=role,
        precision=precision,
        file=spec.file if spec is not None else str(path),
        size_bytes=path.stat().st_size,
        opset=spec.opset if spec is not None else next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        inputs=spec.inputs if spec is not None else (),
        outputs=spec.outputs if spec is not None else (),
        op_counts=dict(Counter(n.op_type for n in model.graph.node).most_common()),
        parameters=parameters,
        flops=flops,
        flops_complete=complete,
    )


def inspect_bundle(bundle_dir: str | Path, example: ExampleSize | None = None, precisions: tuple[str, ...] | None = None) -> list[GraphSummary]:
    """Summaries of every graph of the chosen precisions (default: all the bundle has)."""
    example = example or ExampleSize()
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    chosen = precisions or tuple(p for p in PRECISIONS if p in manifest.graphs)
    summaries = []
    for precision in chosen:
        for role in GRAPH_ROLES:
            spec = manifest.graph(role, precision)
            summaries.append(summarize_graph(graph_path(bundle_dir, spec), role, precision, example, spec))
    return summaries


def summary_tables(summaries: list[GraphSummary], example: ExampleSize, compat: dict[str, Any] | None = None) -> list[Any]:
    """Rich tables: one overview row per graph, the graphs' tensors, and operator counts."""
    from rich.markup import escape
    from rich.table import Table

    overview = Table(title=f"graphs (GFLOPs at {example.describe()})")
    for column in ("graph", "file", "MB", "opset", "parameters", "GFLOPs", "nodes"):
        overview.add_column(column, justify="left" if column in ("graph", "file") else "right")
    if compat:
        overview.add_column("TensorRT 10/11")
    tensors = Table(title="inputs and outputs")
    for column in ("graph", "", "name", "dtype", "shape"):
        tensors.add_column(column)
    for s in summaries:
        name = f"{s.precision}/{s.role}"
        gflops = f"{s.flops / 1e9:,.1f}" + ("" if s.flops_complete else "+")
        row = [name, s.file, f"{s.size_bytes / 2**20:,.1f}", str(s.opset), f"{s.parameters:,}", gflops, str(s.nodes)]
        if compat:
            row.append(_compat_cell(compat.get(name)))
        overview.add_row(*row)
        for kind, specs in (("in", s.inputs), ("out", s.outputs)):
            for t in specs:
                tensors.add_row(name, kind, t.name, t.dtype, escape("[" + ", ".join(str(d) for d in t.shape) + "]"))
    ops = Table(title="operator counts")
    ops.add_column("op")
    for s in summaries:
        ops.add_column(f"{s.precision}/{s.role}", justify="right")
    names = sorted({op for s in summaries for op in s.op_counts}, key=lambda op: -sum(s.op_counts.get(op, 0) for s in summaries))
    for op in names:
        ops.add_row(op, *(str(s.op_counts.get(op, "")) for s in summaries))
    return [overview, tensors, ops]


def _compat_cell(report: Any) -> str:
    if report is None:
        return "-"
    text = "ok" if report else f"{len(report.errors)} error(s)"
    return text + (f", {len(report.warnings)} warning(s)" if report.warnings else "")
