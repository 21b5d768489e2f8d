"""Build -> check -> run, end to end on the CPU: fake TensorRT engines (numpy kernels) on the recording device."""

from __future__ import annotations

import numpy as np
import pytest

from export.tensorrt.tensorrt_build import TensorRTBuildOptions, build_tensorrt_engines
from runtime.algorithm.device_buffers import IMAGE_PIXELS
from runtime.cuda.recording import RecordingDevice
from runtime.engines.tensorrt_pipeline import TensorRTPipeline, TensorRTPipelineOptions
from runtime.errors import BundleError, GlsnetError, InputError
from runtime.image_io.preprocess import normalize
from runtime.image_io.readers import ArraySource
from tests.tensorrt_support import NumpyGLSNet, fake_tensorrt, make_manifest, reference_mask, scratch_need, write_fake_bundle


@pytest.fixture
def built(tmp_path):
    manifest = make_manifest(precisions=("fp32", "fp16", "int8"))
    root = write_fake_bundle(tmp_path / "bundle", manifest)
    net = NumpyGLSNet(manifest)
    return root, manifest, net


def pixels(height, width, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, size=(height // 16 + 1, width // 16 + 1, 3))
    return np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:height, :width].astype(np.uint8)


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_the_built_engines_segment_like_the_reference(built, version):
    root, manifest, net = built
    device = RecordingDevice(name="Orin", priority=("local",))
    trt = fake_tensorrt(version, device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8, max_image_size=(1024, 1024)), trt=trt, device=device)
    image = pixels(230, 310, seed=1)
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=device, trt=trt) as pipeline:
        mask = pipeline.segment(image)
        assert pipeline.batch_size_for(230, 310) == 4  # the profile's optimal batch
        scratch = {role: {c[2] for c in trt.calls if c[0] == "set_device_memory" and c[1] == role} for role in ("global", "local", "fusion")}
        # local and fusion run concurrently on their own streams now: each has its own scratch allocation
        assert all(len(ptrs) == 1 for ptrs in scratch.values()) and len(set.union(*scratch.values())) == 3
    expected = reference_mask(net, manifest, normalize(image, manifest.normalization), 4)
    np.testing.assert_array_equal(mask, expected)
    assert device.allocated_bytes == 0


def test_dla_engines_run_static_batches_and_still_match(built):
    root, manifest, net = built
    device = RecordingDevice(name="Orin")
    seen: list[int] = []

    def local(feed):
        seen.append(feed["patches"].shape[0])
        return net.local_branch(feed)

    trt = fake_tensorrt("10.3.0", device=device, functions={**net.functions, "local": local})
    build_tensorrt_engines(root, "int8", TensorRTBuildOptions(opt_batch=5, dla_core=0), trt=trt, device=device)
    image = pixels(200, 200, seed=2)  # 16 patches: the last batch of 1 is padded to 5 for the static DLA engine
    options = TensorRTPipelineOptions(precision="int8", dla_core=0)
    with TensorRTPipeline(root, options, device=device, trt=trt) as pipeline:
        mask = pipeline.segment(image)
    assert seen and set(seen) == {5}  # every local run, the padded last batch included, is a full static batch
    np.testing.assert_array_equal(mask, reference_mask(net, manifest, normalize(image, manifest.normalization), 5))


def test_engines_of_another_tensorrt_or_gpu_are_refused_before_loading(built):
    root, _, net = built
    builder = RecordingDevice(name="Orin", compute_capability="8.7")
    build_tensorrt_engines(root, "fp16", trt=fake_tensorrt("10.3.0"), device=builder)
    newer = fake_tensorrt("10.4.0", device=builder, functions=net.functions)
    with pytest.raises(BundleError, match=f"glsnet-export build {root} --fp16 --target tensorrt"):
        TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=builder, trt=newer).open()
    other_gpu = RecordingDevice(name="NVIDIA A100", compute_capability="8.0")
    with pytest.raises(BundleError, match="compute capability 8.7 .* this GPU has 8.0"):
        TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=other_gpu, trt=fake_tensorrt("10.3.0")).open()
    assert not [c for c in newer.calls if c[0] == "deserialize_cuda_engine"]


def test_batch_size_choice_respects_the_profile_and_a_memory_budget(built):
    root, manifest, net = built
    device = RecordingDevice()
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8), trt=trt, device=device)
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", max_memory=10**9), device=device, trt=trt) as roomy:
        assert roomy.batch_size_for(512, 512) == 8  # a large budget: the profile's maximum
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", batch_size=9), device=device, trt=trt) as too_big:
        with pytest.raises(InputError, match=r"outside the engines' profile \(1..8 patches\)"):
            too_big.segment(pixels(64, 64))


@pytest.mark.parametrize("spelling", [{"engine": "tensorrt"}, {"device": "tensorrt-engine"}])
def test_segmenter_engine_tensorrt_runs_the_pipeline(built, monkeypatch, spelling):
    """glsnet run --engine tensorrt (or the old --device tensorrt-engine): the Segmenter's pipeline is the TensorRT one."""
    import sys

    import runtime.engines.tensorrt_pipeline as pipeline_module
    from runtime.segmenter import Segmenter

    root, manifest, net = built
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=3), trt=trt, device=device)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(pipeline_module, "open_device", lambda binding, ordinal: device)
    image = pixels(150, 180, seed=3)
    with Segmenter(root, precision="fp16", **spelling) as segmenter:
        assert segmenter.pipeline is segmenter.tensorrt_pipeline
        mask = segmenter.segment(image)
        assert segmenter.plan(150, 180).batch_size == 3
        rows = np.concatenate([r for _, r in segmenter.iter_rows(ArraySource(image))])
    np.testing.assert_array_equal(mask, reference_mask(net, manifest, normalize(image, manifest.normalization), 3))
    np.testing.assert_array_equal(rows, mask)
    assert len([c for c in trt.calls if c[0] == "deserialize_cuda_engine"]) == 3 + 3  # build's checks + one open
    assert device.allocated_bytes == 0  # close() released the engines' memory


def test_a_dla_engine_is_deserialised_on_its_core_and_missing_cores_are_refused(built):
    """Defect 3: the runtime's DLA core is set before the DLA engine is deserialised; too few cores is a clear error."""
    root, manifest, net = built
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, dla_core=1), trt=trt, device=device)
    assert ("runtime.DLA_core", 1) in trt.calls  # the build's own check of the new engine, too
    trt.calls.clear()
    options = TensorRTPipelineOptions(precision="fp16", dla_core=1)
    image = pixels(150, 150, seed=4)
    with TensorRTPipeline(root, options, device=device, trt=trt) as pipeline:
        mask = pipeline.segment(image)
        assert {role: e.dla_core for role, e in pipeline.engines.items()} == {"global": None, "local": 1, "fusion": None}
    order = [c for c in trt.calls if c[0] in ("runtime.DLA_core", "deserialize_cuda_engine")]
    assert order == [("deserialize_cuda_engine",), ("runtime.DLA_core", 1), ("deserialize_cuda_engine",), ("deserialize_cuda_engine",)]
    np.testing.assert_array_equal(mask, reference_mask(net, manifest, normalize(image, manifest.normalization), 4))

    trt.num_dla_cores = 1  # an Orin NX 8 GB: core 0 only
    with pytest.raises(InputError, match="DLA core 1 was requested at run time but this device has DLA cores 0..0"):
        TensorRTPipeline(root, options, device=device, trt=trt).open()
    trt.num_dla_cores = 0
    with pytest.raises(InputError, match="DLA core 1 was requested at build time but this device has no DLA cores"):
        build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(dla_core=1), trt=trt, device=device)


def test_the_pipeline_opens_once_and_reserves_each_engines_scratch_at_open(built):
    """Defects 7 and 5: three engines deserialised for the first image (not nine); a second open warns; scratch never regrows."""
    root, manifest, net = built
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8), trt=trt, device=device)
    trt.calls.clear()
    pipeline = TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=device, trt=trt)
    pipeline.open()
    reserved = {role: memory.buffer for role, memory in pipeline._context_memory.items()}
    assert reserved["fusion"] is not None and reserved["fusion"].nbytes >= scratch_need("fusion", 8)  # the profile's need
    assert reserved["local"] is not None and reserved["local"].nbytes >= scratch_need("local", 8)
    with pytest.warns(RuntimeWarning, match="already open"):
        assert pipeline.open() is pipeline
    mask = pipeline.segment(pixels(230, 310, seed=5))
    pipeline.segment(pixels(100, 90, seed=6))  # another size: new buffers, same engines
    assert len([c for c in trt.calls if c[0] == "deserialize_cuda_engine"]) == 3
    for role in ("local", "fusion"):
        assert pipeline._context_memory[role].buffer is reserved[role]  # never freed and reallocated mid-image
        scratch = {(c[2], c[3]) for c in trt.calls if c[0] == "set_device_memory" and c[1] == role}
        assert scratch == {(reserved[role].ptr, reserved[role].nbytes)}
    pipeline.close()
    assert device.allocated_bytes == 0 and mask.shape == (230, 310)


def test_threads_share_one_pipeline_safely(built):
    """Defect 7: four threads segment different images through one pipeline; each gets its own image's mask."""
    import threading

    root, manifest, net = built
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=3), trt=trt, device=device)
    images = [pixels(130 + 20 * i, 150, seed=10 + i) for i in range(4)]
    expected = [reference_mask(net, manifest, normalize(image, manifest.normalization), 3) for image in images]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(images))
    pipeline = TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=device, trt=trt)

    class SlowRows:  # yields control between row reads, so that unlocked threads would interleave on the staging
        def __init__(self, pixels):
            self.pixels, self.height, self.width = pixels, pixels.shape[0], pixels.shape[1]

        def read_rows(self, top, bottom):
            threading.Event().wait(0.001)
            return self.pixels[top:bottom]

    def work(i: int) -> None:
        try:
            barrier.wait()
            mask = np.zeros(images[i].shape[:2], dtype=np.uint8)
            for top, rows in pipeline.iter_rows(SlowRows(images[i])):
                threading.Event().wait(0.001)
                mask[top : top + rows.shape[0]] = rows
            results[i] = mask
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    pipeline.close()
    assert not errors, errors
    for i in range(len(images)):
        np.testing.assert_array_equal(results[i], expected[i])
    rows = pipeline.iter_rows(SlowRows(images[0]))
    next(rows)
    with pytest.raises(GlsnetError, match="already segmenting an image"):  # one thread cannot interleave two images
        next(pipeline.iter_rows(SlowRows(images[1])))
    rows.close()
    pipeline.close()
    assert device.allocated_bytes == 0


def test_cuda_graphs_through_the_whole_schedule_on_images_of_two_sizes(built):
    """Defect 1 end to end: graphs on, images of two sizes in turn; the strict fake refuses any replay of a changed context."""
    root, manifest, net = built
    device = RecordingDevice(name="Orin", priority=("local",))
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=2, max_batch=8), trt=trt, device=device)
    images = [pixels(230, 310, seed=7), pixels(140, 150, seed=8)]
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", cuda_graphs=True), device=device, trt=trt) as pipeline:
        for image in images + images:
            mask = pipeline.segment(image)
            np.testing.assert_array_equal(mask, reference_mask(net, manifest, normalize(image, manifest.normalization), 2))
    assert [c.op for c in device.calls].count("launch_graph") > 0
    assert device.live_graphs == 0 and device.allocated_bytes == 0


def test_batch_size_auto_takes_the_largest_batch_free_device_memory_holds(built):
    from runtime.algorithm.device_buffers import plan_buffers
    from runtime.algorithm.memory_budget import DEVICE_HEADROOM

    root, manifest, net = built
    size = (230, 310)
    per_batch = plan_buffers(manifest, "fp16", 2, size).device_bytes - plan_buffers(manifest, "fp16", 1, size).device_bytes
    results = {}
    opened = {}
    for name in ("roomy", "tight"):
        # the tight GPU: what the engines took at open, plus room for the buffers of 3 patches and a little
        total = 1 << 30 if name == "roomy" else opened["roomy"] + int((plan_buffers(manifest, "fp16", 3, size).device_bytes + per_batch // 2) / (1 - DEVICE_HEADROOM))
        device = RecordingDevice(name="Orin", total_memory=total)
        trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
        build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8), trt=trt, device=device)
        with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", batch_size="auto"), device=device, trt=trt) as pipeline:
            opened[name] = total - device.memory_info()[0]
            free = device.memory_info()[0]
            batch = pipeline.batch_size_for(*size)
            mask = pipeline.segment(pixels(*size, seed=9))
            buffers = plan_buffers(manifest, "fp16", batch, size).device_bytes
            assert buffers <= free * (1 - DEVICE_HEADROOM)
            if batch < 8:
                assert buffers + per_batch > free * (1 - DEVICE_HEADROOM)  # one more patch would not fit
        results[name] = (batch, mask)
    assert results["roomy"][0] == 8  # the profile's maximum, not its optimum (4)
    assert results["tight"][0] == 3
    np.testing.assert_array_equal(results["tight"][1], results["roomy"][1])  # the batch never changes the mask


def test_batch_size_auto_plans_the_buffers_of_the_images_real_pixels(built):
    from runtime.algorithm.device_buffers import PixelLayout, plan_buffers
    from runtime.algorithm.memory_budget import DEVICE_HEADROOM
    from runtime.bundle.manifest import Normalization

    root, manifest, net = built
    size = (230, 310)
    wide = PixelLayout(4, np.uint16)
    assert plan_buffers(manifest, "fp16", 8, size, pixels=wide).device_bytes > plan_buffers(manifest, "fp16", 8, size).device_bytes
    opened = RecordingDevice(name="Orin", total_memory=1 << 30)
    trt = fake_tensorrt("10.3.0", device=opened, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8), trt=trt, device=opened)
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=opened, trt=trt):
        engines = (1 << 30) - opened.memory_info()[0]
    # room for batch 8 (the profile's maximum) of 3-band uint8 pixels, not for batch 8 of this image's 4-band uint16 ones
    total = engines + int((plan_buffers(manifest, "fp16", 8, size).device_bytes + 1024) / (1 - DEVICE_HEADROOM))
    device = RecordingDevice(name="Orin", total_memory=total)
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    image = (np.random.default_rng(4).random((*size, 4)) * 60000).astype(np.uint16)
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale=65535.0, bands=(0, 1, 2))
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", batch_size="auto"), device=device, trt=trt) as pipeline:
        free = device.memory_info()[0]
        pipeline.segment(image, normalization=norm)
        allocated = pipeline.scheduler.plan
    assert allocated.device(IMAGE_PIXELS).nbytes == size[0] * size[1] * 4 * 2
    assert allocated.device_bytes <= free * (1 - DEVICE_HEADROOM)  # what the scheduler allocated fits what the plan allowed
    assert allocated.batch < 8


class _WatchedDevice(RecordingDevice):
    """The recording device, logging in host order which stream each piece of work is queued on and each wait."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log: list[tuple[str, int]] = []

    def synchronize(self, stream) -> None:
        self.log.append(("sync", stream.index))
        super().synchronize(stream)

    def enqueue_host_function(self, stream, function, label):
        self.log.append(("work", stream.index))
        return super().enqueue_host_function(stream, function, label)


def test_switching_batch_size_waits_for_the_last_schedulers_streams_first(built):
    from runtime.algorithm.device_buffers import plan_buffers

    root, manifest, net = built
    small, large = (230, 310), (260, 310)
    device = _WatchedDevice(name="Orin", total_memory=1 << 30)
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8), trt=trt, device=device)
    roomy = 1 << 29
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", max_device_memory=roomy), device=device, trt=trt) as pipeline:
        fixed = roomy - pipeline.device_plan(*small).limit_bytes  # weights and scratch
    budget = fixed + plan_buffers(manifest, "fp16", 8, small).device_bytes + 1024  # batch 8 for the small image only
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", max_device_memory=budget), device=device, trt=trt) as pipeline:
        rows = pipeline.iter_rows(ArraySource(pixels(*small)))
        next(rows)
        rows.close()  # abandoned after its first band: later batches are still queued on its scheduler's streams
        first = pipeline.scheduler
        assert first.options.batch_size == 8 and pipeline.batch_size_for(*large) < 8
        abandoned = {stream.index for stream in first.streams.values()}
        mark = len(device.log)
        mask = pipeline.segment(pixels(*large, seed=3))
        assert pipeline.scheduler is not first
    after = device.log[mark:]
    start = next(i for i, (what, index) in enumerate(after) if what == "work" and index not in abandoned)
    assert abandoned <= {index for what, index in after[:start] if what == "sync"}  # every stream of the last scheduler waited for
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", max_device_memory=budget), device=device, trt=trt) as fresh:
        np.testing.assert_array_equal(mask, fresh.segment(pixels(*large, seed=3)))


def test_max_device_memory_is_honoured_by_what_the_pipeline_really_allocates(built):
    root, manifest, net = built
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8), trt=trt, device=device)
    trt.calls.clear()
    size = (230, 310)
    with TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=device, trt=trt) as pipeline:
        pipeline.segment(pixels(*size))
        engines = sum(p.stat().st_size for p in (root / "engines").rglob("*") if p.is_file() and "fp16" in str(p))
    base = device.peak_allocated_bytes
    budget = base + engines - 1  # too small for what batch 4 took
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    options = TensorRTPipelineOptions(precision="fp16", max_device_memory=budget)
    with TensorRTPipeline(root, options, device=device, trt=trt) as pipeline:
        batch = pipeline.batch_size_for(*size)
        pipeline.segment(pixels(*size))
        plan = pipeline.plan(*size)
    assert batch < 4 and plan.budget_bytes == budget
    assert device.peak_allocated_bytes <= budget  # scratch and buffers on the device, within the budget
    with pytest.raises(InputError, match="max-device-memory"):
        TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16", max_device_memory=1000), device=RecordingDevice(name="Orin"), trt=trt).batch_size_for(*size)


def test_engine_io_types_are_checked_against_the_manifest_not_only_their_names(built):
    """The schedule sizes and fills its buffers from the manifest's dtypes: an fp16 engine input fed fp32 bytes is garbage."""
    root, manifest, net = built
    device = RecordingDevice(name="Orin")
    trt = fake_tensorrt("10.3.0", device=device, functions=net.functions)
    trt.engine_dtypes = {"local": {"patches": "HALF"}}  # built without keeping fp32 I/O types
    build_tensorrt_engines(root, "fp16", TensorRTBuildOptions(opt_batch=4, max_batch=8), trt=trt, device=device)
    with pytest.raises(BundleError, match=r"local engine's tensor 'patches' is float16 but the manifest's fp16 graph says float32"):
        TensorRTPipeline(root, TensorRTPipelineOptions(precision="fp16"), device=device, trt=trt).open()
    assert device.allocated_bytes == 0  # what the failed open took is released
