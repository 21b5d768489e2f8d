"""Steps per second and peak memory for the training log."""

from __future__ import annotations

import time

import torch

from glsnet.device.memory import peak_memory_label, peak_memory_mib


class StepRate:
    """Wall-clock throughput of the training loop, loading and logging included (what a user waits for)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1

    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.started) / self.steps if self.steps else float("nan")

    def describe(self, device: torch.device) -> str:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return f"{1.0 / self.seconds_per_step():.2f} steps/s, {peak_memory_label(device)} {peak_memory_mib(device):,.0f} MiB"
