"""``glsnet``: segment images with a bundle (run), describe a bundle (info), measure the runtime (bench).

Thin typer commands: flags become SegmenterOptions/OutputOptions and public functions do the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from runtime.cli_errors import run_app
from runtime.errors import InputError

app = typer.Typer(
    help="Segment ultra-high-resolution images with a GLSNet bundle on ONNX Runtime (no torch needed).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'0,1,2' -> (0, 1, 2)."""
    if text is None or not text.strip():
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--bands {text!r}: expected comma-separated band indices such as 0,1,2") from None
    if any(b < 0 for b in bands):
        raise InputError(f"--bands {text!r}: band indices start at 0")
    return bands


@app.command()
def run(
    images: List[Path] = typer.Argument(..., help="Input images: PNG, JPEG or (Geo)TIFF (tiled TIFFs are read window by window)."),
    bundle: Path = typer.Option(..., "--bundle", "-b", help="Bundle directory written by glsnet-export."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (created if missing)."),
    precision: str = typer.Option("fp32", help="Graph set to run: fp32, fp16 or int8."),
    device: str = typer.Option("cpu", help="ONNX Runtime execution provider: cpu, cuda or tensorrt; or tensorrt-engine: the bundle's TensorRT engines on CUDA streams."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patches per batch (default: chosen by the memory plan)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget, e.g. 900MB: the quickest batch size and global banding that fit (glsnet bench --budgets shows the cost)."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads per graph (default: one per core)."),
    bands: Optional[str] = typer.Option(None, help="Input bands to feed the model, e.g. 0,1,2 (default: the bundle's)."),
    fmt: str = typer.Option("png", "--format", help="Mask format: png, or tif (written strip by strip, GeoTIFF tags kept)."),
    color: bool = typer.Option(True, "--color/--no-color", help="Also write a colour mask with the bundle's palette."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write the colour mask blended over the input."),
    stats: bool = typer.Option(False, "--stats", help="Also write per-class pixel statistics as JSON."),
    max_pixels: int = typer.Option(500_000_000, "--max-pixels", help="Largest PNG/JPEG (decoded whole) accepted, in pixels."),
) -> None:
    """Segment IMAGES and write <stem>_mask (+ _color, _overlay, _stats.json) into the output folder."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from runtime.image_writers import OutputOptions
    from runtime.memory_budget import parse_memory_size
    from runtime.segmenter import Segmenter, SegmenterOptions

    selected = parse_bands(bands)
    options = SegmenterOptions(
        precision=precision,
        device=device,
        batch_size=batch_size,
        max_memory=parse_memory_size(max_memory),
        threads=threads,
        bands=selected,
        max_pixels=max_pixels,
    )
    outputs = OutputOptions(format=fmt, color=color, overlay=overlay, stats=stats, display_bands=selected)
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
def info(bundle: Path = typer.Argument(..., help="Bundle directory.")) -> None:
    """Summarise a bundle: classes, patch geometry, graph sets, engines and accuracy reports."""
    from rich.console import Console

    from runtime.bundle_summary import print_summary

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
    budgets: str = typer.Option("700MB,900MB,1.2GB", "--budgets", help="--max-memory values to measure at --size (comma-separated; '' for none)."),
) -> None:
    """Wall time, peak RSS (with an RSS timeline by phase) and patches/s of the runtime vs the PyTorch reference,
    runtime peak RSS vs image height, memory budgets, and the runtime's fraction of the machine's sgemm rate."""
    from runtime.bench import BenchOptions, run_bench
    from runtime.memory_budget import parse_memory_size

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


if __name__ == "__main__":
    main()
