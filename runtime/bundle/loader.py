"""Opening a bundle: its manifest, and checksum-verified paths of the graphs for one precision.

The graph set for a precision comes from ``manifest.graphs``; when ``manifest.engines`` holds an
ONNX Runtime build of that precision (graphs optimized offline by ``glsnet-export build``), its
files are preferred. Every file is checked against its sha256 before a session may load it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runtime.bundle.manifest import (
    GRAPH_ROLES,
    PRECISIONS,
    EngineSpec,
    GlobalStageSpec,
    Manifest,
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
        return ort_engine(self.manifest, precision)

    def graph_set(self, precision: str = "fp32") -> GraphSet:
        """Verified graph files for ``precision`` (optimized ONNX Runtime graphs preferred)."""
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        with self._lock:
            if precision not in self._graph_sets:
                self._graph_sets[precision] = self._verify(precision)
            return self._graph_sets[precision]

    def _verify(self, precision: str) -> GraphSet:
        files = graph_files(self.manifest, precision, str(self.directory))
        # hashing is one core's work per file and hashlib lets go of the GIL: the files are checked side by side
        wanted = [files.roles[role] for role in GRAPH_ROLES] + [file for file, _ in files.stages]
        with ThreadPoolExecutor(max_workers=min(len(wanted), os.cpu_count() or 1), thread_name_prefix="glsnet-verify") as pool:
            checked = list(pool.map(lambda file: verify_file(self.directory, *file), wanted))
        paths = dict(zip(GRAPH_ROLES, checked))
        stages = tuple(StageGraph(path, s.stride, s.halo) for path, (_, s) in zip(checked[len(GRAPH_ROLES) :], files.stages))
        return GraphSet(precision, paths["global"], paths["local"], paths["fusion"], files.source, stages)

    @property
    def tensorrt_cache_dir(self) -> Path:
        """Where ONNX Runtime's TensorRT execution provider keeps its engine cache for this bundle."""
        return self.directory / TENSORRT_EP_CACHE


@dataclass(frozen=True)
class GraphFiles:
    """The files a precision runs on, as the manifest names them (bundle-relative path, sha256): nothing read yet."""

    roles: dict[str, tuple[str, str]]  # global / local / fusion
    stages: tuple[tuple[tuple[str, str], GlobalStageSpec], ...]  # the global stage graphs in order (empty: the single global graph)
    source: str  # "graphs" or "onnxruntime engine in <dir>"

    def all(self) -> list[tuple[str, str]]:
        return [*self.roles.values(), *(file for file, _ in self.stages)]


def graph_files(manifest: Manifest, precision: str, where: str = "the bundle") -> GraphFiles:
    """Which files the runtime loads for ``precision`` (an ONNX Runtime build preferred), from the manifest alone.

    A driver that only has the manifest (runtime.batch) sizes the graphs from this without fetching them.
    """
    engine = ort_engine(manifest, precision)
    specs = manifest.global_stages.get(precision, ())
    if engine is None:
        roles = {role: (g.file, g.sha256) for role in GRAPH_ROLES for g in (manifest.graph(role, precision),)}
        return GraphFiles(roles, tuple(((s.graph.file, s.graph.sha256), s) for s in specs), "graphs")
    missing = [r for r in GRAPH_ROLES if r not in engine.files]
    if missing:
        raise BundleError(
            f"{where}: the onnxruntime {precision} build in {engine.directory} lacks {missing}; "
            f"rebuild it with: glsnet-export build {where} --{precision}"
        )
    keys = [stage_engine_key(i) for i in range(len(specs))]
    stages = ()  # a build without its stages runs the single global graph
    if specs and all(k in engine.files for k in keys):
        stages = tuple((_engine_file(engine, k, where), s) for k, s in zip(keys, specs))
    roles = {role: _engine_file(engine, role, where) for role in GRAPH_ROLES}
    return GraphFiles(roles, stages, f"onnxruntime engine in {engine.directory}")


def ort_engine(manifest: Manifest, precision: str) -> EngineSpec | None:
    """The ONNX Runtime build of ``precision``'s graphs, if ``glsnet-export build`` wrote one."""
    return next((e for e in manifest.engines if e.target == ORT_TARGET and e.precision == precision), None)


def _engine_file(engine: EngineSpec, key: str, where: str) -> tuple[str, str]:
    entry = engine.files[key]
    if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
        raise BundleError(f"{where}: engines entry for {key} must be {{'file', 'sha256'}}, got {entry!r}")
    relative = Path(entry["file"])
    if not relative.parts[: len(Path(engine.directory).parts)] == Path(engine.directory).parts:
        relative = Path(engine.directory) / relative
    return str(relative), entry["sha256"]


def open_bundle(bundle: "str | Path | Bundle") -> Bundle:
    """A Bundle from a directory (or the Bundle itself)."""
    return bundle if isinstance(bundle, Bundle) else Bundle(bundle)
