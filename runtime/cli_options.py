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
ENGINE = typer.Option("onnxruntime", "--engine", help="What runs the graphs: onnxruntime, or tensorrt (the bundle's TensorRT engines on CUDA streams).")
PROVIDER = typer.Option(None, "--provider", help="ONNX Runtime execution provider: cpu (default), cuda or tensorrt.")
DEVICE = typer.Option(None, "--device", hidden=True, help="Deprecated: cpu|cuda|tensorrt (= --provider) or tensorrt-engine (= --engine tensorrt).")
CUDA_GRAPHS = typer.Option(False, "--cuda-graphs", help="--engine tensorrt: replay fixed-shape local/fusion batches as CUDA graphs.")
DLA_CORE = typer.Option(None, "--dla-core", help="--engine tensorrt: use the bundle's DLA engines built for this core (Jetson).")
def parse_batch_size(text: str | int | None) -> int | str | None:
    """``--batch-size``: a number of patches (SegmenterOptions checks it is positive), or ``auto``."""
    from runtime.errors import InputError

    if text is None or isinstance(text, int):
        return text
    value = str(text).strip().lower()
    if value == "auto":
        return value
    if value.lstrip("-").isdigit():
        return int(value)
    raise InputError(f"--batch-size {text!r}: give a positive number of patches or 'auto'")


def _batch_size_flag(text: str) -> int | str | None:
    """Numbers and 'auto' parsed; anything else passed on, so the one error line comes from segmenter_options."""
    try:
        return parse_batch_size(text)
    except Exception:  # noqa: BLE001 - refused later, with the CLI's own one-line error
        return text


BATCH_SIZE = typer.Option(
    None,
    "--batch-size",
    parser=_batch_size_flag,
    metavar="N|auto",
    help="Patches per batch (default: chosen by the memory plan); 'auto' on a GPU: the largest batch free device memory holds.",
)
MAX_DEVICE_MEMORY = typer.Option(
    None,
    "--max-device-memory",
    help="GPU memory budget for --engine tensorrt, e.g. 1.4GB: engines, their scratch and the schedule's buffers must fit; the batch is the largest that does.",
)
MAX_MEMORY = typer.Option(None, "--max-memory", help="Memory budget, e.g. 900MB: the quickest batch size and global banding that fit (glsnet bench --budgets shows the cost).")
THREADS = typer.Option(None, help="ONNX Runtime intra-op threads per graph (default: one per core).")
KEEP_ACTIVATIONS = typer.Option(
    True,
    "--keep-activations/--release-activations",
    help="CPU, fp32 or int8, no --max-memory: the graphs share one ONNX Runtime arena whose pages every run reuses, held until "
    "the command ends (faster); or map each run's activations afresh and hand them back after it.",
)
BANDS = typer.Option(None, help="Input bands to feed the model, e.g. 0,1,2 (default: the bundle's).")
FORMAT = typer.Option("png", "--format", help="Mask format: png, or tif (written strip by strip, GeoTIFF tags kept).")
COLOR = typer.Option(True, "--color/--no-color", help="Also write a colour mask with the bundle's palette.")
OVERLAY = typer.Option(False, "--overlay", help="Also write the colour mask blended over the input.")
STATS = typer.Option(False, "--stats", help="Also write per-class pixel statistics as JSON.")
MIN_OVERLAP = typer.Option(
    None,
    "--min-overlap",
    metavar="PX",
    help="Minimum overlap of neighbouring patches in pixels (default: the bundle's patch.min_overlap, see `glsnet info`); "
    "smaller values can mean fewer patches, 0 <= PX < patch size (docs/runtime.md).",
)
MAX_PIXELS = typer.Option(500_000_000, "--max-pixels", help="Largest PNG/JPEG (decoded whole) accepted, in pixels (at least 1).")
INPUT_RANGE = typer.Option(
    None,
    "--input-range",
    help="Map other pixel types onto the range the bundle was trained on (see `glsnet info`): MIN,MAX for all bands "
    "(e.g. 0,4095 for 12-bit data), MIN,MAX/MIN,MAX/... per band, or pLOW,pHIGH for a percentile stretch (e.g. p2,p98). "
    "Without it an image of another pixel type is refused.",
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


def engine_and_provider(engine: str, provider: str | None, device: str | None) -> tuple[str, str | None]:
    """--engine/--provider, or the deprecated --device mapped onto them with a message."""
    from runtime.options import deprecation_message, legacy_device

    if device is None:
        return engine, provider
    if engine != "onnxruntime" or provider is not None:
        raise InputError(f"--device {device} cannot be combined with --engine/--provider; use --engine/--provider only")
    typer.echo(f"warning: {deprecation_message(device)}", err=True)
    return legacy_device(device)


def segmenter_options(
    *,
    precision: str,
    engine: str,
    provider: str | None,
    device: str | None,
    batch_size: int | str | None,
    max_memory: str | None,
    threads: int | None,
    bands: str | None,
    max_pixels: int,
    input_range: str | None = None,
    cuda_graphs: bool = False,
    dla_core: int | None = None,
    max_device_memory: str | None = None,
    min_overlap: int | None = None,
    keep_activations: bool = False,
):
    """The parsed flags as SegmenterOptions."""
    from runtime.byte_sizes import parse_memory_size
    from runtime.image_io.input_range import parse_input_range
    from runtime.options import SegmenterOptions

    engine, provider = engine_and_provider(engine, provider, device)
    return SegmenterOptions(
        precision=precision,
        engine=engine,
        provider=provider,
        cuda_graphs=cuda_graphs,
        dla_core=dla_core,
        batch_size=parse_batch_size(batch_size),
        max_memory=parse_memory_size(max_memory),
        max_device_memory=parse_memory_size(max_device_memory),
        threads=threads,
        bands=parse_bands(bands),
        max_pixels=max_pixels,
        input_range=parse_input_range(input_range),
        min_overlap=min_overlap,
        keep_activations=keep_activations,
    )


def output_options(fmt: str, color: bool, overlay: bool, stats: bool, bands: str | None):
    """The parsed flags as OutputOptions (the overlay shows the bands fed to the model)."""
    from runtime.image_io.writers import OutputOptions

    return OutputOptions(format=fmt, color=color, overlay=overlay, stats=stats, display_bands=parse_bands(bands))
