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

CUDA graphs (``cuda_graphs=True``, where the Device supports them): the first call with a given
set of shapes and addresses runs normally and is then captured; later identical calls replay the
graph, which saves the per-layer launch cost of fixed-shape local and fusion batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np

from runtime.backends.base import Backend, TensorMeta
from runtime.backends.tensorrt.api import TensorRTApi, tensorrt_api
from runtime.cuda.device import Device, DeviceBuffer, DeviceTensor, Stream
from runtime.errors import BundleError, GlsnetError, InputError

log = logging.getLogger(__name__)

MAX_GRAPHS = 16
ALIGNMENT = 256


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
        trt: ModuleType | None = None,
    ) -> None:
        super().__init__()
        self._plan = plan
        self._device = device
        self.role = role
        self.name = f"tensorrt:{role}" if role else "tensorrt"
        self._shared_memory = context_memory
        self.cuda_graphs = cuda_graphs
        self._trt = trt
        self.api: TensorRTApi | None = None
        self.device: Device | None = None

    # -------------------------------------------------------------- lifecycle
    def _activate_impl(self) -> None:
        api = tensorrt_api(self._trt)
        trt = api.trt
        self.api = api
        self.device = self._device() if callable(self._device) and not isinstance(self._device, Device) else self._device
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        data, where = self._read_plan()
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BundleError(
                f"{where}: TensorRT {api.version} could not deserialize this engine (built by another TensorRT "
                "release or for another GPU, or the file is damaged); rebuild it on this machine with glsnet-export build"
            )
        self.context = api.create_context(self.engine, user_managed_memory=True)
        self.memory = self._shared_memory or ContextMemory(self.device)
        self._owns_memory = self._shared_memory is None
        self._inputs, self._outputs = self._read_io()
        self._graphs: dict[tuple, Any] = {}
        self._sync_stream: Stream | None = None
        self._staging: dict[tuple, Any] = {}

    def _deactivate_impl(self) -> None:
        assert self.device is not None
        for graph in self._graphs.values():
            self.device.destroy_graph(graph)
        self._graphs.clear()
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

    def _input_metadata_impl(self) -> dict[str, TensorMeta]:
        return dict(self._inputs)

    def _output_metadata_impl(self) -> dict[str, TensorMeta]:
        return dict(self._outputs)

    # -------------------------------------------------------------- asynchronous path
    def output_shapes(self, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The output shapes TensorRT infers for these input shapes (sets them on the context)."""
        self._require_active()
        for name, shape in input_shapes.items():
            self._set_input_shape(name, tuple(shape))
        return {name: tuple(int(d) for d in self.context.get_tensor_shape(name)) for name in self._outputs}

    def enqueue(self, inputs: Mapping[str, DeviceTensor], outputs: Mapping[str, DeviceTensor], stream: Stream) -> None:
        """Queue one inference on ``stream``: device tensors in and out; returns before the GPU is done."""
        self._require_active()
        assert self.device is not None and self.api is not None
        self._check_names(inputs, self._inputs, "inputs")
        self._check_names(outputs, self._outputs, "outputs")
        inferred = self.output_shapes({name: tensor.shape for name, tensor in inputs.items()})
        for name, tensor in outputs.items():
            if inferred[name] != tuple(tensor.shape):
                raise GlsnetError(
                    f"{self.name}: output {name!r} will have shape {inferred[name]} but its buffer is shaped {tensor.shape}"
                )
        scratch = self.memory.ensure(self.api.context_device_memory(self.context, self.engine), stream)
        self.api.set_context_memory(self.context, scratch.ptr, scratch.nbytes)
        for name, tensor in (*inputs.items(), *outputs.items()):
            if not self.context.set_tensor_address(name, tensor.ptr):
                raise GlsnetError(f"{self.name}: TensorRT refused the address of tensor {name!r}")
        handle = self.device.stream_handle(stream)
        if not (self.cuda_graphs and self.device.supports_graphs):
            self._execute(handle)
            return
        key = (
            tuple((n, t.shape, t.ptr) for n, t in sorted(inputs.items())),
            tuple((n, t.shape, t.ptr) for n, t in sorted(outputs.items())),
            scratch.ptr,
            handle,
        )
        graph = self._graphs.get(key)
        if graph is not None:
            self.device.launch_graph(graph, stream)
            return
        self._execute(handle)  # a first, uncaptured run lets TensorRT finish its lazy set-up
        if len(self._graphs) >= MAX_GRAPHS:
            self.device.destroy_graph(self._graphs.pop(next(iter(self._graphs))))
        self.device.begin_capture(stream)
        try:
            self._execute(handle)
        finally:
            captured = self.device.end_capture(stream)
        self._graphs[key] = captured

    def _execute(self, handle: int) -> None:
        if not self.context.execute_async_v3(handle):
            raise GlsnetError(f"{self.name}: TensorRT execute_async_v3 failed; TensorRT's log above says why")

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self._inputs:
            raise InputError(f"{self.name}: no input named {name!r}; inputs are {sorted(self._inputs)}")
        if not self.context.set_input_shape(name, shape):
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
