"""The bundle's graphs on ONNX Runtime (CPU, CUDA or TensorRT execution provider), scheduled with threads.

One session per graph (on the CPU at fp32 the local and fusion graphs share one, joined: JOINED_PRECISIONS),
created when the pipeline opens (on first use) and reused for every image; the CPU Scheduler runs them, and
may serve several threads at once (sessions are thread-safe; the lazy creation is locked).
"""

from __future__ import annotations

import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from runtime.algorithm.global_features import GlobalStage
from runtime.algorithm.memory_budget import MemoryPlan
from runtime.algorithm.patch_schedule import ROLES, RowBand
from runtime.algorithm.scheduler import Scheduler
from runtime.backends.graph_join import GraphJoinError
from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from runtime.backends.onnxruntime_joined import JoinedOnnxRuntimeBackend
from runtime.bundle.loader import Bundle
from runtime.bundle.manifest import LOCAL_OUTPUTS, with_min_overlap
from runtime.engines.graph_contract import check_graph
from runtime.image_io.readers import ArraySource, ImageSource
from runtime.process_memory.heap_release import release_free_heap

if TYPE_CHECKING:
    from runtime.options import SegmenterOptions

# Working memory of each graph as a multiple of its input + output bytes (see OnnxRuntimeBackend.memory_estimate),
# measured with ONNX Runtime 1.32 on the CPU for the default configuration (peak RSS of one run minus RSS
# before it, glibc's mmap threshold fixed): single global graph 6-8x, global stages 1.3-2.8x (stage 0 on
# 560 x 2448 rows: 2.84x), local 5.6x, fusion 4.0x at batch 1 to 8.1x at batch 6; rounded up.
ACTIVATION_FACTORS = {"global": 8.5, "global stage": 3.0, "local": 6.0, "fusion": 8.5}
# Precisions whose local and fusion graphs run joined in one session on the CPU (runtime.backends.graph_join).
# Measured on the paper-size bundle at 2448 x 2448, 2 cores, alternated runs, the same masks: fp32 peak RSS 710-740
# -> 623-626 MB, wall time within the noise (two sessions 14.8-15.2 s, joined 14.6-15.5 s). int8 peaked higher joined
# (494-508 -> 542 MB), at the same speed. fp16 gave other logits: the CPU provider has few fp16 kernels and places casts around
# them, and in the joined graph it placed two more (fp32 -> fp16 -> fp32 after both LayerNorms: logits 2.7e-5 apart,
# 0.006% of the argmax pixels changed), so glsnet-cpp, which runs the two graphs, would no longer give the same mask.
JOINED_PRECISIONS = ("fp32",)
# Precisions whose activations the CPU sessions keep in a shared arena when SegmenterOptions.keep_activations is on
# (runtime.backends.shared_arena). Paper-size bundle, first DeepGlobe image, 2 cores, alternated whole runs of
# `glsnet run`, the same masks: fp32 14.14-15.21 s against 14.58-15.93 s (five pairs, faster in each; kernel time
# 1.0-1.2 s against 2.1-3.0 s), peak RSS 668-678 MB against 624-638 MB. int8 (stop 36): 6.31-7.35 s against
# 7.19-7.52 s (five pairs, faster in each; kernel time 0.7-1.2 s against 1.7-2.2 s), peak RSS 569-601 MB against
# 492-519 MB, still below fp32's. fp16 was not clearly faster (15.0, 15.2 and 17.4 s against 15.9, 19.0 and 17.1 s;
# at stop 36 15.15-15.32 s against 15.21-15.63 s) and peaked at 773-829 MB against 703-735 MB, further above fp32's:
# it maps its activations afresh.
KEPT_ACTIVATION_PRECISIONS = ("fp32", "int8")

log = logging.getLogger(__name__)


def keeps_activations(options: "SegmenterOptions") -> bool:
    """Whether the CPU sessions share one arena that keeps their activations: asked for, at a precision where that
    was measured to pay, and with no memory budget (the plan's activation factors were measured without it)."""
    return options.keep_activations and options.precision in KEPT_ACTIVATION_PRECISIONS and options.max_memory is None


def joins_patch_graphs(options: "SegmenterOptions") -> bool:
    """Whether the local and fusion graphs run as one joined session: on the CPU provider, at JOINED_PRECISIONS."""
    return options.join_patch_graphs and options.ort_provider == "cpu" and options.precision in JOINED_PRECISIONS


class ManifestCheckedBackend(OnnxRuntimeBackend):
    """A session checked against the manifest's tensors each time it is created, so a graph loaded on demand (the
    single global graph beside stage graphs) is checked as the others are."""

    def __init__(self, model_path: Path, options: OrtOptions, check: Callable[[OnnxRuntimeBackend], None]) -> None:
        super().__init__(model_path, options)
        self._check = check

    def activate(self) -> "ManifestCheckedBackend":
        if not self.is_active:
            super().activate()
            try:
                self._check(self)
            except BaseException:
                self.deactivate()
                raise
        return self


def activate_side_by_side(first: OnnxRuntimeBackend, rest: tuple[OnnxRuntimeBackend, ...], parallel: bool) -> None:
    """Create ``first``'s session on a second thread while ``rest`` are created one by one on this one (``parallel``).

    ONNX Runtime lets go of the GIL while it builds a session, and the local graph's takes about as long as all
    the others together: paper-size bundle, 2 cores, 0.66 s one after another, 0.25 s side by side. Only on the
    CPU provider: the GPU providers' sessions take device memory (TensorRT's build an engine each), so they are
    created one at a time.
    """
    if not parallel:
        for backend in (first, *rest):
            backend.activate()
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="glsnet-session") as pool:
        pending = pool.submit(first.activate)
        for backend in rest:
            backend.activate()
        pending.result()


class OnnxRuntimePipeline:
    """The pipeline interface (runtime.engines.pipeline) on ONNX Runtime sessions and the CPU Scheduler."""

    def __init__(self, bundle: Bundle, options: "SegmenterOptions") -> None:
        self.bundle = bundle
        self.options = options
        self.manifest = with_min_overlap(bundle.manifest, options.min_overlap)  # the grid's geometry, --min-overlap applied
        self.graphs = bundle.graph_set(options.precision)
        self._schedule = options.schedule()
        self._scheduler: Scheduler | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- lifecycle
    def open(self) -> "OnnxRuntimePipeline":
        """Create the sessions (three graphs, or the global stages in place of the single global graph); a second open warns."""
        with self._lock:
            if self._scheduler is not None:
                warnings.warn("the ONNX Runtime pipeline is already open; open() did nothing", RuntimeWarning, stacklevel=2)
                return self
            self._scheduler = self._make_scheduler()
        return self

    @property
    def scheduler(self) -> Scheduler:
        """The activated backends' scheduler, opened on first use."""
        with self._lock:
            if self._scheduler is None:
                self._scheduler = self._make_scheduler()
            return self._scheduler

    def close(self) -> None:
        with self._lock:
            if self._scheduler is not None:
                scheduler = self._scheduler
                for backend in (scheduler.global_backend, scheduler.local_backend, scheduler.fusion_backend, scheduler.patch_backend):
                    if backend is not None:
                        backend.deactivate()
                for stage in scheduler.global_stages:
                    stage.backend.deactivate()
            self._scheduler = None

    def _make_scheduler(self) -> Scheduler:
        stages = tuple(GlobalStage(self._backend("global stage", g.path), g.stride, g.halo) for g in self.graphs.global_stages)
        whole, local, fusion = (self._backend(role) for role in ("global", "local", "fusion"))
        # with stage graphs the single global graph is loaded only if something asks for it (its weights would be a
        # second resident copy of ResNet18's, and creating its session cost 0.1-0.2 s of every start)
        others = (*(stage.backend for stage in stages), *(() if stages else (whole,)))
        cpu = self.options.ort_provider == "cpu"
        patch = self._patch_backend() if joins_patch_graphs(self.options) else None
        try:
            activate_side_by_side(patch or local, (*others, *(() if patch else (fusion,))), cpu)
        except GraphJoinError as exc:
            log.warning("running the local and fusion graphs one after the other: %s", exc)
            patch = None
            activate_side_by_side(local, (fusion,), cpu)
        if patch is not None:
            self._check_patch(patch)
        scheduler = Scheduler(self.manifest, whole, local, fusion, global_stages=stages, patch_backend=patch)
        release_free_heap()  # the parsed graphs and load-time copies: about 170 MB on the default bundle
        return scheduler

    def _patch_backend(self) -> JoinedOnnxRuntimeBackend:
        """The local and fusion graphs joined in one session (not yet activated)."""
        return JoinedOnnxRuntimeBackend(self.graphs.local_graph, self.graphs.fusion_graph, LOCAL_OUTPUTS, self._ort_options("local"))

    def _check_patch(self, patch: JoinedOnnxRuntimeBackend) -> None:
        """Both graphs of the joined session against the manifest, as their own sessions would be: the joints are the
        local graph's outputs and the fusion graph's inputs (the join checked that both graphs give them one type)."""
        inputs, outputs, joints = patch.input_metadata(), patch.output_metadata(), patch.joint_metadata()
        precision = self.options.precision
        check_graph(self.manifest, precision, "local", inputs, joints, self.graphs.local_graph)
        check_graph(self.manifest, precision, "fusion", {**inputs, **joints}, outputs, self.graphs.fusion_graph)

    def _ort_options(self, role: str) -> OrtOptions:
        o = self.options
        return OrtOptions(
            device=o.ort_provider,
            threads=o.threads,
            spinning=o.thread_spinning,
            shared_arena=keeps_activations(o),
            fp16=o.precision == "fp16",
            tensorrt_cache_dir=self.bundle.tensorrt_cache_dir / o.precision if o.ort_provider == "tensorrt" else None,
            activation_factor=ACTIVATION_FACTORS[role],
        )

    def _backend(self, role: str, path: Path | None = None) -> OnnxRuntimeBackend:
        """The (not yet activated) backend of ``role``'s graph, or of the stage graph at ``path``."""
        o = self.options
        ort_options = self._ort_options(role)
        if role not in ROLES:
            return OnnxRuntimeBackend(path, ort_options)
        return ManifestCheckedBackend(path or self.graphs.path(role), ort_options, lambda b: check_graph(
            self.manifest, o.precision, role, b.input_metadata(), b.output_metadata(), b.model_path))

    # -------------------------------------------------------------- images
    def plan(self, height: int, width: int, source_bytes: int = 0) -> MemoryPlan:
        scheduler = self.scheduler
        return scheduler.plan(scheduler.grid_for(height, width), self._schedule, source_bytes)

    def iter_rows(
        self, source: ImageSource, progress: Callable[[int, int], None] | None = None, *, palette: np.ndarray | None = None
    ) -> Iterator[RowBand]:
        """Finished mask rows of ``source``, top to bottom (see Scheduler.iter_rows). ``palette`` is not used:
        on the CPU the writers colour the rows (runtime.image_io.writers)."""
        scheduler = self.scheduler
        source_bytes = source.array.nbytes if isinstance(source, ArraySource) else 0
        plan = scheduler.plan(scheduler.grid_for(source.height, source.width), self._schedule, source_bytes)
        return scheduler.iter_rows(source, self._schedule, progress, plan)
