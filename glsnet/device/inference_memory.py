"""A GPU inference-memory figure comparable with the paper's Table 3 (GLSNet: 1414 MB).

The paper does not say how it measured, so ``evaluate --device cuda`` reports both figures a reader
might mean, over its whole run with eager PyTorch and TF32 matmuls and convolutions allowed (as
PyTorch's cuDNN convolutions are by default): the caching allocator's peak (tensors only) and the
whole process's GPU memory as NVML reports it (CUDA context, cuDNN workspaces and allocator slack
included). It is comparable with the paper's figure at batch 6 (``--batch-size 6``, the default).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from glsnet.device.memory import DeviceMemory, device_memory, reset_peak

PAPER_TABLE3_MB = 1414  # GLSNet's GPU memory in the paper's Table 3 (DeepGlobe inference)


@dataclass(frozen=True)
class InferenceMemory:
    memory: DeviceMemory
    batch_size: int
    tf32: bool = True
    eager: bool = True

    def describe(self) -> str:
        comparable = "comparable with" if self.batch_size == 6 else f"batch {self.batch_size}, not 6: not comparable with"
        return (
            f"GPU memory, eager PyTorch, batch {self.batch_size}, TF32 allowed: {self.memory.describe()} "
            f"({comparable} the paper's Table 3, {PAPER_TABLE3_MB} MB, whose measurement the paper does not state)"
        )

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "tf32": self.tf32, "eager": self.eager, **asdict(self.memory),
                "paper_table3_mb": PAPER_TABLE3_MB}


@contextlib.contextmanager
def tf32_allowed() -> Iterator[None]:
    """TF32 for matmuls and cuDNN convolutions inside, the previous settings restored after."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


class InferenceMemoryMeter:
    """``with meter.measuring(): <inference>`` then ``meter.result`` (None on the CPU: nothing to measure)."""

    def __init__(self, device: torch.device, batch_size: int) -> None:
        self.device, self.batch_size = device, batch_size
        self.result: InferenceMemory | None = None

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        if self.device.type != "cuda":
            yield
            return
        with tf32_allowed():
            reset_peak(self.device)
            yield
            self.result = InferenceMemory(device_memory(self.device), self.batch_size)
