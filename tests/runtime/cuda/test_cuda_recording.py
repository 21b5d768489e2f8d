"""The recording fake behaves like CUDA where the schedule depends on it: stream order, event waits, DMA timing."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.cuda.device import DeviceTensor
from runtime.cuda.recording import Call, HostAsyncBackend, RecordingDevice
from runtime.errors import GlsnetError, InputError


def test_copies_read_host_memory_when_they_run_not_when_queued():
    device = RecordingDevice()
    stream = device.create_stream("s")
    host = device.alloc_pinned((4,), np.float32)
    buffer = device.alloc_device(16)
    host[:] = 1.0
    device.memcpy_htod_async(buffer, host, stream)
    host[:] = 2.0  # the copy has not run yet: it will see this
    out = device.alloc_pinned((4,), np.float32)
    device.memcpy_dtoh_async(out, buffer, stream)
    assert not out.any()
    device.synchronize(stream)
    np.testing.assert_array_equal(out, 2.0)


def test_a_wait_holds_the_stream_until_the_recorded_work_ran_even_when_that_stream_is_favoured():
    device = RecordingDevice(priority=("b",))
    a, b = device.create_stream("a"), device.create_stream("b")
    order: list[str] = []
    event = device.create_event()
    device.enqueue_host_function(a, lambda: order.append("a1"), "a1")
    device.record_event(event, a)
    device.enqueue_host_function(b, lambda: order.append("b0"), "b0")
    device.stream_wait_event(b, event)
    device.enqueue_host_function(b, lambda: order.append("b1"), "b1")
    device.synchronize(b)
    assert order == ["b0", "a1", "b1"]


def test_a_wait_waits_for_the_record_queued_before_it_not_a_later_one():
    device = RecordingDevice(priority=("b",))
    a, b = device.create_stream("a"), device.create_stream("b")
    order: list[str] = []
    event = device.create_event()
    device.record_event(event, a)
    device.stream_wait_event(b, event)
    device.enqueue_host_function(b, lambda: order.append("b"), "b")
    device.enqueue_host_function(a, lambda: order.append("a"), "a")
    device.record_event(event, a)  # a later record must not delay the earlier wait
    device.synchronize(b)
    assert order == ["b"]
    device.synchronize_all()
    assert order == ["b", "a"]


def test_waiting_on_a_never_recorded_event_is_a_no_op_and_queries_make_progress():
    device = RecordingDevice()
    stream = device.create_stream()
    event = device.create_event()
    device.stream_wait_event(stream, event)
    ran = []
    device.enqueue_host_function(stream, lambda: ran.append(1), "k")
    device.record_event(event, stream)
    assert device.event_query(event) is False  # one operation ran: the wait
    while not device.event_query(event):
        pass
    assert ran == [1]


def test_pageable_host_memory_is_refused_and_views_of_pinned_memory_are_fine():
    device = RecordingDevice()
    stream = device.create_stream()
    buffer = device.alloc_device(64)
    with pytest.raises(InputError, match="pageable"):
        device.memcpy_htod_async(buffer, np.zeros(4, np.float32), stream)
    pinned = device.alloc_pinned((2, 8), np.float32)
    device.memcpy_htod_async(buffer, pinned[1], stream)
    with pytest.raises(InputError, match="does not fit"):
        device.memcpy_htod_async(DeviceTensor(buffer, (2,), np.float32), pinned[1], stream)


def test_graph_capture_records_instead_of_running_and_replays_on_launch():
    device = RecordingDevice()
    stream = device.create_stream("s")
    count = []
    device.begin_capture(stream)
    device.enqueue_host_function(stream, lambda: count.append(1), "k")
    graph = device.end_capture(stream)
    device.synchronize(stream)
    assert count == []
    device.launch_graph(graph, stream)
    device.launch_graph(graph, stream)
    device.synchronize(stream)
    assert count == [1, 1]
    assert Call("launch_graph", "s", "1 operations") in device.calls
    device.begin_capture(stream)
    with pytest.raises(GlsnetError, match="capture"):
        device.record_event(device.create_event(), stream)


def test_device_memory_accounting_and_bad_frees():
    device = RecordingDevice()
    a, b = device.alloc_device(1000), device.alloc_device(24)
    assert device.allocated_bytes == 1024 and device.peak_allocated_bytes == 1024
    device.free(a)
    assert device.allocated_bytes == 24 and device.peak_allocated_bytes == 1024
    with pytest.raises(GlsnetError, match="not a live allocation"):
        device.free(a)
    with pytest.raises(InputError, match="positive"):
        device.alloc_device(0)
    assert device.memory_info()[0] == device.memory_info()[1] - 24
    with pytest.raises(InputError, match="needs 400 bytes"):
        DeviceTensor(b, (100,), np.float32)


def test_host_async_backend_writes_outputs_and_checks_their_shape():
    device = RecordingDevice()
    stream = device.create_stream()
    x, y = device.alloc_device(16), device.alloc_device(16)
    host = device.alloc_pinned((4,), np.float32)
    host[:] = [1, 2, 3, 4]
    device.memcpy_htod_async(x, host, stream)
    double = HostAsyncBackend(device, lambda feed: {"y": feed["x"] * 2}, "double")
    double.enqueue({"x": DeviceTensor(x, (4,), np.float32)}, {"y": DeviceTensor(y, (4,), np.float32)}, stream)
    device.memcpy_dtoh_async(host, y, stream)
    device.synchronize(stream)
    np.testing.assert_array_equal(host, [2, 4, 6, 8])
    wrong = HostAsyncBackend(device, lambda feed: {"y": np.zeros(3)}, "wrong")
    wrong.enqueue({"x": DeviceTensor(x, (4,), np.float32)}, {"y": DeviceTensor(y, (4,), np.float32)}, stream)
    with pytest.raises(GlsnetError, match="shape"):
        device.synchronize(stream)
