"""The shared CPU arena: sessions that opt in allocate from one arena registered once per process, give the same outputs,
and `glsnet run` opts in at the precisions where it was measured to pay."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.backends import shared_arena
from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from runtime.backends.shared_arena import SHARED_ARENA_ENTRIES, SHARED_ARENA_REGION_BYTES, register_shared_arena
from runtime.batch.resume import EXECUTION_ONLY
from runtime.cli_options import segmenter_options
from runtime.engines.onnxruntime_pipeline import keeps_activations
from runtime.segmenter import Segmenter, SegmenterOptions
from tests.runtime.backends.session_config import session_config_entries, shared_arena_states


def _config(backend: OnnxRuntimeBackend) -> dict[str, str]:
    return session_config_entries(backend, SHARED_ARENA_ENTRIES)


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


def test_the_sessions_really_allocate_from_the_environments_arena(small_bundle):
    # a capped arena registered first stands in for the shared one: a run that needs more than it holds fails only if
    # the session takes its activations from it (a child process: the registration lasts as long as the process)
    script = f"""
import numpy as np, onnxruntime as ort
from runtime.backends import shared_arena
from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
capped = ort.OrtArenaCfg({{"max_mem": 1 << 20, "arena_extend_strategy": 1}})
ort.create_and_register_allocator(ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT), capped)
shared_arena._registered = True
patches = {{"patches": np.zeros((2, 3, 128, 128), np.float32)}}
with OnnxRuntimeBackend({str(small_bundle / "local.onnx")!r}, OrtOptions(threads=1)) as plain:
    plain.infer(patches)
with OnnxRuntimeBackend({str(small_bundle / "local.onnx")!r}, OrtOptions(threads=1, shared_arena=True)) as shared:
    try:
        shared.infer(patches)
    except Exception as exc:
        print("refused:", type(exc).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout


def test_a_refused_arena_leaves_the_sessions_as_they_were(small_bundle, monkeypatch, caplog):
    import onnxruntime as ort

    def refuse(*args):
        raise RuntimeError("an allocator for this device is already registered")

    monkeypatch.setattr(shared_arena, "_registered", None)
    monkeypatch.setattr(ort, "create_and_register_allocator", refuse)
    with caplog.at_level(logging.WARNING, logger=shared_arena.__name__):
        with OnnxRuntimeBackend(small_bundle / "local.onnx", OrtOptions(threads=1, shared_arena=True)) as backend:
            assert _config(backend) == {} and backend.session.get_session_options().enable_mem_pattern
            backend.infer({"patches": np.zeros((1, 3, 128, 128), np.float32)})
    assert "ONNX Runtime refused the shared arena (an allocator for this device is already registered)" in caplog.text
    assert shared_arena._registered is False  # not tried again by every later session


def test_the_arena_is_registered_once_however_many_sessions_start_at_once(monkeypatch):
    calls = []
    start = threading.Barrier(8)

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
            time.sleep(0.05)  # long enough for the other threads to arrive while the first registers
            calls.append((memory, config))

    results = []

    def register() -> None:
        start.wait()
        results.append(register_shared_arena(FakeOrt))

    monkeypatch.setattr(shared_arena, "_registered", None)
    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results == [True] * 8
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
        assert scheduler.global_stages and scheduler.patch_backend  # stage graphs and the joined session: all on it
        states = shared_arena_states(scheduler)
        assert len(states) == 1 + len(scheduler.global_stages) and states == [(keep, keep)] * len(states)
        np.testing.assert_array_equal(segmenter.segment(image), expected)


@pytest.mark.parametrize(
    "options, kept",
    [
        (SegmenterOptions(keep_activations=True), True),
        (SegmenterOptions(), False),
        (SegmenterOptions(keep_activations=True, precision="fp16"), False),  # measured no faster, and peaked higher
        (SegmenterOptions(keep_activations=True, precision="int8"), True),
        (SegmenterOptions(keep_activations=True, max_memory=2 << 30), False),  # the plan was measured without it
    ],
)
def test_activations_are_kept_at_fp32_and_int8_when_asked_and_no_memory_budget_is_set(options, kept):
    assert keeps_activations(options) is kept


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
