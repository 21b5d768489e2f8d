"""make gpu-check on a machine without a GPU or TensorRT: a clear list of what is missing, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.optional_import import available


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed: the check would really run")
def test_gpu_check_says_what_is_missing_and_exits_nonzero(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GLSNET_DATA"}
    result = subprocess.run(
        [sys.executable, "-m", "export.gpu.gpu_check", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert "gpu-check cannot run on this machine" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "TensorRT: tensorrt is needed for make gpu-check" in result.stderr
    assert "glsnet-deploy[tensorrt]" in result.stderr
    assert "$GLSNET_DATA is not set" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_cuda_only_level_says_in_one_line_what_is_missing(tmp_path):
    from export.gpu.gpu_check_cuda import cuda_level_missing

    reason = cuda_level_missing()
    if reason is None:
        pytest.skip("this machine has a CUDA GPU, PyTorch and cuda-python: the CUDA-only level would really run")
    result = subprocess.run(
        [sys.executable, "-m", "export.gpu.gpu_check", "--level", "cuda", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: gpu-check cannot run on this machine: CUDA-only level: {reason}"
    assert not (tmp_path / "out").exists()
    bad = subprocess.run([sys.executable, "-m", "export.gpu.gpu_check", "--level", "opencl"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--level 'opencl': choose from auto, tensorrt, cuda" in bad.stderr
