"""Opening a bundle: its manifest, and checksum-verified paths of the graphs for one precision.

The graph set for a precision comes from ``manifest.graphs``; when ``manifest.engines`` holds an
ONNX Runtime build of that precision (graphs optimized offline by ``glsnet-export build``), its
files are preferred. Every file is checked against its sha256 before a session may load it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from runtime.bundle.manifest import (
    GRAPH_ROLES,
    PRECISIONS,
    EngineSpec,
    Manifest,
    graph_path,
    read_manifest,
    verify_file,
)
from runtime.errors import BundleError, InputError

ORT_TARGET = "onnxruntime"
TENSORRT_EP_CACHE = Path("engines") / "ort-tensorrt-cache"


def stage_engine_key(index: int) -> str:
    """The key of global stage graph ``index`` in an ONNX Runtime engine's ``files``."""
    return f"global_stage{index}"


@dataclass(frozen=True)
class StageGraph:
    """One verified stage graph of the global branch (see manifest.GlobalStageSpec)."""

    path: Path
    stride: int
    halo: int


@dataclass(frozen=True)
class GraphSet:
    """The three graph files of one precision, verified, and where they came from."""

    precision: str
    global_graph: Path
    local_graph: Path
    fusion_graph: Path
    source: str  # "graphs" or "onnxruntime engine in <dir>"
    global_stages: tuple[StageGraph, ...] = ()  # empty: the global branch runs as its single graph

    def path(self, role: str) -> Path:
        return {"global": self.global_graph, "local": self.local_graph, "fusion": self.fusion_graph}[role]


class Bundle:
    """A bundle directory and its validated manifest; graph checksums are verified once per precision."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest: Manifest = read_manifest(self.directory)
        self._graph_sets: dict[str, GraphSet] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Bundle({str(self.directory)!r})"

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if p in self.manifest.graphs)

    def ort_engine(self, precision: str) -> EngineSpec | None:
        """The ONNX Runtime build of ``precision``'s graphs, if ``glsnet-export build`` wrote one."""
        for engine in self.manifest.engines:
            if engine.target == ORT_TARGET and engine.precision == precision:
                return engine
        return None

    def graph_set(self, precision: str = "fp32") -> GraphSet:
        """Verified graph files for ``precision`` (optimized ONNX Runtime graphs preferred)."""
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        with self._lock:
            if precision not in self._graph_sets:
                self._graph_sets[precision] = self._verify(precision)
            return self._graph_sets[precision]

    def _verify(self, precision: str) -> GraphSet:
        engine = self.ort_engine(precision)
        if engine is not None:
            missing = [r for r in GRAPH_ROLES if r not in engine.files]
            if missing:
                raise BundleError(
                    f"{self.directory}: the onnxruntime {precision} build in {engine.directory} lacks {missing}; "
                    f"rebuild it with: glsnet-export build {self.directory} --{precision}"
                )
            paths = {role: self._engine_file(engine, role) for role in GRAPH_ROLES}
            source = f"onnxruntime engine in {engine.directory}"
            specs = self.manifest.global_stages.get(precision, ())
            keys = [stage_engine_key(i) for i in range(len(specs))]
            stages: tuple[StageGraph, ...] = ()  # a build without its stages runs the single global graph
            if specs and all(k in engine.files for k in keys):
                stages = tuple(StageGraph(self._engine_file(engine, k), s.stride, s.halo) for k, s in zip(keys, specs))
        else:
            paths = {role: graph_path(self.directory, self.manifest.graph(role, precision)) for role in GRAPH_ROLES}
            source = "graphs"
            stages = tuple(
                StageGraph(graph_path(self.directory, s.graph), s.stride, s.halo) for s in self.manifest.global_stages.get(precision, ())
            )
        return GraphSet(precision, paths["global"], paths["local"], paths["fusion"], source, stages)

    def _engine_file(self, engine: EngineSpec, role: str) -> Path:
        entry = engine.files[role]
        if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            raise BundleError(f"{self.directory}: engines entry for {role} must be {{'file', 'sha256'}}, got {entry!r}")
        relative = Path(entry["file"])
        if not relative.parts[: len(Path(engine.directory).parts)] == Path(engine.directory).parts:
            relative = Path(engine.directory) / relative
        return verify_file(self.directory, str(relative), entry["sha256"])

    @property
    def tensorrt_cache_dir(self) -> Path:
        """Where ONNX Runtime's TensorRT execution provider keeps its engine cache for this bundle."""
        return self.directory / TENSORRT_EP_CACHE


def open_bundle(bundle: "str | Path | Bundle") -> Bundle:
    """A Bundle from a directory (or the Bundle itself)."""
    return bundle if isinstance(bundle, Bundle) else Bundle(bundle)
