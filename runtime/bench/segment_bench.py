"""``glsnet bench``: the runtime against the PyTorch reference, each in its own subprocess, same run.

Measured for one square scene (2448 x 2448 by default; a seeded synthetic image written as a
tiled TIFF): wall time, peak RSS (os.wait4 on each child, so each process's own peak) and
patches per second, for the runtime and for glsnet.inference; the ratios; the runtime's peak RSS
on taller scenes (``tall_factors``), to show it does not grow with height; wall time and peak RSS
under each ``--max-memory`` of ``budgets`` and the lowest one accepted; an RSS timeline of every
runtime run, tagged with the runtime's phase (runtime.process_memory.rss_timeline), plotted beside the report;
the bundle's FLOPs (recorded in its manifest at export), the machine's sgemm rate and the
runtime's fraction of it; and how close banded and stage-wise global features are to whole-image
ones. The PyTorch half lives in export.gpu.bench_reference and is started with ``python -m`` only
when torch is importable: this module never imports torch, and ``--no-torch --bundle DIR`` runs on
a runtime-only install. With no bundle given, the bench exports a seeded random-init model of the
default configuration (that needs torch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.atomic_file import write_text_atomic
from runtime.byte_sizes import parse_memory_size
from runtime.errors import GlsnetError, InputError, MissingDependencyError

DEFAULT_HALOS = (0, 128, 256, 320, 384)
DEFAULT_BUDGETS = ("700MB", "900MB", "1.2GB")
REFERENCE_MODULE = "export.gpu.bench_reference"  # the PyTorch half, started by name only when torch is importable


@dataclass(frozen=True)
class BenchOptions:
    out: Path = Path("demo-out/bench")
    bundle: Path | None = None
    checkpoint: Path | None = None  # the torch model of ``bundle``, for the reference half
    size: int = 2448
    tall_factors: tuple[int, ...] = (2, 4)  # taller scenes: factor x size rows by size columns
    torch_reference: bool = True
    threads: int | None = None
    band_rows: int = 1024  # global band height for the banded-feature comparison
    halos: tuple[int, ...] = DEFAULT_HALOS
    preset: str = "default"
    seed: int = 0
    budgets: tuple[str, ...] = DEFAULT_BUDGETS  # --max-memory values to measure at ``size``


@dataclass
class ChildRun:
    """One measured subprocess: its JSON answer, wall time seen from outside, and its own peak RSS."""

    wall_s: float
    peak_rss_bytes: int
    result: dict = field(default_factory=dict)


def run_child(args: list[str], log: Path) -> ChildRun:
    """Run ``python args...``; peak RSS from os.wait4 (this child alone), JSON from its last stdout line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stderr, open(log.with_suffix(".out"), "w") as stdout:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, *args], stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text()[-2000:]
        raise GlsnetError(f"bench step `python {' '.join(args)}` failed (exit {process.returncode}); its log {log} ends:\n{tail}")
    lines = [line for line in log.with_suffix(".out").read_text().splitlines() if line.strip()]
    result = json.loads(lines[-1]) if lines else {}
    return ChildRun(wall, usage.ru_maxrss * 1024, result)


def synthetic_scene(height: int, width: int, seed: int) -> np.ndarray:
    """A seeded uint8 RGB scene of smooth regions plus texture (never all one class)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 96), max(2, width // 96), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    texture = rng.integers(-20, 21, (height, width, 1), dtype=np.int16)
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def write_tiled_tiff(path: Path, pixels: np.ndarray) -> Path:
    import tifffile

    from runtime.atomic_file import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, pixels, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None)
    return path


def torch_available() -> bool:
    """Whether the build side (torch) is installed: the reference half and the random-init bundle need it."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-removed install
        return False


def _bundle_and_checkpoint(options: BenchOptions) -> tuple[Path, Path | None]:
    if options.bundle is not None:
        return options.bundle, options.checkpoint
    made = options.out / f"model-{options.preset}-seed{options.seed}"
    if not (made / "bundle" / "manifest.json").is_file():
        if not torch_available():
            raise MissingDependencyError(
                "the bench exports a random-init bundle with torch, which is not installed here: "
                "pass --bundle DIR (and --no-torch), or pip install 'glsnet-deploy[train]'"
            )
        try:
            run_child(
                ["-m", REFERENCE_MODULE, "make-bundle", "--out", str(made), "--preset", options.preset, "--seed", str(options.seed)],
                options.out / "logs" / "make-bundle.log",
            )
        except GlsnetError as exc:
            raise MissingDependencyError(f"the bench could not export its random-init bundle, or pass --bundle DIR: {exc}") from exc
    return made / "bundle", made / "model.safetensors"


def measure_sgemm(size: int = 2048, seconds: float = 2.0) -> float:
    """The machine's float32 matrix-multiply rate in FLOP/s (numpy's BLAS, all its threads): best of repeats."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm up (thread pool, pages)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end or best == float("inf"):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def bundle_flops(manifest, height: int, width: int, patches: int) -> float | None:
    """FLOPs of one image through the bundle, scaled from the counts export recorded (None when absent)."""
    from runtime.algorithm.patch_grid import make_grid

    flops = manifest.provenance.get("flops")
    if not flops:
        return None
    grid = make_grid(height, width, manifest.patch.size, manifest.patch.min_overlap)
    per_pixel = flops["global"] / (flops["height"] * flops["width"])
    per_patch = (flops["local"] + flops["fusion"]) / flops["batch"]
    return per_pixel * grid.padded_height * grid.padded_width + per_patch * patches


def _worker_run(options: BenchOptions, bundle: Path, image: Path, name: str, extra: list[str] = ()) -> tuple[ChildRun, Path]:
    threads = [] if options.threads is None else ["--threads", str(options.threads)]
    timeline = options.out / "timelines" / f"{name}.json"
    run = run_child(
        ["-m", "runtime.bench.segment_bench", "worker", "--bundle", str(bundle), "--image", str(image), "--out", str(options.out / name),
         "--timeline", str(timeline), *threads, *extra],
        options.out / "logs" / f"{name}.log",
    )
    return run, timeline


def run_bench(options: BenchOptions) -> dict:
    """Run every measurement, print a table and write ``<out>/bench.json`` and the plots; returns the report."""
    from rich.console import Console

    from runtime.bundle.manifest import read_manifest
    from runtime.process_memory.rss_timeline import Timeline, plot_timelines

    console = Console()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    if options.torch_reference and not torch_available():
        raise MissingDependencyError("the PyTorch reference needs torch, which is not installed here: run glsnet bench --no-torch")
    bundle, checkpoint = _bundle_and_checkpoint(options)
    images = out / "images"
    square = write_tiled_tiff(images / f"scene_{options.size}x{options.size}.tif", synthetic_scene(options.size, options.size, 7))
    logs = out / "logs"
    timelines: dict[str, Path] = {}

    console.print(f"bench: runtime on {square.name} ...")
    rt, timelines[f"runtime {options.size}x{options.size}"] = _worker_run(options, bundle, square, "runtime-square")
    report: dict = {"bundle": str(bundle), "options": {k: str(v) for k, v in asdict(options).items()}, "runtime": _summary(rt)}
    if options.torch_reference:
        if checkpoint is None or not Path(checkpoint).is_file():
            raise InputError("the torch reference needs the bundle's checkpoint: pass --checkpoint, or --no-torch")
        console.print("bench: PyTorch reference ...")
        mask_out = out / "torch-square-mask.npy"
        ref = run_child(["-m", REFERENCE_MODULE, "run", "--checkpoint", str(checkpoint), "--image", str(square), "--mask-out", str(mask_out)], logs / "torch-square.log")
        ref.result["patches"] = rt.result["patches"]
        report["torch"] = _summary(ref)
        report["ratios"] = {
            "wall_runtime_over_torch": rt.wall_s / ref.wall_s,
            "segment_runtime_over_torch": rt.result["segment_s"] / ref.result["segment_s"],
            "peak_rss_runtime_over_torch": rt.peak_rss_bytes / ref.peak_rss_bytes,
            "patches_per_s_runtime_over_torch": report["runtime"]["patches_per_s"] / report["torch"]["patches_per_s"],
        }
        report["mask_agreement_runtime_vs_torch"] = _agreement(out / "runtime-square" / f"{square.stem}_mask.tif", np.load(mask_out))
    heights = [{"height": options.size, **_summary(rt)}]
    for factor in options.tall_factors:
        tall_h = options.size * factor
        tall = write_tiled_tiff(images / f"scene_{tall_h}x{options.size}.tif", synthetic_scene(tall_h, options.size, 7 + factor))
        console.print(f"bench: runtime on {tall.name} ...")
        run, timelines[f"runtime {tall_h}x{options.size}"] = _worker_run(options, bundle, tall, f"runtime-x{factor}")
        heights.append({"height": tall_h, **_summary(run)})
        tall.unlink()  # large and cheap to make again
    report["runtime_by_height"] = heights
    report["runtime_tall"] = heights[-1]
    report["peak_rss_tall_over_square"] = heights[-1]["peak_rss_bytes"] / rt.peak_rss_bytes
    budgets = []
    for text in options.budgets:
        console.print(f"bench: runtime on {square.name} with --max-memory {text} ...")
        try:
            run, timelines[f"runtime {options.size}x{options.size}, --max-memory {text}"] = _worker_run(
                options, bundle, square, f"runtime-budget-{text}", ["--max-memory", text]
            )
        except GlsnetError as exc:
            budgets.append({"budget": text, "budget_bytes": parse_memory_size(text), "accepted": False, "error": str(exc).splitlines()[-1]})
            continue
        budgets.append({"budget": text, "budget_bytes": parse_memory_size(text), "accepted": True, **_summary(run),
                        "wall_over_unbudgeted": run.wall_s / rt.wall_s})
    report["budgets"] = budgets
    accepted = [b for b in budgets if b["accepted"]]
    if accepted:
        lowest = min(accepted, key=lambda b: b["budget_bytes"])
        report["lowest_accepted_budget"] = {**lowest, "honoured": lowest["peak_rss_bytes"] <= lowest["budget_bytes"]}
    report["lowest_plannable_budget_bytes"] = rt.result.get("lowest_budget_bytes")
    console.print("bench: global features, banded and stage by stage vs whole image ...")
    threads = [] if options.threads is None else ["--threads", str(options.threads)]
    bands = run_child(
        ["-m", "runtime.bench.segment_bench", "bands", "--bundle", str(bundle), "--image", str(square), "--band-rows", str(options.band_rows),
         "--halos", ",".join(str(h) for h in options.halos), "--whole-mask", str(out / "runtime-square" / f"{square.stem}_mask.tif"), *threads],
        logs / "bands.log",
    )
    report["banded_global"] = bands.result
    console.print("bench: the machine's sgemm rate ...")
    sgemm = measure_sgemm()
    flops = bundle_flops(read_manifest(bundle), options.size, options.size, rt.result["patches"])
    report["machine"] = {"sgemm_flops_per_s": sgemm, "cpu_count": os.cpu_count()}
    report["bundle_flops"] = flops
    if flops is not None:
        report["runtime_fraction_of_sgemm"] = flops / rt.result["segment_s"] / sgemm
    loaded = {name: Timeline.from_dict(json.loads(path.read_text())) for name, path in timelines.items() if path.is_file()}
    report["rss_timelines"] = {name: {"peak": tl.peak(), "peak_by_phase": tl.peak_by_phase(), "file": str(timelines[name])} for name, tl in loaded.items()}
    plot = plot_timelines(loaded, out / "rss-timeline.png", "glsnet bench: runtime RSS by phase")
    report["plots"] = {"rss_timeline": str(plot) if plot else None, "budgets": str(plot_budgets(budgets, rt, out / "budgets.png") or "") or None}
    write_text_atomic(out / "bench.json", json.dumps(report, indent=2) + "\n")
    print_report(report, console)
    console.print(f"bench: report in {out / 'bench.json'}")
    if plot is None:
        console.print("bench: no plots (matplotlib is not installed: pip install 'glsnet-deploy[bench]')")
    return report


def plot_budgets(budgets: list[dict], unbudgeted: ChildRun, path: Path) -> Path | None:
    """Wall time and peak RSS per accepted budget (PNG); None without matplotlib or accepted budgets."""
    accepted = [b for b in budgets if b["accepted"]]
    if not accepted:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from runtime.atomic_file import atomic_path

    labels = [b["budget"] for b in accepted] + ["none"]
    walls = [b["wall_s"] for b in accepted] + [unbudgeted.wall_s]
    peaks = [b["peak_rss_bytes"] / 1e6 for b in accepted] + [unbudgeted.peak_rss_bytes / 1e6]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.bar(labels, walls, color="tab:blue")
    left.set_ylabel("wall s")
    right.bar(labels, peaks, color="tab:orange")
    right.plot(labels[:-1], [b["budget_bytes"] / 1e6 for b in accepted], "k_", markersize=30, label="budget")
    right.set_ylabel("peak RSS MB")
    right.legend(fontsize=7)
    fig.suptitle("glsnet bench: --max-memory budgets", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _summary(run: ChildRun) -> dict:
    r = run.result
    return {
        "wall_s": run.wall_s,
        "load_s": r.get("load_s"),
        "segment_s": r.get("segment_s"),
        "patches": r.get("patches"),
        "patches_per_s": r["patches"] / r["segment_s"] if r.get("segment_s") else None,
        "peak_rss_bytes": run.peak_rss_bytes,
        "height": r.get("height"),
        "width": r.get("width"),
        "plan": r.get("plan"),
        "timeline_peak": r.get("timeline_peak"),
    }


def _agreement(mask_path: Path, other: np.ndarray) -> float:
    import tifffile

    from runtime.accuracy.comparison import pixel_agreement

    return float(pixel_agreement(tifffile.imread(mask_path), other))


def print_report(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="glsnet bench (seeded random-init model; CPU)")
    for column in ("run", "image", "wall s", "segment s", "patches/s", "peak RSS MB", "peak phase"):
        table.add_column(column)
    rows = [("runtime", report["runtime"])] + ([("torch", report["torch"])] if "torch" in report else [])
    rows += [(f"runtime x{r['height'] // report['runtime']['height']}", r) for r in report.get("runtime_by_height", [])[1:]]
    rows += [(f"runtime --max-memory {b['budget']}", b) for b in report.get("budgets", []) if b["accepted"]]
    for key, r in rows:
        if r:
            peak = (r.get("timeline_peak") or {}).get("phases", "")
            table.add_row(
                key, f"{r['height']}x{r['width']}", f"{r['wall_s']:.1f}", f"{r['segment_s']:.1f}",
                f"{r['patches_per_s']:.2f}", f"{r['peak_rss_bytes'] / 1e6:.0f}", peak,
            )
    console.print(table)
    for r in report.get("runtime_by_height", []):
        console.print(f"runtime plan at {r['height']}x{r['width']}: {r.get('plan')}")
    if "ratios" in report:
        console.print("ratios runtime/torch: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()))
        console.print(f"mask agreement runtime vs torch: {report['mask_agreement_runtime_vs_torch']:.5f}")
    console.print(
        "runtime peak RSS by image height: "
        + ", ".join(f"{r['height']}: {r['peak_rss_bytes'] / 1e6:.0f} MB" for r in report.get("runtime_by_height", []))
        + f" (tallest/square {report['peak_rss_tall_over_square']:.2f})"
    )
    for b in report.get("budgets", []):
        if b["accepted"]:
            console.print(
                f"--max-memory {b['budget']}: wall {b['wall_s']:.1f} s ({b['wall_over_unbudgeted']:.2f}x unbudgeted), "
                f"peak RSS {b['peak_rss_bytes'] / 1e6:.0f} MB, plan: {b['plan']}"
            )
        else:
            console.print(f"--max-memory {b['budget']}: refused ({b['error']})")
    if "lowest_accepted_budget" in report:
        low = report["lowest_accepted_budget"]
        console.print(
            f"lowest accepted budget: {low['budget']} (peak RSS {low['peak_rss_bytes'] / 1e6:.0f} MB, "
            f"{'honoured' if low['honoured'] else 'NOT honoured'})"
        )
    if report.get("lowest_plannable_budget_bytes"):
        console.print(f"lowest budget the planner accepts at {report['runtime']['height']}x{report['runtime']['width']} (estimate): "
                      f"{report['lowest_plannable_budget_bytes'] / 1e6:.0f} MB")
    for name, t in report.get("rss_timelines", {}).items():
        peak = t["peak"]
        if peak:
            by_phase = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(t["peak_by_phase"].items(), key=lambda kv: -kv[1]))
            console.print(f"RSS timeline {name}: peak {peak['rss_bytes'] / 1e6:.0f} MB at {peak['t_s']:.1f} s during {peak['phases']}; "
                          f"highest by phase (MB): {by_phase}")
    machine = report.get("machine", {})
    if machine:
        flops = report.get("bundle_flops")
        line = f"machine sgemm (numpy, {machine['cpu_count']} CPUs): {machine['sgemm_flops_per_s'] / 1e9:.1f} GFLOP/s"
        if flops is not None:
            line += (f"; bundle at {report['runtime']['height']}x{report['runtime']['width']}: {flops / 1e12:.2f} TFLOP; runtime "
                     f"{flops / report['runtime']['segment_s'] / 1e9:.1f} GFLOP/s = {report['runtime_fraction_of_sgemm']:.2f} of sgemm")
        else:
            line += "; bundle FLOPs not recorded in its manifest (re-export it to record them)"
        console.print(line)
    bands = report.get("banded_global", {})
    if "staged_max_abs" in bands:
        console.print(f"global branch stage by stage (default bands) vs whole image: max |diff| {bands['staged_max_abs']:.3g}")
    for row in bands.get("halos", []):
        console.print(
            f"banded global (bands of {bands['band_rows']} rows, halo {row['halo']}): max |diff| {row['max_abs']:.3g}, "
            f"mean |diff| {row['mean_abs']:.3g}, max relative to max |feature| {row['max_rel']:.3g}"
        )
    if "mask_agreement" in bands:
        console.print(f"mask agreement banded (halo {bands['mask_halo']}) vs whole-image global: {bands['mask_agreement']:.5f}")


# ---------------------------------------------------------------------- the runtime's own subprocesses


def _worker(args: argparse.Namespace) -> dict:
    """Segment one image with the runtime, as `glsnet run` would, and time it."""
    import resource

    from runtime.byte_sizes import parse_memory_size
    from runtime.image_io.readers import open_image
    from runtime.image_io.writers import OutputOptions
    from runtime.process_memory.rss_timeline import RssSampler
    from runtime.segmenter import Segmenter, SegmenterOptions

    with RssSampler() as sampler:
        start = time.perf_counter()
        options = SegmenterOptions(threads=args.threads, batch_size=args.batch_size, max_memory=parse_memory_size(args.max_memory))
        segmenter = Segmenter(args.bundle, options=options)
        segmenter.scheduler  # create the sessions now, so segment_s is the segmentation alone
        loaded = time.perf_counter()
        patches = [0]

        def progress(done: int, total: int) -> None:
            patches[0] = total

        source = open_image(args.image)
        height, width = source.height, source.width
        plan = segmenter.plan(height, width)
        lowest = segmenter.lowest_budget(height, width)
        source.close()
        segmenter.segment_file(args.image, args.out, OutputOptions(format="tif", color=False), progress=progress)
        done = time.perf_counter()
    if args.timeline:
        write_text_atomic(Path(args.timeline), json.dumps(sampler.timeline.to_dict()) + "\n")
    return {
        "load_s": loaded - start,
        "segment_s": done - loaded,
        "patches": patches[0],
        "height": height,
        "width": width,
        "plan": plan.describe(),
        "plan_estimate_bytes": plan.estimate_bytes,
        "lowest_budget_bytes": lowest,
        "timeline_peak": sampler.timeline.peak(),
        "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _bands(args: argparse.Namespace) -> dict:
    """Global features whole vs in bands for several halos, and the banded mask vs the whole-image mask."""
    from runtime.algorithm.global_features import (
        DEFAULT_HALO,
        global_features,
        staged_global_features,
    )
    from runtime.algorithm.scheduler import PaddedReader, normalization_for
    from runtime.image_io.readers import open_image
    from runtime.image_io.writers import OutputOptions
    from runtime.segmenter import Segmenter, SegmenterOptions

    halos = [int(h) for h in args.halos.split(",")]
    segmenter = Segmenter(args.bundle, options=SegmenterOptions(threads=args.threads))
    scheduler = segmenter.scheduler
    scheduler.global_backend.activate()
    source = open_image(args.image)
    grid = scheduler.grid_for(source.height, source.width)
    reader = PaddedReader(source, normalization_for(segmenter.manifest, None), grid)
    whole = global_features(scheduler.global_backend, reader.rows, grid.padded_height)
    scale = float(np.abs(whole).max())
    staged = {}
    if scheduler.global_stages:
        plan = segmenter.plan(source.height, source.width)
        banded = staged_global_features(scheduler.global_stages, reader.rows, grid.padded_height, plan.global_band_rows)
        staged = {"staged_band_rows": plan.global_band_rows, "staged_max_abs": float(np.abs(banded - whole).max())}
    rows = []
    for halo in halos:
        banded = global_features(scheduler.global_backend, reader.rows, grid.padded_height, args.band_rows, halo)
        diff = np.abs(banded - whole)
        rows.append({"halo": halo, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "max_rel": float(diff.max() / scale)})
    source.close()
    report: dict = {"band_rows": args.band_rows, "feature_max_abs": scale, "halos": rows, **staged}
    if args.whole_mask:
        import tifffile

        from runtime.accuracy.comparison import pixel_agreement

        mask_halo = DEFAULT_HALO if DEFAULT_HALO in halos else halos[-1]
        banded_segmenter = Segmenter(
            args.bundle, options=SegmenterOptions(threads=args.threads, global_band_rows=args.band_rows, global_halo=mask_halo)
        )
        out = Path(args.whole_mask).parent.parent / "runtime-square-banded"
        banded_segmenter.segment_file(args.image, out, OutputOptions(format="tif", color=False))
        banded_mask = tifffile.imread(out / f"{Path(args.image).stem}_mask.tif")
        report["mask_halo"] = mask_halo
        report["mask_agreement"] = float(pixel_agreement(banded_mask, tifffile.imread(args.whole_mask)))
    return report


def _global_rate(args: argparse.Namespace) -> dict:
    """The global branch alone, as the runtime runs it on the image (stage graphs in bands when the bundle has them,
    else the single graph): best of ``repeats`` timed passes after one untimed one, and its FLOPs at that size."""
    from runtime.algorithm.global_features import (
        global_features,
        staged_global_features,
    )
    from runtime.algorithm.scheduler import PaddedReader, normalization_for
    from runtime.image_io.readers import open_image
    from runtime.segmenter import Segmenter, SegmenterOptions

    segmenter = Segmenter(args.bundle, precision=args.precision, options=SegmenterOptions(threads=args.threads))
    scheduler = segmenter.scheduler
    scheduler.global_backend.activate()
    source = open_image(args.image)
    grid = scheduler.grid_for(source.height, source.width)
    reader = PaddedReader(source, normalization_for(segmenter.manifest, None), grid)
    band_rows = segmenter.plan(source.height, source.width).global_band_rows
    if scheduler.global_stages:
        def run():
            return staged_global_features(scheduler.global_stages, reader.rows, grid.padded_height, band_rows)
    else:
        def run():
            return global_features(scheduler.global_backend, reader.rows, grid.padded_height)
    run()
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    source.close()
    flops = segmenter.manifest.provenance.get("flops") or {}
    per_pixel = flops["global"] / (flops["height"] * flops["width"]) if flops else None
    return {
        "precision": args.precision,
        "staged": bool(scheduler.global_stages),
        "band_rows": band_rows,
        "seconds": best,
        "padded_height": grid.padded_height,
        "padded_width": grid.padded_width,
        "flops": None if per_pixel is None else per_pixel * grid.padded_height * grid.padded_width,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.bench.segment_bench", description="the runtime's bench subprocesses")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--bundle", type=Path, required=True)
    worker.add_argument("--image", type=Path, required=True)
    worker.add_argument("--out", type=Path, required=True)
    worker.add_argument("--threads", type=int, default=None)
    worker.add_argument("--batch-size", type=int, default=None)
    worker.add_argument("--max-memory", default=None)
    worker.add_argument("--timeline", default=None, help="write the RSS timeline (JSON) here")
    bands = sub.add_parser("bands")
    bands.add_argument("--bundle", type=Path, required=True)
    bands.add_argument("--image", type=Path, required=True)
    bands.add_argument("--band-rows", type=int, default=1024)
    bands.add_argument("--halos", default=",".join(str(h) for h in DEFAULT_HALOS))
    bands.add_argument("--whole-mask", default=None)
    bands.add_argument("--threads", type=int, default=None)
    rate = sub.add_parser("global-rate")
    rate.add_argument("--bundle", type=Path, required=True)
    rate.add_argument("--image", type=Path, required=True)
    rate.add_argument("--precision", default="fp32")
    rate.add_argument("--repeats", type=int, default=2)
    rate.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    result = {"worker": _worker, "bands": _bands, "global-rate": _global_rate}[args.command](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
