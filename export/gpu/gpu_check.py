"""``make gpu-check``: run the GPU path on this machine's GPU and check it against the CPU fp32 reference.

Two levels; ``--level auto`` (what ``make gpu-check`` runs) takes the highest this machine allows:

- ``tensorrt`` (an NVIDIA GPU, TensorRT and cuda-python), below;
- ``cuda`` (an NVIDIA GPU, CUDA, PyTorch and cuda-python; no TensorRT): the real stream scheduler on
  the real cuda-python Device drives the three graphs, each run by PyTorch on the scheduler's own
  stream and buffers (export.gpu.gpu_check_cuda), against PyTorch eager on CUDA and the CPU fp32
  reference in the same run. It needs no data ($GLSNET_DATA images when set, else a seeded scene)
  and no demo (a seeded random-init model of --preset when no --checkpoint or demo checkpoint).

The tensorrt level, on a machine with an NVIDIA GPU, TensorRT and cuda-python:
1. builds the fp16 and int8 engines of a bundle with ``glsnet-export build BUNDLE --fp16|--int8 --target tensorrt``
   (int8 first samples calibration tiles from the images when the bundle has none);
2. segments real images ($GLSNET_DATA) with the engines on CUDA streams (runtime TensorRTPipeline) and
   with the fp32 graphs on ONNX Runtime's CPU provider (runtime Segmenter: the reference);
3. prints, per precision and image, the end-to-end latency (median of --repeats runs after a warm-up),
   the peak device memory (cudaMemGetInfo, sampled after opening and after every run, minus what was
   in use before) and the pixel agreement with the reference; writes the same as JSON into --out.

Where something is missing it says what, in one line, and exits with code 2; an agreement below its
threshold makes it exit with code 1.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from runtime.atomic_file import write_text_atomic
from runtime.cli_errors import run_app
from runtime.errors import AccuracyGateError, GlsnetError, InputError, MissingDependencyError

DATA_ENV = "GLSNET_DATA"
MIN_AGREEMENT = {"fp16": 0.99, "int8": 0.97}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__.split("\n\n")[0])


@dataclass(frozen=True)
class Measurement:
    precision: str
    image: str
    height: int
    width: int
    latency_ms: float
    latency_runs_ms: list[float]
    peak_device_mb: float
    schedule_buffers_mb: float
    pixel_agreement: float
    batch_size: int


LEVELS = ("auto", "tensorrt", "cuda", "table")


def missing_pieces(data: Path | None) -> list[str]:
    """What this machine lacks for the check, one sentence each (empty: ready)."""
    from runtime.backends.tensorrt.api import tensorrt_api
    from runtime.cuda import open_device

    problems = []
    try:
        api = tensorrt_api(feature="make gpu-check")
    except (MissingDependencyError, GlsnetError) as exc:
        problems.append(f"TensorRT: {exc}")
        api = None
    try:
        device = open_device()
        info = device.info()
        if api is not None:
            typer.echo(f"gpu-check: {info.name} (compute capability {info.compute_capability}), TensorRT {api.version}")
    except (MissingDependencyError, GlsnetError) as exc:
        problems.append(f"GPU: {exc}")
    if data is None:
        problems.append(f"data: ${DATA_ENV} is not set and --data was not given; point it at a folder of DeepGlobe *_sat.jpg images")
    elif not sorted(data.glob("*_sat.jpg")):
        problems.append(f"data: {data} holds no *_sat.jpg images")
    return problems


def glsnet_export(*args: str) -> None:
    """Run ``glsnet-export`` as the user would (same interpreter), failing loudly."""
    command = [sys.executable, "-m", "export.cli", *args]
    typer.echo("$ glsnet-export " + " ".join(args))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise GlsnetError(f"glsnet-export {' '.join(args)} failed with exit code {result.returncode} (its output is above)")


def prepare_bundle(bundle: Path | None, out: Path) -> Path:
    """--bundle, else the demo's bundle beside --out, exported from the demo's checkpoint when only that exists."""
    if bundle is not None:
        return bundle
    demo = out.parent
    if (demo / "bundle" / "manifest.json").is_file():
        return demo / "bundle"
    checkpoint = demo / "model.safetensors"
    if checkpoint.is_file():
        glsnet_export("onnx", str(checkpoint), "-o", str(demo / "bundle"), "--force")
        return demo / "bundle"
    raise InputError(f"no bundle: pass --bundle, or run `make demo` first (it writes {demo / 'bundle'})")


def build_engines(bundle: Path, precision: str, images: list[Path], dla_core: int | None) -> None:
    from runtime.bundle.manifest import read_manifest

    if precision == "int8" and not (bundle / "calibration" / "tiles.npz").is_file():
        glsnet_export("calibrate", str(bundle), *(str(p) for p in images))
    args = ["build", str(bundle), f"--{precision}", "--target", "tensorrt"]
    glsnet_export(*args)
    if dla_core is not None:
        from export.tensorrt.tensorrt_build import TensorRTBuildOptions, build_tensorrt_engines

        build_tensorrt_engines(bundle, precision, TensorRTBuildOptions(dla_core=dla_core))
    read_manifest(bundle)  # the build left a readable manifest


def measure(
    bundle: Path,
    precision: str,
    images: list[Path],
    references: dict[str, np.ndarray],
    repeats: int,
    dla_core: int | None,
    cuda_graphs: bool,
) -> list[Measurement]:
    from runtime.accuracy.comparison import pixel_agreement
    from runtime.cuda import open_device
    from runtime.engines.tensorrt_pipeline import TensorRTPipeline, TensorRTPipelineOptions
    from runtime.image_io.readers import open_image

    device = open_device()
    free_before, _ = device.memory_info()
    options = TensorRTPipelineOptions(precision=precision, dla_core=dla_core, cuda_graphs=cuda_graphs)
    results = []
    with TensorRTPipeline(bundle, options, device=device) as pipeline:
        for path in images:
            source = open_image(path)
            pixels = source.read_rows(0, source.height)
            source.close()
            lowest_free = device.memory_info()[0]
            pipeline.segment(pixels)  # warm-up: lazy allocations, CUDA graph capture
            runs = []
            for _ in range(repeats):
                started = time.perf_counter()
                mask = pipeline.segment(pixels)
                runs.append((time.perf_counter() - started) * 1000)
                lowest_free = min(lowest_free, device.memory_info()[0])
            plan = pipeline.scheduler.plan if pipeline.scheduler else None
            results.append(
                Measurement(
                    precision=precision,
                    image=path.name,
                    height=int(pixels.shape[0]),
                    width=int(pixels.shape[1]),
                    latency_ms=round(statistics.median(runs), 1),
                    latency_runs_ms=[round(r, 1) for r in runs],
                    peak_device_mb=round((free_before - lowest_free) / 2**20, 1),
                    schedule_buffers_mb=round((plan.device_bytes if plan else 0) / 2**20, 1),
                    pixel_agreement=round(pixel_agreement(references[path.name], mask), 5),
                    batch_size=plan.batch if plan else 0,
                )
            )
    device.close()
    return results


def print_table(results: list[Measurement]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="TensorRT engines vs the CPU fp32 reference (ONNX Runtime)")
    for column in ("precision", "image", "size", "batch", "latency ms (median)", "peak device MB", "schedule buffers MB", "pixel agreement"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.precision, r.image, f"{r.height}x{r.width}", str(r.batch_size), f"{r.latency_ms:.1f}",
            f"{r.peak_device_mb:.0f}", f"{r.schedule_buffers_mb:.0f}", f"{r.pixel_agreement:.4f}",
        )
    Console().print(table)


@app.command()
def check(
    out: Path = typer.Option(Path("demo-out/gpu-check"), "--out", help="Folder for the report (gpu_check.json)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Bundle to build and check (default: the demo's, beside --out)."),
    data: Optional[Path] = typer.Option(None, "--data", help=f"Folder of *_sat.jpg images (default: ${DATA_ENV})."),
    count: int = typer.Option(3, "--images", help="How many images to check."),
    repeats: int = typer.Option(3, help="Timed runs per image after one warm-up."),
    precisions: str = typer.Option("fp16,int8", help="Comma-separated precisions to build and check."),
    build: bool = typer.Option(True, "--build/--no-build", help="Build the engines first (otherwise use the bundle's)."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Also put the local engine on this DLA core (Jetson)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Replay fixed-shape local/fusion batches as CUDA graphs."),
    level: str = typer.Option(
        "auto",
        "--level",
        help="table (every engine here and PyTorch eager in one table: what `make gpu-check` runs), auto (the highest level this machine allows), tensorrt, or cuda (no TensorRT needed).",
    ),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="cuda level: the torch checkpoint (default: the demo's, else a seeded random-init model)."),
    preset: str = typer.Option("default", "--preset", help="cuda level, random-init model: default (the paper's GLSNet) or small."),
    batch_size: int = typer.Option(6, "--batch-size", help="cuda level: patches per batch."),
) -> None:
    """Run the GPU path here (TensorRT engines, or PyTorch engines on the stream scheduler) against the CPU fp32 reference."""
    if level not in LEVELS:
        raise InputError(f"--level {level!r}: choose from {', '.join(LEVELS)}")
    data = data or (Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None)
    if level == "table":
        return check_table(out, bundle, checkpoint, preset, data, repeats, batch_size)
    problems = missing_pieces(data) if level != "cuda" else ["skipped"]
    if level == "cuda" or (level == "auto" and problems):
        from export.gpu.gpu_check_cuda import cuda_level_missing

        reason = cuda_level_missing()
        if reason is None:
            typer.echo("gpu-check: CUDA-only level (" + ("chosen with --level cuda" if level == "cuda" else "TensorRT level unavailable: " + "; ".join(problems)) + ")")
            return check_cuda(out, bundle, checkpoint, preset, data, count, repeats, batch_size, cuda_graphs)
        if level == "cuda":
            raise MissingDependencyError(f"gpu-check cannot run on this machine: CUDA-only level: {reason}")
        raise MissingDependencyError(
            "gpu-check cannot run on this machine: TensorRT level: " + "; ".join(problems) + f" | CUDA-only level: {reason}"
        )
    if problems:
        raise MissingDependencyError("gpu-check cannot run on this machine: TensorRT level: " + "; ".join(problems))
    chosen = [p.strip() for p in precisions.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in MIN_AGREEMENT]
    if unknown:
        raise InputError(f"--precisions {precisions!r}: choose from {sorted(MIN_AGREEMENT)}")
    assert data is not None
    images = sorted(data.glob("*_sat.jpg"))[:count]
    bundle_dir = prepare_bundle(bundle, out)

    from runtime.image_io.readers import open_image
    from runtime.segmenter import Segmenter

    references = {}
    with Segmenter(bundle_dir, precision="fp32") as reference:
        for path in images:
            source = open_image(path)
            references[path.name] = reference.segment(source.read_rows(0, source.height))
            source.close()
    results: list[Measurement] = []
    for precision in chosen:
        if build:
            build_engines(bundle_dir, precision, images, dla_core)
        results += measure(bundle_dir, precision, images, references, repeats, dla_core, cuda_graphs)
    print_table(results)
    out.mkdir(parents=True, exist_ok=True)
    report = {"bundle": str(bundle_dir), "thresholds": MIN_AGREEMENT, "results": [asdict(r) for r in results]}
    write_text_atomic(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    typer.echo(f"report: {out / 'gpu_check.json'}")
    failed = [r for r in results if r.pixel_agreement < MIN_AGREEMENT[r.precision]]
    if failed:
        raise AccuracyGateError(
            "pixel agreement below threshold: "
            + ", ".join(f"{r.precision} {r.image} {r.pixel_agreement:.4f} < {MIN_AGREEMENT[r.precision]}" for r in failed)
        )


def check_cuda(
    out: Path,
    bundle: Path | None,
    checkpoint: Path | None,
    preset: str,
    data: Path | None,
    count: int,
    repeats: int,
    batch_size: int,
    cuda_graphs: bool,
) -> None:
    """The CUDA-only level: export (if needed), CPU reference, scheduled PyTorch engines vs eager, report, gate."""
    from export.gpu.gpu_check_cuda import MIN_AGREEMENT as CUDA_MIN_AGREEMENT
    from export.gpu.gpu_check_cuda import measure_cuda
    from glsnet.checkpoint import load_model
    from runtime.bundle.manifest import read_manifest
    from runtime.image_io.preprocess import normalize
    from runtime.image_io.readers import open_image
    from runtime.segmenter import Segmenter

    checkpoint, bundle_dir = model_and_bundle(out, bundle, checkpoint, preset)
    model, _ = load_model(checkpoint)
    manifest = read_manifest(bundle_dir)
    named: list[tuple[str, np.ndarray]] = []
    if data is not None and sorted(data.glob("*_sat.jpg")):
        for path in sorted(data.glob("*_sat.jpg"))[:count]:
            source = open_image(path)
            named.append((path.name, source.read_rows(0, source.height)))
            source.close()
    else:
        side = 2448 if model.config.patch_size >= 500 else 1024
        typer.echo(f"gpu-check: no ${DATA_ENV} images; using one seeded synthetic {side} x {side} scene")
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (side // 64 + 1, side // 64 + 1, 3), dtype=np.uint8)
        scene = np.repeat(np.repeat(coarse, 64, 0), 64, 1)[:side, :side]
        named.append(("synthetic", np.clip(scene.astype(np.int16) + rng.integers(-20, 21, scene.shape), 0, 255).astype(np.uint8)))
    references = {}
    with Segmenter(bundle_dir, precision="fp32") as reference:
        for name, pixels in named:
            references[name] = reference.segment(pixels)
    images = [(name, normalize(pixels, manifest.normalization)) for name, pixels in named]
    results = measure_cuda(model, manifest, images, references, batch_size, repeats, cuda_graphs)
    print_cuda_table(results)
    out.mkdir(parents=True, exist_ok=True)
    report = {"level": "cuda", "bundle": str(bundle_dir), "checkpoint": str(checkpoint), "threshold": CUDA_MIN_AGREEMENT, "results": [asdict(r) for r in results]}
    write_text_atomic(out / "gpu_check_cuda.json", json.dumps(report, indent=2) + "\n")
    typer.echo(f"report: {out / 'gpu_check_cuda.json'}")
    failed = [r for r in results if r.scheduled_vs_cpu < CUDA_MIN_AGREEMENT]
    if failed:
        raise AccuracyGateError(
            "scheduled CUDA path below the pixel agreement threshold: "
            + ", ".join(f"{r.image} {r.scheduled_vs_cpu:.5f} < {CUDA_MIN_AGREEMENT}" for r in failed)
        )


TABLE_MIN_AGREEMENT = {"fp32 (TF32)": 0.999, "fp32": 0.999, "fp16": 0.99, "int8": 0.97}


def check_table(out: Path, bundle: Path | None, checkpoint: Path | None, preset: str, data: Path | None, repeats: int, batch_size: int) -> None:
    """`make gpu-check`: one table of every engine this machine has against the CPU fp32 reference (export.gpu.gpu_table)."""
    from export.gpu.gpu_table import RAN, Image, nvml_sampler, print_table, run_table, write_chart, write_report
    from export.gpu.gpu_table_candidates import gpu_candidates
    from runtime.image_io.readers import open_image
    from runtime.segmenter import Segmenter

    if bundle is None or checkpoint is not None:
        checkpoint, bundle = model_and_bundle(out, bundle, checkpoint, preset)
    images = sorted(data.glob("*_sat.jpg")) if data is not None else []
    if images:
        path = images[0]

        def decode() -> np.ndarray:
            source = open_image(path)
            try:
                return source.read_rows(0, source.height)
            finally:
                source.close()

        image = Image(path.name, decode(), decode)
    else:
        pixels = synthetic_scene(bundle)
        typer.echo(f"gpu-check: no ${DATA_ENV} images; a seeded synthetic {pixels.shape[0]} x {pixels.shape[1]} scene (decode = a copy)")
        image = Image("synthetic", pixels, pixels.copy)
    with Segmenter(bundle, precision="fp32") as reference_segmenter:
        reference = reference_segmenter.segment(image.pixels)

    def model() -> object:
        if checkpoint is None:
            raise InputError("the PyTorch rows need the model: pass --checkpoint (the checkpoint the bundle was exported from)")
        from glsnet.checkpoint import load_model

        return load_model(checkpoint)[0]

    sampler, why = nvml_sampler()
    if why:
        typer.echo(f"gpu-check: {why}")
    rows = run_table(gpu_candidates(bundle, model, batch_size), image, reference, repeats, sampler, say=typer.echo)
    text = print_table(rows, f"gpu-check on {image.name} ({image.pixels.shape[0]} x {image.pixels.shape[1]}): every engine here vs the CPU fp32 reference")
    out.mkdir(parents=True, exist_ok=True)
    report = write_report(rows, out, {"image": image.name, "bundle": str(bundle), "repeats": repeats, "batch_size": batch_size, "table": text})
    chart = write_chart(rows, out, say=typer.echo)
    typer.echo(f"report: {report}" + (f", chart: {chart}" if chart else ""))
    low = [r for r in rows if r.status == RAN and r.agreement is not None and r.agreement < TABLE_MIN_AGREEMENT.get(r.precision, 0.99)]
    if low:
        raise AccuracyGateError("pixel agreement below threshold: " + ", ".join(f"{r.engine} {r.precision} {r.agreement:.5f}" for r in low))


def synthetic_scene(bundle: Path) -> np.ndarray:
    """A seeded scene with structure: 2448 x 2448 for the paper's patch size, 1024 x 1024 for small models."""
    from runtime.bundle.manifest import read_manifest

    side = 2448 if read_manifest(bundle).patch.size >= 500 else 1024
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (side // 64 + 1, side // 64 + 1, 3), dtype=np.uint8)
    scene = np.repeat(np.repeat(coarse, 64, 0), 64, 1)[:side, :side]
    return np.clip(scene.astype(np.int16) + rng.integers(-20, 21, scene.shape), 0, 255).astype(np.uint8)


def model_and_bundle(out: Path, bundle: Path | None, checkpoint: Path | None, preset: str) -> tuple[Path, Path]:
    """The torch checkpoint and the bundle exported from it (exported into --out when needed)."""
    if preset not in ("default", "small"):
        raise InputError(f"--preset {preset!r}: choose default or small")
    if checkpoint is None and (out.parent / "model.safetensors").is_file():
        checkpoint = out.parent / "model.safetensors"
    if checkpoint is None:
        from export.gpu.bench_reference import make_bundle

        if not (out / "bundle" / "manifest.json").is_file() or not (out / "model.safetensors").is_file():
            typer.echo(f"gpu-check: exporting a seeded random-init {preset} model into {out}")
            make_bundle(out, preset, seed=0)
        return out / "model.safetensors", bundle or out / "bundle"
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: checkpoint not found")
    if bundle is None:
        bundle = out / "bundle"
        if not (bundle / "manifest.json").is_file():
            glsnet_export("onnx", str(checkpoint), "-o", str(bundle), "--force")
    return checkpoint, bundle


def print_cuda_table(results: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Stream scheduler + cuda-python + PyTorch engines vs PyTorch eager on CUDA (fp32; agreement with the CPU fp32 reference)")
    columns = ("image", "size", "batch", "graphs", "scheduled ms", "eager ms", "peak MB sched.", "peak MB eager", "sched. vs CPU", "eager vs CPU", "sched. vs eager")
    for column in columns:
        table.add_column(column)
    for r in results:
        table.add_row(
            r.image, f"{r.height}x{r.width}", str(r.batch_size), f"{'on' if r.cuda_graphs else 'off'} ({r.graph_replays} replays)",
            f"{r.scheduled_ms:.1f}", f"{r.eager_ms:.1f}", f"{r.scheduled_peak_device_mb:.0f}", f"{r.eager_peak_device_mb:.0f}",
            f"{r.scheduled_vs_cpu:.5f}", f"{r.eager_vs_cpu:.5f}", f"{r.scheduled_vs_eager:.5f}",
        )
    Console(width=200).print(table)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
