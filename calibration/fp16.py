"""FP16 graphs with fp32 inputs and outputs, and a policy for what must stay fp32.

What stays fp32, and why:
- Softmax, LayerNormalization and reductions: exponentials and variances overflow or lose mass in fp16.
- A LayerNorm that the exporter decomposed (ReduceMean -> Sub -> Pow -> ReduceMean -> Add -> Sqrt -> Div):
  found by its pattern and kept whole with its scale and shift (ONNX Runtime fuses them into one op).
- The fusion's crop arithmetic: every node computed from the patch boxes (and from shapes) alone,
  up to the bilinear weights. Box coordinates above 2048 px are not exact in fp16 (the spacing there
  is 2 px), so the weights would sample the wrong feature cells.

The converter is onnxruntime.transformers.float16 (op and node block lists); it ships with ONNX
Runtime and tracks initializers shared by fp32 and fp16 nodes. onnxconverter-common 1.16's converter
was tried and rejected: on the fusion graph it leaves such tensors fp32 where an fp16 type is
declared, and ONNX Runtime refuses the model (type error at /crop/Squeeze). Converters insert
``Cast(fp16) -> Cast(fp32)`` pairs between two fp32 nodes and after fp32 graph inputs; those
round trips silently round fp32 values to fp16, so they are removed afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from runtime.atomic_file import atomic_path
from runtime.errors import BundleError
from runtime.optional_import import require

log = logging.getLogger(__name__)

FLOAT = 1
FLOAT16 = 10

# Op types that run in fp32 in every graph.
FP32_OPS: tuple[str, ...] = (
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Erf",
    # Ops whose fp16 kernels or attributes the converters treat as unsafe (their default block list).
    "Range",
    "RoiAlign",
    "TopK",
    "NonMaxSuppression",
    "CumSum",
)

# Ops that only move or reshape data: they carry the crop's geometry without computing on features.
_SHAPE_OPS = ("Shape", "Size")


@dataclass(frozen=True)
class FP16Options:
    """How a graph is converted to fp16."""

    fp32_ops: tuple[str, ...] = FP32_OPS
    keep_decomposed_layernorm: bool = True
    keep_box_arithmetic: bool = True  # the fusion's crop weights, computed from the boxes
    box_input: str = "boxes"
    extra_fp32_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FP16Result:
    """What one conversion did: the file written and every node left in fp32, with the reason."""

    path: Path
    fp32_nodes: dict[str, str]
    seconds: float

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.fp32_nodes.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts


# ---------------------------------------------------------------- the policy


def name_nodes(model) -> None:
    """Give every unnamed node a unique name: block lists and reports refer to nodes by name."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _producers(model) -> dict[str, object]:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model) -> dict[str, list]:
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def decomposed_layernorm_nodes(model) -> set[str]:
    """Nodes of LayerNorms written out as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div (or Mul/Reciprocal),
    with the scale and shift that follow."""
    consumers = _consumers(model)
    found: set[str] = set()

    def only(tensor: str, op_types: tuple[str, ...]):
        nodes = [n for n in consumers.get(tensor, []) if n.op_type in op_types]
        return nodes

    constants = {i.name for i in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}

    def affine(normalized: str) -> set[str]:
        """The LayerNorm's scale and shift (Mul and Add by constants): fp32 with it, as ONNX Runtime fuses them."""
        group: set[str] = set()
        for mul in only(normalized, ("Mul",)):
            if any(i in constants for i in mul.input):
                group.add(mul.name)
                group.update(a.name for a in only(mul.output[0], ("Add",)) if any(i in constants for i in a.input))
        return group

    for mean in (n for n in model.graph.node if n.op_type == "ReduceMean"):
        x = mean.input[0]
        for sub in only(mean.output[0], ("Sub",)):
            if x not in sub.input:
                continue
            for square in only(sub.output[0], ("Pow", "Mul")):
                if square.op_type == "Mul" and list(square.input) != [sub.output[0]] * 2:
                    continue
                for var in only(square.output[0], ("ReduceMean",)):
                    for add in only(var.output[0], ("Add",)):
                        for root in only(add.output[0], ("Sqrt",)):
                            group = {mean.name, sub.name, square.name, var.name, add.name, root.name}
                            for div in only(root.output[0], ("Div", "Reciprocal")):
                                group.add(div.name)
                                normalized = div.output[0]
                                if div.op_type == "Reciprocal":
                                    muls = only(div.output[0], ("Mul",))
                                    group.update(m.name for m in muls)
                                    normalized = muls[0].output[0] if muls else normalized
                                group |= affine(normalized)
                            found |= group
    return found


def box_arithmetic_nodes(model, box_input: str = "boxes") -> dict[str, str]:
    """Nodes computed only from ``box_input``, shapes and constants: the crop's geometry.

    A tensor is geometric when it is the box input, the output of Shape/Size, or the output of a node
    whose inputs are all geometric or constant, at least one geometric. Returns node name -> "box
    arithmetic" (depends on the boxes) or "shape arithmetic" (on shapes only); Constant nodes that
    feed only such nodes are included, so their values stay fp32 too.
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    from_boxes: dict[str, bool] = {box_input: True} if any(i.name == box_input for i in graph.input) else {}
    nodes: dict[str, str] = {}
    changed = True
    while changed:  # valid ONNX is topologically sorted; iterate anyway to be safe
        changed = False
        for node in graph.node:
            if node.name in nodes or node.op_type == "Constant":
                continue
            inputs = [name for name in node.input if name]
            if node.op_type in _SHAPE_OPS:
                boxes = False
            elif inputs and all(i in from_boxes or i in constants for i in inputs) and any(i in from_boxes for i in inputs):
                boxes = any(from_boxes.get(i, False) for i in inputs)
            else:
                continue
            nodes[node.name] = "box arithmetic" if boxes else "shape arithmetic"
            for out in node.output:
                from_boxes[out] = boxes
            changed = True
    consumers = _consumers(model)
    for node in graph.node:
        if node.op_type == "Constant":
            users = consumers.get(node.output[0], [])
            if users and all(u.name in nodes for u in users):
                nodes[node.name] = nodes[users[0].name]
    return nodes


def fp32_node_policy(model, options: FP16Options = FP16Options()) -> dict[str, str]:
    """Node name -> why it stays fp32 (the model's nodes must be named; see name_nodes)."""
    reasons: dict[str, str] = {}
    if options.keep_box_arithmetic:
        reasons.update(box_arithmetic_nodes(model, options.box_input))
    if options.keep_decomposed_layernorm:
        for name in decomposed_layernorm_nodes(model):
            reasons.setdefault(name, "decomposed LayerNorm")
    for node in model.graph.node:
        if node.op_type in options.fp32_ops:
            reasons.setdefault(node.name, f"op {node.op_type}")
        if node.name in options.extra_fp32_nodes:
            reasons.setdefault(node.name, "asked for")
    return reasons


# ---------------------------------------------------------------- conversion


def _elem_types(model) -> dict[str, int]:
    onnx = require("onnx", "FP16 conversion")
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


def remove_fp16_round_trips(model) -> int:
    """Replace Cast(fp32)(Cast(fp16)(x)) with x when x is fp32; returns how many round trips went.

    Converters put these between two fp32 nodes and after fp32 graph inputs; they only round.
    """
    types = _elem_types(model)
    producers = _producers(model)
    graph_outputs = {o.name for o in model.graph.output}
    rewired = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or _cast_to(node) != FLOAT or node.output[0] in graph_outputs:
            continue
        first = producers.get(node.input[0])
        if first is None or first.op_type != "Cast" or _cast_to(first) != FLOAT16:
            continue
        source = first.input[0]
        if types.get(source) != FLOAT:
            continue
        for user in model.graph.node:
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = source
        rewired += 1
    remove_dead_nodes(model)
    return rewired


def restore_tensor_names(model, suffix: str = "_cast_to_fp16") -> int:
    """Give fp32 tensors that the converter renamed (``X_cast_to_fp16``) their name back when ``X`` is free."""
    graph = model.graph
    taken = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    renames = {}
    for node in graph.node:
        for out in node.output:
            if out.endswith(suffix) and out[: -len(suffix)] not in taken:
                renames[out] = out[: -len(suffix)]
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for vi in graph.value_info:
        if vi.name in renames:
            vi.name = renames[vi.name]
    return len(renames)


def _cast_to(node) -> int | None:
    for attr in node.attribute:
        if attr.name == "to":
            return attr.i
    return None


def topological_sort(model) -> None:
    """Reorder nodes so that each comes after the producers of its inputs (converters append Casts at the end)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progress = []
        for node in pending:
            if all(name in available for name in node.input):
                progress.append(node)
                available.update(node.output)
        if not progress:
            missing = sorted({n for node in pending for n in node.input if n not in available})[:5]
            raise BundleError(f"{graph.name}: the graph has a cycle or dangling inputs {missing}")
        chosen = {id(n) for n in progress}
        ordered.extend(progress)
        pending = [n for n in pending if id(n) not in chosen]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def remove_dead_nodes(model) -> None:
    """Drop nodes whose outputs nobody reads (repeat until stable)."""
    graph = model.graph
    while True:
        needed = {o.name for o in graph.output}
        for node in graph.node:
            needed.update(node.input)
        dead = [n for n in graph.node if not any(out in needed for out in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def convert_model_to_fp16(model, options: FP16Options = FP16Options()):
    """An fp16 ModelProto with fp32 inputs/outputs and the policy's nodes in fp32; returns (model, reasons)."""
    float16 = require("onnxruntime.transformers.float16", "FP16 conversion")
    name_nodes(model)
    reasons = fp32_node_policy(model, options)
    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(options.fp32_ops),
        node_block_list=sorted(reasons),
    )
    topological_sort(converted)
    remove_fp16_round_trips(converted)
    restore_tensor_names(converted)
    return converted, reasons


def convert_graph_to_fp16(source: str | Path, target: str | Path, options: FP16Options = FP16Options()) -> FP16Result:
    """Convert one ONNX file; the result is checked with onnx.checker and written atomically."""
    onnx = require("onnx", "FP16 conversion")
    source, target = Path(source), Path(target)
    start = time.perf_counter()
    try:
        model = onnx.load(str(source))
    except Exception as exc:
        raise BundleError(f"{source}: not a readable ONNX graph ({exc}); re-export the bundle") from exc
    if any(init.data_type == FLOAT16 for init in model.graph.initializer):
        raise BundleError(f"{source}: already holds fp16 weights; convert the fp32 graph instead")
    converted, reasons = convert_model_to_fp16(model, options)
    onnx.checker.check_model(converted)
    with atomic_path(target) as tmp:
        onnx.save(converted, str(tmp))
    seconds = time.perf_counter() - start
    log.info("fp16: %s -> %s in %.1f s (%d nodes kept fp32)", source.name, target, seconds, len(reasons))
    return FP16Result(target, reasons, seconds)


def kept_nodes_summary(results: Iterable[FP16Result]) -> dict[str, int]:
    """Reason -> node count over several graphs, for reports."""
    total: dict[str, int] = {}
    for result in results:
        for reason, count in result.reasons().items():
            total[reason] = total.get(reason, 0) + count
    return total
