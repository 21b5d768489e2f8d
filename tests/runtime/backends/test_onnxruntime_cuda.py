"""ONNX Runtime's CUDA provider on the stream scheduler, on the CPU: a fake onnxruntime with ORT's documented
I/O-binding API, running the numpy graphs as kernels on the recording device's streams; and the real CPU wheel,
which has no CUDA provider and must say so in one line."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from runtime.algorithm.device_buffers import IMAGE_PIXELS
from runtime.algorithm.scheduler import ScheduleOptions
from runtime.backends.onnxruntime_cuda import CUDA_PROVIDER, NO_SYNC, OrtCudaEngine, cuda_provider_missing
from runtime.bundle.loader import open_bundle
from runtime.cuda.device import DeviceBuffer, DeviceTensor
from runtime.cuda.recording import RecordingDevice
from runtime.engines.onnxruntime_cuda_pipeline import OrtCudaOptions, OrtCudaPipeline
from runtime.errors import InputError, MissingDependencyError
from runtime.image_io.readers import ArraySource
from tests.tensorrt_support import NumpyGLSNet, cpu_scheduler, make_manifest, write_fake_bundle

pytest.importorskip("array_api_compat")


def fake_onnxruntime(device: RecordingDevice, functions, providers=(CUDA_PROVIDER, "CPUExecutionProvider"), loads_cuda=True):
    """ORT's Python API as documented (InferenceSession, io_binding, bind_input/bind_output with buffer_ptr, RunOptions)."""
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.31.1"
    ort.sessions = []
    ort.get_available_providers = lambda: list(providers)
    ort.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)

    class SessionOptions:
        pass

    class RunOptions:
        def __init__(self):
            self.entries = {}

        def add_run_config_entry(self, key, value):
            self.entries[key] = value

    class Arg:
        def __init__(self, name, shape):
            self.name, self.shape, self.type = name, [d if isinstance(d, int) else str(d) for d in shape], "tensor(float)"

    class Binding:
        def __init__(self):
            self.inputs, self.outputs = {}, {}

        def clear_binding_inputs(self):
            self.inputs = {}

        def clear_binding_outputs(self):
            self.outputs = {}

        def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
            assert device_type == "cuda" and device_id == 0
            self.inputs[name] = (tuple(shape), np.dtype(element_type), buffer_ptr)

        def bind_output(self, name, device_type, device_id, element_type, shape, buffer_ptr):
            assert device_type == "cuda" and device_id == 0
            self.outputs[name] = (tuple(shape), np.dtype(element_type), buffer_ptr)

    def tensor(shape, dtype, ptr):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return DeviceTensor(DeviceBuffer(ptr, nbytes), shape, dtype)

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=()):
            self.body = json.loads(Path(path).read_text())
            self.role = self.body["role"]
            self.provider_options = dict(providers[0][1])
            self.runs = []
            ort.sessions.append(self)

        def get_providers(self):
            return [CUDA_PROVIDER, "CPUExecutionProvider"] if loads_cuda else ["CPUExecutionProvider"]

        def get_inputs(self):
            return [Arg(n, s) for n, s in self.body["inputs"].items()]

        def get_outputs(self):
            return [Arg(n, s) for n, s in self.body["outputs"].items()]

        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding, run_options=None):
            handle = int(self.provider_options["user_compute_stream"])
            stream = device._streams[handle - 0x5000]  # the recording device's stream_handle
            bound_in, bound_out = dict(binding.inputs), dict(binding.outputs)
            self.runs.append((stream.name, dict(run_options.entries)))

            def run():  # reads and writes the bound device memory when the stream gets to it
                feed = {n: device.view(tensor(*b)).copy() for n, b in bound_in.items()}
                result = functions[self.role](feed)
                for n, b in bound_out.items():
                    device.view(tensor(*b))[...] = result[n]

            device.enqueue_host_function(stream, run, f"ort:{self.role}")

    ort.SessionOptions, ort.RunOptions, ort.InferenceSession = SessionOptions, RunOptions, InferenceSession
    return ort


@pytest.fixture
def bundle(tmp_path):
    manifest = make_manifest()
    return open_bundle(write_fake_bundle(tmp_path / "bundle", manifest, calibration=False)), manifest


@pytest.mark.parametrize("size", [(63, 64), (200, 129), (230, 310)])
def test_the_cuda_provider_on_the_stream_scheduler_gives_the_cpu_schedulers_mask(bundle, size):
    bundle, manifest = bundle
    net = NumpyGLSNet(manifest, seed=3)
    device = RecordingDevice(priority=("copy", "local", "fusion"))
    ort = fake_onnxruntime(device, net.functions)
    pixels = np.random.default_rng(sum(size)).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    expected = cpu_scheduler(manifest, net).segment(ArraySource(pixels), ScheduleOptions(batch_size=4))
    with OrtCudaPipeline(bundle, OrtCudaOptions(batch_size=4), device=device, ort=ort) as pipeline:
        mask = np.zeros(size, np.uint8)
        for top, rows in pipeline.iter_rows(ArraySource(pixels)):
            mask[top : top + len(rows)] = rows
    np.testing.assert_array_equal(mask, expected)
    # each session was created on the stream its graph runs on, and never synchronises at the end of a run
    streams = {s.role: {run[0] for run in s.runs} for s in ort.sessions}
    assert streams == {"global": {"global"}, "local": {"local"}, "fusion": {"fusion"}}
    assert all(run[1] == {NO_SYNC: "1"} for s in ort.sessions for run in s.runs)
    assert {s.provider_options["user_compute_stream"] for s in ort.sessions} == {str(0x5000 + i) for i in (0, 2, 3)}
    assert device.allocated_bytes == 0  # the pipeline freed its buffers on close


def test_batch_size_auto_and_a_device_budget_on_the_cuda_provider(bundle):
    bundle, manifest = bundle
    net = NumpyGLSNet(manifest)
    device = RecordingDevice(total_memory=1 << 30)
    with OrtCudaPipeline(bundle, OrtCudaOptions(batch_size="auto"), device=device, ort=fake_onnxruntime(device, net.functions)) as pipeline:
        assert pipeline.batch_size_for(230, 310) == 64  # the free memory holds the largest batch offered
    with OrtCudaPipeline(bundle, OrtCudaOptions(max_device_memory=20_000_000), device=device, ort=fake_onnxruntime(device, net.functions)) as pipeline:
        batch = pipeline.batch_size_for(230, 310)
        pipeline.plan(230, 310)
    assert 1 <= batch < 64


def test_batch_size_auto_counts_onnx_runtimes_activations_and_a_budget_its_weights(bundle):
    from runtime.algorithm.device_buffers import plan_buffers
    from runtime.algorithm.memory_budget import DEVICE_HEADROOM

    bundle, manifest = bundle
    net = NumpyGLSNet(manifest)
    size = (230, 310)
    largest = plan_buffers(manifest, "fp32", 64, size).device_bytes
    # free memory holds the buffers of the largest batch offered and 8 MiB, not ONNX Runtime's working memory at that batch
    device = RecordingDevice(total_memory=int((largest + (8 << 20)) / (1 - DEVICE_HEADROOM)))
    with OrtCudaPipeline(bundle, OrtCudaOptions(batch_size="auto"), device=device, ort=fake_onnxruntime(device, net.functions)) as pipeline:
        free = device.memory_info()[0]
        batch = pipeline.batch_size_for(*size)
        assert batch < 64  # the largest batch's buffers fit, its activations do not
        activations = pipeline.activation_bytes(*size, batch)
        weights = pipeline.weight_bytes()
        mask = np.zeros(size, np.uint8)
        for top, rows in pipeline.iter_rows(ArraySource(np.zeros((*size, 3), np.uint8))):
            mask[top : top + len(rows)] = rows
    assert activations > 0
    assert plan_buffers(manifest, "fp32", batch, size).device_bytes + activations <= free * (1 - DEVICE_HEADROOM)
    # a budget for the largest batch's buffers and 8 MiB: the weights and activations must fit in it too
    budget = largest + (8 << 20)
    device = RecordingDevice(total_memory=1 << 30)
    with OrtCudaPipeline(bundle, OrtCudaOptions(max_device_memory=budget), device=device, ort=fake_onnxruntime(device, net.functions)) as pipeline:
        batch = pipeline.batch_size_for(*size)
        planned = pipeline.plan(*size)
    assert batch < 64 and weights > 0
    assert planned.estimate_bytes + weights <= budget


def test_batch_size_auto_plans_the_buffers_of_the_images_real_pixels(bundle):
    from runtime.algorithm.device_buffers import PixelLayout, plan_buffers
    from runtime.algorithm.memory_budget import DEVICE_HEADROOM

    bundle, manifest = bundle
    net = NumpyGLSNet(manifest)
    size = (230, 310)
    working = OrtCudaPipeline(bundle).activation_bytes(*size, 64)
    # room for the largest batch with 3-band uint8 pixels, not with this image's 4-band uint16 ones
    room = plan_buffers(manifest, "fp32", 64, size).device_bytes + working + 1024
    assert plan_buffers(manifest, "fp32", 64, size, pixels=PixelLayout(4, np.uint16)).device_bytes + working > room
    device = RecordingDevice(total_memory=int(room / (1 - DEVICE_HEADROOM)))
    image = (np.random.default_rng(5).random((*size, 4)) * 60000).astype(np.uint16)
    with OrtCudaPipeline(bundle, OrtCudaOptions(batch_size="auto"), device=device, ort=fake_onnxruntime(device, net.functions)) as pipeline:
        free = device.memory_info()[0]
        for _ in pipeline.iter_rows(ArraySource(image)):
            pass
        allocated = pipeline.scheduler.plan
    assert allocated.device(IMAGE_PIXELS).nbytes == size[0] * size[1] * 4 * 2
    assert allocated.device_bytes + pipeline.activation_bytes(*size, allocated.batch) <= free * (1 - DEVICE_HEADROOM)
    assert allocated.batch < 64


def test_an_engine_runs_only_on_the_stream_its_session_was_created_with(bundle, tmp_path):
    bundle, manifest = bundle
    device = RecordingDevice()
    ort = fake_onnxruntime(device, NumpyGLSNet(manifest).functions)
    own, other = device.create_stream("local"), device.create_stream("other")
    engine = OrtCudaEngine(bundle.graph_set("fp32").path("local"), device, own, role="local", ort=ort).activate()
    with pytest.raises(InputError, match="user_compute_stream"):
        engine.enqueue({}, {}, other)


def test_missing_cuda_provider_or_its_libraries_are_one_clear_line(bundle):
    bundle, manifest = bundle
    device = RecordingDevice()
    cpu_wheel = fake_onnxruntime(device, {}, providers=("CPUExecutionProvider",))
    with pytest.raises(MissingDependencyError, match=r"^onnxruntime 1.31.1 offers CPUExecutionProvider but not CUDAExecutionProvider: this is the CPU wheel"):
        OrtCudaPipeline(bundle, device=device, ort=cpu_wheel).open()
    no_libraries = fake_onnxruntime(device, {}, loads_cuda=False)
    with pytest.raises(MissingDependencyError, match="could not load its CUDA libraries") as failure:
        OrtCudaPipeline(bundle, device=device, ort=no_libraries).open()
    assert "\n" not in str(failure.value)


def test_the_real_cpu_wheel_is_refused_in_one_line_by_the_segmenter(tmp_path, bundle):
    """This machine's onnxruntime is the CPU wheel: --provider cuda says so before any work."""
    ort = pytest.importorskip("onnxruntime")
    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    from runtime.segmenter import Segmenter, SegmenterOptions

    assert "CPU wheel" in cuda_provider_missing(ort)
    bundle, _ = bundle
    with pytest.raises(MissingDependencyError, match="not CUDAExecutionProvider: this is the CPU wheel; install onnxruntime-gpu"):
        Segmenter(bundle.directory, options=SegmenterOptions(provider="cuda"))
