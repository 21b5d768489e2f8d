"""An image's memory plan on ONNX Runtime's CPU provider from the manifest and the graph file sizes, no session loaded.

The batch driver reserves each worker's memory from the plan of its largest scene, but it holds
only the bundle's manifest (the bundle may sit in object storage, and building sessions on the
head is what the driver must not do). Each graph is stood in for by a backend that answers its
tensors from the manifest and prices its memory as the ONNX Runtime backend does (the pipeline's
activation factors, weights from the file size); the CPU Scheduler then plans over them exactly as
it plans over the loaded sessions, so the two plans are the same (tested).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from runtime.algorithm.global_features import GlobalStage
from runtime.algorithm.memory_budget import MemoryPlan
from runtime.algorithm.scheduler import Scheduler
from runtime.backends.base import TensorMeta
from runtime.backends.onnxruntime import RESIDENT_WEIGHT_FACTOR, OnnxRuntimeBackend, OrtOptions
from runtime.bundle.loader import graph_files
from runtime.bundle.manifest import GraphSpec, Manifest, TensorSpec, with_min_overlap
from runtime.engines.onnxruntime_pipeline import ACTIVATION_FACTORS
from runtime.errors import BundleError, GlsnetError
from runtime.options import SegmenterOptions


class DeclaredGraph(OnnxRuntimeBackend):
    """An ONNX Runtime graph known only by its manifest entry and its file's size: it plans, it never runs."""

    def __init__(self, spec: GraphSpec, file: str, file_bytes: int, options: OrtOptions) -> None:
        super().__init__(file, options)
        self.spec = spec
        self.file_bytes = file_bytes

    def _activate_impl(self) -> None:
        self._inputs = {t.name: _meta(t) for t in self.spec.inputs}
        self._outputs = {t.name: _meta(t) for t in self.spec.outputs}

    def _infer_impl(self, feed):
        raise GlsnetError(f"{self.model_path}: a declared graph only plans; load the bundle to run it")

    @property
    def weight_bytes(self) -> int:
        return int(self.file_bytes * RESIDENT_WEIGHT_FACTOR)


def declared_plan(manifest: Manifest, options: SegmenterOptions, file_bytes: Mapping[str, int], height: int, width: int) -> MemoryPlan:
    """The plan a Segmenter with ``options`` (ONNX Runtime, CPU provider) makes for a ``height`` x ``width`` image.

    ``file_bytes``: the size of each graph file, keyed by its bundle-relative path (runtime.bundle.loader.graph_files).
    """
    if options.engine != "onnxruntime" or options.ort_provider != "cpu":
        raise GlsnetError("the declared plan models ONNX Runtime's CPU provider only")
    files = graph_files(manifest, options.precision)

    def declared(role: str, spec: GraphSpec, file: str) -> DeclaredGraph:
        if file not in file_bytes:
            raise BundleError(f"{file}: named in the manifest but its size is unknown (missing from the bundle?)")
        ort = OrtOptions(threads=options.threads, activation_factor=ACTIVATION_FACTORS[role])
        return DeclaredGraph(spec, file, file_bytes[file], ort).activate()

    whole, local, fusion = (declared(role, manifest.graph(role, options.precision), files.roles[role][0]) for role in ("global", "local", "fusion"))
    stages = tuple(GlobalStage(declared("global stage", s.graph, file), s.stride, s.halo) for (file, _), s in files.stages)
    scheduler = Scheduler(with_min_overlap(manifest, options.min_overlap), whole, local, fusion, global_stages=stages)
    return scheduler.plan(scheduler.grid_for(height, width), options.schedule())


def _meta(tensor: TensorSpec) -> TensorMeta:
    try:
        dtype = np.dtype(tensor.dtype)
    except TypeError:  # bfloat16: numpy has none; planning reads shapes, not types
        dtype = np.dtype(np.float32)
    return TensorMeta(tensor.name, dtype, tuple(tensor.shape))
