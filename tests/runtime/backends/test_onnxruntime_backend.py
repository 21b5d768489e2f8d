"""The ONNX Runtime backend and the scheduler's handling of failing branches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.algorithm import scheduler as scheduler_module
from runtime.algorithm.global_features import GlobalStage
from runtime.algorithm.scheduler import ScheduleOptions
from runtime.backends.onnxruntime import SPINNING_ENTRIES, OnnxRuntimeBackend, OrtOptions, providers_for
from runtime.errors import BundleError, GlsnetError, InputError, MissingDependencyError
from runtime.image_io.readers import ArraySource
from runtime.segmenter import Segmenter, SegmenterOptions
from tests.runtime.backends.session_config import session_config_entries


def test_backend_metadata_and_inference(small_bundle):
    backend = OnnxRuntimeBackend(small_bundle / "local.onnx", OrtOptions(threads=1))
    with pytest.raises(GlsnetError, match="activate"):
        backend.input_metadata()
    with backend:
        meta = backend.input_metadata()["patches"]
        assert meta.dtype == np.float32 and meta.shape[1:] == (3, 128, 128)
        out = backend.infer({"patches": np.zeros((2, 3, 128, 128), np.float32)})
        assert out["local_features"].shape == (2, 64, 4, 4) and out["local_skip"].shape == (2, 16, 32, 32)
        with pytest.raises(InputError, match="size 64 on axis 2"):
            backend.infer({"patches": np.zeros((1, 3, 64, 128), np.float32)})
        shapes = {"patches": (6, 3, 128, 128)}
        outputs = {"local_features": (6, 64, 4, 4), "local_skip": (6, 16, 32, 32)}
        assert backend.memory_estimate(shapes, outputs) > 2 * backend.memory_estimate({"patches": (2, 3, 128, 128)}, {})
        assert backend.weight_bytes > (small_bundle / "local.onnx").stat().st_size
    assert not backend.is_active


def test_spinning_off_is_a_session_option_of_both_thread_pools(small_bundle):
    def entries(backend: OnnxRuntimeBackend) -> dict[str, str]:
        return session_config_entries(backend, SPINNING_ENTRIES)

    with OnnxRuntimeBackend(small_bundle / "local.onnx", OrtOptions(threads=2, spinning=False)) as quiet:
        assert entries(quiet) == {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
        assert quiet.session.get_session_options().intra_op_num_threads == 2
    with OnnxRuntimeBackend(small_bundle / "local.onnx", OrtOptions(threads=2)) as default:
        assert entries(default) == {}  # ONNX Runtime's own default (spinning) is left alone
    for joined in (True, False):
        with Segmenter(small_bundle, options=SegmenterOptions(threads=1, thread_spinning=False, join_patch_graphs=joined)) as segmenter:
            scheduler = segmenter.pipeline.scheduler
            patch = (scheduler.patch_backend,) if joined else (scheduler.local_backend, scheduler.fusion_backend)
            for backend in (*patch, *(stage.backend for stage in scheduler.global_stages)):
                assert entries(backend)["session.intra_op.allow_spinning"] == "0", backend.name


def test_a_file_that_is_not_a_graph_is_a_bundle_error(tmp_path):
    bogus = tmp_path / "global.onnx"
    bogus.write_bytes(b"not protobuf at all")
    with pytest.raises(BundleError, match="could not load this graph"):
        OnnxRuntimeBackend(bogus).activate()


def test_providers():
    assert providers_for(OrtOptions(), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        providers_for(OrtOptions(device="cuda"), ["CPUExecutionProvider"])
    with pytest.raises(InputError, match="not one of"):
        OrtOptions(device="tpu")
    with pytest.raises(InputError, match="threads"):
        OrtOptions(threads=0)


def test_tensorrt_provider_keeps_its_engine_cache_in_the_bundle(tmp_path):
    cache = tmp_path / "engines" / "ort-tensorrt-cache" / "fp16"
    providers = providers_for(OrtOptions(device="tensorrt", fp16=True, tensorrt_cache_dir=cache), ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    name, trt = providers[0]
    assert name == "TensorrtExecutionProvider" and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(cache) and cache.is_dir()
    assert [p if isinstance(p, str) else p[0] for p in providers[1:]] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


class _Exploding:
    def __init__(self, real, after: int) -> None:
        self.real, self.after, self.calls = real, after, 0

    def infer(self, feed):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("device lost")
        return self.real.infer(feed)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("branch", ["global_backend", "local_backend", "patch_backend"])
def test_a_failing_branch_surfaces_in_the_caller_and_stops_the_threads(small_bundle, branch):
    segmenter = Segmenter(small_bundle, options=SegmenterOptions(batch_size=2, join_patch_graphs=branch != "local_backend"))
    scheduler = segmenter.scheduler
    if branch == "global_backend" and scheduler.global_stages:  # the stage graphs run instead of the single graph
        first, *rest = scheduler.global_stages
        scheduler.global_stages = (GlobalStage(_Exploding(first.backend, after=0), first.stride, first.halo), *rest)
    else:
        setattr(scheduler, branch, _Exploding(getattr(scheduler, branch), after=0 if branch == "global_backend" else 1))
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="device lost"):
        scheduler.segment(ArraySource(np.zeros((400, 300, 3), np.uint8)))
    assert threading.active_count() == before


class _Wrapped:
    def __init__(self, real, before) -> None:
        self.real, self.before = real, before

    def infer(self, feed):
        self.before()
        return self.real.infer(feed)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_local_batches_run_while_the_global_branch_is_still_busy(small_bundle):
    """Unserialized (GPU providers): the global graph blocks until a local batch has started; a scheduler
    that made local wait for global would never get there (the gate gives up after 30 s and the run fails)."""
    scheduler = Segmenter(small_bundle, options=SegmenterOptions(join_patch_graphs=False)).scheduler  # GPU providers run two graphs
    local_started = threading.Event()

    def gate() -> None:
        if not local_started.wait(timeout=30):
            raise AssertionError("no local batch started while the global branch was running")

    first, *rest = scheduler.global_stages
    scheduler.global_stages = (GlobalStage(_Wrapped(first.backend, gate), first.stride, first.halo), *rest)
    scheduler.local_backend = _Wrapped(scheduler.local_backend, local_started.set)
    mask = scheduler.segment(ArraySource(np.zeros((300, 260, 3), np.uint8)), ScheduleOptions(serialize_graphs=False))
    assert mask.shape == (300, 260) and local_started.is_set()


def test_on_the_cpu_one_graph_runs_at_a_time(small_bundle, monkeypatch):
    """Serialized (the CPU default): no two graphs run at once, so their working sets never add up, and cutting
    patches and stitching wait their turn too (on a core a graph shares they slowed it by more than their own time)."""
    segmenter = Segmenter(small_bundle, batch_size=2)
    scheduler = segmenter.scheduler
    running, most, kinds = [0], [0], set()
    lock = threading.Lock()

    def counted(kind, work, *args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            kinds.add(kind)
        try:
            return work(*args)
        finally:
            with lock:
                running[0] -= 1

    class Counting(_Wrapped):
        def infer(self, feed):
            return counted("graph", self.real.infer, feed)

    scheduler.global_stages = tuple(GlobalStage(Counting(s.backend, None), s.stride, s.halo) for s in scheduler.global_stages)
    scheduler.local_backend = Counting(scheduler.local_backend, None)
    scheduler.fusion_backend = Counting(scheduler.fusion_backend, None)
    scheduler.patch_backend = Counting(scheduler.patch_backend, None)
    stitch, cut = scheduler_module.Stitcher.add, scheduler_module.PaddedReader.patches
    monkeypatch.setattr(scheduler_module.Stitcher, "add", lambda self, logits: counted("stitch", stitch, self, logits))
    monkeypatch.setattr(scheduler_module.PaddedReader, "patches", lambda self, batch: counted("cut", cut, self, batch))
    image = np.random.default_rng(2).integers(0, 256, (400, 300, 3), dtype=np.uint8)
    mask = scheduler.segment(ArraySource(image), segmenter._schedule)
    assert most[0] == 1 and kinds == {"graph", "stitch", "cut"}
    np.testing.assert_array_equal(mask, scheduler.segment(ArraySource(image), ScheduleOptions(serialize_graphs=False)))
