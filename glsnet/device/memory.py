"""Device memory figures: the allocator's peak and, through NVML, the whole process's GPU memory.

The paper's Table 3 reports GPU memory of inference; which of the two figures it means is not said,
so both are reported. NVML (pynvml, from the nvidia-ml-py package) is optional: without it, or on a
driver that does not list per-process memory, the whole-process figure is None and says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from runtime.process_memory import peak_rss


@dataclass(frozen=True)
class DeviceMemory:
    allocator_peak_mib: float  # torch.cuda.max_memory_allocated
    reserved_peak_mib: float  # torch.cuda.max_memory_reserved (what the caching allocator held)
    process_mib: float | None  # this process's GPU memory as NVML reports it (context included)
    process_note: str  # where process_mib comes from, or why it is missing

    def describe(self) -> str:
        process = f"{self.process_mib:,.0f} MiB" if self.process_mib is not None else f"n/a ({self.process_note})"
        return (
            f"allocator peak {self.allocator_peak_mib:,.0f} MiB, reserved peak {self.reserved_peak_mib:,.0f} MiB, "
            f"whole process {process}"
        )


def reset_peak(device: torch.device) -> None:
    """Start the peak figures of ``device`` afresh (CUDA: the allocator's peak; CPU: the process's peak RSS)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        peak_rss.reset_peak()


def peak_memory_mib(device: torch.device) -> float:
    """Peak since ``reset_peak``, in MiB: the CUDA allocator's on a GPU, the process's RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss.peak_bytes() / 2**20


def peak_memory_label(device: torch.device) -> str:
    return "peak CUDA allocator memory" if device.type == "cuda" else "peak process RSS"


def device_memory(device: torch.device) -> DeviceMemory:
    """Both figures for ``device`` (a CUDA device), now."""
    torch.cuda.synchronize(device)
    process, note = process_gpu_mib(device)
    return DeviceMemory(
        allocator_peak_mib=torch.cuda.max_memory_allocated(device) / 2**20,
        reserved_peak_mib=torch.cuda.max_memory_reserved(device) / 2**20,
        process_mib=process,
        process_note=note,
    )


def process_gpu_mib(device: torch.device) -> tuple[float | None, str]:
    """(MiB this process uses on ``device`` per NVML, source) or (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml not installed: pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable: {exc}"
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index(index))
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory is not None:
                return process.usedGpuMemory / 2**20, "NVML per-process used memory"
        return None, "NVML does not list this process (e.g. in a container without the host PID namespace)"
    except pynvml.NVMLError as exc:
        return None, f"NVML query failed: {exc}"
    finally:
        pynvml.nvmlShutdown()


def _physical_index(index: int) -> int:
    """CUDA_VISIBLE_DEVICES renumbers devices for torch but not for NVML."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    return int(entries[index]) if index < len(entries) and entries[index].isdigit() else index
