"""TensorRTBackend on a fake tensorrt whose engines run numpy kernels on the recording device."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from runtime.backends.tensorrt.runner import ContextMemory, TensorRTBackend
from runtime.cuda.device import DeviceTensor
from runtime.cuda.recording import RecordingDevice
from runtime.errors import BundleError, GlsnetError, InputError
from tests.tensorrt_support import FakeTensorRTError, NumpyGLSNet, fake_tensorrt, make_manifest, plans_for, scratch_need


@pytest.fixture(params=["10.3.0", "11.4.0"])
def setup(request):
    manifest = make_manifest()
    net = NumpyGLSNet(manifest)
    device = RecordingDevice()
    trt = fake_tensorrt(request.param, device=device, functions=net.functions)
    return manifest, net, device, trt, plans_for(manifest, max_batch=8, max_image=(256, 256))


def test_metadata_comes_from_the_engine_with_dynamic_dims_as_none(setup):
    _, _, device, trt, plans = setup
    with TensorRTBackend(plans["fusion"], device, role="fusion", trt=trt) as fusion:
        inputs, outputs = fusion.input_metadata(), fusion.output_metadata()
    assert list(inputs) == ["local_features", "local_skip", "global_features", "boxes"]
    assert inputs["global_features"].shape == (1, 4, None, None) and inputs["boxes"].shape == (None, 4)
    assert outputs["logits"].dtype == np.float32 and outputs["logits"].shape == (None, 3, 16, 16)
    assert ("init_libnvinfer_plugins", "") in trt.calls


def test_synchronous_infer_matches_the_kernel_and_uses_user_managed_memory(setup):
    _, net, device, trt, plans = setup
    patches = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    with TensorRTBackend(plans["local"], device, role="local", trt=trt) as local:
        outputs = local.infer({"patches": patches})
        again = local.infer({"patches": patches[:1]})  # another batch: buffers follow the shape
    expected = net.local_branch({"patches": patches})
    for name in ("local_features", "local_skip"):
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-6)
    np.testing.assert_allclose(again["local_skip"], expected["local_skip"][:1], rtol=1e-6)
    assert ("create_execution_context", "local", trt.ExecutionContextAllocationStrategy.USER_MANAGED) in trt.calls
    memory = [c for c in trt.calls if c[0] == "set_device_memory"]
    assert memory and all(size >= 1024 * (1 + 3) for *_, size in memory[:1])
    assert device.allocated_bytes == 0  # deactivate freed staging and scratch memory


def test_local_and_fusion_share_scratch_memory_and_global_has_its_own(setup):
    manifest, net, device, trt, plans = setup
    shared = ContextMemory(device)
    stream = device.create_stream("local")
    engines = {
        "global": TensorRTBackend(plans["global"], device, role="global", trt=trt).activate(),
        "local": TensorRTBackend(plans["local"], device, role="local", context_memory=shared, trt=trt).activate(),
        "fusion": TensorRTBackend(plans["fusion"], device, role="fusion", context_memory=shared, trt=trt).activate(),
    }
    shared.reserve(max(engines[r].profile_device_memory for r in ("local", "fusion")))  # as the pipeline does at open
    image = device.alloc_device(3 * 128 * 128 * 4)
    features = device.alloc_device(4 * 4 * 4 * 4)
    patches = device.alloc_device(2 * 3 * 64 * 64 * 4)
    lf, ls = device.alloc_device(2 * 4 * 2 * 2 * 4), device.alloc_device(2 * 3 * 16 * 16 * 4)
    boxes, logits = device.alloc_device(2 * 4 * 4), device.alloc_device(2 * 3 * 16 * 16 * 4)
    t = lambda buffer, *shape: DeviceTensor(buffer, shape, np.float32)
    engines["global"].enqueue({"image": t(image, 1, 3, 128, 128)}, {"global_features": t(features, 1, 4, 4, 4)}, stream)
    engines["local"].enqueue({"patches": t(patches, 2, 3, 64, 64)}, {"local_features": t(lf, 2, 4, 2, 2), "local_skip": t(ls, 2, 3, 16, 16)}, stream)
    fusion_inputs = {"local_features": t(lf, 2, 4, 2, 2), "local_skip": t(ls, 2, 3, 16, 16), "global_features": t(features, 1, 4, 4, 4), "boxes": t(boxes, 2, 4)}
    engines["fusion"].enqueue(fusion_inputs, {"logits": t(logits, 2, 3, 16, 16)}, stream)
    device.synchronize(stream)
    pointers = {role: ptr for name, role, ptr, size in (c for c in trt.calls if c[0] == "set_device_memory")}
    assert pointers["local"] == pointers["fusion"] == shared.buffer.ptr
    assert pointers["global"] != pointers["local"]
    handles = {c[2] for c in trt.calls if c[0] == "execute_async_v3"}
    assert handles == {device.stream_handle(stream)}  # execute_async_v3 got the caller's raw stream handle
    for engine in engines.values():
        engine.deactivate()


def test_enqueue_checks_shapes_names_and_the_profile(setup):
    _, _, device, trt, plans = setup
    stream = device.create_stream()
    with TensorRTBackend(plans["local"], device, role="local", trt=trt) as local:
        patches = DeviceTensor(device.alloc_device(9 * 3 * 64 * 64 * 4), (9, 3, 64, 64), np.float32)
        out = {n: DeviceTensor(device.alloc_device(9 * 3 * 16 * 16 * 4), s, np.float32) for n, s in (("local_features", (9, 4, 2, 2)), ("local_skip", (9, 3, 16, 16)))}
        with pytest.raises(InputError, match=r"outside the engine's optimization profile \(min \(1, 3, 64, 64\), max \(8, 3, 64, 64\)\)"):
            local.enqueue({"patches": patches}, out, stream)
        small = DeviceTensor(patches.buffer, (2, 3, 64, 64), np.float32)
        with pytest.raises(GlsnetError, match="will have shape"):
            local.enqueue({"patches": small}, out, stream)
        with pytest.raises(InputError, match="do not match the engine"):
            local.enqueue({"image": small}, out, stream)
        local.context.execute_async_v3 = lambda handle: False
        fitted = {n: DeviceTensor(t.buffer, (2, *t.shape[1:]), np.float32) for n, t in out.items()}
        with pytest.raises(GlsnetError, match="execute_async_v3 failed"):
            local.enqueue({"patches": small}, fitted, stream)


def test_cuda_graphs_capture_once_then_replay(setup):
    _, net, device, trt, plans = setup
    stream = device.create_stream("local")
    host = device.alloc_pinned((2, 3, 64, 64), np.float32)
    back = device.alloc_pinned((2, 3, 16, 16), np.float32)
    patches = DeviceTensor(device.alloc_device(host.nbytes), host.shape, np.float32)
    outputs = {
        "local_features": DeviceTensor(device.alloc_device(2 * 4 * 2 * 2 * 4), (2, 4, 2, 2), np.float32),
        "local_skip": DeviceTensor(device.alloc_device(back.nbytes), back.shape, np.float32),
    }
    rng = np.random.default_rng(1)
    with TensorRTBackend(plans["local"], device, role="local", cuda_graphs=True, trt=trt) as local:
        for round_ in range(3):
            host[...] = rng.normal(size=host.shape)
            device.memcpy_htod_async(patches, host, stream)
            local.enqueue({"patches": patches}, outputs, stream)
            device.memcpy_dtoh_async(back, outputs["local_skip"], stream)
            device.synchronize(stream)
            np.testing.assert_allclose(back, net.local_branch({"patches": host})["local_skip"], rtol=1e-6)
    executes = [c for c in trt.calls if c[0] == "execute_async_v3"]
    assert len(executes) == 2  # one uncaptured run and the captured one; rounds 2 and 3 replay the graph
    assert [c.op for c in device.calls if c.op in ("begin_capture", "end_capture", "launch_graph")] == [
        "begin_capture", "end_capture", "launch_graph", "launch_graph"]


def test_an_engine_that_does_not_deserialize_is_refused(setup, tmp_path):
    _, _, device, trt, _ = setup
    with pytest.raises(BundleError, match="could not deserialize"):
        TensorRTBackend(b"not an engine", device, trt=trt).activate()
    with pytest.raises(BundleError, match="engine file not found"):
        TensorRTBackend(tmp_path / "missing.plan", device, trt=trt).activate()


class LocalRun:
    """Device buffers for local batches of up to 2 patches, and one call that runs a batch and returns its skip features."""

    def __init__(self, device: RecordingDevice, backend: TensorRTBackend, net: NumpyGLSNet, stream) -> None:
        self.device, self.backend, self.net, self.stream = device, backend, net, stream
        self.host = device.alloc_pinned((2, 3, 64, 64), np.float32)
        self.back = device.alloc_pinned((2, 3, 16, 16), np.float32)
        self.patches = device.alloc_device(self.host.nbytes)
        self.features = device.alloc_device(2 * 4 * 2 * 2 * 4)
        self.skip = device.alloc_device(self.back.nbytes)
        self.rng = np.random.default_rng(3)

    def __call__(self, batch: int) -> None:
        host, back = self.host[:batch], self.back[:batch]
        host[...] = self.rng.normal(size=host.shape)
        patches = DeviceTensor(self.patches, host.shape, np.float32)
        outputs = {
            "local_features": DeviceTensor(self.features, (batch, 4, 2, 2), np.float32),
            "local_skip": DeviceTensor(self.skip, back.shape, np.float32),
        }
        self.device.memcpy_htod_async(patches, host, self.stream)
        self.backend.enqueue({"patches": patches}, outputs, self.stream)
        self.device.memcpy_dtoh_async(back, outputs["local_skip"], self.stream)
        self.device.synchronize(self.stream)
        np.testing.assert_allclose(back, self.net.local_branch({"patches": host})["local_skip"], rtol=1e-6)


def graph_calls(device: RecordingDevice) -> list[str]:
    return [c.op for c in device.calls if c.op in ("begin_capture", "end_capture", "abort_capture", "launch_graph", "destroy_graph")]


def test_a_graph_is_never_replayed_after_its_context_was_reshaped(setup):
    """Defect 1: batches 2, 2, 2, 1 (the smaller last batch), 2, 2, 2: each state keeps its own, never changed, context."""
    _, net, device, trt, plans = setup
    stream = device.create_stream("local")
    with TensorRTBackend(plans["local"], device, role="local", cuda_graphs=True, trt=trt) as local:
        run = LocalRun(device, local, net, stream)
        for batch in (2, 2, 2, 1, 2, 2, 2):
            run(batch)  # the strict fake raises FakeTensorRTError on a replay after a context changed
        assert device.live_graphs == 1 and len(local._slots) == 2  # batch 2 captured; batch 1 ran once, uncaptured
    assert device.live_graphs == 0
    assert graph_calls(device) == [
        "begin_capture", "end_capture", "launch_graph", "launch_graph",  # 2, 2, 2: run, capture, replay
        "launch_graph", "launch_graph", "launch_graph",  # (1 ran on its own context) 2, 2, 2: the graph is still valid
        "destroy_graph",  # deactivate
    ]
    contexts = [c for c in trt.calls if c[0] == "create_execution_context"]
    assert len(contexts) == 3  # the main context and one per state


def test_a_ring_of_buffers_replays_one_graph_per_slot(setup):
    """The schedule alternates ring slots: each slot's state has its own context and graph, and both replay."""
    _, net, device, trt, plans = setup
    stream = device.create_stream("local")
    with TensorRTBackend(plans["local"], device, role="local", cuda_graphs=True, trt=trt) as local:
        ring = [LocalRun(device, local, net, stream), LocalRun(device, local, net, stream)]
        for k in range(8):
            ring[k % 2](2)
        assert device.live_graphs == 2
    assert graph_calls(device).count("launch_graph") == 6 and graph_calls(device).count("begin_capture") == 2


def test_the_fake_refuses_a_replay_after_the_context_changed(setup):
    """The strict fake itself: a graph launched after its context was re-shaped (even back to the same shape) is refused."""
    _, net, device, trt, plans = setup
    stream = device.create_stream("local")
    with TensorRTBackend(plans["local"], device, role="local", cuda_graphs=True, trt=trt) as local:
        run = LocalRun(device, local, net, stream)
        run(2), run(2)
        (slot,) = local._slots.values()
        slot.context.set_input_shape("patches", (1, 3, 64, 64))
        slot.context.set_input_shape("patches", (2, 3, 64, 64))
        with pytest.raises(FakeTensorRTError, match="replay of a CUDA graph captured from a context that has changed"):
            device.launch_graph(slot.graph, stream)


@pytest.mark.parametrize("failure", ["invalidate", "report"])
def test_a_failed_capture_is_ended_cleaned_up_and_graphs_are_switched_off(setup, failure, caplog):
    """Defect 2: the capture fails; the run goes on uncaptured, one warning, no graph leaks, no masked error."""
    _, net, device, trt, plans = setup
    trt.capture_failure = failure
    stream = device.create_stream("local")
    with caplog.at_level(logging.WARNING, logger="runtime.backends.tensorrt.runner"):
        with TensorRTBackend(plans["local"], device, role="local", cuda_graphs=True, trt=trt) as local:
            run = LocalRun(device, local, net, stream)
            for batch in (2, 2, 2, 1, 2, 2):
                run(batch)  # every batch still computes the right numbers
            assert not device.is_capturing(stream)
    warnings = [r for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
    assert len(warnings) == 1  # warned once; the backend then runs without graphs
    assert graph_calls(device).count("begin_capture") == 1 and "launch_graph" not in graph_calls(device)
    assert "abort_capture" in graph_calls(device) or failure == "invalidate"
    assert device.live_graphs == 0 and device.last_error is None  # no partial graph left, the CUDA error cleared


def test_a_zero_device_memory_size_is_an_error_not_a_size(setup):
    """Defect 4: update_device_memory_size_for_shapes returns 0 on error; the engine's profile maximum is used instead."""
    _, net, device, trt, plans = setup
    trt.zero_memory_sizes = True
    stream = device.create_stream("local")
    with TensorRTBackend(plans["local"], device, role="local", trt=trt) as local:
        run = LocalRun(device, local, net, stream)
        run(2)  # the strict fake refuses to run on scratch smaller than the shapes need
        sizes = [c[3] for c in trt.calls if c[0] == "set_device_memory"]
        assert sizes and min(sizes) >= local.profile_device_memory == scratch_need("local", 8)


def test_shared_scratch_is_reserved_once_and_never_regrown(setup):
    """Defect 5: reserved for the larger need of its sharers, the shared scratch is never freed and reallocated mid-run."""
    _, _, device, trt, plans = setup
    shared = ContextMemory(device)
    local = TensorRTBackend(plans["local"], device, role="local", context_memory=shared, trt=trt).activate()
    fusion = TensorRTBackend(plans["fusion"], device, role="fusion", context_memory=shared, trt=trt).activate()
    buffer = shared.reserve(max(local.profile_device_memory, fusion.profile_device_memory))
    assert buffer.nbytes >= scratch_need("fusion", 8)
    stream = device.create_stream("local")
    for batch in (8, 3):
        assert shared.ensure(scratch_need("fusion", batch), stream) is buffer
        assert shared.ensure(scratch_need("local", batch), stream) is buffer
    assert not [c for c in device.calls if c.op == "synchronize"]  # growing would have synchronised the stream
    local.deactivate(), fusion.deactivate(), shared.release()


def test_contexts_sharing_scratch_on_two_streams_are_refused_by_the_fake(setup):
    """The strict fake: two contexts on one scratch buffer, queued on different streams, could run at once."""
    _, _, device, trt, plans = setup
    shared = ContextMemory(device)
    a, b = device.create_stream("a"), device.create_stream("b")
    local = TensorRTBackend(plans["local"], device, role="local", context_memory=shared, trt=trt).activate()
    other = TensorRTBackend(plans["local"], device, role="local", context_memory=shared, trt=trt).activate()
    shared.reserve(local.profile_device_memory)
    patches = DeviceTensor(device.alloc_device(2 * 3 * 64 * 64 * 4), (2, 3, 64, 64), np.float32)
    outputs = {
        "local_features": DeviceTensor(device.alloc_device(2 * 4 * 2 * 2 * 4), (2, 4, 2, 2), np.float32),
        "local_skip": DeviceTensor(device.alloc_device(2 * 3 * 16 * 16 * 4), (2, 3, 16, 16), np.float32),
    }
    local.enqueue({"patches": patches}, outputs, a)
    with pytest.raises(FakeTensorRTError, match="could run at the same time"):
        other.enqueue({"patches": patches}, outputs, b)
    device.synchronize(a)
    other.enqueue({"patches": patches}, outputs, b)  # once the first has finished, the buffer is free
    device.synchronize(b)
