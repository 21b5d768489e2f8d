"""The options `glsnet run` and `glsnet batch` share: defined once, parsed once into SegmenterOptions/OutputOptions.

Each constant is a typer option used as the default of a command parameter, so both commands show
the same flag, default and help; ``segmenter_options`` and ``output_options`` turn the parsed
values into the dataclasses the runtime takes.
"""

from __future__ import annotations

import typer

from runtime.errors import InputError

BUNDLE = typer.Option(..., "--bundle", "-b", help="Bundle directory written by glsnet-export.")
OUTPUT = typer.Option(..., "--output", "-o", help="Output folder (created if missing).")
PRECISION = typer.Option("fp32", help="Graph set to run: fp32, fp16 or int8.")
DEVICE = typer.Option("cpu", help="ONNX Runtime execution provider: cpu, cuda or tensorrt; or tensorrt-engine: the bundle's TensorRT engines on CUDA streams.")
BATCH_SIZE = typer.Option(None, "--batch-size", help="Patches per batch (default: chosen by the memory plan).")
MAX_MEMORY = typer.Option(None, "--max-memory", help="Memory budget, e.g. 2GB; picks batch size and global banding.")
THREADS = typer.Option(None, help="ONNX Runtime intra-op threads per graph (default: one per core).")
BANDS = typer.Option(None, help="Input bands to feed the model, e.g. 0,1,2 (default: the bundle's).")
FORMAT = typer.Option("png", "--format", help="Mask format: png, or tif (written strip by strip, GeoTIFF tags kept).")
COLOR = typer.Option(True, "--color/--no-color", help="Also write a colour mask with the bundle's palette.")
OVERLAY = typer.Option(False, "--overlay", help="Also write the colour mask blended over the input.")
STATS = typer.Option(False, "--stats", help="Also write per-class pixel statistics as JSON.")
MAX_PIXELS = typer.Option(500_000_000, "--max-pixels", help="Largest PNG/JPEG (decoded whole) accepted, in pixels.")

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


def segmenter_options(
    precision: str,
    device: str,
    batch_size: int | None,
    max_memory: str | None,
    threads: int | None,
    bands: str | None,
    max_pixels: int,
):
    """The parsed flags as SegmenterOptions."""
    from runtime.memory_budget import parse_memory_size
    from runtime.segmenter import SegmenterOptions

    return SegmenterOptions(
        precision=precision,
        device=device,
        batch_size=batch_size,
        max_memory=parse_memory_size(max_memory),
        threads=threads,
        bands=parse_bands(bands),
        max_pixels=max_pixels,
    )


def output_options(fmt: str, color: bool, overlay: bool, stats: bool, bands: str | None):
    """The parsed flags as OutputOptions (the overlay shows the bands fed to the model)."""
    from runtime.image_writers import OutputOptions

    return OutputOptions(format=fmt, color=color, overlay=overlay, stats=stats, display_bands=parse_bands(bands))
