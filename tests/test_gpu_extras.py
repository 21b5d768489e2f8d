"""Defect 8: the GPU extras pin cuda-python to the driver's CUDA major version, per platform."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
requirements = pytest.importorskip("packaging.requirements")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def extra(name: str) -> dict[str, "requirements.Requirement"]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert name in extras, f"pyproject.toml has no {name!r} extra"
    parsed = [requirements.Requirement(text) for text in extras[name]]
    return {r.name: r for r in parsed}


def allows(requirement, version: str) -> bool:
    return requirement.specifier.contains(version, prereleases=False)


@pytest.mark.parametrize("name", ["tensorrt", "cuda"])
def test_cuda_12_extras_never_resolve_to_cuda_python_13(name):
    cuda_python = extra(name)["cuda-python"]
    assert not allows(cuda_python, "13.0.0") and not allows(cuda_python, "13.4.4")  # 13.x needs a CUDA 13 driver
    assert allows(cuda_python, "12.9.0") and not allows(cuda_python, "12.6.0")  # cuda.bindings exists from 12.6.1


def test_the_jetson_extra_is_cuda_python_12_6_with_bindings_on_aarch64_only():
    cuda_python = extra("jetson")["cuda-python"]
    assert allows(cuda_python, "12.6.1") and allows(cuda_python, "12.6.2")
    assert not allows(cuda_python, "12.6.0") and not allows(cuda_python, "12.8.0") and not allows(cuda_python, "13.0.0")
    assert cuda_python.marker is not None and cuda_python.marker.evaluate({"platform_machine": "aarch64"})
    assert not cuda_python.marker.evaluate({"platform_machine": "x86_64"})
    assert "tensorrt" not in extra("jetson") and "pycuda" not in extra("jetson")  # JetPack ships TensorRT, not pycuda


def test_the_cuda_13_extra_pairs_tensorrt_and_cuda_python_13():
    pins = extra("tensorrt-cu13")
    assert allows(pins["cuda-python"], "13.4.4") and not allows(pins["cuda-python"], "12.9.0")
    assert "tensorrt-cu13" in pins


def test_the_jetson_extra_keeps_numpy_below_2_on_aarch64():
    """JetPack 6's TensorRT 10.3 bindings are built against numpy 1.x: numpy 2 breaks their import."""
    numpy = extra("jetson")["numpy"]
    assert allows(numpy, "1.26.4") and not allows(numpy, "2.0.0") and not allows(numpy, "2.3.1")
    assert numpy.marker is not None and numpy.marker.evaluate({"platform_machine": "aarch64"})
    assert not numpy.marker.evaluate({"platform_machine": "x86_64"})


@pytest.mark.parametrize("name,cupy", [("tensorrt", "cupy-cuda12x"), ("tensorrt-cu13", "cupy-cuda13x"), ("cuda", "cupy-cuda12x"), ("jetson", "cupy-cuda12x")])
def test_every_gpu_extra_installs_the_cupy_of_its_cuda_major(name, cupy):
    """The device-side stitching needs CuPy; its CUDA major must be the extra's cuda-python major."""
    pins = extra(name)
    assert cupy in pins and not [other for other in pins if other.startswith("cupy-") and other != cupy]
