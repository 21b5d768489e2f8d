"""The bundle manifest: the one contract between the build side and every runtime (Python or C++).

A bundle is a directory with ``manifest.json`` and the files it names. This module defines the
manifest's schema as frozen dataclasses, validates it on read (unknown keys are errors), checks
file checksums, and writes it atomically.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomic_file import write_text_atomic
from runtime.errors import BundleError, InputError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_ROLES = ("global", "local", "fusion")
PRECISIONS = ("fp32", "fp16", "int8")

# Graph tensor names: every exporter and every runtime uses these.
GLOBAL_INPUT = "image"
GLOBAL_OUTPUT = "global_features"
LOCAL_INPUT = "patches"
LOCAL_OUTPUTS = ("local_features", "local_skip")
FUSION_INPUTS = ("local_features", "local_skip", "global_features", "boxes")
FUSION_OUTPUT = "logits"
# The global branch stage by stage (optional, beside the single global graph): each stage graph maps
# [1, C_in, h, w] to [1, C_out, ceil(h/stride), ceil(w/stride)]; the strides multiply to the feature stride.
GLOBAL_STAGE_INPUT = "stage_input"
GLOBAL_STAGE_OUTPUT = "stage_output"

# Tensor names of each graph role, in order: (inputs, outputs).
ROLE_TENSORS = {
    "global": ((GLOBAL_INPUT,), (GLOBAL_OUTPUT,)),
    "local": ((LOCAL_INPUT,), LOCAL_OUTPUTS),
    "fusion": (FUSION_INPUTS, (FUSION_OUTPUT,)),
}
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool")
# Pixel types an input image may have (numpy names), and so the types a model may be trained on.
PIXEL_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64")

Dim = int | str  # a fixed size, or the name of a symbolic (dynamic) dimension


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, hashed where the page cache holds it (memory-mapped); read in 1 MiB blocks where it
    cannot be mapped (an empty file, a file system without mmap).

    Read block by block, every block is copied into a new buffer first: the paper-size bundle's graphs (188 MB)
    took 0.12-0.18 s to verify that way at every start, against 0.07-0.08 s mapped (2 cores, files cached).
    """
    with open(path, "rb") as fh:
        try:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return hashlib.sha256(mapped).hexdigest()
        except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle."""

    file: str
    precision: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = 17

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.file)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.file)


@dataclass(frozen=True)
class EngineSpec:
    """Engines built from one precision's graphs for one target (TensorRT, or ONNX Runtime optimized graphs)."""

    target: str  # "tensorrt" or "onnxruntime"
    precision: str
    directory: str  # relative to the bundle
    files: dict[str, dict[str, str]]  # role -> {"file": ..., "sha256": ...}
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    dla_core: int | None = None
    profiles: dict[str, Any] = field(default_factory=dict)
    created: str = ""


@dataclass(frozen=True)
class GlobalStageSpec:
    """One stage of the global branch as its own graph, so the branch can run in bands stage by stage.

    ``halo``: rows of context (in this stage's input rows, a multiple of ``stride``) above and below a
    band that make the band's kept output rows exactly the whole-image ones (at least the stage's
    receptive-field radius).
    """

    graph: GraphSpec
    stride: int
    halo: int


@dataclass(frozen=True)
class Normalization:
    """pixel_float = (pixel / scale - mean) / std, per band, after selecting ``bands``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0
    bands: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class InputPixels:
    """The pixels the model was trained on: their type and the values they span (before normalisation).

    An image of another type is refused unless the user maps it onto this range (``--input-range``,
    runtime/image_io/input_range.py): dividing a 16-bit pixel by an 8-bit scale gives a silently wrong mask.
    Manifests written before this field existed were all trained on 8-bit images, hence the default.
    """

    dtype: str = "uint8"
    low: float = 0.0
    high: float = 255.0


@dataclass(frozen=True)
class PatchSpec:
    size: int
    min_overlap: int
    output_stride: int = 4
    feature_stride: int = 32


def with_min_overlap(manifest: "Manifest", min_overlap: int | None) -> "Manifest":
    """``manifest`` with its patch grid's minimum overlap replaced (``glsnet run --min-overlap``); None: unchanged.

    The overlap is a run-time choice, not part of the graphs: they see patches of ``patch.size`` whatever the
    stride, and the stitching weights blend any overlap. A smaller overlap means fewer patches (fewer FLOPs).
    """
    if min_overlap is None:
        return manifest
    size = manifest.patch.size
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, int) or not 0 <= min_overlap < size:
        raise InputError(min_overlap_error(min_overlap, size))
    return dataclasses.replace(manifest, patch=dataclasses.replace(manifest.patch, min_overlap=min_overlap))


def min_overlap_error(min_overlap: object, patch_size: int | None) -> str:
    """The one-line refusal of a bad --min-overlap (glsnet-cpp writes the same words)."""
    limit = f"less than the bundle's patch size ({patch_size} px)" if patch_size is not None else "less than the bundle's patch size"
    return f"--min-overlap {min_overlap}: the minimum patch overlap must be a whole number of pixels, at least 0 and {limit}"


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    normalization: Normalization
    patch: PatchSpec
    graphs: dict[str, dict[str, GraphSpec]]  # precision -> role -> graph
    input_pixels: InputPixels = InputPixels()
    model: dict[str, Any] = field(default_factory=dict)  # the training config, for provenance
    engines: tuple[EngineSpec, ...] = ()
    calibration: dict[str, Any] | None = None
    accuracy: dict[str, Any] = field(default_factory=dict)  # precision -> gate report
    provenance: dict[str, Any] = field(default_factory=dict)
    # precision -> the global branch's stage graphs in order (absent: the single global graph only)
    global_stages: dict[str, tuple[GlobalStageSpec, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def graph(self, role: str, precision: str = "fp32") -> GraphSpec:
        if precision not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise BundleError(
                f"the bundle has no {precision} graphs (it has: {have}); "
                f"build them with: glsnet-export build BUNDLE --{precision}"
            )
        if role not in self.graphs[precision]:
            raise BundleError(f"the bundle's {precision} graphs lack the {role!r} graph")
        return self.graphs[precision][role]

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)


def _by_name(specs: tuple[TensorSpec, ...], name: str, where: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise BundleError(f"{where}: no tensor named {name!r} (have: {', '.join(s.name for s in specs)})")


# ---------------------------------------------------------------- (de)serialisation


def _check_keys(data: Any, cls: type, where: str) -> dict:
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BundleError(f"{where}: unknown key(s) {unknown} in {cls.__name__}; known: {sorted(fields)}")
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise BundleError(f"{where}: missing key(s) {missing} in {cls.__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, where: str, what: str, minimum: int | None = None) -> int:
    """An integer (a JSON true/false is not one), at least ``minimum``."""
    if not _is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise BundleError(f"{where}: {what} is {value!r}; expected an integer{bound}")
    return value


def _finite(value: Any, where: str, what: str, positive: bool = False) -> float:
    """A finite number (not a boolean, not NaN or infinity), > 0 when ``positive``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or (positive and value <= 0):
        raise BundleError(f"{where}: {what} is {value!r}; expected a finite number" + (" > 0" if positive else ""))
    return float(value)


def _list(value: Any, where: str, what: str) -> list:
    if not isinstance(value, list):
        raise BundleError(f"{where}: {what} is {type(value).__name__} {value!r:.60}; expected a list")
    return value


def _tensor(data: Any, where: str) -> TensorSpec:
    d = _check_keys(data, TensorSpec, where)
    if not isinstance(d["name"], str):
        raise BundleError(f"{where}: tensor name {d['name']!r} is not a string")
    shape = tuple(_list(d["shape"], where, f"the shape of tensor {d['name']!r}"))
    if not all((isinstance(s, int) and not isinstance(s, bool) and s > 0) or (isinstance(s, str) and s) for s in shape):
        raise BundleError(
            f"{where}: tensor {d['name']!r} has shape {list(shape)}; each dim must be a positive int or a dim name"
        )
    if d["dtype"] not in TENSOR_DTYPES:
        raise BundleError(f"{where}: tensor {d['name']!r} has dtype {d['dtype']!r}; known: {TENSOR_DTYPES}")
    return TensorSpec(name=str(d["name"]), dtype=str(d["dtype"]), shape=shape)


def _relative_file(value: Any, where: str) -> str:
    """A bundle-relative POSIX path that cannot leave the bundle."""
    if not isinstance(value, str):
        raise BundleError(f"{where}: file {value!r} is not a string")
    path = value
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or ":" in path or ".." in parts:
        raise BundleError(f"{where}: file {path!r} must be a relative path inside the bundle (no '..', no drive, '/' separators)")
    return path


def _check_graph_tensors(spec: GraphSpec, role: str, where: str) -> None:
    inputs = tuple(t.name for t in spec.inputs)
    outputs = tuple(t.name for t in spec.outputs)
    want_in, want_out = ROLE_TENSORS[role]
    if inputs != want_in or outputs != want_out:
        raise BundleError(
            f"{where}: the {role} graph has inputs {list(inputs)} and outputs {list(outputs)}; "
            f"a {role} graph must have inputs {list(want_in)} and outputs {list(want_out)}"
        )


def _graph(data: Any, where: str) -> GraphSpec:
    d = _check_keys(data, GraphSpec, where)
    if d["precision"] not in PRECISIONS:
        raise BundleError(f"{where}: precision {d['precision']!r} is not one of {PRECISIONS}")
    sha = d["sha256"]
    if not isinstance(sha, str):
        raise BundleError(f"{where}: sha256 {sha!r} is not a string")
    if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        raise BundleError(f"{where}: sha256 {sha!r} is not 64 lowercase hex digits")
    opset = d.get("opset", 17)
    if not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= 30:
        raise BundleError(f"{where}: opset {opset!r} is not an ONNX opset number")
    return GraphSpec(
        file=_relative_file(d["file"], where),
        precision=d["precision"],
        sha256=sha,
        inputs=tuple(_tensor(t, where) for t in _list(d["inputs"], where, "inputs")),
        outputs=tuple(_tensor(t, where) for t in _list(d["outputs"], where, "outputs")),
        opset=opset,
    )


def _global_stages(data: Any, graphs: dict[str, dict[str, GraphSpec]], where: str) -> dict[str, tuple[GlobalStageSpec, ...]]:
    """Stage graphs per precision, checked to chain from the image to the global features at the feature stride."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: global_stages must map a precision to a list of stages")
    out = {}
    for precision, stages in data.items():
        at = f"{where} global_stages.{precision}"
        if precision not in graphs:
            raise BundleError(f"{at}: the bundle has no {precision} graphs for these stages to belong to")
        if not isinstance(stages, list) or not stages:
            raise BundleError(f"{at}: expected a non-empty list of stages")
        specs = []
        for i, stage in enumerate(stages):
            d = _check_keys(stage, GlobalStageSpec, f"{at}[{i}]")
            graph = _graph(d["graph"], f"{at}[{i}]")
            stride, halo = d["stride"], d["halo"]
            if type(stride) is not int or stride < 1 or type(halo) is not int or halo < 0 or halo % stride:
                raise BundleError(f"{at}[{i}]: stride {stride!r} must be >= 1 and halo {halo!r} a non-negative multiple of it")
            if tuple(t.name for t in graph.inputs) != (GLOBAL_STAGE_INPUT,) or tuple(t.name for t in graph.outputs) != (GLOBAL_STAGE_OUTPUT,):
                raise BundleError(f"{at}[{i}]: a stage graph must have input {GLOBAL_STAGE_INPUT!r} and output {GLOBAL_STAGE_OUTPUT!r}")
            if graph.precision != precision:
                raise BundleError(f"{at}[{i}]: precision field says {graph.precision!r}")
            if any(len(t.shape) != 4 for t in (*graph.inputs, *graph.outputs)):
                raise BundleError(f"{at}[{i}]: a stage graph's input and output must be [1, channels, rows, width]")
            specs.append(GlobalStageSpec(graph=graph, stride=stride, halo=halo))
        whole = graphs[precision]["global"]
        if any(len(t.shape) < 2 for t in (*whole.inputs, *whole.outputs)):
            raise BundleError(f"{at}: the global graph's input and output need a channel dimension")
        channels = [whole.inputs[0].shape[1]] + [s.graph.outputs[0].shape[1] for s in specs]
        for i, s in enumerate(specs):
            if s.graph.inputs[0].shape[1] != channels[i]:
                raise BundleError(f"{at}[{i}]: takes {s.graph.inputs[0].shape[1]} channels but receives {channels[i]}")
        if channels[-1] != whole.outputs[0].shape[1]:
            raise BundleError(f"{at}: the last stage gives {channels[-1]} channels, the global features have {whole.outputs[0].shape[1]}")
        stride = 1
        for s in specs:
            stride *= s.stride
        if stride != PatchSpec.feature_stride:
            raise BundleError(f"{at}: the stage strides multiply to {stride}, not the feature stride {PatchSpec.feature_stride}")
        out[precision] = tuple(specs)
    return out


def manifest_from_dict(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate a parsed manifest; every problem names ``where`` and the key at fault."""
    try:
        return _manifest_from_dict(data, where)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a value of the wrong type somewhere
        raise BundleError(f"{where}: malformed manifest ({type(exc).__name__}: {exc}); re-export the bundle") from exc


def _manifest_from_dict(data: Any, where: str) -> Manifest:
    d = _check_keys(data, Manifest, where)
    if type(d["schema_version"]) is not int or d["schema_version"] != SCHEMA_VERSION:
        raise BundleError(
            f"{where}: schema_version {d['schema_version']!r} is not supported by this runtime "
            f"(it reads schema {SCHEMA_VERSION}); re-export the bundle with this toolkit's glsnet-export"
        )
    classes = tuple(_list(d["classes"], where, "classes"))
    if not all(isinstance(c, str) and c for c in classes):
        raise BundleError(f"{where}: classes must be a list of non-empty class names (strings), got {list(classes)!r:.120}")
    if not classes:
        raise BundleError(f"{where}: classes is empty; a bundle segments into at least one class")
    if len(classes) > 256:
        raise BundleError(f"{where}: {len(classes)} classes; masks are 8-bit, so a bundle has at most 256 classes")
    palette = tuple(tuple(_list(rgb, where, "a palette entry")) for rgb in _list(d["palette"], where, "palette"))
    if len(palette) != len(classes) or any(len(rgb) != 3 or not all(_is_int(v) and 0 <= v <= 255 for v in rgb) for rgb in palette):
        raise BundleError(f"{where}: palette needs one RGB triple of integers 0..255 per class ({len(classes)} classes)")
    graphs: dict[str, dict[str, GraphSpec]] = {}
    if not isinstance(d["graphs"], dict):
        raise BundleError(f"{where}: graphs must be an object precision -> role -> graph")
    for precision, roles in d["graphs"].items():
        if precision not in PRECISIONS:
            raise BundleError(f"{where}: graphs has unknown precision {precision!r}; known: {PRECISIONS}")
        if not isinstance(roles, dict):
            raise BundleError(f"{where}: graphs.{precision} must be an object role -> graph")
        missing = [r for r in GRAPH_ROLES if r not in roles]
        if missing or set(roles) - set(GRAPH_ROLES):
            raise BundleError(f"{where}: {precision} graphs must be exactly {GRAPH_ROLES}, got {sorted(roles)}")
        graphs[precision] = {role: _graph(roles[role], f"{where} graphs.{precision}.{role}") for role in GRAPH_ROLES}
        for role, spec in graphs[precision].items():
            _check_graph_tensors(spec, role, f"{where} graphs.{precision}.{role}")
            if spec.precision != precision:
                raise BundleError(f"{where} graphs.{precision}.{role}: precision field says {spec.precision!r}")
    if "fp32" not in graphs:
        raise BundleError(f"{where}: the fp32 graphs are missing")
    normalization = _normalization(d["normalization"], f"{where} normalization")
    patch = _patch(d["patch"], f"{where} patch")
    input_pixels = _input_pixels(d.get("input_pixels", dataclasses.asdict(InputPixels())), f"{where} input_pixels")
    for precision, roles in graphs.items():
        check_declared_shapes(roles, len(classes), patch, len(normalization.bands), f"{where} graphs.{precision}")
    engines = []
    for i, e in enumerate(_list(d.get("engines", []), where, "engines")):
        e = _check_keys(e, EngineSpec, f"{where} engines[{i}]")
        _relative_file(e["directory"], f"{where} engines[{i}]")
        if not isinstance(e["files"], dict):
            raise BundleError(f"{where} engines[{i}]: files must be an object role -> {{file, sha256}}")
        for entry in e["files"].values():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise BundleError(f"{where} engines[{i}]: each files entry must be {{'file': ..., 'sha256': ...}}, got {entry!r:.80}")
            _relative_file(entry.get("file"), f"{where} engines[{i}]")
        if e.get("dla_core") is not None:
            _int(e["dla_core"], f"{where} engines[{i}]", "dla_core", minimum=0)
        engines.append(EngineSpec(**e))
    return Manifest(
        schema_version=d["schema_version"],
        classes=classes,
        palette=palette,  # type: ignore[arg-type]
        normalization=normalization,
        patch=patch,
        graphs=graphs,
        input_pixels=input_pixels,
        model=dict(d.get("model", {})),
        engines=tuple(engines),
        calibration=d.get("calibration"),
        accuracy=dict(d.get("accuracy", {})),
        provenance=dict(d.get("provenance", {})),
        global_stages=_global_stages(d.get("global_stages", {}), graphs, where),
    )


def _normalization(data: Any, where: str) -> Normalization:
    norm = _check_keys(data, Normalization, where)
    mean = tuple(_finite(v, where, "a mean") for v in _list(norm["mean"], where, "mean"))
    std = tuple(_finite(v, where, "a std", positive=True) for v in _list(norm["std"], where, "std"))
    scale = _finite(norm.get("scale", 255.0), where, "scale", positive=True)
    bands = tuple(_int(b, where, "a band index", minimum=0) for b in _list(norm.get("bands", [0, 1, 2]), where, "bands"))
    if not bands or not len(mean) == len(std) == len(bands):
        raise BundleError(f"{where}: mean, std and bands need one entry per band (got {len(mean)}, {len(std)}, {len(bands)})")
    return Normalization(mean=mean, std=std, scale=scale, bands=bands)


def _patch(data: Any, where: str) -> PatchSpec:
    patch = _check_keys(data, PatchSpec, where)
    size = _int(patch["size"], where, "size", minimum=1)
    overlap = _int(patch["min_overlap"], where, "min_overlap", minimum=0)
    stride, feature = patch.get("output_stride", 4), patch.get("feature_stride", 32)
    if not (_is_int(stride) and _is_int(feature)) or stride != PatchSpec.output_stride or feature != PatchSpec.feature_stride:
        raise BundleError(
            f"{where}: output_stride {stride!r} / feature_stride {feature!r} differ from the "
            f"{PatchSpec.output_stride} / {PatchSpec.feature_stride} this runtime's graphs and stitching are built for"
        )
    if not (overlap < size and size % stride == 0):
        raise BundleError(
            f"{where}: size {size!r} and min_overlap {overlap!r} are not a valid geometry "
            f"(need 0 <= min_overlap < size, size a multiple of {stride})"
        )
    return PatchSpec(size=size, min_overlap=overlap, output_stride=stride, feature_stride=feature)


def _input_pixels(data: Any, where: str) -> InputPixels:
    pixels = _check_keys(data, InputPixels, where)
    dtype = pixels.get("dtype", InputPixels.dtype)
    if dtype not in PIXEL_DTYPES:
        raise BundleError(f"{where}: dtype {dtype!r} is not a pixel type; known: {', '.join(PIXEL_DTYPES)}")
    low = _finite(pixels.get("low", InputPixels.low), where, "low")
    high = _finite(pixels.get("high", InputPixels.high), where, "high")
    if not low < high:
        raise BundleError(f"{where}: the value range [{low:g}, {high:g}] is empty; need low < high")
    return InputPixels(dtype=dtype, low=low, high=high)


def check_declared_shapes(roles: dict[str, GraphSpec], num_classes: int, patch: PatchSpec, bands: int, where: str) -> None:
    """The tensors a manifest declares agree with its classes, patch size and band count (fixed dims only)."""
    expectations = (
        ("local", LOCAL_INPUT, True, 1, bands, "input bands (normalization.bands)"),
        ("local", LOCAL_INPUT, True, 2, patch.size, "patch.size"),
        ("local", LOCAL_INPUT, True, 3, patch.size, "patch.size"),
        ("global", GLOBAL_INPUT, True, 1, bands, "input bands (normalization.bands)"),
        ("fusion", FUSION_OUTPUT, False, 1, num_classes, "the number of classes"),
    )
    for role, tensor, is_input, axis, want, what in expectations:
        spec = roles[role].input(tensor) if is_input else roles[role].output(tensor)
        if len(spec.shape) != 4:
            raise BundleError(f"{where}.{role}: tensor {tensor!r} has shape {list(spec.shape)}; expected 4 dims")
        got = spec.shape[axis]
        if isinstance(got, int) and got != want:
            raise BundleError(
                f"{where}.{role}: tensor {tensor!r} has {got} on axis {axis} but the manifest's {what} is {want}; "
                "the manifest does not describe these graphs: re-export the bundle"
            )


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(manifest)))


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json``."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    for candidate in (bundle_dir, path):
        try:
            os.stat(candidate)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BundleError(f"{candidate}: a symbolic link loop (the link points, directly or not, at itself)") from exc
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a directory; pass a bundle written by glsnet-export onnx")
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; this is not a GLSNet bundle (write one with glsnet-export onnx)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return manifest_from_dict(data, where=str(path))


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temporary name, then rename)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    manifest_from_dict(manifest_to_dict(manifest), where=str(path))  # never write what we cannot read back
    write_text_atomic(path, json.dumps(manifest_to_dict(manifest), indent=2) + "\n")
    return path


def verify_file(bundle_dir: str | Path, relative: str, expected_sha256: str) -> Path:
    """Return the absolute path of a bundle file after checking that it exists and its checksum matches."""
    path = Path(bundle_dir) / relative
    if not path.is_file():
        raise BundleError(f"{path}: named in the manifest but missing; the bundle is incomplete")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise BundleError(
            f"{path}: sha256 {actual[:16]}… does not match the manifest's {expected_sha256[:16]}…; "
            "the file was changed or corrupted after export; re-export or rebuild the bundle"
        )
    return path


def graph_path(bundle_dir: str | Path, spec: GraphSpec) -> Path:
    """Checksum-verified path of a graph file."""
    return verify_file(bundle_dir, spec.file, spec.sha256)
