"""TensorRTBackend on a fake tensorrt whose engines run numpy kernels on the recording device."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.tensorrt.runner import ContextMemory, TensorRTBackend
from runtime.cuda.device import DeviceTensor
from runtime.cuda.recording import RecordingDevice
from runtime.errors import BundleError, GlsnetError, InputError
from test_tensorrt_support import NumpyGLSNet, fake_tensorrt, make_manifest, plans_for


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
