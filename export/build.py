"""``glsnet-export build``: convert a bundle's graphs to FP16 or INT8, gate them, then build engines.

Order of work, and what a failure leaves behind:
1. The candidate graphs are written into a staging directory inside the bundle directory (hard links
   to the fp32 graphs and the new graphs under ``<precision>/``).
2. The accuracy gate compares them with fp32 on the held-back calibration data (ONNX Runtime, CPU).
   A failed gate removes the staging directory and raises AccuracyGateError: the bundle is as it was.
3. On success (or with ``force``) the graphs move to ``<precision>/`` in the bundle and are registered
   in manifest.graphs[precision] with their sha256 and the gate's report in manifest.accuracy; the
   precision's graph entry is dropped from the manifest before its files are replaced, so a crash in
   between leaves a bundle whose graph checksums all match (its old accuracy report for that
   precision may remain until the new one is written).
4. Engines: TensorRT when asked (or ``auto`` with TensorRT importable), via
   export.tensorrt.tensorrt_build; otherwise ONNX Runtime graphs optimised offline for the CPU
   (``engines/onnxruntime_cpu/<precision>/<role>.onnx``), recorded as an EngineSpec.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from calibration.accuracy_gate import (
    GateReport,
    GateThresholds,
    accuracy_table,
    chain_scores,
    compare_graphs,
    data_problems,
    graph_table,
    image_scores,
    raise_if_failed,
    scene_masks,
)
from calibration.data_readers import TileFeeds, cpu_session, fp32_sessions
from calibration.fp16 import FP16Options, convert_graph_to_fp16, kept_nodes_summary
from calibration.int8 import Int8Options, build_int8_graphs
from calibration.integer_kernels import (
    DISABLED_OPTIMIZERS,
    count_kernels,
    optimise_for_cpu,
)
from calibration.tensorrt_int8 import FP16_SCALE_OPSET, TENSORRT_GRAPH_DIR, write_tensorrt_int8_graph
from calibration.tiles import (
    CALIBRATION,
    HOLDOUT,
    TileOptions,
    TileSet,
    bundle_tiles,
    sample_tiles,
)
from runtime.bundle.loader import stage_engine_key
from runtime.bundle.manifest import (
    GRAPH_ROLES,
    EngineSpec,
    GlobalStageSpec,
    GraphSpec,
    Manifest,
    TensorSpec,
    graph_path,
    read_manifest,
    sha256_file,
    write_manifest,
)
from runtime.errors import BundleError, InputError
from runtime.optional_import import available, require

log = logging.getLogger(__name__)

ORT_ENGINE_DIR = "engines/onnxruntime_cpu"
STAGING_PREFIX = ".build-"


class BuildTarget(str, enum.Enum):
    AUTO = "auto"  # TensorRT when it imports, else ONNX Runtime
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``glsnet-export build`` does, as one value (the CLI parses its flags into this)."""

    precision: str
    target: BuildTarget = BuildTarget.AUTO
    force: bool = False  # keep graphs that fail the gate
    thresholds: GateThresholds = GateThresholds()
    fp16: FP16Options = FP16Options()
    int8: Int8Options = Int8Options()
    whole_images: bool = True  # gate on held-back scenes through the runtime's Segmenter
    threads: int | None = None  # ONNX Runtime intra-op threads for the checks
    tensorrt: Any = None  # export.tensorrt.tensorrt_build.TensorRTBuildOptions; None: its defaults
    synthetic_gate_size: int = 768  # fp16 without calibration tiles: the gate's synthetic scenes

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8"):
            raise InputError(f"build precision {self.precision!r}: choose --fp16 or --int8")
        if not isinstance(self.target, BuildTarget):
            try:
                object.__setattr__(self, "target", BuildTarget(self.target))
            except ValueError:
                raise InputError(f"--target {self.target!r}: choose auto, tensorrt or onnxruntime") from None


@dataclass
class BuildResult:
    precision: str
    graphs: dict[str, GraphSpec]
    report: GateReport
    engine: EngineSpec | None
    messages: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- staging


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _describe(bundle_dir: Path, relative: str, fp32: GraphSpec, precision: str) -> GraphSpec:
    return GraphSpec(
        file=relative,
        precision=precision,
        sha256=sha256_file(bundle_dir / relative),
        inputs=tuple(TensorSpec(t.name, t.dtype, t.shape) for t in fp32.inputs),
        outputs=tuple(TensorSpec(t.name, t.dtype, t.shape) for t in fp32.outputs),
        opset=fp32.opset,
    )


@contextlib.contextmanager
def staging_bundle(bundle_dir: Path, manifest: Manifest, precision: str):
    """A throw-away bundle beside the real one: the fp32 graphs and global stage graphs (hard links) and room for candidates."""
    stage = bundle_dir / f"{STAGING_PREFIX}{precision}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        specs = [manifest.graph(role, "fp32") for role in GRAPH_ROLES]
        specs += [s.graph for s in manifest.global_stages.get("fp32", ())]
        for spec in specs:
            (stage / spec.file).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(graph_path(bundle_dir, spec), stage / spec.file)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------- gate data


def gate_tiles(bundle_dir: Path, manifest: Manifest, options: BuildOptions, say: Callable[[str], None]) -> TileSet:
    tiles = bundle_tiles(bundle_dir, manifest)
    if tiles is not None:
        return tiles
    if options.precision == "int8":
        raise BundleError(
            f"{bundle_dir}: INT8 needs calibration tiles and the bundle has none; "
            f"make them first with: glsnet-export calibrate {bundle_dir} IMAGES..."
        )
    from glsnet.data.synthetic import synthetic_scene

    size = options.synthetic_gate_size
    scenes = [synthetic_scene(size, size, seed=seed) for seed in (101, 102)]
    say(
        f"no calibration tiles in the bundle: the fp16 gate uses 2 seeded synthetic scenes of {size} px "
        f"(better: glsnet-export calibrate {bundle_dir} IMAGES...)"
    )
    return sample_tiles(
        [image for image, _ in scenes],
        manifest,
        TileOptions(count=16, holdout=32, holdout_fraction=0.5, scene_size=size, seed=0),
        labels=[labels for _, labels in scenes],
    )


# ---------------------------------------------------------------- conversion and gate


def _convert(stage: Path, manifest: Manifest, tiles: TileSet, options: BuildOptions, reference: dict, judge, say) -> dict[str, Any]:
    """Write the candidate graphs into ``stage/<precision>/``; returns details for the report."""
    precision = options.precision
    fp32_paths = {role: stage / manifest.graph(role, "fp32").file for role in GRAPH_ROLES}
    stage_paths = tuple(stage / s.graph.file for s in manifest.global_stages.get("fp32", ()))
    out_dir = stage / precision
    if precision == "fp16":
        results = [convert_graph_to_fp16(fp32_paths[role], out_dir / f"{role}.onnx", options.fp16) for role in GRAPH_ROLES]
        for path in stage_paths:
            convert_graph_to_fp16(path, out_dir / path.name, options.fp16)
        kept = {role: r.fp32_nodes for role, r in zip(GRAPH_ROLES, results)}
        say(f"fp16: converted in {sum(r.seconds for r in results):.1f} s; kept in fp32: {kept_nodes_summary(results)}")
        if stage_paths:
            say(f"fp16: {len(stage_paths)} global stage graphs converted")
        return {"fp32_nodes": {role: sorted(nodes) for role, nodes in kept.items()}, "kept_summary": kept_nodes_summary(results)}
    # room for every calibration batch's fp32 local outputs, kept from the local branch's calibration for the fusion's
    calibration = TileFeeds(tiles, manifest, CALIBRATION, reference, cache_bytes=CALIBRATION_CACHE_BYTES)
    holdout = TileFeeds(tiles, manifest, HOLDOUT, reference)
    built = build_int8_graphs(
        fp32_paths, out_dir, calibration, holdout, options.int8, options.thresholds.int8, say, judge, global_stages=stage_paths
    )
    if stage_paths and not built.stages:
        say("int8: no global stage graphs (ModelOpt quantizes the global graph): the runtime uses the single global graph")
    return {**built.summary(), "tensorrt_graphs": _tensorrt_int8_graphs(built.graphs, out_dir, holdout, options, say)}


CALIBRATION_CACHE_BYTES = 1 << 30  # paper size: 256 calibration patches' local outputs are about 0.9 GB
# Held-back tile batches the TensorRT int8 graphs are run on, on the CPU: fp16 graphs run slowly there
# (all 8 batches took 71 s of a paper-size build) and the figure is reported, not gated.
TENSORRT_CHECK_BATCHES = 2


def _tensorrt_int8_graphs(gated: dict[str, Path], out_dir: Path, holdout: TileFeeds, options: BuildOptions, say) -> dict[str, Any]:
    """The gated Q/DQ graphs carried into fp16 for TensorRT (calibration/tensorrt_int8.py), with their agreement on
    the first held-back tiles through ONNX Runtime on the CPU (reported, not gated: TensorRT's kernels differ from the
    CPU's anyway)."""
    start = time.perf_counter()
    results = {role: write_tensorrt_int8_graph(gated[role], out_dir / TENSORRT_GRAPH_DIR / f"{role}.onnx", options.fp16) for role in GRAPH_ROLES}
    agreement = None
    if holdout.batches:
        sessions = {role: cpu_session(result.path, options.threads or 0) for role, result in results.items()}
        agreement = chain_scores(holdout, sessions, max_batches=TENSORRT_CHECK_BATCHES).agreement
    checked = sum(len(indices) for _, indices in holdout.batches[:TENSORRT_CHECK_BATCHES])
    shown = "n/a" if agreement is None else f"{100 * agreement:.3f}% ({checked} held-back patches)"
    say(
        f"int8 for TensorRT: the Q/DQ graphs in fp16 (opset {FP16_SCALE_OPSET}, float16 scales) in {TENSORRT_GRAPH_DIR}/; "
        f"kept in fp32: {kept_nodes_summary(results.values())}; tile agreement on the CPU {shown} ({time.perf_counter() - start:.1f} s)"
    )
    return {
        "opset": FP16_SCALE_OPSET,
        "scale_type": "float16",
        "fp32_nodes": {role: sorted(r.fp32_nodes) for role, r in results.items()},
        "tile_agreement_cpu": agreement,
    }


def precision_stages(root: Path, manifest: Manifest, precision: str) -> tuple[GlobalStageSpec, ...]:
    """Manifest entries of the ``precision`` stage graphs under ``root`` (none unless every fp32 stage has one)."""
    specs = []
    for fp32 in manifest.global_stages.get("fp32", ()):
        relative = f"{precision}/{Path(fp32.graph.file).name}"
        if not (root / relative).is_file():
            return ()
        specs.append(GlobalStageSpec(graph=_describe(root, relative, fp32.graph, precision), stride=fp32.stride, halo=fp32.halo))
    return tuple(specs)


def _with_stages(manifest: Manifest, precision: str, stages: tuple[GlobalStageSpec, ...]) -> dict[str, tuple[GlobalStageSpec, ...]]:
    kept = {p: s for p, s in manifest.global_stages.items() if p != precision}
    return {**kept, precision: stages} if stages else kept


class SceneJudge:
    """Whole held-back scenes through the runtime, candidate vs fp32 (whose masks are computed once)."""

    def __init__(self, stage: Path, manifest: Manifest, tiles: TileSet, precision: str, threads: int | None) -> None:
        self.stage, self.manifest, self.tiles, self.precision, self.threads = stage, manifest, tiles, precision, threads
        self._reference: list | None = None
        self._last: tuple[tuple[str, ...], Any] | None = None  # (candidate digests, scores): the gate asks again for the same graphs

    def __call__(self, paths: dict[str, Path] | None = None):
        specs = _stage_specs(self.stage, self.manifest, self.precision)
        stages = _with_stages(self.manifest, self.precision, precision_stages(self.stage, self.manifest, self.precision))
        stages = {p: s for p, s in stages.items() if p in ("fp32", self.precision)}
        digests = tuple(spec.sha256 for spec in specs.values()) + tuple(s.graph.sha256 for s in stages.get(self.precision, ()))
        if self._last is not None and self._last[0] == digests:
            return self._last[1]
        graphs = {"fp32": self.manifest.graphs["fp32"], self.precision: specs}
        write_manifest(self.stage, self.manifest.replace(graphs=graphs, global_stages=stages, engines=(), accuracy={}))
        if self._reference is None:
            self._reference = scene_masks(self.stage, "fp32", self.tiles, self.threads)
        candidate = scene_masks(self.stage, self.precision, self.tiles, self.threads)
        scores = image_scores(self._reference, candidate, self.tiles, self.manifest)
        self._last = (digests, scores)
        return scores


def run_gate(stage: Path, manifest: Manifest, tiles: TileSet, options: BuildOptions, reference: dict, details: dict, judge) -> GateReport:
    """Per-graph statistics and the tile chain on held-back tiles; whole held-back scenes via the Segmenter."""
    start = time.perf_counter()
    precision = options.precision
    holdout = TileFeeds(tiles, manifest, HOLDOUT, reference)
    threads = options.threads or 0
    candidate = {role: cpu_session(stage / precision / f"{role}.onnx", threads) for role in GRAPH_ROLES}
    graphs = compare_graphs(holdout, candidate) if holdout.batches else {}
    tiles_scores = chain_scores(holdout, candidate) if holdout.batches else None
    del candidate
    return GateReport(
        precision=precision,
        thresholds=options.thresholds.of(precision),
        images=judge() if judge is not None else None,
        tiles=tiles_scores,
        graphs=graphs,
        problems=data_problems(tiles, precision),
        forced=options.force,
        details=details,
        seconds=time.perf_counter() - start,
    )


def _stage_specs(stage: Path, manifest: Manifest, precision: str) -> dict[str, GraphSpec]:
    return {
        role: _describe(stage, f"{precision}/{role}.onnx", manifest.graph(role, "fp32"), precision) for role in GRAPH_ROLES
    }


# ---------------------------------------------------------------- promotion


def promote(bundle_dir: Path, stage: Path, precision: str, report: GateReport, details: dict) -> Manifest:
    """Move the staged graphs (and caches) into the bundle and register them; see the module docstring."""
    manifest = read_manifest(bundle_dir)
    graphs = {p: roles for p, roles in manifest.graphs.items() if p != precision}
    engines = tuple(e for e in manifest.engines if e.precision != precision)  # built from the old graphs
    if precision in manifest.graphs or len(engines) != len(manifest.engines):
        write_manifest(bundle_dir, manifest.replace(graphs=graphs, engines=engines, global_stages=_with_stages(manifest, precision, ())))
    target = bundle_dir / precision
    target.mkdir(exist_ok=True)
    staged_stages = bool(precision_stages(stage, manifest, precision))
    for fp32 in manifest.global_stages.get("fp32", ()):  # stage graphs of an older build must not be registered again
        (target / Path(fp32.graph.file).name).unlink(missing_ok=True)
    for path in sorted((stage / precision).iterdir()):
        if path.is_file():
            os.replace(path, target / path.name)
        elif path.name == TENSORRT_GRAPH_DIR:  # int8: the TensorRT graphs, replaced as a whole
            shutil.rmtree(target / path.name, ignore_errors=True)
            os.replace(path, target / path.name)
    specs = {
        role: _describe(bundle_dir, f"{precision}/{role}.onnx", manifest.graph(role, "fp32"), precision) for role in GRAPH_ROLES
    }
    accuracy = {**manifest.accuracy, precision: report.as_dict()}
    calibration = dict(manifest.calibration or {})
    if precision == "int8":
        calibration.update(_int8_calibration_entry(bundle_dir, manifest, details))
    stages = _with_stages(manifest, precision, precision_stages(bundle_dir, manifest, precision) if staged_stages else ())
    updated = manifest.replace(
        graphs={**graphs, precision: specs}, engines=engines, accuracy=accuracy, calibration=calibration or None, global_stages=stages
    )
    write_manifest(bundle_dir, updated)
    return updated


def _int8_calibration_entry(bundle_dir: Path, manifest: Manifest, details: dict) -> dict:
    caches = {}
    for role in GRAPH_ROLES:
        relative = f"int8/{role}.calib.cache"
        caches[role] = {"file": relative, "sha256": sha256_file(bundle_dir / relative)}
    tiles = (manifest.calibration or {}).get("tiles", {})
    graphs = {}
    for role in GRAPH_ROLES:
        relative = f"int8/{TENSORRT_GRAPH_DIR}/{role}.onnx"
        graphs[role] = {"file": relative, "sha256": sha256_file(bundle_dir / relative)}
    return {
        "int8": {
            "method": details.get("method"),
            "tensorrt_caches": caches,
            "tensorrt_graphs": graphs,
            "tensorrt_graph_format": "the gated Q/DQ graph converted to fp16 (opset 19, float16 scales) for strongly typed TensorRT builds",
            "cache_format": "TensorRT calibration cache: TRT-<version>-EntropyCalibration2, scale = amax/127 (big-endian float32 hex)",
            "excluded_nodes": details.get("excluded_nodes", {}),
            "tiles_sha256": tiles.get("sha256"),
        }
    }


# ---------------------------------------------------------------- engines


def resolve_target(target: BuildTarget) -> BuildTarget:
    if target == BuildTarget.AUTO:
        return BuildTarget.TENSORRT if available("tensorrt") else BuildTarget.ONNXRUNTIME
    return target


def build_onnxruntime_engines(bundle_dir: Path, precision: str, say: Callable[[str], None] = log.info) -> EngineSpec:
    """Graphs optimised offline by ONNX Runtime (extended level: portable across x86/ARM CPUs), in the bundle.

    Q/DQ graphs come out with integer kernels (calibration/integer_kernels.py); the float Conv and
    MatMul nodes each engine still holds are printed and recorded in the engine's profile.
    """
    ort = require("onnxruntime", "the ONNX Runtime build")
    from runtime.atomic_file import atomic_path

    manifest = read_manifest(bundle_dir)
    directory = f"{ORT_ENGINE_DIR}/{precision}"
    files: dict[str, dict[str, str]] = {}
    kernels: dict[str, dict] = {}
    sources = {role: graph_path(bundle_dir, manifest.graph(role, precision)) for role in GRAPH_ROLES}
    for index, stage in enumerate(manifest.global_stages.get(precision, ())):  # the runtime bands the global branch with them
        sources[stage_engine_key(index)] = graph_path(bundle_dir, stage.graph)
    for role, source in sources.items():
        relative = f"{directory}/{role}.onnx"
        start = time.perf_counter()
        with atomic_path(bundle_dir / relative) as tmp:
            optimise_for_cpu(source, tmp)
            count = count_kernels(tmp)
        files[role] = {"file": relative, "sha256": sha256_file(bundle_dir / relative)}
        kernels[role] = count.as_dict()
        say(f"onnxruntime {precision} {role}: {count.line()} ({time.perf_counter() - start:.1f} s)")
        if precision == "int8" and count.float_convs:
            say(f"onnxruntime int8 {role}: convolutions left in float: {', '.join(count.float_convs)}")
    spec = EngineSpec(
        target="onnxruntime",
        precision=precision,
        directory=directory,
        files=files,
        profiles={
            "onnxruntime": {
                "version": ort.__version__,
                "optimization_level": "extended",
                "disabled_optimizers": list(DISABLED_OPTIMIZERS),
                "providers": ["CPUExecutionProvider"],
            },
            "kernels": kernels,
        },
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    manifest = read_manifest(bundle_dir)
    kept = tuple(e for e in manifest.engines if not (e.target == "onnxruntime" and e.directory == directory))
    write_manifest(bundle_dir, manifest.replace(engines=kept + (spec,)))
    return spec


def build_engines(bundle_dir: Path, precision: str, options: BuildOptions, say: Callable[[str], None]) -> EngineSpec:
    target = resolve_target(options.target)
    if target == BuildTarget.TENSORRT:
        from export.tensorrt.tensorrt_build import (
            TensorRTBuildOptions,
            build_tensorrt_engines,
        )

        say(f"building TensorRT {precision} engines")
        return build_tensorrt_engines(bundle_dir, precision, options.tensorrt or TensorRTBuildOptions())
    if options.target == BuildTarget.AUTO:
        say("TensorRT is not installed here: building the ONNX Runtime (CPU) engines instead")
    spec = build_onnxruntime_engines(bundle_dir, precision, say)
    say(f"ONNX Runtime {precision} graphs optimised into {spec.directory}/")
    return spec


# ---------------------------------------------------------------- the command


def build_precision(bundle_dir: str | Path, options: BuildOptions, console=None) -> BuildResult:
    """Convert, gate, promote, build engines (see the module docstring)."""
    from rich.console import Console

    console = console or Console()
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        console.print(message, markup=False, highlight=False)

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    precision = options.precision
    for role in GRAPH_ROLES:
        graph_path(bundle_dir, manifest.graph(role, "fp32"))
    tiles = gate_tiles(bundle_dir, manifest, options, say)
    reference = fp32_sessions(bundle_dir, manifest, options.threads or 0)
    start = time.perf_counter()
    with staging_bundle(bundle_dir, manifest, precision) as stage:
        judge = SceneJudge(stage, manifest, tiles, precision, options.threads) if options.whole_images else None
        details = _convert(stage, manifest, tiles, options, reference, judge, say)
        converted = time.perf_counter()
        report = run_gate(stage, manifest, tiles, options, reference, details, judge)
        gated = time.perf_counter()
        if report.graphs:
            console.print(graph_table(report))
        console.print(accuracy_table([report]))
        for line in report.failures():
            say(f"{precision} gate: {line}")
        raise_if_failed(report, bundle_dir)
        if not report.passed:
            say(f"{precision}: the gate failed; keeping the graphs anyway (--force)")
        updated = promote(bundle_dir, stage, precision, report, details)
    engines_start = time.perf_counter()
    engine = build_engines(bundle_dir, precision, options, say)
    done = time.perf_counter()
    say(
        f"{precision} build: {done - start:.0f} s (conversion {converted - start:.0f} s, gate {gated - converted:.0f} s, "
        f"engines {done - engines_start:.0f} s)"
    )
    return BuildResult(precision, updated.graphs[precision], report, engine, messages)
