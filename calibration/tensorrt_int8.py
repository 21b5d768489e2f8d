"""INT8 graphs for TensorRT: the gated Q/DQ placement and scales carried into the fp16 graph.

TensorRT builds explicitly quantized graphs strongly typed: a DequantizeLinear outputs its scale's
type, and every op that no Q/DQ pair covers runs in the type of its inputs. On the fp32-based Q/DQ
graph that ONNX Runtime's CPU engine needs (its integer kernels fuse DQ -> Conv -> Q in fp32), every
unquantized op (ReLUs, pooling, upsampling, the fusion's attention and LayerNorms) would therefore run
in fp32 or TF32 on the GPU, and the INT8 engine would likely be slower than the FP16 one.

So the TensorRT graph is the gated Q/DQ graph converted by the fp16 policy (calibration/fp16.py: the
same ops and patterns stay fp32 as in the fp16 graph, inputs and outputs stay fp32) with its scales in
float16. ONNX allows float16 Q/DQ scales from opset 19 (QuantizeLinear-19: ``y_scale`` has the type of
``x``), so the graph is raised to opset 19 first; TensorRT 10's parser then builds each IQuantizeLayer
with an fp16 input and scale and each IDequantizeLayer with an fp16 output (below opset 19 it would
cast fp32 scales, and the DQ outputs would be fp32). Placement, exclusions and scale values are those
the CPU gate judged (scales rounded to fp16); the ranges still come from the fp32 model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from calibration.fp16 import FLOAT16, FP16Options, FP16Result, convert_model_to_fp16
from runtime.atomic_file import atomic_path
from runtime.errors import BundleError
from runtime.optional_import import require

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FP16_SCALE_OPSET = 19  # the first opset whose QuantizeLinear takes a float16 scale
TENSORRT_GRAPH_DIR = "tensorrt"  # under int8/: the TensorRT graphs beside the CPU engine's


def _default_opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def raise_opset(model, opset: int = FP16_SCALE_OPSET):
    """The model at ``opset`` or later (onnx's version converter rewrites what changed, e.g. Reduce axes)."""
    require("onnx", "INT8 graphs for TensorRT")
    if _default_opset(model) >= opset:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, opset)


def qdq_scales(model) -> dict[str, np.ndarray]:
    """Scale initializer name -> values, for every Q/DQ node whose scale is an initializer."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and len(node.input) > 1 and node.input[1] in initializers:
            scales[node.input[1]] = numpy_helper.to_array(initializers[node.input[1]])
    return scales


def _check_scales(model, source: Path) -> None:
    initializers = {i.name: i for i in model.graph.initializer}
    for name, values in qdq_scales(model).items():
        if initializers[name].data_type != FLOAT16:
            raise BundleError(f"{source}: Q/DQ scale {name} stayed {values.dtype} after the fp16 conversion")
        if not (np.isfinite(values) & (values > 0)).all():
            raise BundleError(f"{source}: Q/DQ scale {name} is not positive and finite in float16 ({values.min()}..{values.max()})")


def tensorrt_int8_model(model, options: FP16Options = FP16Options()):
    """The Q/DQ ModelProto for TensorRT: opset >= 19, fp16 compute and scales; returns (model, nodes kept fp32)."""
    return convert_model_to_fp16(raise_opset(model), options)


def write_tensorrt_int8_graph(source: str | Path, target: str | Path, options: FP16Options = FP16Options()) -> FP16Result:
    """Convert one gated Q/DQ graph (fp32-based) into its TensorRT graph; checked, written atomically."""
    onnx = require("onnx", "INT8 graphs for TensorRT")
    source, target = Path(source), Path(target)
    start = time.perf_counter()
    model = onnx.load(str(source))
    if not any(node.op_type in QDQ_OPS for node in model.graph.node):
        raise BundleError(f"{source}: holds no Q/DQ nodes; write the int8 graphs first (glsnet-export build --int8)")
    converted, reasons = tensorrt_int8_model(model, options)
    _check_scales(converted, source)
    onnx.checker.check_model(converted)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        onnx.save(converted, str(tmp))
    seconds = time.perf_counter() - start
    log.info("int8 for TensorRT: %s -> %s in %.1f s (%d nodes kept fp32)", source.name, target, seconds, len(reasons))
    return FP16Result(target, reasons, seconds)
