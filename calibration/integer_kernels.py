"""ONNX Runtime CPU engines of Q/DQ graphs: optimised so the Q/DQ pairs become integer kernels, and a count
of the compute nodes left in float.

ONNX Runtime's QDQ transformers turn DQ -> Conv -> Q into QLinearConv, DQ -> Add -> Q into QLinearAdd and
DQ -> MatMul -> Q into QLinearMatMul. On x86 they first rewrite int8 activations to uint8 (the VNNI and
AVX2 kernels multiply u8 by s8), and that rewrite (QDQS8ToU8) needs every QuantizeLinear to feed exactly
one DequantizeLinear. The quantizer writes one Q/DQ pair per consumer, but common-subexpression
elimination merges the pairs of a tensor read twice (a residual block's output) into one Q with two DQs,
and then every convolution reading such a tensor stays in float. So the engines are optimised with that
pass off; the graphs keep the symmetric int8 Q/DQ that TensorRT requires.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.optional_import import require

# Passes that would undo the fusion on x86 (see the module docstring).
DISABLED_OPTIMIZERS = ("CommonSubexpressionElimination",)

# Float compute nodes as ONNX Runtime names them after its fusions (Conv + activation -> FusedConv ...).
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose"})
FLOAT_MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm"})
INTEGER_OPS = frozenset(
    {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearAdd"}
)


@dataclass(frozen=True)
class KernelCount:
    """What an optimised graph computes in float and in integers (node names of the float ones)."""

    float_convs: tuple[str, ...]
    float_matmuls: tuple[str, ...]
    integer: dict[str, int]
    quantize: int  # QuantizeLinear nodes left (each one a float -> int8 pass over a tensor)
    dequantize: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "float_convs": list(self.float_convs),
            "float_matmuls": list(self.float_matmuls),
            "integer": dict(self.integer),
            "quantize_linear": self.quantize,
            "dequantize_linear": self.dequantize,
        }

    def line(self) -> str:
        integer = ", ".join(f"{n} {op}" for op, n in sorted(self.integer.items())) or "no integer kernels"
        return f"{integer}; float: {len(self.float_convs)} Conv, {len(self.float_matmuls)} MatMul/Gemm"


def count_kernels(model_or_path: Any) -> KernelCount:
    """Count the compute nodes of an (optimised) ONNX graph by kind; nested graphs are not searched."""
    onnx = require("onnx", "counting an engine's kernels")
    model = onnx.load(str(model_or_path), load_external_data=False) if isinstance(model_or_path, (str, Path)) else model_or_path
    ops = Counter(n.op_type for n in model.graph.node)
    return KernelCount(
        float_convs=tuple(n.name for n in model.graph.node if n.op_type in FLOAT_CONV_OPS),
        float_matmuls=tuple(n.name for n in model.graph.node if n.op_type in FLOAT_MATMUL_OPS),
        integer={op: n for op, n in ops.items() if op in INTEGER_OPS},
        quantize=ops.get("QuantizeLinear", 0),
        dequantize=ops.get("DequantizeLinear", 0),
    )


def optimise_for_cpu(source: str | Path, target: str | Path, level: str = "extended") -> None:
    """Save ONNX Runtime's offline-optimised graph of ``source`` at ``target`` (CPU provider).

    ``extended`` keeps what every CPU can run (the QDQ fusions and Conv/MatMul fusions) and leaves out
    the layout passes that depend on this machine's instruction set; the runtime applies those at load.
    """
    ort = require("onnxruntime", "the ONNX Runtime build")
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    if level not in levels:
        raise ValueError(f"optimisation level {level!r}: choose one of {sorted(levels)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS))
