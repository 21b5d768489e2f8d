"""Helpers shared by the TensorRT/CUDA tests (no tests here): a synthetic manifest, numpy engines, a fake tensorrt module.

The fake ``tensorrt`` module exposes the documented names of TensorRT 10.x or 11.x (flags that 11
removed are absent), records every builder/config call in ``trt.calls``, writes JSON "plans", and
its engines run registered numpy functions as kernels on a RecordingDevice, so the runner and the
pipeline are exercised end to end, asynchronously, on the CPU.

It is strict where TensorRT's documentation is, so that code written from wrong beliefs fails:
- a CUDA graph captured from a context may only be replayed while that context is in the state it
  was captured in: any later change of an input shape, a tensor address or the scratch memory makes
  the replay raise (``FakeTensorRTError``), even if the old values are set again;
- ``trt.capture_failure = "invalidate"`` (the enqueue breaks the stream capture) or ``"report"``
  (TensorRT reports the failure, the capture stays valid) makes enqueueing under capture fail;
- a user-managed context's scratch memory must hold what the current shapes need (per role, see
  ``SCRATCH_PER_ITEM``), and two contexts sharing scratch memory must never be able to run at the
  same time (queued on different streams while the other's work has not finished raises);
- ``trt.zero_memory_sizes = True`` makes ``update_device_memory_size_for_shapes`` return 0, its
  documented error value;
- the runtime's ``DLA_core`` is recorded in ``trt.calls``; a DLA engine deserializes only when it is
  set to the engine's core; ``num_DLA_cores`` (builder and runtime) is ``trt.num_dla_cores``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from runtime.algorithm.patch_grid import make_grid
from runtime.algorithm.scheduler import Scheduler
from runtime.algorithm.stitching import patch_weights, upsample_logits
from runtime.bundle.manifest import (
    SCHEMA_VERSION,
    GraphSpec,
    Manifest,
    Normalization,
    PatchSpec,
    TensorSpec,
    sha256_file,
    write_manifest,
)
from runtime.backends.base import Backend, TensorMeta
from runtime.cuda.device import DeviceBuffer
from runtime.cuda.recording import RecordingDevice

# ----------------------------------------------------------------------------------- manifest


def graph_specs(patch: int, channels: int, width: int, skip: int, classes: int, precision: str, files: dict[str, str] | None = None) -> dict[str, GraphSpec]:
    t32, t4 = math.ceil(patch / 32), math.ceil(patch / 4)
    files = files or {}
    image = TensorSpec("image", "float32", (1, channels, "height", "width"))
    features = TensorSpec("global_features", "float32", (1, width, "feat_height", "feat_width"))
    local_features = TensorSpec("local_features", "float32", ("batch", width, t32, t32))
    local_skip = TensorSpec("local_skip", "float32", ("batch", skip, t4, t4))
    boxes = TensorSpec("boxes", "float32", ("batch", 4))
    logits = TensorSpec("logits", "float32", ("batch", classes, t4, t4))
    prefix = "" if precision == "fp32" else f"{precision}/"
    return {
        "global": GraphSpec(files.get("global", f"{prefix}global.onnx"), precision, "0" * 64, (image,), (features,)),
        "local": GraphSpec(
            files.get("local", f"{prefix}local.onnx"), precision, "0" * 64, (TensorSpec("patches", "float32", ("batch", channels, patch, patch)),), (local_features, local_skip)
        ),
        "fusion": GraphSpec(files.get("fusion", f"{prefix}fusion.onnx"), precision, "0" * 64, (local_features, local_skip, features, boxes), (logits,)),
    }


def make_manifest(
    patch: int = 64,
    overlap: int = 8,
    channels: int = 3,
    width: int = 4,
    skip: int = 3,
    classes: int = 3,
    precisions: tuple[str, ...] = ("fp32",),
) -> Manifest:
    return Manifest(
        schema_version=SCHEMA_VERSION,
        classes=tuple(f"class{i}" for i in range(classes)),
        palette=tuple((i, i, i) for i in range(classes)),
        normalization=Normalization(mean=(0.5,) * channels, std=(0.25,) * channels, scale=255.0, bands=tuple(range(channels))),
        patch=PatchSpec(size=patch, min_overlap=overlap),
        graphs={p: graph_specs(patch, channels, width, skip, classes, p) for p in precisions},
        model={"width": width, "skip_width": skip},
    )


def manifest_for_config(config: Any) -> Manifest:
    """A manifest with the tensor shapes of a GLSNetConfig (for tests driving the torch model)."""
    base = make_manifest(config.patch_size, config.min_overlap, config.in_channels, config.width, config.skip_width, config.num_classes)
    return base.replace(normalization=Normalization(mean=config.mean, std=config.std, bands=config.bands))


# ----------------------------------------------------------------------------------- numpy engines


def _pool(x: np.ndarray, k: int) -> np.ndarray:
    n, c, h, w = x.shape
    hp, wp = math.ceil(h / k) * k, math.ceil(w / k) * k
    padded = np.zeros((n, c, hp, wp), dtype=np.float32)
    padded[:, :, :h, :w] = x
    return padded.reshape(n, c, hp // k, k, wp // k, k).mean(axis=(3, 5))


class NumpyGLSNet:
    """Three deterministic numpy 'graphs' with GLSNet's tensors; every output depends on every input."""

    def __init__(self, manifest: Manifest, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        graphs = manifest.graphs["fp32"]
        channels = graphs["local"].inputs[0].shape[1]
        width = graphs["local"].outputs[0].shape[1]
        skip = graphs["local"].outputs[1].shape[1]
        classes = graphs["fusion"].outputs[0].shape[1]
        self.patch = manifest.patch.size
        self.w_global = rng.normal(size=(width, channels)).astype(np.float32)
        self.w_local = rng.normal(size=(width, channels)).astype(np.float32)
        self.w_skip = rng.normal(size=(skip, channels)).astype(np.float32)
        self.w_a = rng.normal(size=(classes, skip)).astype(np.float32)
        self.w_b = rng.normal(size=(classes, width)).astype(np.float32)
        self.w_c = rng.normal(size=(classes, width)).astype(np.float32)
        self.functions: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
            "global": self.global_branch,
            "local": self.local_branch,
            "fusion": self.fusion,
        }

    def global_branch(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pooled = _pool(feed["image"], 32)
        return {"global_features": np.tanh(np.einsum("dc,nchw->ndhw", self.w_global, pooled)).astype(np.float32)}

    def local_branch(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        patches = feed["patches"]
        return {
            "local_features": np.einsum("dc,nchw->ndhw", self.w_local, _pool(patches, 32)).astype(np.float32),
            "local_skip": np.einsum("sc,nchw->nshw", self.w_skip, _pool(patches, 4)).astype(np.float32),
        }

    def fusion(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        lf, ls, gf, boxes = feed["local_features"], feed["local_skip"], feed["global_features"], feed["boxes"]
        up = ls.shape[-1] // lf.shape[-1]
        lf_up = np.repeat(np.repeat(lf, up, axis=2), up, axis=3)
        out = np.einsum("ks,bshw->bkhw", self.w_a, ls) + np.einsum("kd,bdhw->bkhw", self.w_b, lf_up)
        for b, (x1, y1, x2, y2) in enumerate(boxes):
            cy = min(int((y1 + y2) / 2 // 32), gf.shape[2] - 1)
            cx = min(int((x1 + x2) / 2 // 32), gf.shape[3] - 1)
            out[b] += (self.w_c @ gf[0, :, cy, cx])[:, None, None] + 0.01 * x1 / self.patch
        return {"logits": out.astype(np.float32)}


def reference_mask(net: NumpyGLSNet, manifest: Manifest, image: np.ndarray, batch_size: int) -> np.ndarray:
    """The chain as glsnet.inference does it, in numpy, accumulating over the whole image (no Stitcher)."""
    _, height, width = image.shape
    p = manifest.patch.size
    grid = make_grid(height, width, p, manifest.patch.min_overlap)
    padded = np.zeros((image.shape[0], grid.padded_height, grid.padded_width), dtype=np.float32)
    padded[:, :height, :width] = image
    features = net.global_branch({"image": padded[None]})["global_features"]
    weights = patch_weights(p)
    total = np.zeros((manifest.num_classes, grid.padded_height, grid.padded_width), dtype=np.float32)
    weight_sum = np.zeros((grid.padded_height, grid.padded_width), dtype=np.float32)
    origins = grid.origins()
    for start in range(0, len(origins), batch_size):
        indices = list(range(start, min(start + batch_size, len(origins))))
        patches = np.stack([padded[:, y : y + p, x : x + p] for y, x in (origins[i] for i in indices)])
        local = net.local_branch({"patches": patches})
        logits = net.fusion({**local, "global_features": features, "boxes": grid.boxes(indices)})["logits"]
        for (y, x), patch_logits in zip((origins[i] for i in indices), upsample_logits(logits, p)):
            total[:, y : y + p, x : x + p] += patch_logits * weights
            weight_sum[y : y + p, x : x + p] += weights
    return (total / weight_sum).argmax(0).astype(np.uint8)[:height, :width]


class NumpyBackend(Backend):
    """A NumpyGLSNet function as a CPU Backend, so the CPU Scheduler and the stream scheduler run the same graphs."""

    def __init__(self, function: Callable, inputs: Mapping[str, tuple], outputs: Mapping[str, tuple]) -> None:
        super().__init__()
        self.function = function
        self._inputs = {n: TensorMeta(n, np.dtype(np.float32), s) for n, s in inputs.items()}
        self._outputs = {n: TensorMeta(n, np.dtype(np.float32), s) for n, s in outputs.items()}

    def _activate_impl(self) -> None: ...

    def _deactivate_impl(self) -> None: ...

    def _input_metadata_impl(self) -> dict[str, TensorMeta]:
        return self._inputs

    def _output_metadata_impl(self) -> dict[str, TensorMeta]:
        return self._outputs

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self.function(dict(feed)))


def cpu_scheduler(manifest: Manifest, net: NumpyGLSNet) -> Scheduler:
    """The runtime's CPU Scheduler over the numpy graphs: the reference the GPU schedule must equal byte for byte."""
    graphs = manifest.graphs["fp32"]

    def backend(role: str) -> NumpyBackend:
        graph = graphs[role]
        return NumpyBackend(net.functions[role], {t.name: t.shape for t in graph.inputs}, {t.name: t.shape for t in graph.outputs}).activate()

    return Scheduler(manifest, backend("global"), backend("local"), backend("fusion"))


def normalized_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A seeded scene with structure (blocks) so the masks are not noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(channels, height // 16 + 1, width // 16 + 1)).astype(np.float32)
    image = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :height, :width]
    return (image + 0.1 * rng.normal(size=image.shape)).astype(np.float32)


# ----------------------------------------------------------------------------------- fake tensorrt


class _Member:
    def __init__(self, owner: str, name: str, value: int) -> None:
        self.owner, self.name, self.value = owner, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Member) and (other.owner, other.value) == (self.owner, self.value)

    def __hash__(self) -> int:
        return hash((self.owner, self.value))

    def __repr__(self) -> str:
        return f"{self.owner}.{self.name}"


def _enum(owner: str, names: list[str]) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: _Member(owner, name, i) for i, name in enumerate(names)})


class FakeTensorRTError(RuntimeError):
    """The fake saw something that is undefined behaviour on a real GPU."""


SCRATCH_PER_ITEM = {"global": 1024, "local": 1024, "fusion": 4096}  # scratch bytes per item of the batch (+1)


def scratch_need(role: str, batch: int) -> int:
    return SCRATCH_PER_ITEM.get(role, 1024) * (1 + batch)


_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def fake_plan(role: str, inputs: dict[str, tuple], outputs: dict[str, tuple], extra: dict | None = None) -> bytes:
    """A fake engine: inputs name -> (min, opt, max) shapes; outputs name -> shape with -1 for dynamic dims."""
    body = {
        "role": role,
        "inputs": {n: [list(s) for s in shapes] for n, shapes in inputs.items()},
        "outputs": {n: list(s) for n, s in outputs.items()},
        **(extra or {}),
    }
    return json.dumps(body).encode()


def plans_for(manifest: Manifest, max_batch: int = 8, max_image: tuple[int, int] = (512, 512), min_batch: int = 1) -> dict[str, bytes]:
    """Fake plans of a manifest's three graphs, with profiles like the build's."""
    from export.tensorrt.tensorrt_build import TensorRTBuildOptions, optimization_profiles

    options = TensorRTBuildOptions(min_batch=min_batch, opt_batch=max(min_batch, min(6, max_batch)), max_batch=max_batch, opt_image_size=max_image, max_image_size=max_image)
    profiles = optimization_profiles(manifest, "fp32", options)
    plans = {}
    for role, graph in manifest.graphs["fp32"].items():
        outputs = {t.name: tuple(d if isinstance(d, int) else -1 for d in t.shape) for t in graph.outputs}
        plans[role] = fake_plan(role, profiles[role], outputs)
    return plans


def fake_tensorrt(
    version: str = "10.3.0",
    device: RecordingDevice | None = None,
    functions: Mapping[str, Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]] | None = None,
) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # type: ignore[attr-defined]
    trt.capture_failure = None  # type: ignore[attr-defined]
    trt.zero_memory_sizes = False  # type: ignore[attr-defined]
    trt.num_dla_cores = 2  # type: ignore[attr-defined]
    trt.engine_dtypes = {}  # type: ignore[attr-defined]  # role -> {tensor: "HALF"...}: I/O types of the engines built next
    scratch_users: dict[int, tuple[int, int, int]] = {}  # scratch ptr -> (id of context, stream index, sequence)
    major = int(version.split(".")[0])
    calls: list[tuple] = trt.calls  # type: ignore[attr-defined]
    functions = dict(functions or {})

    class Logger:
        ERROR, WARNING, INFO, VERBOSE = 1, 2, 3, 4

        def __init__(self, min_severity: int = 2) -> None:
            self.min_severity = min_severity
            calls.append(("Logger", min_severity))

    trt.Logger = Logger
    trt.init_libnvinfer_plugins = lambda logger, namespace: calls.append(("init_libnvinfer_plugins", namespace)) or True
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"] if major == 10 else ["_RESERVED", "STRONGLY_TYPED"])
    if major >= 11:
        del trt.NetworkDefinitionCreationFlag._RESERVED
    builder_flags = ["GPU_FALLBACK", "REFIT", "DEBUG", "SPARSE_WEIGHTS", "TF32"] + (["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"] if major == 10 else [])
    trt.BuilderFlag = _enum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.DeviceType = _enum("DeviceType", ["GPU", "DLA"])
    trt.ExecutionContextAllocationStrategy = _enum("ExecutionContextAllocationStrategy", ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"])
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = _enum("DataType", list(_NP))
    trt.nptype = lambda dtype: _NP[dtype.name]

    if major == 10:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                calls.append(("IInt8EntropyCalibrator2.__init__",))

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    # ---------------------------------------------------------------- building
    class Tensor:
        def __init__(self, name: str, shape: list) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.role = ""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors: list[str] = []

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            body = json.loads(Path(path).read_text())
            if "error" in body:
                self.errors.append(body["error"])
                return False
            self.network.role = body["role"]
            self.network.inputs = [Tensor(n, s) for n, s in body["inputs"].items()]
            self.network.outputs = [Tensor(n, s) for n, s in body["outputs"].items()]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list] = {}

        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))
            self.shapes[name] = [list(low), list(opt), list(high)]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data) + b"+timed"

        def serialize(self) -> bytes:
            return self.data

    allowed = {"builder_optimization_level", "default_device_type", "DLA_core"} | ({"int8_calibrator"} if major == 10 else set())

    class Config:
        def __init__(self) -> None:
            object.__setattr__(self, "flags", [])
            object.__setattr__(self, "cleared", [])
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "settings", {})

        def __setattr__(self, name: str, value: Any) -> None:
            if name not in allowed:
                raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}' (TensorRT {version})")
            calls.append(("config." + name, value))
            self.settings[name] = value

        def set_flag(self, flag: _Member) -> None:
            calls.append(("set_flag", flag))
            self.flags.append(flag)

        def clear_flag(self, flag: _Member) -> None:
            calls.append(("clear_flag", flag))
            self.cleared.append(flag)

        def set_memory_pool_limit(self, pool: _Member, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            return True

        def add_optimization_profile(self, profile: Profile) -> int:
            calls.append(("add_optimization_profile",))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        if major == 10:
            def set_calibration_profile(self, profile: Profile) -> bool:
                calls.append(("set_calibration_profile",))
                return True

    class Builder:
        def __init__(self, logger: Logger) -> None:
            calls.append(("Builder",))

        @property
        def num_DLA_cores(self) -> int:
            return trt.num_dla_cores

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            calls.append(("build_serialized_network", network.role))
            if config.settings.get("int8_calibrator") is not None:
                calibrator = config.settings["int8_calibrator"]
                calls.append(("read_calibration_cache", calibrator.read_calibration_cache(), calibrator.get_batch(["x"])))
            profile = config.profiles[0].shapes
            outputs = {t.name: [d if isinstance(d, int) else -1 for d in t.shape] for t in network.outputs}
            return fake_plan(
                network.role,
                {n: tuple(tuple(s) for s in profile[n]) for n in profile},
                {n: tuple(s) for n, s in outputs.items()},
                {
                    "network_flags": network.flags,
                    "builder_flags": [repr(f) for f in config.flags],
                    "settings": {k: repr(v) for k, v in config.settings.items()},
                    "dtypes": dict(trt.engine_dtypes.get(network.role, {})),  # type: ignore[attr-defined]
                },
            )

    # ---------------------------------------------------------------- running
    class Engine:
        def __init__(self, body: dict) -> None:
            self.body = body
            self.role = body["role"]
            self.names = list(body["inputs"]) + list(body["outputs"])
            largest = max(int(shapes[2][0]) for shapes in body["inputs"].values())
            self.device_memory_size_v2 = scratch_need(self.role, largest)  # the profile's largest shapes
            settings = body.get("settings", {})
            self.dla_core = int(settings["DLA_core"]) if "DLA_core" in settings and "DLA" in settings.get("default_device_type", "") else None

        if major == 10:
            @property
            def device_memory_size(self) -> int:
                return self.device_memory_size_v2

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str) -> _Member:
            return trt.TensorIOMode.INPUT if name in self.body["inputs"] else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> _Member:
            return getattr(trt.DataType, self.body.get("dtypes", {}).get(name, "FLOAT"))

        def get_tensor_shape(self, name: str) -> list:
            if name in self.body["outputs"]:
                return list(self.body["outputs"][name])
            low, _, high = self.body["inputs"][name]
            return [a if a == b else -1 for a, b in zip(low, high)]

        def get_tensor_profile_shape(self, name: str, profile: int) -> list:
            return [tuple(s) for s in self.body["inputs"][name]]

        def create_execution_context(self, strategy: _Member) -> "Context":
            calls.append(("create_execution_context", self.role, strategy))
            return Context(self, strategy)

    class Context:
        def __init__(self, engine: Engine, strategy: _Member) -> None:
            self.engine, self.strategy = engine, strategy
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.memory: tuple[int, int] | None = None
            self.generation = 0  # bumped by every change of shapes, addresses or scratch memory
            self._output_shapes: dict[tuple, dict[str, tuple]] = {}

        def _changed(self) -> None:
            self.generation += 1

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            low, _, high = self.engine.body["inputs"][name]
            if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
                return False
            if self.shapes.get(name) != tuple(shape):
                self._changed()
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            if name in self.engine.body["inputs"]:
                return self.shapes[name]
            key = tuple(sorted(self.shapes.items()))
            if key not in self._output_shapes:
                function = functions[self.engine.role]
                zeros = {n: np.zeros(s, dtype=np.float32) for n, s in self.shapes.items()}
                self._output_shapes[key] = {n: tuple(np.asarray(v).shape) for n, v in function(zeros).items()}
            return self._output_shapes[key][name]

        def _need(self) -> int:
            return scratch_need(self.engine.role, max(s[0] for s in self.shapes.values()))

        def update_device_memory_size_for_shapes(self) -> int:
            return 0 if trt.zero_memory_sizes else self._need()

        def set_device_memory(self, ptr: int, size: int) -> None:
            calls.append(("set_device_memory", self.engine.role, ptr, size))
            if self.memory != (ptr, size):
                self._changed()
            self.memory = (ptr, size)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if self.addresses.get(name) != ptr:
                self._changed()
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, handle: int) -> bool:
            calls.append(("execute_async_v3", self.engine.role, handle))
            if self.strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED and self.memory is None:
                return False
            if set(self.addresses) != set(self.engine.names) or device is None:
                return False
            if self.memory is not None and self.memory[1] < self._need():
                calls.append(("error", f"{self.engine.role}: scratch memory of {self.memory[1]} bytes, the shapes need {self._need()}"))
                return False
            stream = device._streams[handle - 0x5000]
            capturing = device.is_capturing(stream)
            if capturing and trt.capture_failure is not None:
                calls.append(("error", f"{self.engine.role}: enqueue failed during stream capture"))
                if trt.capture_failure == "invalidate":
                    device.invalidate_capture(stream, f"trt:{self.engine.role} enqueue failed")
                return False
            if self.memory is not None:
                user = scratch_users.get(self.memory[0])
                if user is not None and user[0] != id(self) and user[1] != stream.index and not device.is_done(user[2]):
                    raise FakeTensorRTError(
                        f"trt:{self.engine.role} queued on {stream.name} on scratch memory {self.memory[0]:#x} that another "
                        "context's unfinished work on another stream is using: they could run at the same time"
                    )
            shapes = {n: self.get_tensor_shape(n) for n in self.engine.names}
            addresses = dict(self.addresses)
            function = functions[self.engine.role]

            def run() -> None:
                feed = {n: device.view(DeviceBuffer(addresses[n], 0), shapes[n], np.float32).copy() for n in self.engine.body["inputs"]}
                for n, value in function(feed).items():
                    device.view(DeviceBuffer(addresses[n], 0), shapes[n], np.float32)[...] = value

            sequence = device.enqueue_host_function(stream, run, f"trt:{self.engine.role}")
            if self.memory is not None and not capturing:
                scratch_users[self.memory[0]] = (id(self), stream.index, sequence)
            if capturing:
                captured = self.generation

                def check() -> None:
                    if self.generation != captured:
                        raise FakeTensorRTError(
                            f"trt:{self.engine.role}: replay of a CUDA graph captured from a context that has changed since "
                            "(shapes, addresses or scratch memory): undefined behaviour on a GPU"
                        )

                device.add_capture_check(stream, check)
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self._dla_core = -1  # TensorRT's default: no DLA core chosen

        @property
        def num_DLA_cores(self) -> int:
            return trt.num_dla_cores

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, core: int) -> None:
            calls.append(("runtime.DLA_core", int(core)))
            self._dla_core = int(core)

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            calls.append(("deserialize_cuda_engine",))
            try:
                engine = Engine(json.loads(bytes(data)))
            except (ValueError, KeyError):
                return None
            if engine.dla_core is not None and engine.dla_core != self._dla_core:
                calls.append(("error", f"DLA engine for core {engine.dla_core}, runtime DLA core is {self._dla_core}"))
                return None
            return engine

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def write_fake_bundle(root: Path, manifest: Manifest, calibration: bool = True) -> Path:
    """A bundle whose 'ONNX' files are the JSON the fake parser reads, plus int8 calibration caches."""
    from calibration.calibration_cache import CalibrationCache

    root.mkdir(parents=True, exist_ok=True)
    for precision, roles in manifest.graphs.items():
        for role, graph in roles.items():
            body = {
                "role": role,
                "inputs": {t.name: list(t.shape) for t in graph.inputs},
                "outputs": {t.name: list(t.shape) for t in graph.outputs},
            }
            path = root / graph.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(body))
    if calibration:
        for role in ("global", "local", "fusion"):
            CalibrationCache.from_amax({"patches": 2.0, f"{role}_conv1": 12.7}, "10.0.0").write(root / "int8" / f"{role}.calib.cache")
    graphs = {
        precision: {role: dataclasses.replace(g, sha256=sha256_file(root / g.file)) for role, g in roles.items()}
        for precision, roles in manifest.graphs.items()
    }
    write_manifest(root, manifest.replace(graphs=graphs))
    return root
