"""The stream scheduler's device-side steps on a real GPU (CuPy on cuda-python's Device) against the CPU scheduler.

Written for the next session that is lent a GPU; it skips on every machine without one (all CI
machines). The engines are the numpy graphs run on the host between a download and an upload queued
on the engine's stream (slow, but exact), so everything else the scheduler does on the device (pixel
upload, normalisation, patch cutting, upsampling, blending, argmax, row download) is CuPy on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.algorithm.scheduler import ScheduleOptions
from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler
from runtime.errors import GlsnetError, MissingDependencyError
from runtime.image_io.readers import ArraySource
from tests.tensorrt_support import NumpyGLSNet, cpu_scheduler, make_manifest


@pytest.fixture(scope="module")
def device():
    pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'glsnet-deploy[cuda]')")
    pytest.importorskip("array_api_compat")
    try:
        from runtime.cuda.cuda_python import CudaPythonDevice

        opened = CudaPythonDevice(0)
    except (MissingDependencyError, ImportError) as exc:
        pytest.skip(f"cuda-python is not installed: {exc}")
    except GlsnetError as exc:
        pytest.skip(f"no usable CUDA GPU here: {exc}")
    yield opened
    opened.close()


class HostGraphOnStream:
    """A numpy graph as an engine on a real stream: inputs copied down and outputs up inside the stream's order."""

    def __init__(self, device, function, name):
        self.device, self.function, self.name = device, function, name

    def enqueue(self, inputs, outputs, stream):
        import cupy

        def run() -> None:
            feed = {n: cupy.asnumpy(self.device.array(t)) for n, t in inputs.items()}  # waits for the stream's work so far
            result = self.function(feed)
            for n, t in outputs.items():
                self.device.array(t)[...] = cupy.asarray(np.ascontiguousarray(result[n], dtype=t.dtype))

        self.device.launch(stream, run, self.name)


@pytest.mark.parametrize("size", [(63, 64), (331, 97), (700, 509)])
def test_cupy_stitching_on_the_gpu_gives_the_cpu_schedulers_mask(device, size):
    manifest = make_manifest()
    net = NumpyGLSNet(manifest, seed=3)
    pixels = np.random.default_rng(sum(size)).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    expected = cpu_scheduler(manifest, net).segment(ArraySource(pixels), ScheduleOptions(batch_size=3))
    engines = {role: HostGraphOnStream(device, fn, role) for role, fn in net.functions.items()}
    with StreamScheduler(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=3)) as scheduler:
        mask = scheduler.segment_pixels(pixels, manifest.normalization)
    assert device.array_module().__name__ == "array_api_compat.cupy"
    np.testing.assert_array_equal(mask, expected)
    assert device.allocated_bytes == 0
