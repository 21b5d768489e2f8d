"""Writing a bundle directory all at once: a staging sibling that is renamed into place, and its manifest.

Readers never see a half-written bundle: files go into ``.<name>.staging-*`` beside the target,
and only a complete directory is renamed onto ``out_dir`` (an old bundle is moved aside first and
removed after the swap). A directory that is not a bundle is never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from runtime.bundle.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    GlobalStageSpec,
    GraphSpec,
    InputPixels,
    Manifest,
    PatchSpec,
    sha256_file,
    write_manifest,
)
from runtime.errors import InputError
from runtime.optional_import import require

TOOLKIT = "glsnet-deploy"
# The pixels every GLSNet is trained on: glsnet.data decodes 8-bit RGB JPEG/PNG tiles (uint8, 0..255).
TRAINING_PIXELS = InputPixels(dtype="uint8", low=0.0, high=255.0)


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse a target that is a file, a directory with other content, or a bundle without ``force``."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory; choose another output directory")
    if is_bundle(out_dir):
        if not force:
            raise InputError(f"{out_dir}: a bundle already exists here; pass --force to replace it")
        return
    if any(out_dir.iterdir()):
        raise InputError(
            f"{out_dir}: exists, is not empty and holds no {MANIFEST_NAME}, so it is not a bundle; "
            "refusing to overwrite it. Choose a new or empty directory"
        )


@contextlib.contextmanager
def staged_bundle(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out_dir``; on success it becomes ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.staging-"))
    try:
        stage.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a bundle is an ordinary directory
        yield stage
        check_target(out_dir, force)  # the target may have changed while we exported
        _swap_into_place(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_into_place(stage: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(stage, out_dir)
        return
    if not is_bundle(out_dir):  # an empty directory (check_target refused anything else)
        out_dir.rmdir()
        os.rename(stage, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    old.rmdir()
    os.rename(out_dir, old)
    try:
        os.rename(stage, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def describe_graph(stage: Path, path: Path, role: str, config: Any, opset: int, precision: str = "fp32") -> GraphSpec:
    """The manifest entry of one written graph: the contract's tensors, its checksum and opset."""
    from export.graphs.graph_io import graph_io

    inputs, outputs = graph_io(role, config)
    return GraphSpec(
        file=path.relative_to(stage).as_posix(),
        precision=precision,
        sha256=sha256_file(path),
        inputs=inputs,
        outputs=outputs,
        opset=opset,
    )


def provenance_versions() -> dict[str, str]:
    from importlib import metadata

    import torch

    onnx = require("onnx", "ONNX export")
    onnxslim = require("onnxslim", "graph simplification")
    try:
        toolkit = metadata.version(TOOLKIT)
    except metadata.PackageNotFoundError:
        toolkit = "unknown"
    return {"toolkit_version": toolkit, "torch": torch.__version__, "onnx": onnx.__version__, "onnxslim": onnxslim.__version__}


def build_manifest(
    stage: Path, config: Any, files: dict[str, Path], options: Any, provenance: dict[str, Any], global_stages: tuple[GlobalStageSpec, ...] = ()
) -> Manifest:
    """Assemble and write ``manifest.json`` for the fp32 graphs (and global stage graphs) in ``stage``."""
    graphs = {"fp32": {role: describe_graph(stage, path, role, config, options.opset) for role, path in files.items()}}
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        classes=tuple(config.classes),
        palette=tuple(tuple(int(v) for v in rgb) for rgb in config.palette),
        normalization=config.normalization,
        patch=PatchSpec(size=config.patch_size, min_overlap=config.min_overlap, output_stride=4, feature_stride=32),
        graphs=graphs,
        input_pixels=TRAINING_PIXELS,
        model=config.to_dict(),
        provenance={
            **provenance,
            **provenance_versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "exporter": options.exporter.value,
            "opset": options.opset,
            "simplified": options.simplify,
        },
        global_stages={"fp32": global_stages} if global_stages else {},
    )
    write_manifest(stage, manifest)
    return manifest
