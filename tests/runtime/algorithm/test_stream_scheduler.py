"""The GPU schedule on the recording fake: order of streams and events, and the stitched numbers."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.accuracy.comparison import pixel_agreement
from runtime.algorithm.stream_scheduler import StreamScheduleOptions, StreamScheduler
from runtime.cuda.recording import Call, HostAsyncBackend, RecordingDevice
from runtime.errors import InputError
from tests.tensorrt_support import NumpyGLSNet, make_manifest, manifest_for_config, normalized_image, reference_mask


def numpy_scheduler(priority=("local",), batch_size=4, lookahead=2, fixed_batch=False, manifest=None, seed=0):
    manifest = manifest or make_manifest()
    net = NumpyGLSNet(manifest, seed=seed)
    device = RecordingDevice(priority=priority)
    engines = {role: HostAsyncBackend(device, fn, role) for role, fn in net.functions.items()}
    options = StreamScheduleOptions(batch_size=batch_size, lookahead=lookahead, fixed_batch=fixed_batch)
    return StreamScheduler(device, engines, manifest, "fp32", options), net, manifest, device


@pytest.mark.parametrize("priority", [("local",), ("global",)])
@pytest.mark.parametrize(
    "size,batch_size,lookahead",
    [((200, 300), 4, 2), ((64, 64), 3, 2), ((40, 150), 2, 1), ((230, 130), 5, 3), ((300, 300), 1, 2)],
)
def test_stitched_mask_equals_the_whole_image_reference(priority, size, batch_size, lookahead):
    scheduler, net, manifest, _ = numpy_scheduler(priority, batch_size, lookahead)
    image = normalized_image(*size, seed=sum(size))
    with scheduler:
        mask = scheduler.segment(image)
    expected = reference_mask(net, manifest, image, batch_size)
    assert mask.shape == size
    np.testing.assert_array_equal(mask, expected)
    assert len(np.unique(expected)) > 1  # the scene is not trivially one class


def _index(calls: list[Call], predicate) -> list[int]:
    return [i for i, call in enumerate(calls) if predicate(call)]


def test_local_batches_are_queued_before_the_global_wait_and_fusion_runs_after_global():
    scheduler, _, _, device = numpy_scheduler(priority=("copy", "local", "fusion"), batch_size=2, lookahead=2)
    with scheduler:
        scheduler.segment(normalized_image(200, 200))
    calls = device.calls
    global_launch = _index(calls, lambda c: c == Call("launch", "global", "global"))
    local_launches = _index(calls, lambda c: c == Call("launch", "local", "local"))
    fusion_launches = _index(calls, lambda c: c == Call("launch", "fusion", "fusion"))
    global_event = [c for c in calls[global_launch[0] :] if c.op == "record_event" and c.stream == "global"][0].label
    waits = _index(calls, lambda c: c.op == "stream_wait_event" and c.label == global_event)
    assert len(global_launch) == 1 and len(waits) == 1  # one device-side wait on the global features per image...
    assert calls[waits[0]].stream == "fusion"  # ...on the fusion stream: the local stream never waits for them
    assert global_launch[0] < local_launches[0]
    assert local_launches[1] < waits[0] < fusion_launches[0]  # both lookahead batches are queued before the wait
    # the host never blocks on the global branch: no host wait on its event, no sync of its stream mid-run
    assert not [c for c in calls if c.op == "event_synchronize" and c.label == global_event]
    mid_run = calls[global_launch[0] : fusion_launches[-1]]
    assert not [c for c in mid_run if c.op == "synchronize" and c.stream == "global"]

    executed = device.executed
    kernels = [(e.stream, e.label) for e in executed if e.kind == "kernel"]
    # with the copy and local streams favoured, local batches really run before the global engine...
    assert kernels.index(("local", "local")) < kernels.index(("global", "global"))
    # ...but fusion never runs before it, and patches are only cut once the image is normalised on the device
    assert kernels.index(("global", "global")) < kernels.index(("fusion", "fusion"))
    assert [e.kind for e in executed if e.stream == "global"][:1] == ["copy_htod"]


def test_only_the_image_goes_up_and_only_mask_rows_come_down():
    """No patch, feature or logit crosses the bus: uploads are the image and the boxes, downloads uint8 rows."""
    scheduler, net, manifest, device = numpy_scheduler(batch_size=3)
    pixels = np.random.default_rng(1).integers(0, 256, size=(230, 310, 3), dtype=np.uint8)
    with scheduler:
        scheduler.segment_pixels(pixels, manifest.normalization)
        plan = scheduler.plan
    boxes_bytes = 3 * 4 * 4
    uploads = [int(c.label[:-1]) for c in device.calls if c.op == "memcpy_htod_async"]
    downloads = [int(c.label[:-1]) for c in device.calls if c.op == "memcpy_dtoh_async"]
    assert uploads[0] == pixels.nbytes and all(n <= boxes_bytes for n in uploads[1:])
    assert sum(downloads) == 230 * 310  # one byte per pixel: class indices, once each
    assert plan is not None and plan.host("image/pixels").dtype == np.uint8
    with pytest.raises(KeyError):
        plan.host("fusion/logits")  # logits never come back to the host


def test_without_the_device_side_wait_fusion_reads_unfinished_global_features():
    """The order test above can fail: drop the wait and the local-first fake produces other numbers."""

    class NoWait(StreamScheduler):
        def _enqueue_fusion(self, k, b, buffers, wait_for_global):
            super()._enqueue_fusion(k, b, buffers, wait_for_global=False)

    manifest = make_manifest()
    net = NumpyGLSNet(manifest)
    device = RecordingDevice(priority=("copy", "local", "fusion"))
    engines = {role: HostAsyncBackend(device, fn, role) for role, fn in net.functions.items()}
    image = normalized_image(200, 300, seed=3)
    with NoWait(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=4)) as scheduler:
        broken = scheduler.segment(image)
    assert not np.array_equal(broken, reference_mask(net, manifest, image, 4))


def test_without_the_patch_slot_wait_the_copy_stream_overwrites_patches_the_local_engine_has_not_read():
    """Two device patch buffers: batch k+2 may be cut into batch k's only after the local engine read it."""

    class NoSlotWait(StreamScheduler):
        def _cut_patches(self, k, indices, grid, buffers):
            original = self.device.stream_wait_event
            self.device.stream_wait_event = lambda stream, event: None
            try:
                return super()._cut_patches(k, indices, grid, buffers)
            finally:
                self.device.stream_wait_event = original

    manifest = make_manifest()
    net = NumpyGLSNet(manifest)
    image = normalized_image(300, 300, seed=4)
    expected = reference_mask(net, manifest, image, 2)
    for cls, same in ((StreamScheduler, True), (NoSlotWait, False)):
        device = RecordingDevice(priority=("copy",))
        engines = {role: HostAsyncBackend(device, fn, role) for role, fn in net.functions.items()}
        with cls(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=2, lookahead=3)) as scheduler:
            mask = scheduler.segment(image)
        assert np.array_equal(mask, expected) == same


def test_copies_use_pinned_staging_and_buffers_match_the_plan():
    scheduler, _, _, device = numpy_scheduler(batch_size=3, lookahead=2)
    with scheduler:
        scheduler.segment(normalized_image(150, 170))
        plan = scheduler.plan
        assert plan is not None
        assert device.allocated_bytes == plan.device_bytes
        pinned = [c for c in device.calls if c.op == "alloc_pinned"]
        assert len(pinned) == sum(a.copies for a in plan.allocations if a.pinned)
        copies = [c for c in device.calls if c.op in ("memcpy_htod_async", "memcpy_dtoh_async")]
        assert copies and all(c.stream in ("global", "local", "fusion") for c in copies)
    assert device.allocated_bytes == 0  # close() freed every device buffer


def test_rows_are_handed_out_top_to_bottom_before_the_last_batch():
    scheduler, _, _, device = numpy_scheduler(batch_size=2)
    image = normalized_image(300, 200)
    with scheduler:
        rows = scheduler.run(image)
        first_row, first = next(rows)
        launches_so_far = len([c for c in device.calls if c.op == "launch" and c.label == "fusion"])
        rest = list(rows)
    assert first_row == 0 and first.shape[1] == 200
    assert launches_so_far < len([c for c in device.calls if c.op == "launch" and c.label == "fusion"])  # more fusion work came later
    tops = [first_row] + [top for top, _ in rest]
    assert tops == sorted(tops)
    assert tops[-1] + rest[-1][1].shape[0] == 300


def test_fixed_batch_engines_only_see_full_batches_and_padding_is_not_stitched():
    manifest = make_manifest()
    net = NumpyGLSNet(manifest)
    device = RecordingDevice(priority=("local",))
    seen: list[int] = []

    def local(feed):
        seen.append(feed["patches"].shape[0])
        return net.local_branch(feed)

    engines = {
        "global": HostAsyncBackend(device, net.global_branch, "global"),
        "local": HostAsyncBackend(device, local, "local"),
        "fusion": HostAsyncBackend(device, net.fusion, "fusion"),
    }
    image = normalized_image(200, 200, seed=5)  # 16 patches: 3 full batches of 5 and one of 1
    with StreamScheduler(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=5, fixed_batch=True)) as scheduler:
        mask = scheduler.segment(image)
    assert seen == [5, 5, 5, 5]
    np.testing.assert_array_equal(mask, reference_mask(net, manifest, image, 5))


def test_a_second_image_of_another_size_reallocates_and_still_matches():
    scheduler, net, manifest, device = numpy_scheduler(batch_size=3)
    with scheduler:
        for size in [(100, 120), (220, 90), (100, 120)]:
            image = normalized_image(*size, seed=size[0])
            np.testing.assert_array_equal(scheduler.segment(image), reference_mask(net, manifest, image, 3))


def test_missing_engines_and_bad_options_are_refused():
    manifest = make_manifest()
    device = RecordingDevice()
    with pytest.raises(InputError, match="missing"):
        StreamScheduler(device, {"global": object()}, manifest)
    with pytest.raises(InputError, match="at least 1"):
        StreamScheduleOptions(batch_size=0)


@pytest.mark.slow
def test_matches_the_pytorch_reference_with_the_model_branches(small_model, small_config):
    """Async engines wrapping the torch branches: the schedule reproduces glsnet.inference.predict_mask."""
    torch = pytest.importorskip("torch")
    from glsnet.inference import predict_mask

    def branch(fn, names):
        def run(feed):
            with torch.no_grad():
                out = fn(*(torch.from_numpy(feed[n]) for n in names))
            out = out if isinstance(out, tuple) else (out,)
            return [o.numpy() for o in out]

        return run

    g = branch(small_model.global_branch, ["image"])
    lo = branch(small_model.local_branch, ["patches"])
    fu = branch(small_model.fusion, ["local_features", "local_skip", "global_features", "boxes"])
    device = RecordingDevice(priority=("local",))
    engines = {
        "global": HostAsyncBackend(device, lambda f: {"global_features": g(f)[0]}, "global"),
        "local": HostAsyncBackend(device, lambda f: dict(zip(("local_features", "local_skip"), lo(f))), "local"),
        "fusion": HostAsyncBackend(device, lambda f: {"logits": fu(f)[0]}, "fusion"),
    }
    manifest = manifest_for_config(small_config)
    image = normalized_image(150, 230, seed=11)
    with StreamScheduler(device, engines, manifest, "fp32", StreamScheduleOptions(batch_size=4)) as scheduler:
        mask = scheduler.segment(image)
    expected = predict_mask(small_model, image, batch_size=4)
    assert pixel_agreement(expected, mask) >= 0.999


@pytest.mark.slow
def test_matches_the_cpu_scheduler_with_onnx_runtime_sessions(small_bundle):
    """Async engines wrapping ONNX Runtime sessions: the same mask as the runtime's CPU scheduler."""
    pytest.importorskip("onnxruntime")
    from runtime.algorithm.scheduler import ScheduleOptions, Scheduler
    from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
    from runtime.bundle.loader import open_bundle
    from runtime.image_io.readers import ArraySource

    bundle = open_bundle(small_bundle)
    graphs = bundle.graph_set("fp32")
    backends = {role: OnnxRuntimeBackend(graphs.path(role), OrtOptions(threads=1)).activate() for role in ("global", "local", "fusion")}
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 255, size=(160, 200, 3), dtype=np.uint8)
    cpu = Scheduler(bundle.manifest, backends["global"], backends["local"], backends["fusion"])
    expected = cpu.segment(ArraySource(pixels), ScheduleOptions(batch_size=4))

    from runtime.image_io.preprocess import normalize

    device = RecordingDevice(priority=("local",))
    engines = {role: HostAsyncBackend(device, backend.infer, role) for role, backend in backends.items()}
    with StreamScheduler(device, engines, bundle.manifest, "fp32", StreamScheduleOptions(batch_size=4)) as scheduler:
        mask = scheduler.segment(normalize(pixels, bundle.manifest.normalization))
    assert pixel_agreement(expected, mask) >= 0.999
