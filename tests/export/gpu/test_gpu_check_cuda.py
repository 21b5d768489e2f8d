"""The CUDA-only gpu-check harness on the CPU: PyTorch engines on the real stream scheduler, over the recording device."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.gpu.gpu_check_cuda import CudaArrayView, TorchArrays, TorchEngine, scheduled_mask, torch_engines  # noqa: E402
from runtime.algorithm.scheduler import ScheduleOptions  # noqa: E402
from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler  # noqa: E402
from runtime.cuda.recording import HostAsyncBackend  # noqa: E402
from runtime.image_io.readers import ArraySource  # noqa: E402
from tests.tensorrt_support import NumpyGLSNet, cpu_scheduler, make_manifest  # noqa: E402
from runtime.bundle.manifest import read_manifest  # noqa: E402
from runtime.cuda.device import DeviceTensor  # noqa: E402
from runtime.cuda.recording import RecordingDevice  # noqa: E402
from runtime.image_io.preprocess import normalize  # noqa: E402


class RecordingLauncher:
    """The Launcher of export.gpu.gpu_check_cuda on the recording device: work runs as kernels on its streams, on its memory."""

    def __init__(self, device: RecordingDevice, fail_capture: bool = False) -> None:
        self.device, self.fail_capture = device, fail_capture
        self.captures = 0

    def view(self, tensor):
        return torch.from_numpy(self.device.view(tensor))

    def launch(self, stream, work, label):
        self.device.enqueue_host_function(stream, work, label)

    def capture(self, stream, work, label):
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.device.begin_capture(stream)
        self.device.enqueue_host_function(stream, work, label)
        graph = self.device.end_capture(stream)
        self.captures += 1
        return lambda: self.device.launch_graph(graph, stream)


class TorchRecordingDevice(TorchArrays, RecordingDevice):
    """The recording device with the scheduler's array code in PyTorch on its CPU device, as the CUDA level runs it on CUDA."""

    def constant(self, array):
        made = super().constant(array)
        self.__dict__.setdefault("constants", []).append(made)
        return made


def torch_recording_device(priority=()):
    device = TorchRecordingDevice(priority=priority)
    device.launcher = RecordingLauncher(device)
    return device


@pytest.mark.parametrize("size", [(1, 1), (63, 64), (127, 509), (200, 129), (331, 97)])
def test_stitching_in_pytorch_on_its_cpu_device_equals_the_cpu_scheduler(size):
    pytest.importorskip("array_api_compat")
    manifest = make_manifest()
    net = NumpyGLSNet(manifest, seed=3)
    rng = np.random.default_rng(sum(size))
    coarse = rng.integers(0, 256, size=(size[0] // 8 + 1, size[1] // 8 + 1, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[: size[0], : size[1]]
    expected = cpu_scheduler(manifest, net).segment(ArraySource(pixels), ScheduleOptions(batch_size=3))
    device = torch_recording_device(priority=("copy", "local", "fusion"))
    engines = {role: HostAsyncBackend(device, fn, role) for role, fn in net.functions.items()}
    with StreamScheduler(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=3)) as scheduler:
        mask = scheduler.segment_pixels(pixels, manifest.normalization)
        cached = list(scheduler._device_constants()._cache.values())
    np.testing.assert_array_equal(mask, expected)
    assert device.array_module().__name__ == "array_api_compat.torch"
    # every constant went up through the device (on CUDA: torch.as_tensor(..., device="cuda:0"), never a CPU tensor)
    assert cached and all(any(c is made for made in device.constants) for c in cached)


def image_for(bundle, height=150, width=170, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return normalize(pixels, read_manifest(bundle).normalization)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_scheduled_torch_engines_match_the_reference(small_model, small_bundle, cuda_graphs):
    from glsnet.inference import predict_mask

    device = torch_recording_device(priority=("copy", "local", "fusion"))  # local and fusion race ahead: only the event keeps fusion behind
    launcher = device.launcher
    engines = torch_engines(small_model, launcher, cuda_graphs)
    image = image_for(small_bundle)
    manifest = read_manifest(small_bundle)
    timed, buffer_bytes = scheduled_mask(device, engines, manifest, image, batch_size=2, repeats=1, synchronize=device.synchronize_all)
    expected = predict_mask(small_model, image, batch_size=2)
    assert (timed.mask == expected).mean() >= 0.999
    assert buffer_bytes > 0 and device.allocated_bytes == 0  # the scheduler freed what it allocated
    assert any(c.op == "stream_wait_event" for c in device.calls)  # fusion waits on the device for the global features
    replays = sum(e.replays for e in engines.values())
    if cuda_graphs:
        assert launcher.captures >= 2 and replays > 0  # local and fusion captured, then replayed
    else:
        assert launcher.captures == 0 and replays == 0


def test_a_failed_capture_switches_graphs_off_and_keeps_the_numbers(small_model, small_bundle):
    from glsnet.inference import predict_mask

    device = RecordingDevice()
    engines = torch_engines(small_model, RecordingLauncher(device, fail_capture=True), cuda_graphs=True)
    image = image_for(small_bundle, 130, 140, seed=1)
    timed, _ = scheduled_mask(device, engines, read_manifest(small_bundle), image, batch_size=2, synchronize=device.synchronize_all)
    assert (timed.mask == predict_mask(small_model, image, batch_size=2)).mean() >= 0.999
    assert engines["local"].capture_failed and "not permitted" in engines["local"].capture_failed


def test_a_graph_of_another_state_is_never_replayed():
    device = RecordingDevice()
    launcher = RecordingLauncher(device)
    stream = device.create_stream("local")
    seen = []
    engine = TorchEngine("global", lambda image: image * 2, launcher, cuda_graphs=True)
    small, large = device.alloc_device(4 * 4), device.alloc_device(8 * 4)
    out_small, out_large = device.alloc_device(4 * 4), device.alloc_device(8 * 4)
    for buffer, out, n in ((small, out_small, 4), (small, out_small, 4), (small, out_small, 4), (large, out_large, 8), (small, out_small, 4)):
        engine.enqueue({"image": DeviceTensor(buffer, (n,), np.float32)}, {"global_features": DeviceTensor(out, (n,), np.float32)}, stream)
        seen.append(engine.replays)
    assert seen == [0, 1, 2, 2, 3]  # captured on the second call in a state, replayed in that state only
    device.synchronize(stream)


def test_cuda_array_interface_describes_the_scheduler_buffer():
    device = RecordingDevice()
    buffer = device.alloc_device(2 * 3 * 4)
    view = CudaArrayView(DeviceTensor(buffer, (2, 3), np.float32)).__cuda_array_interface__
    assert view == {"shape": (2, 3), "typestr": "<f4", "data": (buffer.ptr, False), "strides": None, "stream": None, "version": 3}


@pytest.mark.integration
def test_stitching_in_pytorch_equals_the_cpu_scheduler_on_real_images(deepglobe_dir):
    pytest.importorskip("array_api_compat")
    from PIL import Image

    manifest = make_manifest(patch=128, overlap=20, classes=5)
    net = NumpyGLSNet(manifest, seed=4)
    for path in sorted(deepglobe_dir.glob("*_sat.jpg"))[:2]:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))[:509, :763].copy()
        expected = cpu_scheduler(manifest, net).segment(ArraySource(pixels), ScheduleOptions(batch_size=5))
        device = torch_recording_device(priority=("copy", "local", "fusion"))
        engines = {role: HostAsyncBackend(device, fn, role) for role, fn in net.functions.items()}
        with StreamScheduler(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=5)) as scheduler:
            mask = scheduler.segment_pixels(pixels, manifest.normalization)
        assert len(np.unique(expected)) > 1, path
        np.testing.assert_array_equal(mask, expected, err_msg=str(path))
