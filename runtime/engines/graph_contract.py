"""The manifest checked against the graphs a backend actually loaded, when a bundle is opened.

A manifest edited by hand, or graphs swapped after export with their checksums updated, can
disagree with what the graphs compute: a class count the fusion graph does not produce fails
deep in the stitcher, a patch size the local graph does not take fails after a minute of work,
and a declared dtype was never looked at. This compares, per graph, the backend's own tensor
metadata (ONNX Runtime session inputs/outputs) with the manifest, before any image is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from runtime.backends.base import TensorMeta
from runtime.bundle.manifest import FUSION_OUTPUT, GLOBAL_INPUT, LOCAL_INPUT, Manifest, TensorSpec
from runtime.errors import BundleError

# (role, tensor, is_input, axis, what the manifest says it must be)
_SEMANTIC_DIMS = (
    ("fusion", FUSION_OUTPUT, False, 1, "classes"),
    ("local", LOCAL_INPUT, True, 2, "patch"),
    ("local", LOCAL_INPUT, True, 3, "patch"),
    ("local", LOCAL_INPUT, True, 1, "bands"),
    ("global", GLOBAL_INPUT, True, 1, "bands"),
)


def check_graph(
    manifest: Manifest,
    precision: str,
    role: str,
    inputs: Mapping[str, TensorMeta],
    outputs: Mapping[str, TensorMeta],
    path: str | Path,
) -> None:
    """Raise BundleError naming the graph file and the disagreement, if the graph does not match the manifest."""
    spec = manifest.graph(role, precision)
    for declared, actual, kind in ((spec.inputs, inputs, "input"), (spec.outputs, outputs, "output")):
        for tensor in declared:
            if tensor.name not in actual:
                raise BundleError(
                    f"{path}: the manifest declares {kind} {tensor.name!r} but the graph's {kind}s are "
                    f"{sorted(actual)}; the manifest does not describe this graph: re-export the bundle"
                )
            _check_tensor(tensor, actual[tensor.name], kind, path)
    wanted = {
        "classes": (manifest.num_classes, "classes in the manifest"),
        "patch": (manifest.patch.size, "the manifest's patch.size"),
        "bands": (len(manifest.normalization.bands), "input bands in the manifest's normalization"),
    }
    for check_role, name, is_input, axis, key in _SEMANTIC_DIMS:
        if check_role != role:
            continue
        meta = (inputs if is_input else outputs)[name]
        got = meta.shape[axis] if axis < len(meta.shape) else None
        want, what = wanted[key]
        if isinstance(got, int) and got >= 0 and got != want:
            raise BundleError(
                f"{path}: {name!r} has {got} on axis {axis} but there are {want} {what}; "
                "the manifest does not describe this graph: re-export the bundle"
            )


def _check_tensor(declared: TensorSpec, actual: TensorMeta, kind: str, path: str | Path) -> None:
    try:
        declared_dtype = np.dtype(declared.dtype)
    except TypeError:  # bfloat16: numpy has no such dtype, so the backend could not feed it either
        declared_dtype = None
    if declared_dtype is not None and declared_dtype != actual.dtype:
        raise BundleError(
            f"{path}: {kind} {declared.name!r} is declared {declared.dtype} in the manifest but the graph's is "
            f"{actual.dtype}; re-export the bundle (or rebuild this precision with glsnet-export build)"
        )
    if len(declared.shape) != len(actual.shape):
        raise BundleError(
            f"{path}: {kind} {declared.name!r} is declared with shape {list(declared.shape)} but the graph's has "
            f"rank {len(actual.shape)} {list(actual.shape)}; re-export the bundle"
        )
    for axis, (want, got) in enumerate(zip(declared.shape, actual.shape)):
        if isinstance(want, int) and isinstance(got, int) and got >= 0 and want != got:
            raise BundleError(
                f"{path}: {kind} {declared.name!r} is declared with {want} on axis {axis} (shape {list(declared.shape)}) "
                f"but the graph has {got} (shape {list(actual.shape)}); re-export the bundle"
            )
