"""Colour rows mapped on the device by the GPU pipelines: the writers take them as they are, and the files equal
the host writer's byte for byte (fake TensorRT engines on the recording device)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("array_api_compat.numpy", reason="the device-side array code is written against the Array API (pip install array-api-compat)")

from export.tensorrt.tensorrt_build import TensorRTBuildOptions, build_tensorrt_engines  # noqa: E402
from runtime.algorithm.device_buffers import STITCH_COLOUR, plan_buffers  # noqa: E402
from runtime.cuda.recording import RecordingDevice  # noqa: E402
from runtime.image_io.coloured_band import ColouredBand  # noqa: E402
from runtime.image_io.readers import ArraySource, open_image  # noqa: E402
from runtime.image_io.writers import OutputOptions, write_outputs  # noqa: E402
from tests.tensorrt_support import NumpyGLSNet, fake_tensorrt, make_manifest, write_fake_bundle  # noqa: E402

PALETTE = ((200, 30, 10), (5, 180, 60), (20, 40, 250))


@pytest.fixture
def segmenter(tmp_path, monkeypatch):
    import runtime.engines.tensorrt_pipeline as pipeline_module
    from runtime.segmenter import Segmenter

    manifest = make_manifest(precisions=("fp32", "fp16")).replace(palette=PALETTE)
    root = write_fake_bundle(tmp_path / "bundle", manifest)
    net = NumpyGLSNet(manifest, seed=4)
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=3), trt=trt, device=device)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(pipeline_module, "open_device", lambda binding, ordinal: device)
    with Segmenter(root, precision="fp16", engine="tensorrt") as segmenter:
        yield segmenter, device


def _scene(path, height=170, width=205):
    rng = np.random.default_rng(9)
    coarse = rng.integers(0, 255, size=(height // 12 + 1, width // 12 + 1, 3))
    Image.fromarray(np.repeat(np.repeat(coarse, 12, axis=0), 12, axis=1)[:height, :width].astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_colours_mapped_on_the_device_give_the_host_writers_files(segmenter, tmp_path, fmt):
    segmenter, device = segmenter
    scene = _scene(tmp_path / "scene.png")
    options = OutputOptions(format=fmt, color=True, overlay=True, stats=True, rows_per_strip=16)
    gpu = segmenter.segment_file(scene, tmp_path / "gpu", outputs=options)
    bands = [c for c in device.calls if c.op == "launch" and c.label == "colour"]
    assert bands and {c.stream for c in bands} == {"fusion"}  # mapped on the device, after each argmax

    source = open_image(scene)
    try:
        mask = np.asarray(Image.open(gpu.mask)) if fmt == "png" else None
        if mask is None:
            import tifffile

            mask = tifffile.imread(gpu.mask)
        cpu = write_outputs(source, iter([(0, mask)]), options.paths_for(scene, tmp_path / "cpu"), options, segmenter.manifest)
    finally:
        source.close()
    for ours, theirs in zip(gpu.written(), cpu.written()):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name
    assert len(np.unique(mask)) == len(PALETTE)  # every palette entry was exercised


def test_without_colour_outputs_nothing_is_coloured_on_the_device(segmenter, tmp_path):
    segmenter, device = segmenter
    scene = _scene(tmp_path / "scene.png", 90, 70)
    segmenter.segment_file(scene, tmp_path / "out", outputs=OutputOptions(color=False))
    assert not [c for c in device.calls if c.op == "launch" and c.label == "colour"]
    assert (tmp_path / "out" / "scene_mask.png").is_file() and not (tmp_path / "out" / "scene_color.png").exists()


def test_the_writer_takes_a_coloured_bands_colours_as_they_are(tmp_path):
    manifest = make_manifest().replace(palette=PALETTE)
    mask = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    painted = np.full((2, 3, 3), 77, dtype=np.uint8)  # not the palette's: proves the writer did not colour again
    source = ArraySource(np.zeros((2, 3, 3), np.uint8))
    paths = OutputOptions().paths_for(tmp_path / "x.png", tmp_path)
    write_outputs(source, iter([ColouredBand(0, mask, painted)]), paths, OutputOptions(), manifest)
    np.testing.assert_array_equal(np.asarray(Image.open(paths.color)), painted)
    write_outputs(source, iter([(0, mask)]), paths, OutputOptions(), manifest)  # a plain band: coloured here
    np.testing.assert_array_equal(np.asarray(Image.open(paths.color)), np.asarray(PALETTE, np.uint8)[mask])
    with pytest.raises(ValueError, match="do not match mask rows"):
        ColouredBand(0, mask, painted[:1])
    top, rows = ColouredBand(5, mask, painted)  # unpacks as every (top, mask) band
    assert top == 5 and rows is mask


def test_colour_buffers_are_planned_only_when_colours_are_made_on_the_device():
    manifest = make_manifest()
    plain = plan_buffers(manifest, "fp32", 3, (100, 150))
    coloured = plan_buffers(manifest, "fp32", 3, (100, 150), colour_channels=3)
    assert not [a for a in plain.allocations if a.key == STITCH_COLOUR]
    assert coloured.device(STITCH_COLOUR).shape == (64, 150, 3) and coloured.host(STITCH_COLOUR).copies == 4
    assert coloured.device_bytes - plain.device_bytes == 64 * 150 * 3
