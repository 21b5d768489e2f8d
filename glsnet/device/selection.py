"""``--device auto|cpu|cuda[:N]`` -> a torch.device, refusing a CUDA device that is not there in one line."""

from __future__ import annotations

import re

import torch

from runtime.errors import InputError


def resolve_device(text: str = "auto") -> torch.device:
    """The device ``text`` names; InputError (one line, exit 2) for a CUDA device torch cannot use."""
    text = text.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise InputError(f"--device {text!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InputError(
            f"--device {text}: no CUDA device is available to torch (torch.cuda.is_available() is False, "
            f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError(f"--device {text}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)
