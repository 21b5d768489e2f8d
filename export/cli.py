"""``glsnet-export``: thin typer commands over the export, verification, calibration and build functions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runtime.cli_errors import run_app
from runtime.errors import InputError

app = typer.Typer(
    help="Export a GLSNet checkpoint to a bundle of three ONNX graphs, verify it, calibrate it and build engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("onnx")
def onnx_command(
    checkpoint: Path = typer.Argument(..., help="a GLSNet checkpoint (.safetensors from glsnet-train)"),
    output: Path = typer.Option(..., "--output", "-o", help="bundle directory to write"),
    opset: int = typer.Option(17, help="ONNX opset (17-20)"),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="simplify the graphs with onnxslim"),
    force: bool = typer.Option(False, "--force", help="replace an existing bundle"),
    exporter: str = typer.Option("torchscript", help="torch exporter: torchscript (default) or dynamo"),
    tensorrt_check: bool = typer.Option(True, "--tensorrt-check/--no-tensorrt-check", help="refuse graphs TensorRT 10/11 cannot parse"),
) -> None:
    """Export the global, local and fusion graphs and the manifest into a bundle directory."""
    from rich.console import Console

    from export.graphs.onnx_export import ExportOptions, export_bundle

    options = ExportOptions(opset=opset, simplify=simplify, force=force, exporter=exporter, check_tensorrt=tensorrt_check)
    console = Console()
    with console.status(f"exporting {checkpoint} ..."):
        manifest = export_bundle(checkpoint, output, options)
    for role, spec in manifest.graphs["fp32"].items():
        console.print(f"{role:6} {spec.file:12} sha256 {spec.sha256[:16]}…  opset {spec.opset}")
    console.print(f"bundle written: {output}")


@app.command("verify")
def verify_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    image: Optional[Path] = typer.Argument(None, help="image to segment (default: a seeded synthetic scene)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint to compare with (default: the one in the manifest)"),
    atol: float = typer.Option(1e-4, help="absolute tolerance per graph output"),
    rtol: float = typer.Option(1e-4, help="tolerance relative to each output's largest magnitude"),
    min_agreement: float = typer.Option(0.9999, help="minimum pixel agreement of the whole-image masks (fraction)"),
    batch_size: int = typer.Option(6, help="patches per local/fusion run"),
    size: int = typer.Option(1024, help="synthetic scene size when no IMAGE is given"),
    seed: int = typer.Option(0, help="synthetic scene seed"),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads"),
    whole_image: bool = typer.Option(True, "--whole-image/--graphs-only", help="also compare whole-image masks"),
) -> None:
    """Compare the bundle's graphs (ONNX Runtime, CPU) with the PyTorch model; exit 1 when over tolerance."""
    from export.graphs.verify import VerifyOptions, verify_bundle
    from runtime.errors import AccuracyGateError

    options = VerifyOptions(
        atol=atol, rtol=rtol, min_pixel_agreement=min_agreement, batch_size=batch_size,
        synthetic_size=size, seed=seed, threads=threads, whole_image=whole_image,
    )
    report = verify_bundle(bundle, image, checkpoint, options)
    for line in report.lines():
        typer.echo(line)
    if not report:
        raise AccuracyGateError(f"{bundle}: the graphs do not match the PyTorch model within tolerance (see FAILED lines)")


@app.command("inspect")
def inspect_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    height: int = typer.Option(2448, help="example image height for FLOPs"),
    width: int = typer.Option(2448, help="example image width for FLOPs"),
    batch: int = typer.Option(6, help="example patch batch for FLOPs"),
    tensorrt: bool = typer.Option(True, "--tensorrt/--no-tensorrt", help="run the TensorRT 10.x/11.x compatibility check"),
) -> None:
    """Print each graph's tensors, operator counts, parameters, FLOPs and TensorRT compatibility."""
    from rich.console import Console

    from export.graphs.inspect_graphs import ExampleSize, inspect_bundle, summary_tables
    from export.tensorrt.tensorrt_compat import check_bundle
    from runtime.bundle.manifest import read_manifest
    from runtime.errors import AccuracyGateError

    example = ExampleSize(height=height, width=width, batch=batch)
    summaries = inspect_bundle(bundle, example)
    compat = {}
    if tensorrt:
        for precision in read_manifest(bundle).graphs:
            for report in check_bundle(bundle, precision):
                compat[report.graph] = report
    console = Console()
    for table in summary_tables(summaries, example, compat):
        console.print(table)
    for report in compat.values():
        for line in report.lines()[1:]:
            console.print(line, markup=False)
    if compat and not all(compat.values()):
        raise AccuracyGateError(f"{bundle}: some graphs are not TensorRT-compatible (see ERROR lines)")


@app.command("calibrate")
def calibrate_command(
    bundle: Path = typer.Argument(..., help="bundle directory (with its fp32 graphs)"),
    images: Optional[list[Path]] = typer.Argument(None, help="images like the ones the model will see (masks beside them are used); or --data"),
    data: Optional[Path] = typer.Option(None, "--data", help="a labelled dataset folder instead of IMAGES (see --layout)"),
    layout: str = typer.Option("deepglobe", help="layout of --data: deepglobe, vaihingen, mmseg-vaihingen, mmseg-potsdam, mmseg-loveda"),
    split: str = typer.Option("train", help="mmseg layouts: the split read (train or val)"),
    max_scenes: int = typer.Option(16, help="with --data: scenes read (a seeded choice when the folder has more)"),
    count: int = typer.Option(256, help="calibration patches"),
    holdout: int = typer.Option(64, help="held-back patches for the accuracy gate"),
    holdout_fraction: float = typer.Option(0.25, help="share of scenes held back"),
    scene_size: int = typer.Option(1024, help="side of the crops the global graph is calibrated on (px)"),
    scenes_per_image: int = typer.Option(2, help="crops per image"),
    seed: int = typer.Option(0, help="sampling seed"),
) -> None:
    """Sample balanced calibration tiles from IMAGES into the bundle (calibration/tiles.npz)."""
    import logging

    from rich.console import Console
    from rich.logging import RichHandler

    from calibration.tiles import TileOptions, calibrate_bundle

    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(show_path=False)], format="%(message)s")
    options = TileOptions(
        count=count, holdout=holdout, holdout_fraction=holdout_fraction, scene_size=scene_size,
        scenes_per_image=scenes_per_image, seed=seed,
    )
    console = Console()
    labels = names = None
    if data is not None:
        if images:
            raise InputError("give either IMAGES or --data, not both")
        from export.dataset_scenes import read_dataset_scenes

        images, labels, names = read_dataset_scenes(bundle, data, layout, split, max_scenes, seed)
    elif not images:
        raise InputError("give calibration IMAGES, or a labelled folder with --data DIR --layout LAYOUT")
    with console.status(f"sampling calibration tiles from {len(images)} image(s) ..."):
        tiles = calibrate_bundle(bundle, images, options, labels, names)
    counts = tiles.counts()
    console.print(
        f"{counts['calibration_patches']} calibration and {counts['holdout_patches']} held-back patches of "
        f"{tiles.patch_size} px from {counts['scenes']} scenes ({counts['holdout_scenes']} held back); {tiles.info['method']}"
    )
    console.print(f"written: {bundle / 'calibration' / 'tiles.npz'}")


@app.command("build")
def build_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 graphs (fp32 inputs/outputs; softmax, LayerNorm, crop arithmetic in fp32)"),
    int8: bool = typer.Option(False, "--int8", help="INT8 Q/DQ graphs from the bundle's calibration tiles"),
    target: str = typer.Option("auto", help="auto (TensorRT when installed), tensorrt or onnxruntime"),
    force: bool = typer.Option(False, "--force", help="keep the graphs even when they fail the accuracy gate"),
    min_agreement: Optional[float] = typer.Option(None, help="gate: minimum pixel agreement with fp32 (fraction; default 0.999 fp16, 0.98 int8)"),
    max_miou_drop: Optional[float] = typer.Option(None, help="gate: maximum mIoU drop in points (default: int8 1.0, fp16 not gated)"),
    calibration_method: str = typer.Option("percentile", help="int8 ranges: percentile, entropy or minmax"),
    max_excluded_groups: int = typer.Option(6, help="int8: at most this many node groups left in float by the sensitivity check"),
    modelopt: bool = typer.Option(False, "--modelopt", help="int8: quantize the CNN branches with NVIDIA ModelOpt (needs nvidia-modelopt)"),
    whole_images: bool = typer.Option(True, "--whole-images/--tiles-only", help="gate on whole held-back scenes too"),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads for the checks"),
    opt_batch: int = typer.Option(6, help="TensorRT: patch batch the local and fusion engines are tuned for"),
    max_batch: int = typer.Option(12, help="TensorRT: largest patch batch the engines accept"),
    max_image_size: str = typer.Option("4096x4096", help="TensorRT: largest HxW the global engine accepts"),
    workspace_mib: Optional[int] = typer.Option(None, "--workspace", help="TensorRT: builder workspace pool in MiB (default: TensorRT's)"),
    dla_core: Optional[int] = typer.Option(None, help="TensorRT: put the local engine on this DLA core, with GPU fallback (Jetson)"),
) -> None:
    """Convert to FP16 or INT8, gate against fp32 (exit 1 below thresholds), then build engines."""
    import dataclasses
    import logging

    from rich.logging import RichHandler

    from calibration.accuracy_gate import GateThresholds
    from calibration.int8 import CalibrationMethod, Int8Options
    from export.build import BuildOptions, build_precision
    from export.tensorrt.tensorrt_build import TensorRTBuildOptions
    from runtime.errors import InputError

    if fp16 == int8:
        raise InputError("choose exactly one of --fp16 and --int8")
    precision = "fp16" if fp16 else "int8"
    if calibration_method not in {m.value for m in CalibrationMethod}:
        raise InputError(f"--calibration-method {calibration_method!r}: choose percentile, entropy or minmax")
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(show_path=False)], format="%(message)s")
    thresholds = GateThresholds()
    gate = thresholds.of(precision)
    if min_agreement is not None:
        gate = dataclasses.replace(gate, min_agreement=min_agreement)
    if max_miou_drop is not None:
        gate = dataclasses.replace(gate, max_miou_drop=max_miou_drop)
    options = BuildOptions(
        precision=precision,
        target=target,
        force=force,
        thresholds=dataclasses.replace(thresholds, **{precision: gate}),
        int8=Int8Options(method=CalibrationMethod(calibration_method), max_excluded_groups=max_excluded_groups, use_modelopt=modelopt),
        whole_images=whole_images,
        threads=threads,
        tensorrt=TensorRTBuildOptions(
            min_batch=1,
            opt_batch=opt_batch,
            max_batch=max_batch,
            max_image_size=_size(max_image_size, "--max-image-size"),
            workspace=None if workspace_mib is None else workspace_mib << 20,
            dla_core=dla_core,
        ),
    )
    result = build_precision(bundle, options)
    for role, spec in result.graphs.items():
        typer.echo(f"{precision} {role:6} {spec.file:18} sha256 {spec.sha256[:16]}…")
    if result.engine is not None:
        typer.echo(f"engines: {result.engine.target} {result.engine.directory}")


def _size(text: str, option: str) -> tuple[int, int]:
    """'HxW' -> (H, W), with an error naming the option."""
    from runtime.errors import InputError

    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"{option} {text!r}: expected HEIGHTxWIDTH, e.g. 4096x4096") from None
    return height, width


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
