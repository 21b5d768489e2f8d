"""Checkpoints as safetensors: tensors plus the GLSNet config in the header, never unpickled.

Optimizer state for resuming travels in a sibling ``<name>.optim.safetensors`` file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from glsnet.config import GLSNetConfig
from glsnet.model import GLSNet, build_glsnet
from runtime.atomic_file import atomic_path
from runtime.bundle.manifest import sha256_file
from runtime.errors import CheckpointError

FORMAT = "glsnet-checkpoint/1"


def optimizer_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".optim.safetensors")


def save_checkpoint(
    path: str | Path,
    model: GLSNet,
    *,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model weights (and optionally the optimizer state) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "step": str(step),
        "extra": json.dumps(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    if optimizer is not None:
        flat, layout = _flatten_optimizer(optimizer)
        with atomic_path(optimizer_path(path)) as tmp:
            save_file(flat, str(tmp), metadata={"format": FORMAT + "/optimizer", "layout": json.dumps(layout)})
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata; CheckpointError if ``path`` is not a GLSNet checkpoint."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a safetensors file, so not a GLSNet checkpoint ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file but not a GLSNet checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return metadata


def read_config(path: str | Path) -> GLSNetConfig:
    metadata = read_metadata(path)
    try:
        return GLSNetConfig.from_dict(json.loads(metadata["config"]), where=str(path))
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path}: its configuration header is unreadable ({exc})") from exc


def training_options(path: str | Path) -> dict[str, Any]:
    """The options a checkpoint was trained with (what glsnet.training records), {} when it has none."""
    try:
        extra = json.loads(read_metadata(path).get("extra", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its extra header is unreadable ({exc})") from exc
    options = extra.get("train") if isinstance(extra, dict) else None
    return options if isinstance(options, dict) else {}


def load_model(path: str | Path, expected: GLSNetConfig | None = None) -> tuple[GLSNet, dict[str, Any]]:
    """Model in eval mode plus {"step", "extra", "sha256"}; refuses a checkpoint of another configuration."""
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_metadata(path)
    config = read_config(path)
    if expected is not None and expected != config:
        diff = {k: (v, getattr(expected, k)) for k, v in config.to_dict().items() if getattr(expected, k) != getattr(config, k)}
        raise CheckpointError(f"{path}: a checkpoint of another configuration; differing (checkpoint, expected): {diff}")
    model = build_glsnet(config)
    state = load_file(str(path))
    for name, tensor in model.state_dict().items():
        if name in state and state[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(state[name].shape)} but its own configuration needs "
                f"{tuple(tensor.shape)}; the weights and the configuration header disagree"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit its own configuration: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    info = {"step": int(metadata.get("step", 0)), "extra": json.loads(metadata.get("extra", "{}")), "sha256": sha256_file(path)}
    return model.eval(), info


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer) -> bool:
    """Restore optimizer state saved beside checkpoint ``path``; False when there is none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    opt_path = optimizer_path(path)
    if not opt_path.is_file():
        return False
    with safe_open(str(opt_path), framework="pt") as fh:
        layout = json.loads((fh.metadata() or {})["layout"])
    flat = load_file(str(opt_path))
    state = {"state": {}, "param_groups": layout["param_groups"]}
    for key, tensor in flat.items():
        index, name = key.split("/", 1)
        state["state"].setdefault(int(index), {})[name] = tensor
    for index, scalars in layout["scalars"].items():
        state["state"].setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict(state)
    return True


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    flat: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                flat[f"{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return flat, {"param_groups": state["param_groups"], "scalars": scalars}
