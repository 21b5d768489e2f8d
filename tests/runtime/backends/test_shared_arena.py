"""The shared CPU arena: sessions that opt in allocate from one arena registered once per process, give the same outputs,
and `glsnet run` opts in at the precisions where it was measured to pay."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.backends import shared_arena
from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from runtime.backends.shared_arena import SHARED_ARENA_ENTRIES, SHARED_ARENA_REGION_BYTES, register_shared_arena
from runtime.batch.resume import EXECUTION_ONLY
from runtime.cli_options import segmenter_options
from runtime.engines.onnxruntime_pipeline import KEPT_ACTIVATION_PRECISIONS, OnnxRuntimePipeline
from runtime.segmenter import Segmenter, SegmenterOptions


def _config(backend: OnnxRuntimeBackend) -> dict[str, str]:
    options = backend.session.get_session_options()
    found = {}
    for key in SHARED_ARENA_ENTRIES:
        try:
            found[key] = options.get_session_config_entry(key)
        except Exception:  # noqa: BLE001  ONNX Runtime raises for a key that was never set
            pass
    return found


def test_a_session_on_the_shared_arena_allocates_from_it_tensor_by_tensor_and_gives_the_same_outputs(small_bundle):
    patches = np.random.default_rng(0).standard_normal((3, 3, 128, 128), dtype=np.float32)
    with OnnxRuntimeBackend(small_bundle / "local.onnx", OrtOptions(threads=1)) as plain:
        expected = plain.infer({"patches": patches})
        assert _config(plain) == {}
        assert plain.session.get_session_options().enable_mem_pattern
    with OnnxRuntimeBackend(small_bundle / "local.onnx", OrtOptions(threads=1, shared_arena=True)) as shared:
        assert _config(shared) == SHARED_ARENA_ENTRIES
        options = shared.session.get_session_options()
        assert options.enable_cpu_mem_arena and not options.enable_mem_pattern
        for _ in range(3):  # later runs reuse the first run's pages
            got = shared.infer({"patches": patches})
            for name, value in expected.items():
                np.testing.assert_array_equal(got[name], value)


def test_the_arena_is_registered_once_however_many_sessions_start_at_once(monkeypatch):
    calls = []

    class FakeOrt:
        class OrtAllocatorType:
            ORT_ARENA_ALLOCATOR = "arena"

        class OrtMemType:
            DEFAULT = "default"

        OrtArenaCfg = staticmethod(dict)

        @staticmethod
        def OrtMemoryInfo(*args):
            return args

        @staticmethod
        def create_and_register_allocator(memory, config):
            calls.append((memory, config))

    monkeypatch.setattr(shared_arena, "_registered", False)
    threads = [threading.Thread(target=register_shared_arena, args=(FakeOrt,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    memory, config = calls[0]
    assert memory[0] == "Cpu" and memory[1] == "arena"
    # one region reserved up front (a power-of-two arena grows from it), never smaller than the requests it must hold
    assert config["initial_chunk_size_bytes"] == SHARED_ARENA_REGION_BYTES and config["arena_extend_strategy"] == 0


@pytest.mark.parametrize("keep", [True, False])
def test_keep_activations_puts_every_cpu_session_on_the_shared_arena_with_the_same_mask(small_bundle, keep):
    image = np.random.default_rng(1).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    with Segmenter(small_bundle, options=SegmenterOptions(threads=1)) as reference:
        expected = reference.segment(image)
    with Segmenter(small_bundle, options=SegmenterOptions(threads=1, keep_activations=keep)) as segmenter:
        scheduler = segmenter.pipeline.scheduler
        backends = [scheduler.patch_backend, *(stage.backend for stage in scheduler.global_stages)]
        assert all(b.options.shared_arena is keep and (_config(b) == SHARED_ARENA_ENTRIES) is keep for b in backends)
        np.testing.assert_array_equal(segmenter.segment(image), expected)


def test_only_the_measured_precisions_keep_their_activations(small_bundle):
    pipelines = {p: OnnxRuntimePipeline.__new__(OnnxRuntimePipeline) for p in ("fp32", "fp16", "int8")}
    for precision, pipeline in pipelines.items():
        pipeline.options = SegmenterOptions(precision=precision, keep_activations=True)
        pipeline.bundle = None
        assert pipeline._ort_options("local").shared_arena is (precision in KEPT_ACTIVATION_PRECISIONS)
    assert KEPT_ACTIVATION_PRECISIONS == ("fp32",)  # fp16 and int8 were measured no faster, and peaked higher


def test_glsnet_run_keeps_activations_unless_told_to_release_them(small_bundle, tmp_path, monkeypatch):
    from PIL import Image

    import runtime.segmenter

    seen = []
    original = runtime.segmenter.Segmenter.__init__

    def spy(self, bundle, options=None):
        seen.append(options.keep_activations)
        original(self, bundle, options=options)

    monkeypatch.setattr(runtime.segmenter.Segmenter, "__init__", spy)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    from runtime.cli import app

    for flag in ([], ["--release-activations"]):
        result = CliRunner().invoke(app, ["run", str(tmp_path / "a.png"), "-b", str(small_bundle), "-o", str(tmp_path / "out"), *flag])
        assert result.exit_code == 0, result.output
    assert seen == [True, False]
    assert segmenter_options(precision="fp32", engine="onnxruntime", provider=None, device=None, batch_size=None, max_memory=None,
                             threads=None, bands=None, max_pixels=10).keep_activations is False  # the library's default
    assert "keep_activations" in EXECUTION_ONLY  # a batch resumed with it changed still skips finished scenes
