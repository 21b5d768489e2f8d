"""Device-side normalisation, cutting, upsampling, blending, argmax and colours against the CPU implementation.

The array code runs on numpy views of the recording fake's memory, as it runs on CuPy views on a
GPU; every result here must equal the CPU path's bit for bit (runtime.image_io.preprocess,
runtime.algorithm.stitching, runtime.algorithm.scheduler, runtime.image_io.writers).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

xp = pytest.importorskip("array_api_compat.numpy", reason="the device-side array code is written against the Array API (pip install array-api-compat)")

from runtime.algorithm.device_buffers import PixelLayout
from runtime.algorithm.device_stitching import (
    DeviceStitcher,
    colour_rows,
    cut_patches,
    normalize_into,
    upsample_logits_xp,
)
from runtime.algorithm.patch_grid import make_grid
from runtime.algorithm.scheduler import ScheduleOptions
from runtime.algorithm.stitching import Stitcher, upsample_logits
from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler
from runtime.bundle.manifest import Normalization
from runtime.cuda.device import DeviceTensor
from runtime.cuda.recording import HostAsyncBackend, RecordingDevice
from runtime.errors import InputError
from runtime.image_io.preprocess import normalize
from runtime.image_io.readers import ArraySource
from tests.tensorrt_support import NumpyGLSNet, cpu_scheduler, make_manifest

AWKWARD = [(1, 1), (63, 64), (64, 65), (127, 509), (200, 129), (331, 97)]


def _norm(channels: int = 3, bands: tuple[int, ...] | None = None) -> Normalization:
    return Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=255.0, bands=bands or tuple(range(channels)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("size", [(5, 7), (70, 33)])
def test_normalisation_on_the_device_equals_preprocess_normalize(dtype, size):
    rng = np.random.default_rng(0)
    pixels = (rng.random((*size, 4)) * 255).astype(dtype)
    norm = _norm(bands=(2, 0, 3))
    out = np.full((3, size[0] + 9, size[1] + 4), 7.0, dtype=np.float32)
    normalize_into(pixels, norm, out, xp)
    expected = np.zeros_like(out)
    expected[:, : size[0], : size[1]] = normalize(pixels, norm)
    np.testing.assert_array_equal(out, expected)  # padding zeroed, values bit-identical


def test_normalisation_into_an_fp16_buffer_rounds_as_fp16_staging_does():
    pixels = np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    out = np.zeros((3, 20, 30), dtype=np.float16)
    normalize_into(pixels, _norm(), out, xp)
    np.testing.assert_array_equal(out, normalize(pixels, _norm()).astype(np.float16))
    with pytest.raises(InputError, match="cannot hold"):
        normalize_into(pixels, _norm(), np.zeros((3, 10, 30), np.float32), xp)


class _CountingXp:
    """The array module, recording the element count of every array ``astype`` makes (normalisation's temporaries)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __getattr__(self, name: str):
        return getattr(xp, name)

    def astype(self, array, dtype, **kwargs):
        result = xp.astype(array, dtype, **kwargs)
        self.sizes.append(int(result.size))
        return result


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_normalisation_works_in_bounded_row_bands_and_stays_bit_identical(dtype):
    pixels = (np.random.default_rng(2).random((97, 31, 4)) * 60000).astype(dtype)
    norm = _norm(bands=(3, 1, 0))
    counting = _CountingXp()
    out = np.full((3, 100, 40), 5.0, dtype=np.float32)
    normalize_into(pixels, norm, out, counting, chunk_elements=31 * 3 * 10)
    expected = np.zeros_like(out)
    expected[:, :97, :31] = normalize(pixels, norm)
    np.testing.assert_array_equal(out, expected)
    assert counting.sizes and max(counting.sizes) <= 31 * 3 * 10  # no image-sized temporary, whatever the height


def test_patches_cut_on_the_device_are_the_image_windows_and_padding_rows_are_zero():
    image = np.random.default_rng(2).normal(size=(3, 130, 150)).astype(np.float32)
    out = np.ones((4, 3, 64, 64), dtype=np.float32)
    cut_patches(image, [(0, 0), (66, 86), (10, 20)], 64, out)
    np.testing.assert_array_equal(out[1], image[:, 66:130, 86:150])
    np.testing.assert_array_equal(out[2], image[:, 10:74, 20:84])
    assert not out[3].any()


@pytest.mark.parametrize("h,w,size", [(16, 16, 64), (7, 5, 29), (127, 127, 508)])
def test_upsampling_in_an_array_module_equals_the_cpu_upsampling(h, w, size):
    logits = np.random.default_rng(h).normal(size=(2, 3, h, w)).astype(np.float16 if h == 7 else np.float32)
    np.testing.assert_array_equal(upsample_logits_xp(logits, size, xp), upsample_logits(logits, size))


def test_colours_on_the_device_are_the_writer_palette_lookup_clamped():
    palette = np.array([(0, 255, 255), (255, 255, 0), (10, 20, 30)], dtype=np.uint8)
    mask = np.array([[0, 1, 2, 7]], dtype=np.uint8)
    expected = palette[np.minimum(mask, len(palette) - 1)]  # runtime.image_io.writers' mapping
    np.testing.assert_array_equal(colour_rows(mask, palette, xp), expected)


def _device_stitch(grid, classes, logits_batches, device):
    p = grid.patch_size
    total = DeviceTensor(device.alloc_device(classes * p * grid.padded_width * 4), (classes, p, grid.padded_width), np.float32)
    weights = DeviceTensor(device.alloc_device(p * grid.padded_width * 4), (p, grid.padded_width), np.float32)
    mask = DeviceTensor(device.alloc_device(p * grid.width), (p, grid.width), np.uint8)
    stitcher = DeviceStitcher(device, grid, classes, total, weights, mask)
    stream = device.create_stream("fusion")
    stitcher.reset(stream)
    rows = []
    biggest = max(len(b) for b in logits_batches)
    logits_buffer = device.alloc_device(biggest * logits_batches[0][0].nbytes)
    for batch in logits_batches:
        logits = DeviceTensor(logits_buffer, batch.shape, batch.dtype)
        staged = device.alloc_pinned(batch.shape, batch.dtype)
        staged[...] = batch
        device.memcpy_htod_async(logits, staged, stream)
        copies = []

        def copy_out(finished):  # queued right after its argmax, as the contract asks: the next band reuses the buffer
            host = device.alloc_pinned(finished.mask.shape, np.uint8)
            device.memcpy_dtoh_async(host, finished.mask, stream)
            copies.append((finished.top, host))

        stitcher.add(logits, len(batch), stream, copy_out)
        device.synchronize(stream)
        rows += copies
    assert stitcher.done
    return rows


@pytest.mark.parametrize("size", AWKWARD)
@pytest.mark.parametrize("batch", [1, 4, 7])
def test_the_device_stitcher_hands_out_the_cpu_stitchers_rows(size, batch):
    grid = make_grid(*size, patch_size=64, min_overlap=8)
    classes = 4
    rng = np.random.default_rng(sum(size) + batch)
    logits = rng.normal(size=(len(grid), classes, 16, 16)).astype(np.float32)
    batches = [logits[i : i + batch] for i in range(0, len(grid), batch)]
    cpu = Stitcher(grid, classes)
    expected = [band for b in batches for band in cpu.add(upsample_logits(b, 64))]
    got = _device_stitch(grid, classes, batches, RecordingDevice())
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert sum(len(r) for _, r in got) == size[0]


def _masks(pixels, manifest, batch, priority=("copy", "local", "fusion")):
    net = NumpyGLSNet(manifest, seed=3)
    cpu = cpu_scheduler(manifest, net).segment(ArraySource(pixels), ScheduleOptions(batch_size=batch))
    device = RecordingDevice(priority=priority)
    engines = {role: HostAsyncBackend(device, fn, role) for role, fn in net.functions.items()}
    with StreamScheduler(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=batch)) as scheduler:
        gpu = scheduler.segment_pixels(pixels, manifest.normalization)
        assert scheduler.plan is not None and scheduler.plan.host("image/pixels").dtype == pixels.dtype
    return cpu, gpu


@pytest.mark.parametrize("size", AWKWARD)
@pytest.mark.parametrize("priority", [("copy", "local", "fusion"), ("global",)])
def test_pixels_in_mask_out_equals_the_cpu_scheduler_on_awkward_sizes(size, priority):
    manifest = make_manifest()
    rng = np.random.default_rng(size[0] * 7 + size[1])
    coarse = rng.integers(0, 256, size=(size[0] // 8 + 1, size[1] // 8 + 1, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[: size[0], : size[1]]
    cpu, gpu = _masks(pixels, manifest, batch=3, priority=priority)
    np.testing.assert_array_equal(gpu, cpu)


@pytest.mark.integration
@pytest.mark.parametrize("crop", [(509, 763), (1000, 317)])
def test_pixels_in_mask_out_equals_the_cpu_scheduler_on_real_images(deepglobe_dir, crop):
    manifest = make_manifest(patch=128, overlap=20, classes=5)
    for path in sorted(deepglobe_dir.glob("*_sat.jpg"))[:2]:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))[: crop[0], : crop[1]].copy()
        cpu, gpu = _masks(pixels, manifest, batch=5)
        assert len(np.unique(cpu)) > 1, path
        np.testing.assert_array_equal(gpu, cpu, err_msg=str(path))


def test_a_16_bit_image_goes_up_as_16_bit_and_still_matches():
    manifest = make_manifest()
    pixels = np.random.default_rng(5).integers(0, 65535, size=(90, 150, 3), dtype=np.uint16)
    cpu, gpu = _masks(pixels, manifest, batch=4)
    np.testing.assert_array_equal(gpu, cpu)
    assert PixelLayout(3, np.uint16).dtype == np.uint16
