"""``--amp bf16|fp16|off``: autocast and, for fp16, a gradient scaler; off is plain fp32, as before."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum

import torch

from runtime.errors import InputError


class Amp(str, Enum):
    BF16 = "bf16"
    FP16 = "fp16"
    OFF = "off"

    @property
    def dtype(self) -> torch.dtype | None:
        return {Amp.BF16: torch.bfloat16, Amp.FP16: torch.float16, Amp.OFF: None}[self]


def choose_amp(amp: str | Amp | None, device: torch.device) -> Amp:
    """The precision to use: the one asked for, else bf16 on CUDA and off on the CPU."""
    if amp is None:
        return Amp.BF16 if device.type == "cuda" else Amp.OFF
    amp = Amp(amp)
    if device.type != "cuda" and amp is not Amp.OFF:
        raise InputError(f"--amp {amp.value} needs a CUDA device; on {device} use --amp off")
    return amp


@contextlib.contextmanager
def autocast(amp: Amp, device: torch.device) -> Iterator[None]:
    """torch.autocast for bf16/fp16; nothing at all for off (so the fp32 path is untouched)."""
    if amp is Amp.OFF:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=amp.dtype):
        yield


def gradient_scaler(amp: Amp, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (its small range underflows gradients); None otherwise."""
    if amp is Amp.FP16:
        return torch.amp.GradScaler(device.type)
    return None
