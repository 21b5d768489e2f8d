"""Does a bundle compute what the PyTorch model computes? Per graph, and for the whole image.

Per graph, the same inputs go into the torch submodule and into the ONNX Runtime graph (CPU), and
the outputs are compared with ``runtime.accuracy.comparison.compare_outputs``. For the whole image, the
runtime's own ``Segmenter`` (which chains the graphs) is compared with the PyTorch reference
``glsnet.inference.predict_mask`` by pixel agreement of the final masks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime.accuracy.comparison import ComparisonReport, compare_outputs, pixel_agreement
from runtime.bundle.manifest import GRAPH_ROLES, Manifest, graph_path, read_manifest
from runtime.errors import CheckpointError, InputError
from runtime.image_io.preprocess import normalize

DEFAULT_SYNTHETIC_SIZE = 1024


@dataclass(frozen=True)
class VerifyOptions:
    """Tolerances and sizes. An output passes where |ort - torch| <= atol + rtol * max|torch| everywhere.

    rtol is relative to the output's largest magnitude, not to each element: float32 rounding
    grows with the activations a value was computed from, and an element near zero can come out
    of a sum of large terms. It matters for the branch features of a random-init model, which
    reach the hundreds, and for ResNet50's features on real images, where ONNX Runtime and torch
    differ by up to ~6e-5 of that scale (torch's own float32 error against float64 is as large).
    """

    atol: float = 1e-4
    rtol: float = 1e-4
    min_pixel_agreement: float = 0.9999
    batch_size: int = 6
    synthetic_size: int = DEFAULT_SYNTHETIC_SIZE
    seed: int = 0
    threads: int | None = None
    whole_image: bool = True

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0:
            raise InputError(f"tolerances must be >= 0, got atol={self.atol}, rtol={self.rtol}")
        if not 0.0 <= self.min_pixel_agreement <= 1.0:
            raise InputError(f"min_pixel_agreement is a fraction in [0, 1], got {self.min_pixel_agreement}")
        if self.batch_size < 1 or self.synthetic_size < 1:
            raise InputError(f"batch_size and synthetic_size must be >= 1, got {self.batch_size}, {self.synthetic_size}")


@dataclass(frozen=True)
class VerifyReport:
    image: str  # what was segmented: a path, or "synthetic scene (seed s)"
    image_size: tuple[int, int]
    graphs: dict[str, ComparisonReport]
    pixel_agreement: float | None  # None when the whole-image check was skipped
    options: VerifyOptions
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def whole_image_passed(self) -> bool:
        return self.pixel_agreement is None or self.pixel_agreement >= self.options.min_pixel_agreement

    def __bool__(self) -> bool:
        return all(bool(r) for r in self.graphs.values()) and self.whole_image_passed

    def max_abs(self) -> dict[str, float]:
        """Largest |ort - torch| over each graph's outputs."""
        return {role: max(o.max_abs for o in report.outputs) for role, report in self.graphs.items()}

    def lines(self) -> list[str]:
        h, w = self.image_size
        out = [f"image: {self.image} ({h} x {w})"]
        for role, report in self.graphs.items():
            out += [f"{role:6} {line}" for line in report.lines()]
        if self.pixel_agreement is not None:
            status = "PASSED" if self.whole_image_passed else "FAILED"
            differ = round((1.0 - self.pixel_agreement) * h * w)
            out.append(
                f"{status} | whole image | pixel agreement {100 * self.pixel_agreement:.4f}% "
                f"({differ} of {h * w} pixels differ; min {100 * self.options.min_pixel_agreement:.4f}%)"
            )
        out.append("time: " + "; ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        return out


# ---------------------------------------------------------------- inputs


def load_reference_model(bundle_dir: Path, manifest: Manifest, checkpoint_or_model: Any = None) -> Any:
    """The PyTorch model to compare with: given, or the checkpoint named in the manifest's provenance."""
    from glsnet.checkpoint import load_model
    from glsnet.config import GLSNetConfig
    from glsnet.model import GLSNet

    if isinstance(checkpoint_or_model, GLSNet):
        model = checkpoint_or_model.eval()
    else:
        path = checkpoint_or_model or manifest.provenance.get("checkpoint")
        if not path:
            raise InputError(
                f"{bundle_dir}: the manifest names no checkpoint (the bundle was exported from a model object); "
                "pass the checkpoint with --checkpoint"
            )
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: the checkpoint this bundle was exported from is not there; pass it with --checkpoint")
        model, info = load_model(path)
        expected = manifest.provenance.get("checkpoint_sha256")
        if expected and info["sha256"] != expected:
            raise CheckpointError(
                f"{path}: sha256 {info['sha256'][:16]}… is not the {expected[:16]}… this bundle was exported from; "
                "pass the checkpoint that was exported (or re-export the bundle from this one)"
            )
    if manifest.model and model.config.to_dict() != GLSNetConfig.from_dict(manifest.model).to_dict():
        raise CheckpointError(f"{bundle_dir}: the model's configuration differs from the one the bundle was exported with")
    return model


def read_image(image: str | Path | np.ndarray | None, options: VerifyOptions) -> tuple[np.ndarray, str]:
    """uint8-or-wider [H, W, C] pixels and a description; None gives the seeded synthetic scene."""
    if image is None:
        from glsnet.data.synthetic import synthetic_scene

        pixels, _ = synthetic_scene(options.synthetic_size, options.synthetic_size, seed=options.seed)
        return pixels, f"synthetic scene (seed {options.seed})"
    if isinstance(image, np.ndarray):
        return image, "array"
    from runtime.image_io.readers import open_image

    source = open_image(image)
    try:
        return source.read_rows(0, source.height), str(image)
    finally:
        source.close()


# ---------------------------------------------------------------- per graph


def run_graph(bundle_dir: str | Path, role: str, feed: Mapping[str, np.ndarray], threads: int | None = None, precision: str = "fp32") -> dict[str, np.ndarray]:
    """One graph of the bundle on the CPU with ONNX Runtime (checksum verified first)."""
    from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions

    spec = read_manifest(bundle_dir).graph(role, precision)
    with OnnxRuntimeBackend(graph_path(bundle_dir, spec), OrtOptions(device="cpu", threads=threads)) as backend:
        return backend.infer(feed)


def torch_graph(model: Any, role: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The torch submodule that ``role``'s graph was exported from, on the same named inputs."""
    import torch

    from export.graphs.graph_io import graph_io
    from export.graphs.onnx_export import submodule

    inputs, outputs = graph_io(role, model.config)
    args = [torch.from_numpy(np.ascontiguousarray(feed[t.name])) for t in inputs]
    with torch.no_grad():
        result = submodule(model, role)(*args)
    result = result if isinstance(result, tuple) else (result,)
    return {t.name: r.numpy() for t, r in zip(outputs, result)}


def compare_graph(
    bundle_dir: str | Path, model: Any, role: str, feed: Mapping[str, np.ndarray], options: VerifyOptions | None = None
) -> ComparisonReport:
    """torch submodule vs ONNX Runtime graph on the same inputs (tolerances: see VerifyOptions)."""
    options = options or VerifyOptions()
    reference = torch_graph(model, role, feed)
    candidate = run_graph(bundle_dir, role, feed, options.threads)
    return compare_outputs(reference, candidate, atol=scaled_tolerances(reference, options), rtol=0.0)


def scaled_tolerances(reference: Mapping[str, np.ndarray], options: VerifyOptions) -> dict[str, float]:
    """Per-output absolute tolerance: atol + rtol * the output's largest magnitude."""
    return {name: options.atol + options.rtol * float(np.abs(value).max(initial=0.0)) for name, value in reference.items()}


def graph_feeds(model: Any, normalized: np.ndarray, batch_size: int) -> tuple[dict, dict]:
    """(inputs, torch outputs) of each graph for one image, as the runtime makes them: the padded
    image, the first batch of patches, and for fusion the torch branches' outputs with the boxes."""
    import torch

    from glsnet.inference import pad_to_grid
    from runtime.algorithm.patch_grid import make_grid
    from runtime.bundle.manifest import FUSION_INPUTS, FUSION_OUTPUT, GLOBAL_INPUT, GLOBAL_OUTPUT, LOCAL_INPUT, LOCAL_OUTPUTS

    c = model.config
    _, height, width = normalized.shape
    grid = make_grid(height, width, c.patch_size, c.min_overlap)
    padded = pad_to_grid(torch.from_numpy(normalized), c.patch_size)
    count = min(batch_size, len(grid))
    p = c.patch_size
    patches = torch.stack([padded[:, y : y + p, x : x + p] for y, x in grid.origins()[:count]])
    boxes = torch.from_numpy(grid.boxes(list(range(count))))
    with torch.no_grad():
        global_features = model.global_branch(padded[None])
        local_features, local_skip = model.local_branch(patches)
        logits = model.fusion(local_features, local_skip, global_features, boxes)
    fusion_inputs = (local_features, local_skip, global_features, boxes)
    feeds = {
        "global": {GLOBAL_INPUT: padded[None].numpy()},
        "local": {LOCAL_INPUT: patches.numpy()},
        "fusion": {name: t.numpy() for name, t in zip(FUSION_INPUTS, fusion_inputs)},
    }
    references = {
        "global": {GLOBAL_OUTPUT: global_features.numpy()},
        "local": dict(zip(LOCAL_OUTPUTS, (local_features.numpy(), local_skip.numpy()))),
        "fusion": {FUSION_OUTPUT: logits.numpy()},
    }
    return feeds, references


# ---------------------------------------------------------------- whole bundle


def verify_bundle(
    bundle_dir: str | Path,
    image: str | Path | np.ndarray | None = None,
    checkpoint: Any = None,
    options: VerifyOptions | None = None,
) -> VerifyReport:
    """Per-graph comparison and whole-image pixel agreement of a bundle's fp32 graphs vs PyTorch.

    ``checkpoint``: a path or a GLSNet model; by default the checkpoint named in the manifest.
    """
    import torch

    from glsnet.inference import predict_mask

    options = options or VerifyOptions()
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    model = load_reference_model(bundle_dir, manifest, checkpoint)
    pixels, description = read_image(image, options)
    normalized = normalize(pixels, manifest.normalization)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    feeds, references = graph_feeds(model, normalized, options.batch_size)
    timings["graphs, torch"] = time.perf_counter() - start
    graphs = {}
    for role in GRAPH_ROLES:
        start = time.perf_counter()
        candidate = run_graph(bundle_dir, role, feeds[role], options.threads)
        timings[f"{role} graph, onnxruntime"] = time.perf_counter() - start
        graphs[role] = compare_outputs(references[role], candidate, atol=scaled_tolerances(references[role], options), rtol=0.0)
    agreement = None
    if options.whole_image:
        from runtime.segmenter import Segmenter

        start = time.perf_counter()
        with torch.no_grad():
            reference = predict_mask(model, normalized, options.batch_size)
        timings["whole image, torch"] = time.perf_counter() - start
        start = time.perf_counter()
        with Segmenter(bundle_dir, precision="fp32", batch_size=options.batch_size, threads=options.threads) as segmenter:
            candidate = segmenter.segment(pixels)
        timings["whole image, onnxruntime"] = time.perf_counter() - start
        agreement = pixel_agreement(reference, candidate)
    return VerifyReport(
        image=description,
        image_size=(int(pixels.shape[0]), int(pixels.shape[1])),
        graphs=graphs,
        pixel_agreement=agreement,
        options=options,
        timings=timings,
    )
