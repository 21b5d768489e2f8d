"""``glsnet bench --batch``: scenes per minute of glsnet batch with 1 and with 2 workers, same scenes, same run.

The scenes are crops of the real DeepGlobe images when $GLSNET_DATA points at them, else seeded
synthetic scenes; each worker count segments all of them into a fresh folder on one local Ray
instance (started once, so its start-up is paid once and left out of the rates). Each worker
reserves one CPU and runs ONNX Runtime on one thread: two workers use twice the cores, which is
what adding workers to a cluster does. Per-worker peak RSS is the highest per-scene peak of each
worker process (runtime.process_memory.peak_rss). With no bundle given, a seeded random-init bundle of the small
configuration is exported first (that needs torch).

With ``nodes=True`` (``glsnet bench --batch --batch-nodes``) each count is a count of worker *nodes*
instead: a ray.cluster_utils cluster on this machine, loopback only, with a head of no CPUs and N
worker nodes of one CPU and their own scratch folder, one worker per node (SPREAD); the scenes
are the same. On one machine the nodes share its cores, so the ratio is bounded by them.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.atomic_file import write_text_atomic
from runtime.batch.cluster import ray_session
from runtime.batch.dispatcher import BatchOptions, run_batch
from runtime.batch.worker import SCRATCH_ENV
from runtime.bench.segment_bench import run_child, synthetic_scene
from runtime.byte_sizes import format_bytes
from runtime.errors import GlsnetError, InputError, MissingDependencyError
from runtime.options import SegmenterOptions

DATA_ENV = "GLSNET_DATA"


@dataclass(frozen=True)
class BatchBenchOptions:
    out: Path = Path("demo-out/bench-batch")
    bundle: Path | None = None
    preset: str = "small"
    scenes: int = 8
    size: int = 768  # side of each square scene (a crop of a 2448 x 2448 DeepGlobe image)
    workers: tuple[int, ...] = (1, 2)
    seed: int = 0
    nodes: bool = False  # counts of worker nodes of a local multi-node cluster, one worker each

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.size < 64 or not self.workers or min(self.workers) < 1:
            raise InputError(f"batch bench: need scenes >= 1, size >= 64 and worker counts >= 1, got {self.scenes}, {self.size}, {self.workers}")


def write_scenes(options: BatchBenchOptions) -> tuple[list[Path], str]:
    """The bench's scenes as PNGs under ``out/scenes``, and where they came from."""
    from PIL import Image

    folder = options.out / "scenes"
    folder.mkdir(parents=True, exist_ok=True)
    data = os.environ.get(DATA_ENV)
    sources = sorted(Path(data).glob("*_sat.jpg")) if data else []
    paths = []
    for i in range(options.scenes):
        path = folder / f"scene{i}.png"
        if sources:
            with Image.open(sources[i % len(sources)]) as image:
                left = (i * 197) % max(1, image.width - options.size)
                top = (i * 331) % max(1, image.height - options.size)
                pixels = np.asarray(image.convert("RGB").crop((left, top, left + options.size, top + options.size)))
        else:
            pixels = synthetic_scene(options.size, options.size, options.seed + i)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    origin = f"crops of {len(sources)} DeepGlobe images in ${DATA_ENV}" if sources else f"seeded synthetic scenes (${DATA_ENV} unset)"
    return paths, origin


def _bundle(options: BatchBenchOptions) -> Path:
    if options.bundle is not None:
        return options.bundle
    made = options.out / f"model-{options.preset}-seed{options.seed}"
    if not (made / "bundle" / "manifest.json").is_file():
        try:
            run_child(
                ["-m", "export.gpu.bench_reference", "make-bundle", "--out", str(made), "--preset", options.preset, "--seed", str(options.seed)],
                options.out / "logs" / "make-bundle.log",
            )
        except GlsnetError as exc:
            raise MissingDependencyError(
                f"the batch bench could not export its random-init bundle (this step needs torch: pip install "
                f"'glsnet-deploy[train]'), or pass --bundle DIR: {exc}"
            ) from exc
    return made / "bundle"


@contextlib.contextmanager
def _local_cluster(worker_nodes: int, scratch: Path):
    """A multi-node Ray cluster on this machine (loopback): a head with no CPUs, worker nodes of 1 CPU; yields its address."""
    from runtime.optional_import import require

    # Keep Ray on 127.0.0.1, not the LAN address. Ray reads this once, when it is first imported (its
    # ray_constants), so it is set before the import: set after it, the head listens on the LAN address
    # and this process waits for a GCS there that never answers.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    require("ray", "glsnet bench --batch --batch-nodes")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False, "object_store_memory": 80 * 1024**2})
    try:
        for n in range(worker_nodes):
            folder = scratch / f"node-{n + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 1024**2, env_vars={SCRATCH_ENV: str(folder)})
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def run_batch_bench(options: BatchBenchOptions) -> dict:
    """Run glsnet batch once per worker count on the same scenes; print a table, write ``out/batch-bench.json``."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    bundle = _bundle(options)
    scenes, origin = write_scenes(options)
    rows = []
    with contextlib.nullcontext() if options.nodes else ray_session(None):
        for workers in options.workers:
            out = options.out / f"{'nodes' if options.nodes else 'workers'}-{workers}"
            for old in out.glob("*"):
                old.unlink()  # a fresh folder: nothing may be skipped
            with _local_cluster(workers, options.out / "scratch") if options.nodes else contextlib.nullcontext() as address:
                batch = BatchOptions(
                    inputs=(str(options.out / "scenes"),),
                    bundle=bundle,
                    output=out,
                    segmenter=SegmenterOptions(threads=1),
                    address=address,
                    workers=workers,
                    cpus_per_worker=1.0,
                    retries=0,
                )
                summary = run_batch(batch, console=Console(stderr=True, quiet=True), show_progress=False)
            if summary.failed:
                raise GlsnetError(f"batch bench: {len(summary.failed)} scenes failed with {workers} workers: {summary.failed[0].error}")
            rows.append(
                {
                    "workers": workers,
                    "worker_nodes": workers if options.nodes else 1,
                    "nodes_used": len({r.node_id for r in summary.results if r.node_id}),
                    "scenes": len(scenes),
                    "processing_seconds": round(summary.processing_seconds, 2),
                    "scenes_per_minute": round(summary.scenes_per_minute, 2),
                    "peak_rss_bytes": {name: row["peak_rss_bytes"] for name, row in summary.per_worker().items()},
                    "load_average_1min": round(os.getloadavg()[0], 1),  # other work on the machine skews the rates
                }
            )
    base = rows[0]["scenes_per_minute"] or 1.0
    table = Table(title=f"glsnet batch: {len(scenes)} scenes of {options.size} x {options.size}, {origin}")
    for column in ("worker nodes" if options.nodes else "workers", "processing", "scenes/min", f"vs {rows[0]['workers']} {'node' if options.nodes else 'worker'}", "peak RSS per worker", "load avg"):
        table.add_column(column, justify="right")
    for row in rows:
        peaks = ", ".join(f"{name} {format_bytes(peak)}" for name, peak in row["peak_rss_bytes"].items())
        table.add_row(str(row["workers"]), f"{row['processing_seconds']:.1f} s", f"{row['scenes_per_minute']:.1f}", f"{row['scenes_per_minute'] / base:.2f}x", peaks, f"{row['load_average_1min']:.1f}")
    console.print(table)
    report = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}, "scenes": origin, "bundle": str(bundle), "cpus": os.cpu_count(), "runs": rows}
    write_text_atomic(options.out / "batch-bench.json", json.dumps(report, indent=2) + "\n")
    console.print(f"report: {options.out / 'batch-bench.json'}")
    return report
