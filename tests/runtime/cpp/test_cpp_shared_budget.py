"""One handle's --max-memory is shared by the calls running on it at the same time: two concurrent calls whose plans
together exceed the budget run one after the other (the second waits for the first's reservation), while with room
for both they overlap; a call waiting for the budget still stops at glsnet_cancel.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np

from tests.runtime.cpp.c_abi import ROW_CALLBACK, STATUS_CANCELLED, Image
from tests.runtime.cpp.test_cpp_runtime import CApi, _build, _scene

HEIGHT, WIDTH = 700, 400


def _api() -> CApi:
    api = CApi(_build("cpp"))
    lib = api.lib
    lib.glsnet_image_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.glsnet_segment_image_rows.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ROW_CALLBACK, ctypes.c_void_p]
    lib.glsnet_cancel_token_create.restype = ctypes.c_void_p
    lib.glsnet_cancel.argtypes = [ctypes.c_void_p]
    lib.glsnet_cancel_token_destroy.argtypes = [ctypes.c_void_p]
    return api


def _image(api: CApi, pixels: np.ndarray, token=None) -> Image:
    image = Image()
    api.lib.glsnet_image_init(ctypes.byref(image), ctypes.sizeof(image))
    image.pixels, image.pixels_size = pixels.ctypes.data, pixels.nbytes
    image.height, image.width, image.channels = pixels.shape
    image.cancel = token
    return image


def _two_calls(api: CApi, handle, pixels: np.ndarray) -> list[tuple[float, float]]:
    """Runs two calls at once; returns each call's (first row, last row) times."""
    spans: list[list[float]] = [[], []]
    statuses = [None, None]

    def work(i: int) -> None:
        @ROW_CALLBACK
        def rows(user, top, count, width, mask):
            spans[i].append(time.perf_counter())
            return 0

        image = _image(api, pixels)
        statuses[i] = api.lib.glsnet_segment_image_rows(handle, ctypes.byref(image), rows, None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [0, 0], api.lib.glsnet_last_error()
    return [(min(s), max(s)) for s in spans]


def _overlap(spans: list[tuple[float, float]]) -> float:
    (a0, a1), (b0, b1) = spans
    return min(a1, b1) - max(a0, b0)


def test_concurrent_calls_share_one_budget(small_bundle):
    api = _api()
    pixels = np.ascontiguousarray(_scene(HEIGHT, WIDTH, seed=71))
    probe = api.open(small_bundle, batch_size=1, threads=1)
    needed = api.plan(probe, HEIGHT, WIDTH).estimate_bytes  # one call's plan, weights included
    api.lib.glsnet_close(probe)

    roomy = api.open(small_bundle, batch_size=1, threads=1, max_memory=3 * needed)
    try:
        spans = _two_calls(api, roomy, pixels)
        assert _overlap(spans) > 0, f"with room for both, the calls did not overlap: {spans}"
    finally:
        api.lib.glsnet_close(roomy)

    tight = api.open(small_bundle, batch_size=1, threads=1, max_memory=needed)
    try:
        assert api.plan(tight, HEIGHT, WIDTH).estimate_bytes <= needed
        spans = _two_calls(api, tight, pixels)
        assert _overlap(spans) < 0, f"two calls ran at once within a budget for one: {spans}"
    finally:
        api.lib.glsnet_close(tight)


def test_a_call_waiting_for_the_budget_stops_at_cancel(small_bundle):
    api = _api()
    lib = api.lib
    pixels = np.ascontiguousarray(_scene(HEIGHT, WIDTH, seed=72))
    probe = api.open(small_bundle, batch_size=1, threads=1)
    needed = api.plan(probe, HEIGHT, WIDTH).estimate_bytes
    lib.glsnet_close(probe)
    handle = api.open(small_bundle, batch_size=1, threads=1, max_memory=needed)
    token = lib.glsnet_cancel_token_create()
    first_row, release = threading.Event(), threading.Event()
    first = None
    try:

        @ROW_CALLBACK
        def slow_rows(user, top, count, width, mask):
            first_row.set()
            release.wait(60)  # the first call (and its reservation) stays until the test lets it go
            return 0

        second_rows = []

        @ROW_CALLBACK
        def record_rows(user, top, count, width, mask):
            second_rows.append(top)
            return 0

        first = threading.Thread(target=lambda: lib.glsnet_segment_image_rows(handle, ctypes.byref(_image(api, pixels)), slow_rows, None))
        first.start()
        assert first_row.wait(120), "the first call delivered no rows"
        waiting = _image(api, pixels, token)
        results = {}

        def second() -> None:
            start = time.perf_counter()
            results["status"] = lib.glsnet_segment_image_rows(handle, ctypes.byref(waiting), record_rows, None)
            results["seconds"] = time.perf_counter() - start

        t = threading.Thread(target=second)
        t.start()
        time.sleep(3.0)  # a call that did not wait would have delivered rows by now (one call alone takes ~1.5 s here)
        rows_before_cancel = len(second_rows)
        lib.glsnet_cancel(token)
        cancelled_at = time.perf_counter()
        t.join(30)
        returned_after = time.perf_counter() - cancelled_at
        still_running = first.is_alive()
        release.set()
        first.join()
        assert results["status"] == STATUS_CANCELLED
        assert rows_before_cancel == 0, f"the second call delivered {rows_before_cancel} rows: it did not wait for the budget"
        assert still_running, "the first call ended before the cancel: the test did not catch the second one waiting"
        assert returned_after < 1.0, f"the waiting call took {returned_after:.2f} s to stop after the cancel"
    finally:
        release.set()
        if first is not None:
            first.join()
        lib.glsnet_close(handle)
        lib.glsnet_cancel_token_destroy(token)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_concurrent_calls_share_the_handles_thread_pools(small_bundle):
    """ONNX Runtime's intra-op pools belong to the handle's sessions: four concurrent calls add only their own
    scheduler threads (global branch, local batches), no pool threads."""
    api = _api()
    pixels = np.ascontiguousarray(_scene(HEIGHT, WIDTH, seed=73))
    handle = api.open(small_bundle, threads=4)
    try:
        api.segment(handle, pixels[:64, :64])  # anything ORT creates lazily on a first run
        base = _threads()
        peak, done = [base], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(_threads())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        callers = [threading.Thread(target=api.segment, args=(handle, pixels)) for _ in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        done.set()
        sampler.join()
        own = 1 + 4 + 4 * 2  # the sampler, four callers, two scheduler threads per call
        assert max(peak) <= base + own, f"{max(peak) - base} threads added for 4 calls; their own threads are {own}"
        assert max(peak) >= base + 4 + 1, "the calls did not run at the same time"
    finally:
        api.lib.glsnet_close(handle)
