"""The global branch's stage graphs at fp16 and int8, so every precision bands the global branch stage by
stage (and keeps its memory at or below fp32's) instead of falling back to the single global graph.

fp16: each fp32 stage graph is converted like the global graph. int8: each stage is quantized with the
global graph's own ranges and exclusions, so the chained stages compute what the gated int8 global graph
computes. The stage graphs were exported from the same modules as the global graph but under other tensor
and node names; ``correspondence`` finds the names again from the graph itself: convolutions are matched
by their weights, then every other node by its op type, attributes and (already matched) inputs in order,
constants by value; a stage node that fits several global nodes is an error, never a silent pick.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.optional_import import require


class StageMatchError(ValueError):
    """A stage graph does not map onto the global graph it was cut from."""


@dataclass(frozen=True)
class Correspondence:
    """Stage graph names -> global graph names."""

    tensors: dict[str, str]
    nodes: dict[str, str]


def load_graph(path: str | Path) -> Any:
    """The ONNX model at ``path`` (for ``correspondence``)."""
    onnx = require("onnx", "the global stage graphs")
    return onnx.load(str(path))


def _digest(array: Any) -> str:
    """A constant's value (dtype, shape and bytes), so equal constants match whatever their names or storage."""
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()


def _constants(model: Any) -> dict[str, str]:
    """Initializer name -> digest of its value."""
    numpy_helper = require("onnx.numpy_helper", "the global stage graphs")
    return {i.name: _digest(numpy_helper.to_array(i)) for i in model.graph.initializer}


def _attributes(node: Any) -> str:
    """Digest of a node's attributes (tensor attributes by value), so nodes differing only in them do not match."""
    numpy_helper = require("onnx.numpy_helper", "the global stage graphs")
    parts = []
    for attribute in sorted(node.attribute, key=lambda a: a.name):
        value = _digest(numpy_helper.to_array(attribute.t)).encode() if attribute.HasField("t") else attribute.SerializeToString()
        parts.append(attribute.name.encode() + b"=" + value)
    return hashlib.sha256(b";".join(parts)).hexdigest()


def _weight_keys(model: Any, constants: dict[str, str]) -> dict[str, str]:
    """Conv node name -> digest of its weight tensor."""
    return {n.name: constants[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in constants}


def _key(node: Any, constants: dict[str, str], tensor: dict[str, str] | None = None) -> tuple:
    """Op type, attributes and operands in order (tensors by name, through ``tensor`` when given; constants by value).

    Order is kept even for commutative ops: both graphs trace the same forward code, so Sub(a, b) and Sub(b, a),
    or Mul(x, c1) and Mul(x, c2), stay apart."""
    operands = tuple(
        ("const", constants[i]) if i in constants else ("tensor", tensor[i] if tensor is not None and i else i) for i in node.input
    )
    return node.op_type, _attributes(node), operands


def correspondence(whole: Any, stage: Any) -> Correspondence:
    """Match every node and tensor of ``stage`` (a piece of ``whole``, another export) to ``whole``'s.

    Convolutions whose weights are unique are matched by their weights; every other node, convolutions with
    shared weights (tied or zero-initialised) included, by its op type, attributes and operands in order, so
    position tells equal weights apart. A node that still matches several global nodes raises StageMatchError."""
    whole_constants, stage_constants = _constants(whole), _constants(stage)
    whole_nodes = {n.name: n for n in whole.graph.node}
    whole_convs = _weight_keys(whole, whole_constants)
    stage_convs = _weight_keys(stage, stage_constants)
    shared = Counter(whole_convs.values())
    by_weight = {key: name for name, key in whole_convs.items() if shared[key] == 1}
    tensors: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for name, key in stage_convs.items():
        if key not in shared:
            raise StageMatchError(f"stage convolution {name!r} has weights that no convolution of the global graph has")
        if key not in by_weight:
            continue
        ours = next(n for n in stage.graph.node if n.name == name)
        theirs = whole_nodes[by_weight[key]]
        nodes[name] = theirs.name
        tensors[ours.input[0]] = theirs.input[0]
        tensors[ours.output[0]] = theirs.output[0]
    index: dict[tuple, list[Any]] = {}
    for node in whole.graph.node:
        index.setdefault(_key(node, whole_constants), []).append(node)
    pending = [n for n in stage.graph.node if n.name not in nodes]
    while pending:
        left = []
        for node in pending:
            if not all(i in tensors for i in node.input if i and i not in stage_constants):
                left.append(node)
                continue
            candidates = index.get(_key(node, stage_constants, tensors), [])
            if not candidates:
                raise StageMatchError(f"stage node {node.name!r} ({node.op_type}) has no counterpart in the global graph")
            if len(candidates) > 1:
                raise StageMatchError(
                    f"stage node {node.name!r} ({node.op_type}) matches {len(candidates)} nodes of the global graph "
                    f"({', '.join(repr(n.name) for n in candidates[:5])}): same inputs, constants and attributes"
                )
            (theirs,) = candidates
            nodes[node.name] = theirs.name
            tensors.update(zip(node.output, theirs.output))
        if len(left) == len(pending):
            tied = [n.name for n in left if n.name in stage_convs]
            if tied:
                raise StageMatchError(
                    f"stage convolutions {tied[:5]} share their weights with other convolutions of the global graph "
                    "and are not reached from a convolution with unique weights, so which one they are is ambiguous"
                )
            raise StageMatchError(f"stage nodes not reachable from matched convolutions: {[n.name for n in left][:5]}")
        pending = left
    return Correspondence(tensors, nodes)


def stage_ranges(ranges: Any, match: Correspondence) -> Any:
    """The global graph's calibration ranges (onnxruntime TensorsData) under the stage graph's tensor names."""
    calibrate = require("onnxruntime.quantization.calibrate", "INT8 stage graphs")
    data = {ours: ranges.data[theirs] for ours, theirs in match.tensors.items() if theirs in ranges.data}
    return calibrate.TensorsData(ranges.calibration_method, data)


def stage_exclusions(excluded: list[str] | tuple[str, ...], match: Correspondence) -> tuple[str, ...]:
    """The stage's nodes whose global-graph counterparts are left in float."""
    kept = set(excluded)
    return tuple(ours for ours, theirs in match.nodes.items() if theirs in kept)

