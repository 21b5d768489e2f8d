"""TensorRTBackend: one deserialized engine and one execution context, behind the Backend interface.

Two ways to run it:
- ``infer(feed)`` (the generic, synchronous interface every backend has): host arrays in, host
  arrays out, through pinned staging on the backend's own stream.
- ``enqueue(inputs, outputs, stream)``: device tensors in and out, queued on the caller's stream
  and not waited for. The stream scheduler uses this; it never sees TensorRT.

Context memory. Every context is created with ``ExecutionContextAllocationStrategy.USER_MANAGED``
and gets its scratch memory from a ``ContextMemory``, sized for the shapes of each call
(``update_device_memory_size_for_shapes``) rather than for the profile's maximum. Contexts that
never run at the same time may share one ContextMemory. In the GPU schedule the local and fusion
engines run on the same stream, one after the other, so they share one; the global engine runs on
its own stream *concurrently* with the local batches, so it has its own. Sharing it would let two
engines scribble over each other's activations.

Contexts that share scratch memory get it sized up front (``ContextMemory.reserve``, from each
engine's ``device_memory_size_v2``), so no call has to free and reallocate it (and synchronise) in
the middle of an image. ``update_device_memory_size_for_shapes`` returns 0 on error; then the
engine's profile maximum is used, never 0.

CUDA graphs (``cuda_graphs=True``, where the Device supports them). NVIDIA documents that a graph
captured from an execution context may only be replayed while that context is still in the state
it was captured in: changing an input shape, a tensor address or the scratch memory makes the
replay undefined. So with graphs on, each state (shapes and addresses of every tensor, scratch
memory, stream) gets its own execution context, configured once and never changed (they share the
scratch memory: one stream), up to MAX_GRAPH_CONTEXTS; the first call in a state runs uncaptured
(TensorRT finishes its lazy set-up), the second is captured and launched, later ones replay it.
The schedule's ring slots and its full batches replay; states beyond the limit run uncaptured on
the main context, which is reconfigured whenever its state changes. A capture that fails is ended as trtexec ends it (synchronise before
capturing; end it tolerating the invalidated status, destroy any partial graph, clear the CUDA
error), warned about once, and that backend goes on without graphs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np

from runtime.backends.base import Backend, TensorMeta
from runtime.backends.tensorrt.api import TensorRTApi, process_logger, tensorrt_api
from runtime.cuda.device import Device, DeviceBuffer, DeviceTensor, Stream
from runtime.errors import BundleError, GlsnetError, InputError

log = logging.getLogger(__name__)

ALIGNMENT = 256
MAX_GRAPH_CONTEXTS = 4  # states with their own context and graph (ring slots x batch sizes); others run uncaptured


class _Slot:
    """An execution context kept in one state (shapes, addresses, scratch) for the CUDA graph captured from it."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.graph: Any = None
        self.runs = 0


class ContextMemory:
    """Device scratch memory for execution contexts that never run concurrently (one stream)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.buffer: DeviceBuffer | None = None

    def ensure(self, nbytes: int, stream: Stream) -> DeviceBuffer:
        """A buffer of at least ``nbytes``; growing it first waits for ``stream``, whose work may still use it."""
        nbytes = max(ALIGNMENT, -(-int(nbytes) // ALIGNMENT) * ALIGNMENT)
        if self.buffer is None or self.buffer.nbytes < nbytes:
            if self.buffer is not None:
                self.device.synchronize(stream)
                self.device.free(self.buffer)
            self.buffer = self.device.alloc_device(nbytes)
        return self.buffer

    def reserve(self, nbytes: int) -> DeviceBuffer:
        """Allocate at least ``nbytes`` now, before any work is queued, so no later ``ensure`` has to grow it."""
        nbytes = max(ALIGNMENT, -(-int(nbytes) // ALIGNMENT) * ALIGNMENT)
        if self.buffer is None or self.buffer.nbytes < nbytes:
            if self.buffer is not None:
                self.device.free(self.buffer)
            self.buffer = self.device.alloc_device(nbytes)
        return self.buffer

    @property
    def state(self) -> tuple[int, int] | None:
        """(pointer, size) of the buffer now: a context whose scratch changed is in another state."""
        return None if self.buffer is None else (self.buffer.ptr, self.buffer.nbytes)

    def release(self) -> None:
        if self.buffer is not None:
            self.device.free(self.buffer)
            self.buffer = None


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        plan: str | Path | bytes | Callable[[], bytes],
        device: Device | Callable[[], Device],
        *,
        role: str = "",
        context_memory: ContextMemory | None = None,
        cuda_graphs: bool = False,
        dla_core: int | None = None,
        trt: ModuleType | None = None,
    ) -> None:
        super().__init__()
        self._plan = plan
        self._device = device
        self.role = role
        self.name = f"tensorrt:{role}" if role else "tensorrt"
        self._shared_memory = context_memory
        self.cuda_graphs = cuda_graphs
        self.dla_core = dla_core
        self._trt = trt
        self.api: TensorRTApi | None = None
        self.device: Device | None = None

    # -------------------------------------------------------------- lifecycle
    def _activate_impl(self) -> None:
        api = tensorrt_api(self._trt)
        trt = api.trt
        self.api = api
        self.device = self._device() if callable(self._device) and not isinstance(self._device, Device) else self._device
        self._logger = process_logger(trt)
        trt.init_libnvinfer_plugins(self._logger, "")
        data, where = self._read_plan()
        self._runtime = trt.Runtime(self._logger)
        if self.dla_core is not None:
            api.set_dla_core(self._runtime, self.dla_core, "run")  # before deserialising: the engine runs on it
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            on = f" for DLA core {self.dla_core}" if self.dla_core is not None else ""
            raise BundleError(
                f"{where}: TensorRT {api.version} could not deserialize this engine{on} (built by another TensorRT "
                "release or for another GPU, or the file is damaged); rebuild it on this machine with glsnet-export build"
            )
        self.context = api.create_context(self.engine, user_managed_memory=True)
        self.memory = self._shared_memory or ContextMemory(self.device)
        self._owns_memory = self._shared_memory is None
        self._inputs, self._outputs = self._read_io()
        self._state: tuple | None = None  # what the main context is configured with now
        self._slots: dict[tuple, _Slot] = {}  # CUDA graphs: one context per state, configured once, so its graph stays valid
        self._graphs_failed = False
        self._sync_stream: Stream | None = None
        self._staging: dict[tuple, Any] = {}

    def _deactivate_impl(self) -> None:
        assert self.device is not None
        self._drop_graphs()
        if self._sync_stream is not None:
            self.device.synchronize(self._sync_stream)
        for memory in self._staging.values():
            self.device.free(memory)
        self._staging.clear()
        if self._owns_memory:
            self.memory.release()
        if self._sync_stream is not None:
            self.device.destroy_stream(self._sync_stream)
            self._sync_stream = None
        del self.context, self.engine, self._runtime

    def _read_plan(self) -> tuple[bytes, str]:
        plan = self._plan
        if isinstance(plan, (bytes, bytearray, memoryview)):
            return bytes(plan), f"{self.name} engine"
        if callable(plan):
            return plan(), f"{self.name} engine"
        path = Path(plan)
        if not path.is_file():
            raise BundleError(f"{path}: TensorRT engine file not found; build it with glsnet-export build BUNDLE --target tensorrt")
        return path.read_bytes(), str(path)

    def _read_io(self) -> tuple[dict[str, TensorMeta], dict[str, TensorMeta]]:
        trt = self.api.trt  # type: ignore[union-attr]
        inputs: dict[str, TensorMeta] = {}
        outputs: dict[str, TensorMeta] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(name))
            meta = TensorMeta(name, dtype, shape)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs[name] = meta
            else:
                outputs[name] = meta
        return inputs, outputs

    @property
    def profile_device_memory(self) -> int:
        """Scratch memory this engine's context needs at its profile's largest shapes (device_memory_size_v2)."""
        self._require_active()
        assert self.api is not None
        return self.api.engine_device_memory(self.engine)

    def _input_metadata_impl(self) -> dict[str, TensorMeta]:
        return dict(self._inputs)

    def _output_metadata_impl(self) -> dict[str, TensorMeta]:
        return dict(self._outputs)

    # -------------------------------------------------------------- asynchronous path
    def output_shapes(self, input_shapes: Mapping[str, tuple[int, ...]], context: Any = None) -> dict[str, tuple[int, ...]]:
        """The output shapes TensorRT infers for these input shapes (sets them on ``context``, the main one by default)."""
        self._require_active()
        context = context if context is not None else self.context
        if context is self.context:
            self._state = None  # the main context's shapes may change now: the next enqueue reconfigures it
        for name, shape in input_shapes.items():
            self._set_input_shape(name, tuple(shape), context)
        return {name: tuple(int(d) for d in context.get_tensor_shape(name)) for name in self._outputs}

    def enqueue(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], stream: Stream) -> None:
        """Queue one inference on ``stream``: device tensors in and out; returns before the GPU is done."""
        self._require_active()
        assert self.device is not None and self.api is not None
        self._check_names(inputs, self._inputs, "inputs")
        self._check_names(outputs, self._outputs, "outputs")
        handle = self.device.stream_handle(stream)
        state = self._state_of(inputs, outputs, handle)
        graphs = self.cuda_graphs and self.device.supports_graphs and not self._graphs_failed
        slot = self._slots.get(state) if graphs else None
        if slot is None and graphs and len(self._slots) < MAX_GRAPH_CONTEXTS:
            slot = _Slot(self.api.create_context(self.engine, user_managed_memory=True))
            self._configure(slot.context, inputs, outputs, stream)
            self._forget_stale_slots()  # growing the scratch memory invalidates the others
            self._slots[self._state_of(inputs, outputs, handle)] = slot
        if slot is None:  # no graphs (or no room for another context): the main context, reconfigured on change
            if state != self._state:
                self._state = None
                self._configure(self.context, inputs, outputs, stream)
                self._forget_stale_slots()
                self._state = self._state_of(inputs, outputs, handle)
            self._execute(handle, self.context)
            return
        if slot.graph is None and slot.runs == 0:
            slot.runs = 1
            self._execute(handle, slot.context)  # a first, uncaptured run lets TensorRT finish its lazy set-up
            return
        if slot.graph is None:
            slot.graph = self._capture(handle, stream, slot.context)
            if slot.graph is None:
                self._execute(handle, slot.context)  # the capture failed: this call still has to run
                return
        self.device.launch_graph(slot.graph, stream)

    def _state_of(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], handle: int) -> tuple:
        """Everything a captured graph depends on: shapes and addresses of every tensor, scratch memory, stream."""
        return (
            tuple((n, tuple(t.shape), t.ptr) for n, t in sorted(inputs.items())),
            tuple((n, tuple(t.shape), t.ptr) for n, t in sorted(outputs.items())),
            self.memory.state,
            handle,
        )

    def _configure(self, context: Any, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], stream: Stream) -> None:
        """Set shapes, scratch memory and addresses on ``context``, checking the output buffers' shapes."""
        assert self.api is not None
        inferred = self.output_shapes({name: tensor.shape for name, tensor in inputs.items()}, context)
        for name, tensor in outputs.items():
            if inferred[name] != tuple(tensor.shape):
                raise GlsnetError(
                    f"{self.name}: output {name!r} will have shape {inferred[name]} but its buffer is shaped {tensor.shape}"
                )
        scratch = self.memory.ensure(self.api.context_device_memory(context, self.engine), stream)
        self.api.set_context_memory(context, scratch.ptr, scratch.nbytes)
        for name, tensor in (*inputs.items(), *outputs.items()):
            if not context.set_tensor_address(name, tensor.ptr):
                raise GlsnetError(f"{self.name}: TensorRT refused the address of tensor {name!r}")

    def _forget_stale_slots(self) -> None:
        """Drop the graph contexts configured with scratch memory that has since been replaced."""
        for state in [k for k in self._slots if k[2] != self.memory.state]:
            self._drop_slot(self._slots.pop(state))

    def _capture(self, handle: int, stream: Stream, context: Any) -> Any:
        """Capture one enqueue as a CUDA graph, or None (warned once; graphs off for this backend) when that fails."""
        assert self.device is not None
        device = self.device
        device.synchronize(stream)  # as trtexec does: nothing of ours is in flight when the capture begins
        device.begin_capture(stream)
        try:
            ok = bool(context.execute_async_v3(handle))
        except BaseException:
            device.abort_capture(stream)
            raise
        failure = None
        graph = None
        if ok:
            try:
                graph = device.end_capture(stream)
            except GlsnetError as exc:
                device.clear_error()
                failure = str(exc)
        else:
            device.abort_capture(stream)
            failure = "execute_async_v3 failed while capturing (TensorRT's log above says why)"
        if failure is not None:
            self._graphs_failed = True
            log.warning("%s: CUDA graph capture failed, running without CUDA graphs: %s", self.name, failure)
        return graph

    def _drop_slot(self, slot: "_Slot") -> None:
        if slot.graph is not None:
            assert self.device is not None
            self.device.destroy_graph(slot.graph)  # an in-flight launch still completes (cudaGraphExecDestroy)
            slot.graph = None

    def _drop_graphs(self) -> None:
        for slot in self._slots.values():
            self._drop_slot(slot)
        self._slots.clear()

    def _execute(self, handle: int, context: Any = None) -> None:
        if not (context if context is not None else self.context).execute_async_v3(handle):
            raise GlsnetError(f"{self.name}: TensorRT execute_async_v3 failed; TensorRT's log above says why")

    def _set_input_shape(self, name: str, shape: tuple[int, ...], context: Any) -> None:
        if name not in self._inputs:
            raise InputError(f"{self.name}: no input named {name!r}; inputs are {sorted(self._inputs)}")
        if not context.set_input_shape(name, shape):
            low, _, high = self.engine.get_tensor_profile_shape(name, 0)
            raise InputError(
                f"{self.name}: input {name!r} of shape {shape} is outside the engine's optimization profile "
                f"(min {tuple(low)}, max {tuple(high)}); rebuild the engines with a larger --max-batch or --max-image-size"
            )

    def _check_names(self, given: Mapping[str, Any], expected: Mapping[str, TensorMeta], what: str) -> None:
        if set(given) != set(expected):
            raise InputError(f"{self.name}: {what} {sorted(given)} do not match the engine's {sorted(expected)}")

    # -------------------------------------------------------------- synchronous path
    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.device is not None
        device = self.device
        if self._sync_stream is None:
            self._sync_stream = device.create_stream(f"{self.name}-sync")
        stream = self._sync_stream
        shapes = self.output_shapes({name: np.asarray(array).shape for name, array in feed.items()})
        inputs: dict[str, DeviceTensor] = {}
        for name, array in feed.items():
            array = np.asarray(array)
            host = self._staged(("host", name, array.shape), lambda: device.alloc_pinned(array.shape, array.dtype))
            host[...] = array
            buffer = self._staged(("device", name, array.shape), lambda: device.alloc_device(array.nbytes))
            inputs[name] = DeviceTensor(buffer, array.shape, array.dtype)
            device.memcpy_htod_async(buffer, host, stream)
        outputs: dict[str, DeviceTensor] = {}
        hosts: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            dtype = self._outputs[name].dtype
            nbytes = int(np.prod(shape)) * dtype.itemsize
            buffer = self._staged(("device", name, shape), lambda: device.alloc_device(max(nbytes, 1)))
            outputs[name] = DeviceTensor(buffer, shape, dtype)
            hosts[name] = self._staged(("host", name, shape), lambda: device.alloc_pinned(shape, dtype))
        self.enqueue(inputs, outputs, stream)
        for name, tensor in outputs.items():
            device.memcpy_dtoh_async(hosts[name], tensor, stream)
        device.synchronize(stream)
        return {name: host.copy() for name, host in hosts.items()}

    def _staged(self, key: tuple, allocate: Callable[[], Any]) -> Any:
        """Pinned and device buffers of the synchronous path, kept per tensor and shape."""
        if key not in self._staging:
            stale = [k for k in self._staging if k[:2] == key[:2]]
            for old in stale:  # one live buffer per tensor: a new shape replaces the old one
                assert self.device is not None and self._sync_stream is not None
                self.device.synchronize(self._sync_stream)
                self.device.free(self._staging.pop(old))
            self._staging[key] = allocate()
        return self._staging[key]
