"""The global branch's stage graphs at fp16 and int8, so every precision bands the global branch stage by
stage (and keeps its memory at or below fp32's) instead of falling back to the single global graph.

fp16: each fp32 stage graph is converted like the global graph. int8: each stage is quantized with the
global graph's own ranges and exclusions, so the chained stages compute what the gated int8 global graph
computes. The stage graphs were exported from the same modules as the global graph but under other tensor
and node names; ``correspondence`` finds the names again from the graph itself: convolutions are matched
by their weights, then every other node by its op type and its (already matched) inputs.
"""

from __future__ import annotations

import hashlib
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


def _weight_keys(model: Any) -> dict[str, str]:
    """Conv node name -> digest of its weight tensor."""
    initializers = {i.name: i for i in model.graph.initializer}
    keys = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in initializers:
            init = initializers[node.input[1]]
            keys[node.name] = hashlib.sha256(str(list(init.dims)).encode() + init.raw_data + str(list(init.float_data)).encode()).hexdigest()
    return keys


def correspondence(whole: Any, stage: Any) -> Correspondence:
    """Match every node and tensor of ``stage`` (a piece of ``whole``, another export) to ``whole``'s."""
    whole_nodes = {n.name: n for n in whole.graph.node}
    by_weight = {key: name for name, key in _weight_keys(whole).items()}
    tensors: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for name, key in _weight_keys(stage).items():
        if key not in by_weight:
            raise StageMatchError(f"stage convolution {name!r} has weights that no convolution of the global graph has")
        ours = next(n for n in stage.graph.node if n.name == name)
        theirs = whole_nodes[by_weight[key]]
        nodes[name] = theirs.name
        tensors[ours.input[0]] = theirs.input[0]
        tensors[ours.output[0]] = theirs.output[0]
    stage_inits = {i.name for i in stage.graph.initializer}
    whole_inits = {i.name for i in whole.graph.initializer}
    index: dict[tuple, Any] = {}
    for node in whole.graph.node:
        index.setdefault((node.op_type, tuple(sorted(i for i in node.input if i and i not in whole_inits))), node)
    pending = [n for n in stage.graph.node if n.name not in nodes]
    while pending:
        left = []
        for node in pending:
            inputs = [i for i in node.input if i and i not in stage_inits]
            if not all(i in tensors for i in inputs):
                left.append(node)
                continue
            theirs = index.get((node.op_type, tuple(sorted(tensors[i] for i in inputs))))
            if theirs is None:
                raise StageMatchError(f"stage node {node.name!r} ({node.op_type}) has no counterpart in the global graph")
            nodes[node.name] = theirs.name
            tensors.update(zip(node.output, theirs.output))
        if len(left) == len(pending):
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

