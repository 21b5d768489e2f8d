"""The global branch cut into stage graphs, so the runtime can band it stage by stage with small halos.

Banding the single global graph needs a halo of half the backbone's receptive field (ResNet18: 435
px) around every band, recomputed per band. Cut into stages, each stage's halo is only its own
receptive-field radius in its own input rows (the stem and layer1: 21 px; each later stage: 7 rows
at its stride), so bands stay cheap. Stages: stem + layer1 (stride 4), layer2, layer3 (stride 2
each), layer4 + the neck (stride 2, giving the global features). The single global graph stays in
the bundle; the stages are an addition (manifest ``global_stages``).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from runtime.bundle.manifest import GLOBAL_STAGE_INPUT, GLOBAL_STAGE_OUTPUT, GlobalStageSpec, TensorSpec, sha256_file
from runtime.optional_import import require

log = logging.getLogger(__name__)

STAGE_FILE = "global_stage{index}.onnx"
STAGE_DIM_NAMES = frozenset({"height", "width"})  # the dynamic input dims a TensorRT profile covers


def stage_modules(global_branch: Any) -> list[Any]:
    """The global branch's stages, in order; chained they compute exactly ``global_branch``."""
    from torch import nn

    b = global_branch.backbone
    return [nn.Sequential(b.stem, b.layer1), b.layer2, b.layer3, nn.Sequential(b.layer4, global_branch.neck)]


def receptive_field(module: Any) -> tuple[int, int]:
    """(stride, radius in input rows) of a stage along its main path (residual shortcuts reach less far)."""
    from torch import nn

    stride, radius = 1, 0
    for name, layer in module.named_modules():
        if "downsample" in name.split("."):
            continue
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            kernel, step, dilation = (_first(getattr(layer, a)) for a in ("kernel_size", "stride", "dilation"))
            radius += (kernel - 1) // 2 * dilation * stride
            stride *= step
    return stride, radius


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, tuple) else value)


def stage_io(module: Any, in_channels: int, out_channels: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    inputs = (TensorSpec(GLOBAL_STAGE_INPUT, "float32", (1, in_channels, "height", "width")),)
    outputs = (TensorSpec(GLOBAL_STAGE_OUTPUT, "float32", (1, out_channels, "out_height", "out_width")),)
    return inputs, outputs


def export_global_stages(model: Any, stage_dir: Path, options: Any, image: Any) -> list[tuple[Path, GlobalStageSpec]]:
    """Export every stage graph into ``stage_dir``; returns (path, manifest entry) per stage, in order.

    ``image``: the trace example of the global graph; each stage traces on the previous one's output.
    """
    import torch

    from export.graphs.graph_io import ExportError, check_graph, conform_io, dynamic_axes, simplify

    if getattr(model.config, "fpn", False):
        log.info("no global stage graphs: an FPN's top-down path needs every level at once (the single global graph serves)")
        return []
    onnx = require("onnx", "ONNX export")
    out = []
    x = image
    for index, module in enumerate(stage_modules(model.global_branch)):
        module = module.eval()
        with torch.no_grad():
            y = module(x)
        inputs, outputs = stage_io(module, x.shape[1], y.shape[1])
        path = stage_dir / STAGE_FILE.format(index=index)
        role = f"global stage {index}"
        start = time.perf_counter()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (x,), str(path), input_names=[GLOBAL_STAGE_INPUT], output_names=[GLOBAL_STAGE_OUTPUT],
                dynamic_axes=dynamic_axes(inputs + outputs), opset_version=options.opset, do_constant_folding=True, dynamo=False,
            )
        proto = onnx.load(str(path))
        if options.simplify:
            proto = simplify(proto)
        proto = conform_io(proto, inputs, outputs, role)
        check_graph(proto, role)
        onnx.save_model(proto, str(path), save_as_external_data=False)
        stride, radius = receptive_field(module)
        if tuple(y.shape[2:]) != tuple(-(-n // stride) for n in x.shape[2:]):
            raise ExportError(f"{role}: output {tuple(y.shape[2:])} from input {tuple(x.shape[2:])} is not ceil(size / stride {stride})")
        halo = -(-radius // stride) * stride
        graph = _graph_spec(stage_dir, path, inputs, outputs, options.opset)
        out.append((path, GlobalStageSpec(graph=graph, stride=stride, halo=halo)))
        log.info("exported %s (stride %d, halo %d) in %.1f s -> %s", role, stride, halo, time.perf_counter() - start, path)
        x = y
    return out


def _graph_spec(stage_dir: Path, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], opset: int) -> Any:
    from runtime.bundle.manifest import GraphSpec

    return GraphSpec(file=path.relative_to(stage_dir).as_posix(), precision="fp32", sha256=sha256_file(path), inputs=inputs, outputs=outputs, opset=opset)
