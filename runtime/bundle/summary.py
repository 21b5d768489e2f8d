"""A human-readable summary of a bundle (``glsnet info``): what it segments, with which graphs, how well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runtime.bundle.manifest import Manifest, read_manifest, sha256_file
from runtime.byte_sizes import format_bytes
from runtime.errors import BundleError


def print_summary(bundle_dir: str | Path, console: Console) -> Manifest:
    """Print classes, geometry, graph sets, engines, calibration and accuracy reports; return the manifest.

    Every file's checksum is verified as it is listed; BundleError names the files that fail, after the summary.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    p = manifest.patch
    norm = manifest.normalization
    console.print(f"[bold]GLSNet bundle[/bold] {bundle_dir} (schema {manifest.schema_version})")
    console.print(
        f"patch {p.size} px, min overlap {p.min_overlap} px, logits at stride {p.output_stride}, "
        f"global features at stride {p.feature_stride}; input bands {list(norm.bands)}, "
        f"mean {list(norm.mean)}, std {list(norm.std)}, scale {norm.scale:g}"
    )
    pixels = manifest.input_pixels
    console.print(
        f"trained on {pixels.dtype} pixels in [{pixels.low:g}, {pixels.high:g}]; "
        "map other pixel types with glsnet run --input-range"
    )
    failures: list[str] = []
    if manifest.model:
        keys = ("global_backbone", "local_backbone", "width", "skip_width", "head_width", "context")
        console.print("model: " + ", ".join(f"{k}={manifest.model[k]}" for k in keys if k in manifest.model))

    classes = Table(title="classes")
    for column in ("index", "name", "colour (RGB)"):
        classes.add_column(column)
    for i, (name, rgb) in enumerate(zip(manifest.classes, manifest.palette)):
        hex_colour = "#%02x%02x%02x" % tuple(rgb)
        classes.add_row(str(i), escape(name), f"[on {hex_colour}]   [/] {tuple(rgb)}")
    console.print(classes)

    graphs = Table(title="graph sets")
    for column in ("precision", "role", "file", "size", "inputs", "outputs", "sha256", "checksum"):
        graphs.add_column(column, overflow="fold")
    for precision, roles in manifest.graphs.items():
        for role, spec in roles.items():
            path = bundle_dir / spec.file
            size = format_bytes(path.stat().st_size) if path.is_file() else "[red]missing[/red]"
            check = _verify(path, spec.sha256, failures)
            graphs.add_row(precision, role, escape(spec.file), size, _tensors(spec.inputs), _tensors(spec.outputs), spec.sha256[:12], check)
    console.print(graphs)

    if manifest.engines:
        engines = Table(title="engines")
        for column in ("target", "precision", "directory", "roles", "TensorRT", "GPU", "compute", "created", "checksums"):
            engines.add_column(column)
        for e in manifest.engines:
            cells = (e.target, e.precision, e.directory, ", ".join(e.files), e.tensorrt_version or "-",
                     e.gpu_name or "-", e.compute_capability or "-", e.created or "-")
            checks = [_verify(_engine_path(bundle_dir, e.directory, entry["file"]), entry["sha256"], failures) for entry in e.files.values()]
            engines.add_row(*(escape(str(c)) for c in cells), "[green]ok[/green]" if all("ok" in c for c in checks) else "[red]FAILED[/red]")
        console.print(engines)
    else:
        console.print("engines: none (build them with glsnet-export build)")

    if manifest.calibration:
        console.print("calibration: " + escape(_flat(manifest.calibration)))
    if manifest.accuracy:
        accuracy = Table(title="accuracy reports")
        accuracy.add_column("precision")
        accuracy.add_column("report")
        for precision, report in manifest.accuracy.items():
            accuracy.add_row(precision, escape(_flat(report)))
        console.print(accuracy)
    else:
        console.print("accuracy reports: none (glsnet-export build gates each precision and records them here)")
    if manifest.provenance:
        console.print("provenance: " + escape(_flat(manifest.provenance)))
    if failures:
        raise BundleError(f"{bundle_dir}: {len(failures)} file(s) fail their checksum: " + "; ".join(failures))
    console.print("checksums: every file matches the manifest")
    return manifest


def _verify(path: Path, expected: str, failures: list[str]) -> str:
    """'ok', or a red verdict (and a line in ``failures``) for a missing or changed file."""
    if not path.is_file():
        failures.append(f"{path} is missing")
        return "[red]missing[/red]"
    actual = sha256_file(path)
    if actual != expected:
        failures.append(f"{path} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…")
        return "[red]MISMATCH[/red]"
    return "[green]ok[/green]"


def _engine_path(bundle_dir: Path, directory: str, file: str) -> Path:
    """An engine file as runtime.bundle.loader resolves it: relative to the engine directory unless it already starts there."""
    relative = Path(file)
    if relative.parts[: len(Path(directory).parts)] != Path(directory).parts:
        relative = Path(directory) / relative
    return bundle_dir / relative


def _tensors(specs) -> str:
    return escape("\n".join(f"{t.name}[{','.join(str(d) for d in t.shape)}]" + ("" if t.dtype == "float32" else f" {t.dtype}") for t in specs))


def _flat(value: Any, limit: int = 400) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_flat(v, 120)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_flat(v, 60) for v in value) + "]"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
