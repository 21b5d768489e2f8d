"""GLSNet -> three ONNX graphs (global, local, fusion) and a bundle with its manifest.

Each branch is exported on its own, with the tensor names of ``runtime.bundle.manifest`` and named dynamic
axes: the global graph's image height and width, the batch of the local and fusion graphs, and the
global feature map's height and width in the fusion graph. Every graph is simplified with onnxslim,
checked with the ONNX checker and strict shape inference, and its input and output dims are
compared with the expected ones (a dynamic dim frozen to the example's value is an error).

Exporter choice (torch 2.14.1): the TorchScript exporter (``dynamo=False``) is the default. It
writes the requested opset directly (7-20), while the dynamo exporter emits opset 18 and
converts down to 17 with the ONNX C API (its own warning says the conversion may fail); it is
about four times faster here (the small model's local branch: 1.3 s vs 4.2 s); and the
frozen-dim pitfall seen with dynamo does not arise in tracing, since sizes are recorded as Shape
ops. Both give graphs that match PyTorch to ~1e-6 relative; ``Exporter.DYNAMO`` stays available.
"""

from __future__ import annotations

import enum
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.graphs.graph_io import ExportError, check_graph, conform_io, dynamic_axes, graph_io, simplify
from runtime.bundle.manifest import (
    GRAPH_ROLES,
    Manifest,
)
from runtime.errors import CheckpointError, InputError
from runtime.optional_import import require

log = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization is a single op from opset 17 on
MAX_OPSET = 20  # the TorchScript exporter's newest opset, and TensorRT 10.0's


class Exporter(str, enum.Enum):
    TORCHSCRIPT = "torchscript"
    DYNAMO = "dynamo"


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Example sizes only shape the trace; every named axis stays dynamic."""

    opset: int = 17
    simplify: bool = True
    force: bool = False  # overwrite an existing bundle
    exporter: Exporter = Exporter.TORCHSCRIPT
    example_image_size: tuple[int, int] | None = None  # (H, W); default: a bit over one patch, not square
    example_batch: int = 2
    check_tensorrt: bool = True  # refuse graphs TensorRT 10.x/11.x cannot parse

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise InputError(f"opset {self.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (default 17)")
        if self.example_batch < 2:
            raise InputError(f"example_batch must be >= 2 so that the batch axis is not traced as 1, got {self.example_batch}")
        if not isinstance(self.exporter, Exporter):
            if self.exporter not in {e.value for e in Exporter}:
                raise InputError(f"exporter {self.exporter!r} is not one of {[e.value for e in Exporter]}")
            object.__setattr__(self, "exporter", Exporter(self.exporter))


# ---------------------------------------------------------------- model and example inputs


def load_export_model(checkpoint_or_model: Any) -> tuple[Any, dict[str, Any]]:
    """(GLSNet in eval mode, provenance of its weights) from a checkpoint path or a model object."""
    from glsnet.checkpoint import load_model, read_config
    from glsnet.model import GLSNet

    if isinstance(checkpoint_or_model, GLSNet):
        return checkpoint_or_model.eval(), {"checkpoint": None, "checkpoint_sha256": None}
    if not isinstance(checkpoint_or_model, (str, Path)):
        raise InputError(
            f"expected a checkpoint path or a GLSNet model, got {type(checkpoint_or_model).__name__}"
        )
    path = Path(checkpoint_or_model)
    config = read_config(path)  # CheckpointError if this is not a GLSNet checkpoint
    _check_class_count(path, config)
    model, info = load_model(path)  # CheckpointError when the weights do not fit the header's configuration
    return model, {"checkpoint": str(path.resolve()), "checkpoint_sha256": info["sha256"], "checkpoint_step": info["step"]}


def _check_class_count(path: Path, config: Any) -> None:
    """A checkpoint whose classifier has another class count than its header says was tampered with."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        name = "fusion.head.classify.weight"
        if name not in keys:
            raise CheckpointError(f"{path}: a GLSNet checkpoint header but no {name} tensor; the file is incomplete")
        have = fh.get_slice(name).get_shape()[0]
    if have != config.num_classes:
        raise CheckpointError(
            f"{path}: its classifier has {have} classes but its configuration header lists {config.num_classes} "
            f"({', '.join(config.classes)}); the header or the weights were changed after training. "
            "Use the checkpoint as glsnet-train wrote it"
        )


def example_inputs(model: Any, options: ExportOptions) -> dict[str, tuple]:
    """Trace inputs for each role: seeded, of odd sizes, computed by the model itself where chained."""
    import torch

    c = model.config
    p = c.patch_size
    h, w = options.example_image_size or (p + 36, p + 68)
    if h < p or w < p:
        raise InputError(f"example image size {h} x {w} is smaller than one patch ({p}); the runtime pads to >= {p}")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, c.in_channels, h, w, generator=generator)
    patches = torch.randn(options.example_batch, c.in_channels, p, p, generator=generator)
    corners = torch.rand(options.example_batch, 2, generator=generator) * torch.tensor([w - p, h - p])
    boxes = torch.cat([corners, corners + p], dim=1)
    with torch.no_grad():
        global_features = model.global_branch(image)
        local_features, local_skip = model.local_branch(patches)
    return {
        "global": (image,),
        "local": (patches,),
        "fusion": (local_features, local_skip, global_features, boxes),
    }


def submodule(model: Any, role: str) -> Any:
    return {"global": model.global_branch, "local": model.local_branch, "fusion": model.fusion}[role]


# ---------------------------------------------------------------- one graph


def export_graph(model: Any, role: str, path: Path, options: ExportOptions, args: tuple | None = None) -> Path:
    """Export, simplify, check and write one graph as a single .onnx file; returns ``path``."""
    import torch

    onnx = require("onnx", "ONNX export")
    inputs, outputs = graph_io(role, model.config)
    args = args if args is not None else example_inputs(model, options)[role]
    module = submodule(model, role).eval()
    names_in = [t.name for t in inputs]
    names_out = [t.name for t in outputs]
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        if options.exporter is Exporter.TORCHSCRIPT:
            torch.onnx.export(
                module, args, str(path), input_names=names_in, output_names=names_out,
                dynamic_axes=dynamic_axes(inputs + outputs), opset_version=options.opset,
                do_constant_folding=True, dynamo=False,
            )
            proto = onnx.load(str(path))
        else:
            program = torch.onnx.export(
                module, args, input_names=names_in, output_names=names_out,
                dynamic_axes=dynamic_axes(inputs + outputs), opset_version=options.opset,
                dynamo=True, external_data=False, verbose=False,
            )
            proto = program.model_proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != options.opset:
        raise ExportError(f"{role} graph came out at opset {opset}, not the requested {options.opset} (the exporter could not convert it)")
    if options.simplify:
        proto = simplify(proto)
    proto = conform_io(proto, inputs, outputs, role)
    check_graph(proto, role)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    log.info("exported %s graph in %.1f s -> %s", role, time.perf_counter() - start, path)
    return path


# ---------------------------------------------------------------- the bundle


def bundle_flops(files: dict[str, Path]) -> dict[str, int]:
    """FLOPs of each graph at inspect's example size (a 2448 x 2448 image, batch 6), recorded in the manifest
    so the torch-free runtime can weigh its plans and the bench can say how close it runs to the machine."""
    from export.graphs.inspect_graphs import ExampleSize, summarize_graph

    example = ExampleSize()
    flops = {role: summarize_graph(path, role, "fp32", example).flops for role, path in files.items()}
    return {"height": example.height, "width": example.width, "batch": example.batch, **flops}


def export_bundle(checkpoint_or_model: Any, out_dir: str | Path, options: ExportOptions | None = None) -> Manifest:
    """Export the three graphs (and the global branch's stage graphs) and write a bundle at ``out_dir``.

    The bundle is written into a temporary sibling directory and renamed into place, so ``out_dir``
    is either the old bundle or the complete new one. An existing directory that is not a bundle is
    refused; an existing bundle is replaced only with ``options.force``.
    """
    from export.graphs.bundle_writer import build_manifest, check_target, staged_bundle
    from export.graphs.global_stages import STAGE_DIM_NAMES, export_global_stages

    options = options or ExportOptions()
    out_dir = Path(out_dir)
    check_target(out_dir, options.force)
    model, provenance = load_export_model(checkpoint_or_model)
    args = example_inputs(model, options)
    start = time.perf_counter()
    with staged_bundle(out_dir, options.force) as stage:
        files = {}
        for role in GRAPH_ROLES:
            files[role] = export_graph(model, role, stage / f"{role}.onnx", options, args[role])
        stages = export_global_stages(model, stage, options, args["global"][0])
        if options.check_tensorrt:
            from export.tensorrt.tensorrt_compat import check_graph_file

            checks = [(role, path, None) for role, path in files.items()]
            checks += [(f"global stage {i}", path, STAGE_DIM_NAMES) for i, (path, _) in enumerate(stages)]
            for role, path, names in checks:
                report = check_graph_file(path, role=role) if names is None else check_graph_file(path, role=role, dim_names=names)
                if not report:
                    raise ExportError(f"{role} graph is not TensorRT-compatible:\n" + "\n".join(report.lines()))
        provenance = {**provenance, "flops": bundle_flops(files)}
        manifest = build_manifest(stage, model.config, files, options, provenance, tuple(spec for _, spec in stages))
    log.info("bundle written in %.1f s -> %s", time.perf_counter() - start, out_dir)
    return manifest
