"""``glsnet``: segment images with a bundle (run, or batch on Ray), describe a bundle (info), measure the runtime (bench).

Thin typer commands: flags become SegmenterOptions/OutputOptions and public functions do the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from runtime import cli_options as opt
from runtime.cli_errors import run_app
from runtime.cli_options import parse_bands  # noqa: F401  (importable from here, as before)
from runtime.errors import InputError
from runtime.process_memory.huge_pages import restart_with_huge_pages

app = typer.Typer(
    help="Segment ultra-high-resolution images with a GLSNet bundle on ONNX Runtime or TensorRT (no torch needed).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def run(
    images: List[Path] = typer.Argument(..., help="Input images: PNG, JPEG or (Geo)TIFF (tiled TIFFs are read window by window)."),
    bundle: Path = opt.BUNDLE,
    output: Path = opt.OUTPUT,
    precision: str = opt.PRECISION,
    engine: str = opt.ENGINE,
    provider: Optional[str] = opt.PROVIDER,
    device: Optional[str] = opt.DEVICE,
    cuda_graphs: bool = opt.CUDA_GRAPHS,
    dla_core: Optional[int] = opt.DLA_CORE,
    batch_size: Optional[str] = opt.BATCH_SIZE,
    max_memory: Optional[str] = opt.MAX_MEMORY,
    max_device_memory: Optional[str] = opt.MAX_DEVICE_MEMORY,
    threads: Optional[int] = opt.THREADS,
    keep_activations: bool = opt.KEEP_ACTIVATIONS,
    bands: Optional[str] = opt.BANDS,
    input_range: Optional[str] = opt.INPUT_RANGE,
    fmt: str = opt.FORMAT,
    color: bool = opt.COLOR,
    overlay: bool = opt.OVERLAY,
    stats: bool = opt.STATS,
    max_pixels: int = opt.MAX_PIXELS,
    min_overlap: Optional[int] = opt.MIN_OVERLAP,
) -> None:
    """Segment IMAGES and write <stem>_mask (+ _color, _overlay, _stats.json) into the output folder."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from runtime.segmenter import Segmenter

    options = opt.segmenter_options(
        precision=precision, engine=engine, provider=provider, device=device, batch_size=batch_size, max_memory=max_memory,
        threads=threads, bands=bands, input_range=input_range, max_pixels=max_pixels, cuda_graphs=cuda_graphs, dla_core=dla_core,
        max_device_memory=max_device_memory, min_overlap=min_overlap, keep_activations=keep_activations,
    )
    outputs = opt.output_options(fmt, color, overlay, stats, bands)
    console = Console(stderr=True)
    segmenter = Segmenter(bundle, options=options)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("patches"), TimeElapsedColumn())
    with segmenter, Progress(*columns, console=console, transient=False) as progress:
        for image in images:
            task = progress.add_task(image.name, total=None)

            def advance(done: int, total: int, task: int = task) -> None:
                progress.update(task, completed=done, total=total)

            paths = segmenter.segment_file(image, output, outputs, progress=advance)
            progress.console.print(f"{image} -> " + ", ".join(str(p) for p in paths.written()))


@app.command()
def batch(
    inputs: List[str] = typer.Argument(..., help="Images, folders or prefixes (their images), quoted globs such as 'scenes/**/*.tif', or .txt/.csv lists; plain paths or s3://, gs://, az://, file:// URIs."),
    bundle: str = typer.Option(..., "--bundle", "-b", help="Bundle folder: a path, or an s3://, gs://, az:// URI (fetched once per node, cached by its manifest's sha256)."),
    output: str = typer.Option(..., "--output", "-o", help="Output folder: a path (relative to this directory, resolved here) or an s3://, gs://, az:// URI."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join: auto (the one this node belongs to) or HOST:PORT. Default: $RAY_ADDRESS when set (ray job submit), else a local Ray instance for this run."),
    workers: int = typer.Option(2, "--workers", "-w", help="Worker actors, each with its own Segmenter (opens the bundle once)."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="Ray CPUs reserved by each worker; also its ONNX Runtime threads unless --threads is given."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="Ray GPUs reserved by each worker (with --provider cuda or tensorrt, or --engine tensorrt)."),
    memory_per_worker: Optional[str] = typer.Option(None, "--memory-per-worker", help="Ray memory reserved by each worker, e.g. 3GB, so Ray places no more workers on a node than fit (default: the memory plan of the largest scene plus the Ray process, on ONNX Runtime's CPU provider; else --max-memory when given)."),
    retries: int = typer.Option(2, "--retries", help="Times a scene is retried when its worker dies (killed, out of memory); a lost or preempted node does not count."),
    scene_timeout: Optional[float] = typer.Option(None, "--scene-timeout", help="Seconds a scene may take before its worker is killed and the scene recorded as failed (default: 60 s per megapixel, at least 300 s; 0: no deadline)."),
    precision: str = opt.PRECISION,
    engine: str = opt.ENGINE,
    provider: Optional[str] = opt.PROVIDER,
    device: Optional[str] = opt.DEVICE,
    cuda_graphs: bool = opt.CUDA_GRAPHS,
    dla_core: Optional[int] = opt.DLA_CORE,
    batch_size: Optional[str] = opt.BATCH_SIZE,
    max_memory: Optional[str] = opt.MAX_MEMORY,
    max_device_memory: Optional[str] = opt.MAX_DEVICE_MEMORY,
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads per graph in each worker (default: --cpus-per-worker, rounded)."),
    bands: Optional[str] = opt.BANDS,
    input_range: Optional[str] = opt.INPUT_RANGE,
    fmt: str = opt.FORMAT,
    color: bool = opt.COLOR,
    overlay: bool = opt.OVERLAY,
    max_pixels: int = opt.MAX_PIXELS,
    min_overlap: Optional[int] = opt.MIN_OVERLAP,
) -> None:
    """Segment many scenes on Ray, one Segmenter per worker; resumable, a failed scene never stops the batch.

    Writes the same files as `glsnet run` (always with _stats.json, which records the bundle and
    options), plus OUTPUT/batch-report.jsonl. A re-run skips the scenes already done with the same
    bundle and options. Exit status 1 when any scene failed.
    """
    from runtime.batch.dispatcher import BatchOptions, run_batch
    from runtime.byte_sizes import parse_memory_size

    options = BatchOptions(
        inputs=tuple(inputs),
        bundle=bundle,
        output=output,
        segmenter=opt.segmenter_options(
            precision=precision, engine=engine, provider=provider, device=device, batch_size=batch_size, max_memory=max_memory,
            threads=threads, bands=bands, input_range=input_range, max_pixels=max_pixels, cuda_graphs=cuda_graphs, dla_core=dla_core,
            max_device_memory=max_device_memory, min_overlap=min_overlap,
        ),
        outputs=opt.output_options(fmt, color, overlay, True, bands),
        address=address,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        memory_per_worker=parse_memory_size(memory_per_worker),
        retries=retries,
        scene_timeout_s=scene_timeout,
    )
    summary = run_batch(options)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def info(bundle: Path = typer.Argument(..., help="Bundle directory.")) -> None:
    """Summarise a bundle: classes, patch geometry, graph sets, engines and accuracy reports."""
    from rich.console import Console

    from runtime.bundle.summary import print_summary

    print_summary(bundle, Console())


@app.command()
def bench(
    out: Path = typer.Option(Path("demo-out/bench"), "--out", help="Folder for the bench bundle, images and report."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Bundle to measure (default: a seeded random-init bundle, exported with torch)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="The torch checkpoint of --bundle, for the reference half."),
    preset: str = typer.Option("default", help="Configuration of the random-init model: default (the paper's GLSNet) or small."),
    size: int = typer.Option(2448, help="Side of the square bench image."),
    tall_factors: str = typer.Option("2,4", help="Taller TIFFs to measure, as multiples of --size in height (e.g. 2,4)."),
    torch_reference: bool = typer.Option(True, "--torch/--no-torch", help="Also measure the PyTorch reference (needs torch)."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads per graph."),
    batch: bool = typer.Option(False, "--batch", help="Instead: glsnet batch's scenes/min with 1 and 2 Ray workers on the same 8 scenes, and per-worker peak RSS (needs the cluster extra)."),
    batch_nodes: bool = typer.Option(False, "--batch-nodes", help="With --batch: 1 and 2 worker nodes of a local multi-node Ray cluster (loopback, one worker per node) instead of 1 and 2 workers."),
    budgets: str = typer.Option("700MB,900MB,1.2GB", "--budgets", help="--max-memory values to measure at --size (comma-separated; '' for none)."),
) -> None:
    """Wall time, peak RSS (with an RSS timeline by phase) and patches/s of the runtime vs the PyTorch reference,
    runtime peak RSS vs image height, memory budgets, and the runtime's fraction of the machine's sgemm rate.

    With --batch: glsnet batch's scenes/min with 1 and 2 Ray workers instead."""
    if batch:
        from runtime.bench.batch_bench import BatchBenchOptions, run_batch_bench

        run_batch_bench(BatchBenchOptions(out=out / ("batch-nodes" if batch_nodes else "batch"), bundle=bundle, nodes=batch_nodes))
        return
    from runtime.bench.segment_bench import BenchOptions, run_bench
    from runtime.byte_sizes import parse_memory_size

    if preset not in ("default", "small"):
        raise InputError(f"--preset {preset!r}: choose default or small")
    chosen = tuple(b.strip() for b in budgets.split(",") if b.strip())
    for text in chosen:
        parse_memory_size(text)  # a bad size fails here, before any measuring
    run_bench(
        BenchOptions(
            out=out, bundle=bundle, checkpoint=checkpoint, preset=preset, size=size, tall_factors=_factors(tall_factors),
            torch_reference=torch_reference, threads=threads, budgets=chosen,
        )
    )


def _factors(text: str) -> tuple[int, ...]:
    try:
        factors = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--tall-factors {text!r}: expected comma-separated integers such as 2,4") from None
    if any(f < 2 for f in factors):
        raise InputError(f"--tall-factors {text!r}: each factor must be >= 2")
    return factors


def main() -> None:
    run_app(app)


if __name__ == "__main__":  # python -m runtime.cli; `glsnet` (runtime/__main__.py) restarts before these imports
    restart_with_huge_pages()
    main()
