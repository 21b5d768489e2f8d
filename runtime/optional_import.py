"""One place that imports optional packages, so a missing one names the pip extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from runtime.errors import MissingDependencyError

# module name -> the pip extra of glsnet-deploy that provides it
EXTRAS: dict[str, str] = {
    "onnxruntime": "cpu (or gpu for onnxruntime-gpu; never both)",
    "torch": "train",
    "torchvision": "train",
    "onnx": "train",
    "onnxslim": "train",
    "onnxscript": "train",
    "safetensors": "train",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "cuda.bindings": "tensorrt",
    "pycuda": "tensorrt (or the pycuda that JetPack ships)",
    "array_api_compat": "tensorrt (or cuda, jetson, dev)",
    "cupy": "tensorrt (cupy-cuda12x; tensorrt-cu13 for CUDA 13)",
    "ray": "cluster",
    "fsspec": "cluster",
    "s3fs": "s3",
    "gcsfs": "gcs",
    "adlfs": "azure",
}


def require(module: str, feature: str = "") -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra = EXTRAS.get(module, EXTRAS.get(root, ""))
        hint = f"pip install 'glsnet-deploy[{extra.split(' ')[0]}]'" if extra else f"pip install {root}"
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(
            f"{module} is needed{what} but could not be imported ({exc}). Install it with: {hint}"
            + (f"  [extra: {extra}]" if extra else "")
        ) from exc


def available(module: str) -> bool:
    """True when ``module`` imports; never raises."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True
