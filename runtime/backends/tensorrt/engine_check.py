"""Which of a bundle's TensorRT engines may run here, and a clear refusal when none may.

A serialized engine runs only under the TensorRT release that built it and on the GPU it was
tuned for (same compute capability; the same GPU model, since tactics are timed on it). The
manifest stamps each engine set (EngineSpec) with both, so the runtime can refuse a mismatch before
TensorRT fails obscurely, and tell the user the one command that rebuilds the engines here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runtime.backends.tensorrt.api import TensorRTVersion
from runtime.bundle.manifest import GRAPH_ROLES, EngineSpec, Manifest, verify_file
from runtime.errors import BundleError

TARGET = "tensorrt"
DLA_ROLE = "local"  # the one engine a DLA build puts on DLA (ResNet-50 convolutions); the others stay on the GPU


@dataclass(frozen=True)
class Platform:
    """The machine an engine is about to run on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def slug(text: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (safe as a folder name)."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def engine_directory(gpu_name: str, tensorrt_version: str, precision: str, dla_core: int | None = None) -> str:
    """engines/<gpu-name>_<trt-version>/<precision>[-dla<N>], relative to the bundle."""
    version = TensorRTVersion.parse(tensorrt_version)
    leaf = precision if dla_core is None else f"{precision}-dla{dla_core}"
    return f"engines/{slug(gpu_name)}_{version}/{leaf}"


def rebuild_command(bundle_dir: str | Path, precision: str, dla_core: int | None = None) -> str:
    command = f"glsnet-export build {bundle_dir} --{precision} --target tensorrt"
    return command + (f" --dla-core {dla_core}" if dla_core is not None else "")


def mismatches(spec: EngineSpec, platform: Platform) -> list[str]:
    """Sentences saying how ``spec`` differs from ``platform``; empty when the engines fit."""
    problems = []
    built = TensorRTVersion.parse(spec.tensorrt_version or "0.0")
    running = TensorRTVersion.parse(platform.tensorrt_version)
    if built.release != running.release:
        problems.append(f"built with TensorRT {spec.tensorrt_version}, this machine runs TensorRT {platform.tensorrt_version}")
    if spec.compute_capability != platform.compute_capability:
        problems.append(
            f"built for compute capability {spec.compute_capability} ({spec.gpu_name}), "
            f"this GPU has {platform.compute_capability} ({platform.gpu_name})"
        )
    elif spec.gpu_name != platform.gpu_name:
        problems.append(f"built on a {spec.gpu_name}, this GPU is a {platform.gpu_name}")
    return problems


def select_engines(
    manifest: Manifest,
    bundle_dir: str | Path,
    precision: str,
    platform: Platform,
    dla_core: int | None = None,
) -> EngineSpec:
    """The bundle's TensorRT engine set for ``precision`` (and DLA core) that fits ``platform``, or BundleError."""
    candidates = [
        e for e in manifest.engines if e.target == TARGET and e.precision == precision and e.dla_core == dla_core
    ]
    rebuild = rebuild_command(bundle_dir, precision, dla_core)
    where = f"{precision}" + (f" DLA-core-{dla_core}" if dla_core is not None else "")
    if not candidates:
        have = ", ".join(f"{e.precision} on {e.gpu_name} / TensorRT {e.tensorrt_version}" for e in manifest.engines if e.target == TARGET)
        raise BundleError(
            f"{bundle_dir}: the bundle has no {where} TensorRT engines (it has: {have or 'none'}); "
            f"build them on this machine with: {rebuild}"
        )
    reasons = []
    for spec in candidates:
        problems = mismatches(spec, platform)
        if not problems:
            missing = [role for role in GRAPH_ROLES if role not in spec.files]
            if missing:
                raise BundleError(f"{bundle_dir}/{spec.directory}: the engine set lacks {missing}; rebuild it with: {rebuild}")
            return spec
        reasons.append(f"{spec.directory}: " + "; ".join(problems))
    raise BundleError(
        f"{bundle_dir}: refusing the {where} TensorRT engines, which do not match this machine "
        f"(TensorRT {platform.tensorrt_version}, {platform.gpu_name}, compute capability {platform.compute_capability}): "
        + " | ".join(reasons)
        + f". Rebuild them here with: {rebuild}"
    )


def engine_paths(bundle_dir: str | Path, spec: EngineSpec) -> dict[str, Path]:
    """role -> checksum-verified plan file of an engine set."""
    return {role: verify_file(bundle_dir, entry["file"], entry["sha256"]) for role, entry in spec.files.items()}
