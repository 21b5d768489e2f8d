"""cuda-python's Device on a real GPU: streams, events, pinned and device memory, CUDA graph capture.

The rest of the suite drives this interface through the recording fake; these tests check that the
real binding behaves as the fake says (a cross-stream wait orders work, a captured graph reads its
addresses at replay, a capture broken by an illegal call is ended and the device stays usable).
They skip on a machine without an NVIDIA GPU, which is every CI machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import GlsnetError, MissingDependencyError


@pytest.fixture(scope="module")
def device():
    try:
        from runtime.cuda.cuda_python import CudaPythonDevice

        opened = CudaPythonDevice(0)
    except (MissingDependencyError, ImportError) as exc:
        pytest.skip(f"cuda-python is not installed: {exc}")
    except GlsnetError as exc:
        pytest.skip(f"no usable CUDA GPU here: {exc}")
    yield opened
    opened.close()


def test_a_stream_waits_for_an_event_of_another_stream(device):
    """64 MiB up on stream A, back down on stream B after B waits for A's event: every value arrives."""
    count = 16 * 2**20
    first, second = device.create_stream("a"), device.create_stream("b")
    event = device.create_event()
    up = device.alloc_pinned((count,), np.float32)
    down = device.alloc_pinned((count,), np.float32)
    buffer = device.alloc_device(up.nbytes)
    try:
        for round_ in range(3):
            up[:] = np.arange(count, dtype=np.float32) + round_
            device.memcpy_htod_async(buffer, up, first)
            device.record_event(event, first)
            device.stream_wait_event(second, event)
            device.memcpy_dtoh_async(down, buffer, second)
            device.synchronize(second)
            assert device.event_query(event)
            np.testing.assert_array_equal(down, up)
    finally:
        for memory in (buffer, up, down):
            device.free(memory)
        device.destroy_event(event)
        device.destroy_stream(first)
        device.destroy_stream(second)


def test_a_captured_graph_replays_its_copies_on_the_addresses_it_captured(device):
    stream = device.create_stream()
    source = device.alloc_pinned((4096,), np.float32)
    target = device.alloc_pinned((4096,), np.float32)
    buffer = device.alloc_device(source.nbytes)
    try:
        device.begin_capture(stream)
        device.memcpy_htod_async(buffer, source, stream)
        device.memcpy_dtoh_async(target, buffer, stream)
        graph = device.end_capture(stream)
        for value in (1.0, 2.5):
            source[:] = value  # the graph reads the pinned source when it runs, not when it was captured
            device.launch_graph(graph, stream)
            device.synchronize(stream)
            assert np.all(target == value)
        device.destroy_graph(graph)
    finally:
        for memory in (buffer, source, target):
            device.free(memory)
        device.destroy_stream(stream)


def test_a_capture_broken_by_a_synchronise_is_ended_and_the_device_stays_usable(device):
    """What the TensorRT pipeline does when enqueue fails under capture (issue 10, defect 2), on the real driver."""
    stream = device.create_stream()
    host = device.alloc_pinned((256,), np.float32)
    back = device.alloc_pinned((256,), np.float32)
    buffer = device.alloc_device(host.nbytes)
    try:
        device.begin_capture(stream)
        device.memcpy_htod_async(buffer, host, stream)
        with pytest.raises(GlsnetError, match="cudaStreamSynchronize"):
            device.synchronize(stream)  # illegal while capturing: invalidates the capture
        device.abort_capture(stream)
        host[:] = np.arange(256)
        device.memcpy_htod_async(buffer, host, stream)
        device.memcpy_dtoh_async(back, buffer, stream)
        device.synchronize(stream)
        np.testing.assert_array_equal(back, np.arange(256))
    finally:
        for memory in (buffer, host, back):
            device.free(memory)
        device.destroy_stream(stream)


def test_facts_and_free_memory_follow_an_allocation(device):
    info = device.info()
    assert info.name and info.total_memory > 0 and info.compute_capability.count(".") == 1
    free_before, total = device.memory_info()
    assert 0 < free_before <= total
    buffer = device.alloc_device(1 << 30)
    try:
        free_after, _ = device.memory_info()
        assert free_before - free_after >= 1 << 30
    finally:
        device.free(buffer)
