"""The Table-3-like GPU memory figure: its NVML and describing logic on fakes; absent on the CPU."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

from glsnet.checkpoint import save_checkpoint
from glsnet.data.synthetic import write_synthetic_folder
from glsnet.device.inference_memory import (
    InferenceMemory,
    InferenceMemoryMeter,
    tf32_allowed,
)
from glsnet.device.memory import DeviceMemory, process_gpu_mib
from glsnet.evaluation import EvalOptions, evaluate
from glsnet.model import build_glsnet
from tests.glsnet.test_training import TINY


def fake_pynvml(monkeypatch, processes, fail_init: bool = False):
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    module.NVMLError = NVMLError
    calls = []

    def init():
        if fail_init:
            raise NVMLError("driver not loaded")

    module.nvmlInit = init
    module.nvmlShutdown = lambda: calls.append("shutdown")
    module.nvmlDeviceGetHandleByIndex = lambda index: calls.append(("handle", index)) or f"gpu{index}"
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: processes
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return calls


def test_nvml_reports_this_process_on_the_physical_device(monkeypatch):
    import os

    mine = types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=1500 * 2**20)
    other = types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=9 * 2**30)
    calls = fake_pynvml(monkeypatch, [other, mine])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert process_gpu_mib(torch.device("cuda", 1)) == (1500.0, "NVML per-process used memory")
    assert ("handle", 1) in calls and calls[-1] == "shutdown"  # torch's cuda:1 is the physical GPU 1 of "3,1"


def test_nvml_missing_or_silent_says_why(monkeypatch):
    fake_pynvml(monkeypatch, [])
    value, note = process_gpu_mib(torch.device("cuda", 0))
    assert value is None and "does not list this process" in note
    fake_pynvml(monkeypatch, [], fail_init=True)
    assert process_gpu_mib(torch.device("cuda", 0)) == (None, "NVML unavailable: driver not loaded")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert process_gpu_mib(torch.device("cuda", 0))[1] == "pynvml not installed: pip install nvidia-ml-py"


def test_the_figure_names_both_numbers_and_the_papers():
    memory = DeviceMemory(allocator_peak_mib=1200.4, reserved_peak_mib=1300.0, process_mib=None, process_note="pynvml not installed")
    text = InferenceMemory(memory, batch_size=6).describe()
    assert "batch 6, TF32 allowed: allocator peak 1,200 MiB" in text and "whole process n/a (pynvml not installed)" in text
    assert "comparable with the paper's Table 3, 1414 MB" in text
    assert "not comparable" in InferenceMemory(memory, batch_size=2).describe()
    assert InferenceMemory(memory, 6).as_dict()["allocator_peak_mib"] == 1200.4


def test_tf32_is_restored_after_measuring():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_allowed():
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_on_the_cpu_there_is_no_figure(tmp_path: Path):
    meter = InferenceMemoryMeter(torch.device("cpu"), 6)
    with meter.measuring():
        pass
    assert meter.result is None
    write_synthetic_folder(tmp_path / "data", 1, 96, 96)
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", build_glsnet(TINY))
    result = evaluate(checkpoint, tmp_path / "data", EvalOptions(progress=False, device="cpu"))
    assert result.gpu_memory is None and result.as_dict()["gpu_memory"] is None
