"""One pipeline interface: the engine/provider options, their old --device spellings, and the Segmenter's one choice."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from runtime.algorithm.patch_schedule import batches, grid_for
from runtime.cli import app
from runtime.engines.onnxruntime_pipeline import OnnxRuntimePipeline
from runtime.errors import InputError
from runtime.image_io.readers import ArraySource
from runtime.segmenter import Segmenter, SegmenterOptions


@pytest.mark.parametrize(
    "device, engine, provider",
    [("cpu", "onnxruntime", None), ("cuda", "onnxruntime", "cuda"), ("tensorrt", "onnxruntime", "tensorrt"), ("tensorrt-engine", "tensorrt", None)],
)
def test_the_old_device_spellings_map_onto_engine_and_provider_with_a_warning(device, engine, provider):
    with pytest.warns(DeprecationWarning, match=f"--device {device} is deprecated"):
        options = SegmenterOptions(device=device)
    assert (options.engine, options.provider if device != "cpu" else None) == (engine, provider)
    assert options.device is None


def test_bad_engine_and_provider_choices_are_refused():
    with pytest.raises(InputError, match="engine 'openvino' is not one of onnxruntime, tensorrt"):
        SegmenterOptions(engine="openvino")
    with pytest.raises(InputError, match="provider 'rocm' is not one of cpu, cuda, tensorrt"):
        SegmenterOptions(provider="rocm")
    with pytest.raises(InputError, match="--provider cuda applies to --engine onnxruntime only"):
        SegmenterOptions(engine="tensorrt", provider="cuda")
    with pytest.raises(InputError, match="--device 'gpu' is not one of"):
        SegmenterOptions(device="gpu")


def test_the_segmenter_chooses_its_pipeline_once_and_every_method_goes_through_it(small_bundle):
    segmenter = Segmenter(small_bundle)
    assert isinstance(segmenter.pipeline, OnnxRuntimePipeline)
    image = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    mask = segmenter.segment(image)
    rows = np.concatenate([r for _, r in segmenter.iter_rows(ArraySource(image))])
    np.testing.assert_array_equal(mask, rows)
    assert segmenter.plan(150, 170).batch_size >= 1
    with pytest.warns(RuntimeWarning, match="already open"):
        segmenter.pipeline.open()
    with pytest.raises(InputError, match="runs ONNX Runtime"):
        segmenter.tensorrt_pipeline
    segmenter.close()
    assert segmenter.pipeline._scheduler is None
    np.testing.assert_array_equal(segmenter.segment(image), mask)  # the next call opens it again


def test_both_schedulers_share_one_batching():
    """The CPU and CUDA schedulers take their grid and batches from runtime.algorithm.patch_schedule."""
    import runtime.algorithm.scheduler as cpu
    import runtime.algorithm.stream_scheduler as gpu
    from tests.tensorrt_support import make_manifest

    assert cpu.batches is batches is gpu.batches and cpu.grid_for is grid_for is gpu.grid_for
    manifest = make_manifest()
    grid = grid_for(manifest, 200, 130)
    assert len(grid) == 12
    assert [list(b) for b in batches(len(grid), 5)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]


def test_cli_old_device_spelling_still_works_with_a_deprecation_message(small_bundle, tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 100, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(tmp_path / "a.png"), "-b", str(small_bundle), "-o", str(tmp_path / "old"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "--device cpu is deprecated" in result.output and "--engine onnxruntime --provider cpu" in result.output
    new = runner.invoke(app, ["run", str(tmp_path / "a.png"), "-b", str(small_bundle), "-o", str(tmp_path / "new"), "--engine", "onnxruntime", "--provider", "cpu"])
    assert new.exit_code == 0, new.output and "deprecated" not in new.output
    assert (tmp_path / "old" / "a_mask.png").read_bytes() == (tmp_path / "new" / "a_mask.png").read_bytes()
    clash = runner.invoke(app, ["run", str(tmp_path / "a.png"), "-b", str(small_bundle), "-o", str(tmp_path / "x"), "--device", "cpu", "--engine", "tensorrt"])
    assert clash.exit_code != 0


def test_batch_size_auto_and_a_device_budget_reach_the_tensorrt_pipeline(monkeypatch):
    from runtime.cli_options import parse_batch_size, segmenter_options

    assert parse_batch_size("auto") == "auto" and parse_batch_size(" 12 ") == 12 and parse_batch_size(None) is None
    for bad in ("lots", "2.5", ""):
        with pytest.raises(InputError, match="positive number of patches or 'auto'"):
            parse_batch_size(bad)
    for small in ("0", "-3"):
        with pytest.raises(InputError, match="batch size must be >= 1"):
            SegmenterOptions(batch_size=parse_batch_size(small))
    options = segmenter_options(
        precision="fp16", engine="tensorrt", provider=None, device=None, batch_size="auto", max_memory=None,
        threads=None, bands=None, max_pixels=100, max_device_memory="1.4GB",
    )
    assert options.batch_size == "auto" and options.max_device_memory == 1_400_000_000
    assert options.schedule().batch_size is None  # on the CPU, auto is the host memory plan's choice
    with pytest.raises(InputError, match="--batch-size 'many': give a positive number of patches or 'auto'"):
        segmenter_options(precision="fp32", engine="onnxruntime", provider=None, device=None, batch_size="many", max_memory=None, threads=None, bands=None, max_pixels=100)
    with pytest.raises(InputError, match="positive number of patches or 'auto'"):
        SegmenterOptions(batch_size="many")

    import runtime.algorithm.scheduler
    from runtime.engines.pipeline import make_pipeline
    from runtime.engines.tensorrt_pipeline import TensorRTPipeline

    made = {}
    monkeypatch.setattr(runtime.algorithm.scheduler, "normalization_for", lambda manifest, bands: None)
    monkeypatch.setattr(TensorRTPipeline, "__init__", lambda self, directory, options: made.setdefault("options", options) and None)
    make_pipeline(type("Bundle", (), {"directory": "b", "manifest": None})(), options)
    assert made["options"].batch_size == "auto" and made["options"].max_device_memory == 1_400_000_000
