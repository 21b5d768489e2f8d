"""A fake Device for machines without a GPU: it records every call and really moves the data.

Work queued on a stream is not run when it is queued. It runs when the host blocks
(``synchronize``, ``event_synchronize``; ``event_query`` lets one operation run), in stream
order, honouring ``stream_wait_event`` exactly as CUDA does: a wait waits for the event's last
record *at the time the wait was queued*. When several streams could make progress, streams named
in ``priority`` go first, so a test can make the local stream race ahead of the global one and
prove that the schedule, not luck, keeps fusion behind the global features.

CUDA graphs are strict where CUDA's rules are: synchronising a capturing stream invalidates the
capture, an invalidated capture makes ``end_capture`` fail (``abort_capture`` ends it the way
trtexec does), every graph made is counted in ``live_graphs`` until destroyed, and a graph carries
checks (``add_capture_check``) that its launch runs, so an engine fake can refuse a replay after the
state it was captured in has changed.

Copies read and write host memory when they *run*, like a DMA engine, so a schedule that rewrites
pinned staging before its copy has run produces wrong numbers, and a test sees them. Host copies
must use pinned arrays from ``alloc_pinned`` (views of them are fine). ``HostAsyncBackend`` turns
any host function (numpy, an ONNX Runtime session's run, a Backend's infer) into an asynchronous
engine on this device.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Mapping, Sequence

import numpy as np

from runtime.cuda.device import Device, DeviceBuffer, DeviceInfo, DeviceTensor
from runtime.errors import GlsnetError, InputError

BASE_ADDRESS = 0x7F00_0000_0000
ALIGNMENT = 256


@dataclass(eq=False)
class FakeStream:
    index: int
    name: str
    capture: list["Operation"] | None = None
    capture_checks: list[Callable[[], None]] | None = None
    capture_invalidated: str | None = None  # why the running capture is invalid (cudaErrorStreamCaptureInvalidated)


@dataclass(eq=False)
class FakeEvent:
    index: int
    last_record: int | None = None  # sequence number of the last record operation queued
    fired: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class FakeGraph:
    operations: tuple["Operation", ...]
    checks: tuple[Callable[[], None], ...] = ()  # run at each launch; they raise when a replay would be undefined


@dataclass(frozen=True)
class Call:
    """One API call, in the host's order: what, on which stream, and a label."""

    op: str
    stream: str = ""
    label: str = ""


@dataclass
class Operation:
    kind: str  # "copy_htod", "copy_dtoh", "kernel", "record", "wait", "graph"
    label: str
    run: Callable[[], None] | None = None
    waits_on: int | None = None  # for "wait": the record operation to wait for
    event: FakeEvent | None = None  # for "record"
    stream: FakeStream | None = None
    sequence: int = -1


@dataclass(frozen=True)
class Executed:
    """One operation as it ran on the fake device, in device order."""

    kind: str
    stream: str
    label: str
    sequence: int


class RecordingDevice(Device):
    kind = "recording"
    supports_graphs = True

    def __init__(
        self,
        priority: Sequence[str] = (),
        name: str = "Recording GPU",
        compute_capability: str = "8.7",
        total_memory: int = 8 << 30,
    ) -> None:
        super().__init__()
        self.priority = tuple(priority)
        self._info = DeviceInfo(name=name, compute_capability=compute_capability, total_memory=total_memory)
        self.calls: list[Call] = []
        self.executed: list[Executed] = []
        self._streams: list[FakeStream] = []
        self._queues: dict[int, deque[Operation]] = {}
        self._done: set[int] = set()
        self._sequence = itertools.count()
        self._events = itertools.count()
        self._memory: dict[int, np.ndarray] = {}
        self._next_address = BASE_ADDRESS
        self._pinned: list[np.ndarray] = []
        self.live_graphs = 0  # captured graphs not yet destroyed (a leak shows here)
        self.last_error: str | None = None  # the sticky CUDA error of a failed capture, until clear_error

    # -------------------------------------------------------------- streams and events
    def create_stream(self, name: str = "") -> FakeStream:
        stream = FakeStream(index=len(self._streams), name=name or f"stream{len(self._streams)}")
        self._streams.append(stream)
        self._queues[stream.index] = deque()
        self.calls.append(Call("create_stream", stream.name))
        return stream

    def destroy_stream(self, stream: FakeStream) -> None:
        self.synchronize(stream)
        self.calls.append(Call("destroy_stream", stream.name))

    def stream_handle(self, stream: FakeStream) -> int:
        return 0x5000 + stream.index

    def create_event(self) -> FakeEvent:
        event = FakeEvent(index=next(self._events))
        self.calls.append(Call("create_event", label=f"event{event.index}"))
        return event

    def destroy_event(self, event: FakeEvent) -> None:
        self.calls.append(Call("destroy_event", label=f"event{event.index}"))

    def record_event(self, event: FakeEvent, stream: FakeStream) -> None:
        self._refuse_in_capture(stream, "record_event")
        operation = Operation("record", f"event{event.index}", event=event)
        self._enqueue(stream, operation)
        event.last_record = operation.sequence
        self.calls.append(Call("record_event", stream.name, f"event{event.index}"))

    def stream_wait_event(self, stream: FakeStream, event: FakeEvent) -> None:
        self._refuse_in_capture(stream, "stream_wait_event")
        self._enqueue(stream, Operation("wait", f"event{event.index}", waits_on=event.last_record))
        self.calls.append(Call("stream_wait_event", stream.name, f"event{event.index}"))

    def event_query(self, event: FakeEvent) -> bool:
        self.calls.append(Call("event_query", label=f"event{event.index}"))
        self._step()
        return self._event_done(event)

    def event_synchronize(self, event: FakeEvent) -> None:
        self.calls.append(Call("event_synchronize", label=f"event{event.index}"))
        self._run_until(lambda: self._event_done(event), f"event{event.index}")

    def synchronize(self, stream: FakeStream) -> None:
        self.calls.append(Call("synchronize", stream.name))
        if stream.capture is not None:
            self.invalidate_capture(stream, "cudaStreamSynchronize on a capturing stream")
            raise GlsnetError(f"cudaStreamSynchronize on {stream.name} while it captures a graph: cudaErrorStreamCaptureUnsupported")
        self._run_until(lambda: not self._queues[stream.index], stream.name)

    def synchronize_all(self) -> None:
        """Run everything queued (a test convenience; real code synchronizes streams)."""
        self._run_until(lambda: not any(self._queues.values()), "all streams")

    # -------------------------------------------------------------- work
    def enqueue_host_function(self, stream: FakeStream, function: Callable[[], None], label: str) -> int:
        """Queue ``function`` as a kernel on ``stream``; it runs on the host when the fake device gets to it.

        Returns the operation's sequence number (see ``is_done``).
        """
        operation = Operation("kernel", label, run=function)
        self._enqueue(stream, operation)
        self.calls.append(Call("launch", stream.name, label))
        return operation.sequence

    def array_module(self) -> ModuleType:
        """array_api_compat's numpy: the fake's device memory is host memory, so device-side array code runs on numpy."""
        from runtime.optional_import import require

        return require("array_api_compat.numpy", "device-side array code on the recording device")

    def constant(self, array: np.ndarray) -> np.ndarray:
        return np.array(array)

    def array(self, tensor: DeviceTensor) -> np.ndarray:
        return self.view(tensor)

    def launch(self, stream: FakeStream, kernel: Callable[[], None], label: str) -> None:
        """Queue array code as a kernel: it runs when the fake device reaches it, in stream order."""
        self.enqueue_host_function(stream, kernel, label)

    def is_done(self, sequence: int) -> bool:
        """Whether the operation with this sequence number has run on the fake device."""
        return sequence in self._done

    def is_capturing(self, stream: FakeStream) -> bool:
        return stream.capture is not None

    def view(self, target: DeviceTensor | DeviceBuffer, shape: tuple[int, ...] | None = None, dtype=None) -> np.ndarray:
        """A host numpy view of fake device memory (what a kernel reads and writes)."""
        if isinstance(target, DeviceTensor):
            buffer, shape, dtype = target.buffer, target.shape, target.dtype
        else:
            buffer = target
            dtype = np.dtype(dtype or np.uint8)
            shape = shape if shape is not None else (buffer.nbytes // dtype.itemsize,)
        memory = self._memory.get(buffer.ptr)
        if memory is None:
            raise GlsnetError(f"device pointer {buffer.ptr:#x} is not a live allocation of this device")
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return memory[:count].view(dtype).reshape(shape)

    # -------------------------------------------------------------- memory hooks
    def _alloc_device_impl(self, nbytes: int) -> DeviceBuffer:
        ptr = self._next_address
        self._next_address += -(-nbytes // ALIGNMENT) * ALIGNMENT
        self._memory[ptr] = np.zeros(nbytes, dtype=np.uint8)
        self.calls.append(Call("alloc_device", label=str(nbytes)))
        return DeviceBuffer(ptr=ptr, nbytes=nbytes, handle=self._memory[ptr])

    def _alloc_pinned_impl(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = np.zeros(shape, dtype=dtype)
        self._pinned.append(array)
        self.calls.append(Call("alloc_pinned", label=f"{shape} {dtype}"))
        return array

    def _free_device_impl(self, buffer: DeviceBuffer) -> None:
        if self._memory.pop(buffer.ptr, None) is None:
            raise GlsnetError(f"free of device pointer {buffer.ptr:#x}, which is not a live allocation")
        self.calls.append(Call("free_device", label=str(buffer.nbytes)))

    def _free_pinned_impl(self, array: np.ndarray) -> None:
        self._pinned = [a for a in self._pinned if a is not array]
        self.calls.append(Call("free_pinned"))

    def _memcpy_htod_impl(self, dst: DeviceBuffer, src: np.ndarray, stream: FakeStream) -> None:
        self._require_pinned(src, "host-to-device")
        target = self._memory_of(dst)

        def run() -> None:
            target[: src.nbytes] = src.reshape(-1).view(np.uint8)

        self._enqueue(stream, Operation("copy_htod", f"{src.nbytes}B", run=run))
        self.calls.append(Call("memcpy_htod_async", stream.name, f"{src.nbytes}B"))

    def _memcpy_dtoh_impl(self, dst: np.ndarray, src: DeviceBuffer, stream: FakeStream) -> None:
        self._require_pinned(dst, "device-to-host")
        source = self._memory_of(src)

        def run() -> None:
            dst.reshape(-1).view(np.uint8)[:] = source[: dst.nbytes]

        self._enqueue(stream, Operation("copy_dtoh", f"{dst.nbytes}B", run=run))
        self.calls.append(Call("memcpy_dtoh_async", stream.name, f"{dst.nbytes}B"))

    # -------------------------------------------------------------- facts
    def info(self) -> DeviceInfo:
        return self._info

    def memory_info(self) -> tuple[int, int]:
        used = sum(m.nbytes for m in self._memory.values())
        return self._info.total_memory - used, self._info.total_memory

    # -------------------------------------------------------------- graphs
    def begin_capture(self, stream: FakeStream) -> None:
        if stream.capture is not None:
            raise GlsnetError(f"{stream.name} is already capturing a CUDA graph")
        stream.capture, stream.capture_checks, stream.capture_invalidated = [], [], None
        self.calls.append(Call("begin_capture", stream.name))

    def add_capture_check(self, stream: FakeStream, check: Callable[[], None]) -> None:
        """While ``stream`` captures: ``check()`` runs at every launch of the graph and raises if the replay is undefined."""
        if stream.capture_checks is None:
            raise GlsnetError(f"{stream.name} is not capturing a CUDA graph")
        stream.capture_checks.append(check)

    def invalidate_capture(self, stream: FakeStream, why: str) -> None:
        """Mark the running capture invalid, as CUDA does when captured work fails; end_capture then fails."""
        if stream.capture is not None:
            stream.capture_invalidated = why

    def end_capture(self, stream: FakeStream) -> FakeGraph:
        graph = self._finish_capture(stream)
        if graph is None:
            raise GlsnetError(f"cudaStreamEndCapture on {stream.name} failed with cudaErrorStreamCaptureInvalidated ({self.last_error})")
        return graph

    def abort_capture(self, stream: FakeStream) -> None:
        """End a capture that failed: tolerate the invalidated status, destroy a partial graph, clear the error."""
        graph = self._finish_capture(stream)
        if graph is not None:
            self.destroy_graph(graph)
        self.clear_error()
        self.calls.append(Call("abort_capture", stream.name))

    def clear_error(self) -> None:
        self.last_error = None

    def _finish_capture(self, stream: FakeStream) -> FakeGraph | None:
        """End the capture (CUDA ends it even when it fails); None when it was invalidated."""
        if stream.capture is None:
            raise GlsnetError(f"{stream.name} is not capturing a CUDA graph")
        operations, checks, invalid = tuple(stream.capture), tuple(stream.capture_checks or ()), stream.capture_invalidated
        stream.capture, stream.capture_checks, stream.capture_invalidated = None, None, None
        if invalid is not None:
            self.last_error = f"cudaErrorStreamCaptureInvalidated: {invalid}"
            self.calls.append(Call("end_capture", stream.name, "invalidated"))
            return None
        self.live_graphs += 1
        self.calls.append(Call("end_capture", stream.name, f"{len(operations)} operations"))
        return FakeGraph(operations, checks)

    def launch_graph(self, graph: FakeGraph, stream: FakeStream) -> None:
        for check in graph.checks:
            check()
        for operation in graph.operations:
            self._enqueue(stream, Operation(operation.kind, f"graph:{operation.label}", run=operation.run))
        self.calls.append(Call("launch_graph", stream.name, f"{len(graph.operations)} operations"))

    def destroy_graph(self, graph: FakeGraph) -> None:
        self.live_graphs -= 1
        self.calls.append(Call("destroy_graph"))

    # -------------------------------------------------------------- the simulated device
    def _enqueue(self, stream: FakeStream, operation: Operation) -> None:
        operation.stream = stream
        operation.sequence = next(self._sequence)
        if stream.capture is not None:
            stream.capture.append(operation)
            return
        self._queues[stream.index].append(operation)

    def _refuse_in_capture(self, stream: FakeStream, what: str) -> None:
        if stream.capture is not None:
            raise GlsnetError(f"{what} on {stream.name} while it captures a graph; the fake does not capture events")

    def _event_done(self, event: FakeEvent) -> bool:
        return event.last_record is None or event.last_record in self._done

    def _runnable(self, operation: Operation) -> bool:
        return operation.kind != "wait" or operation.waits_on is None or operation.waits_on in self._done

    def _order(self) -> list[FakeStream]:
        rank = {name: i for i, name in enumerate(self.priority)}
        return sorted(self._streams, key=lambda s: (rank.get(s.name, len(rank)), s.index))

    def _step(self) -> bool:
        for stream in self._order():
            queue = self._queues[stream.index]
            if queue and self._runnable(queue[0]):
                operation = queue.popleft()
                if operation.run is not None:
                    operation.run()
                if operation.kind == "record" and operation.event is not None:
                    operation.event.fired.add(operation.sequence)
                self._done.add(operation.sequence)
                self.executed.append(Executed(operation.kind, stream.name, operation.label, operation.sequence))
                return True
        return False

    def _run_until(self, finished: Callable[[], bool], what: str) -> None:
        while not finished():
            if not self._step():
                raise GlsnetError(f"the fake device cannot make progress while waiting for {what}: a wait can never fire")

    def _memory_of(self, buffer: DeviceBuffer) -> np.ndarray:
        memory = self._memory.get(buffer.ptr)
        if memory is None:
            raise GlsnetError(f"device pointer {buffer.ptr:#x} is not a live allocation of this device")
        return memory

    def _require_pinned(self, array: np.ndarray, what: str) -> None:
        if not any(np.shares_memory(array, pinned) for pinned in self._pinned):
            raise InputError(
                f"{what} copy from pageable host memory: stage it in an array from alloc_pinned so the copy is asynchronous"
            )


class HostAsyncBackend:
    """An asynchronous engine for the recording device: a host function run as a kernel on a stream.

    ``function`` maps input arrays by name to output arrays by name, so it can be numpy code, an
    ONNX Runtime session's run wrapped in a lambda, or a runtime Backend's ``infer``.
    """

    def __init__(
        self,
        device: RecordingDevice,
        function: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
        name: str,
    ) -> None:
        self.device = device
        self.function = function
        self.name = name
        self.enqueued = 0

    def enqueue(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], stream: FakeStream) -> None:
        def run() -> None:
            feed = {name: self.device.view(tensor).copy() for name, tensor in inputs.items()}
            result = self.function(feed)
            for name, tensor in outputs.items():
                value = np.asarray(result[name])
                if value.shape != tensor.shape:
                    raise GlsnetError(f"{self.name}: output {name!r} has shape {value.shape}, the schedule expected {tensor.shape}")
                self.device.view(tensor)[...] = value.astype(tensor.dtype, copy=False)

        self.enqueued += 1
        self.device.enqueue_host_function(stream, run, self.name)
