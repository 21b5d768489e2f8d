"""Build a bundle's TensorRT engines on this machine's GPU and stamp them in the manifest.

The default path builds *strongly typed* networks from the graphs of the requested precision
(manifest.graphs[precision]: fp16-converted graphs; for int8 the Q/DQ graphs in fp16 of
manifest.calibration.int8.tensorrt_graphs), so the precision is the graph's and the same code serves
TensorRT 10 and 11. With ``dla_core`` the local engine (the ResNet-50 branch,
convolutions that DLA runs well) goes to that DLA core with GPU fallback; DLA takes static shapes
only, so its profile is fixed at the optimal batch and the scheduler pads the last batch. On
TensorRT 10 the DLA engine uses implicit precision from the fp32 graph (FP16, or INT8 from the
bundle's calibration cache ``int8/local.calib.cache``); on TensorRT 11.4+ it is strongly typed from
the fp16 graph. The global engine (whole images of any size) and the fusion engine (its global
features grow with the image) stay on the GPU.

Optimization profiles come from the manifest's patch geometry and the options (``optimization_profiles``,
a pure function). The timing cache lives in the bundle next to the engines and is reused by every
later build for the same GPU and TensorRT. Plans are written atomically to
engines/<gpu-name>_<trt-version>/<precision>[-dla<N>]/<role>.plan; the manifest is written last.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from runtime.algorithm.device_buffers import tensor_shape
from runtime.atomic_file import write_bytes_atomic
from runtime.backends.tensorrt.api import TensorRTApi, process_logger, tensorrt_api
from runtime.backends.tensorrt.engine_check import DLA_ROLE, TARGET, engine_directory, slug
from runtime.bundle.manifest import (
    GRAPH_ROLES,
    PRECISIONS,
    EngineSpec,
    Manifest,
    graph_path,
    read_manifest,
    sha256_file,
    verify_file,
    write_manifest,
)
from runtime.cuda.device import Device, DeviceInfo
from runtime.errors import BundleError, GlsnetError, InputError

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)
TIMING_CACHE = "timing.cache"
DEFAULT_OPT_SIZE = (2448, 2448)  # a DeepGlobe scene


@dataclass(frozen=True)
class TensorRTBuildOptions:
    min_batch: int = 1
    opt_batch: int = 6
    max_batch: int = 12
    opt_image_size: tuple[int, int] | None = None  # height, width the global engine is tuned for; None: 2448 x 2448 within the max
    max_image_size: tuple[int, int] = (4096, 4096)  # largest image the global engine accepts
    workspace: int | None = None  # bytes for the builder's workspace memory pool; None: TensorRT's default
    timing_cache: bool = True
    dla_core: int | None = None
    optimization_level: int | None = None  # builder_optimization_level 0..5; None: TensorRT's default (3)
    verbose: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(
                f"batch sizes must satisfy 1 <= min ({self.min_batch}) <= opt ({self.opt_batch}) <= max ({self.max_batch})"
            )
        for name, (height, width) in (("opt", self.opt_size), ("max", self.max_image_size)):
            if height <= 0 or width <= 0:
                raise InputError(f"--{name}-image-size {height}x{width}: sizes must be positive")
        if self.opt_size[0] > self.max_image_size[0] or self.opt_size[1] > self.max_image_size[1]:
            raise InputError(f"the optimal image size {self.opt_size} exceeds the maximum {self.max_image_size}")
        if self.workspace is not None and self.workspace <= 0:
            raise InputError(f"workspace must be a positive byte count, got {self.workspace}")
        if self.dla_core is not None and self.dla_core < 0:
            raise InputError(f"--dla-core must be 0 or more, got {self.dla_core}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise InputError(f"the builder optimization level must be 0..5, got {self.optimization_level}")

    @property
    def opt_size(self) -> tuple[int, int]:
        if self.opt_image_size is not None:
            return self.opt_image_size
        return (min(DEFAULT_OPT_SIZE[0], self.max_image_size[0]), min(DEFAULT_OPT_SIZE[1], self.max_image_size[1]))


def optimization_profiles(manifest: Manifest, precision: str, options: TensorRTBuildOptions) -> dict[str, Profile]:
    """(min, opt, max) shapes of every engine input, per role.

    Batches come from the options. The global image is at least one patch (smaller images are padded
    to one), tuned for ``opt_image_size`` and capped at ``max_image_size``; the fusion's global
    features follow the image at the feature stride. With a DLA core the local engine's profile is
    static at the optimal batch (DLA has no dynamic shapes).
    """
    patch = manifest.patch
    smallest = (patch.size, patch.size)
    opt_hw = (max(options.opt_size[0], patch.size), max(options.opt_size[1], patch.size))
    max_hw = (max(options.max_image_size[0], patch.size), max(options.max_image_size[1], patch.size))
    batches = (options.min_batch, options.opt_batch, options.max_batch)
    profiles: dict[str, Profile] = {}
    for role in GRAPH_ROLES:
        role_batches = batches
        if options.dla_core is not None and role == DLA_ROLE:
            role_batches = (options.opt_batch,) * 3
        profile: Profile = {}
        for spec in manifest.graph(role, precision).inputs:
            low, opt, high = (
                tensor_shape(spec, role, batch, size, patch) for batch, size in zip(role_batches, (smallest, opt_hw, max_hw))
            )
            profile[spec.name] = (low, opt, high)
        profiles[role] = profile
    return profiles


def build_tensorrt_engines(
    bundle_dir: str | Path,
    precision: str,
    options: TensorRTBuildOptions = TensorRTBuildOptions(),
    *,
    trt: ModuleType | None = None,
    device: Device | None = None,
) -> EngineSpec:
    """Build the global, local and fusion engines of ``precision`` here; return the EngineSpec stamped in the manifest.

    ``trt`` and ``device`` default to the installed TensorRT and the first CUDA GPU (tests pass fakes).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {PRECISIONS}")
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    api = tensorrt_api(trt, feature="glsnet-export build --target tensorrt")
    if device is None:
        from runtime.cuda import open_device

        device = open_device()
    info = device.info()
    plans = _plan_roles(bundle_dir, manifest, precision, options, api)
    directory = engine_directory(info.name, str(api.version), precision, options.dla_core)
    profiles = optimization_profiles(manifest, precision, options)
    builder = _Builder(api, bundle_dir, info, options)
    files: dict[str, dict[str, str]] = {}
    stamps: dict[str, Any] = {}
    try:
        for role in GRAPH_ROLES:
            graph_file, implicit, on_dla = plans[role]
            started = time.perf_counter()
            log.info("building the %s %s engine from %s (%s)", precision, role, graph_file, "DLA" if on_dla else "GPU")
            plan = builder.build(role, graph_file, profiles[role], precision, implicit, on_dla)
            relative = f"{directory}/{role}.plan"
            write_bytes_atomic(bundle_dir / relative, plan)
            files[role] = {"file": relative, "sha256": sha256_file(bundle_dir / relative)}
            stamps[role] = {
                "inputs": {name: [list(s) for s in shapes] for name, shapes in profiles[role].items()},
                "device": "dla" if on_dla else "gpu",
                "typing": "implicit" if implicit else "strong",
                "device_memory": builder.inspect(role, plan, manifest, precision, on_dla),
                "build_seconds": round(time.perf_counter() - started, 1),
            }
            log.info("built the %s engine in %.1f s (%d bytes)", role, time.perf_counter() - started, len(plan))
    finally:
        builder.save_timing_cache()
    spec = EngineSpec(
        target=TARGET,
        precision=precision,
        directory=directory,
        files=files,
        tensorrt_version=str(api.version),
        gpu_name=info.name,
        compute_capability=info.compute_capability,
        dla_core=options.dla_core,
        profiles=stamps,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    manifest = read_manifest(bundle_dir)  # re-read: another build may have stamped its engines meanwhile
    kept = tuple(e for e in manifest.engines if not (e.target == TARGET and e.directory == directory))
    write_manifest(bundle_dir, manifest.replace(engines=kept + (spec,)))
    return spec


def _plan_roles(
    bundle_dir: Path, manifest: Manifest, precision: str, options: TensorRTBuildOptions, api: TensorRTApi
) -> dict[str, tuple[Path, bool, bool]]:
    """role -> (checksum-verified graph file, implicit precision?, on DLA?), refusing what cannot be built."""
    manifest.graph("global", precision)  # a clear error naming the build step when the precision's graphs are missing
    plans: dict[str, tuple[Path, bool, bool]] = {}
    for role in GRAPH_ROLES:
        on_dla = options.dla_core is not None and role == DLA_ROLE
        implicit = on_dla and api.has_implicit_precision
        if on_dla:
            api.require_dla()
            if not implicit and precision != "fp16":
                raise InputError(
                    f"TensorRT {api.version} builds DLA engines strongly typed, and DLA takes no explicit (Q/DQ) "
                    "quantization: build the DLA engine with --fp16, or use TensorRT 10 for implicit INT8"
                )
        graph = graph_path(bundle_dir, manifest.graph(role, "fp32" if implicit else precision))
        if precision == "int8" and not implicit:
            graph = tensorrt_int8_graph(bundle_dir, manifest, role) or graph
        plans[role] = (graph, implicit, on_dla)
    return plans


def tensorrt_int8_graph(bundle_dir: Path, manifest: Manifest, role: str) -> Path | None:
    """The checksum-verified Q/DQ graph in fp16 that strongly typed INT8 builds use (calibration/tensorrt_int8.py).

    None, with a warning, for a bundle built before those graphs existed: its fp32-based Q/DQ graph builds,
    but every op no Q/DQ pair covers then runs in fp32/TF32.
    """
    entry = ((manifest.calibration or {}).get("int8") or {}).get("tensorrt_graphs", {}).get(role)
    if entry is None:
        log.warning(
            "%s: no int8 graph in fp16 for TensorRT (an older build); building the %s engine from the fp32-based Q/DQ graph, "
            "whose unquantized ops run in fp32 - rebuild with: glsnet-export build %s --int8",
            bundle_dir, role, bundle_dir,
        )
        return None
    return verify_file(bundle_dir, entry["file"], entry["sha256"])


class _Builder:
    """One TensorRT builder, logger and shared timing cache for the engines of one build."""

    def __init__(self, api: TensorRTApi, bundle_dir: Path, info: DeviceInfo, options: TensorRTBuildOptions) -> None:
        trt = api.trt
        self.api, self.bundle_dir, self.options = api, bundle_dir, options
        self.logger = process_logger(trt, verbose=options.verbose)  # one per process: TensorRT keeps the first it sees
        trt.init_libnvinfer_plugins(self.logger, "")
        self.builder = trt.Builder(self.logger)
        self.cache_path = bundle_dir / "engines" / f"{slug(info.name)}_{api.version}" / TIMING_CACHE
        self.timing_cache: Any = None

    def build(self, role: str, manifest_graph: Path, profile: Profile, precision: str, implicit: bool, on_dla: bool) -> bytes:
        trt, api, options = self.api.trt, self.api, self.options
        network = api.create_network(self.builder, strongly_typed=not implicit)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(manifest_graph)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BundleError(f"{manifest_graph}: TensorRT {api.version}'s ONNX parser refused the graph: {errors}")
        config = self.builder.create_builder_config()
        if options.workspace is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace)
        if options.optimization_level is not None:
            config.builder_optimization_level = options.optimization_level
        if precision == "fp32":
            # the strict fp32 reference: TF32 is on by default and would round inner products to 10-bit mantissas
            config.clear_flag(trt.BuilderFlag.TF32)
        self._attach_timing_cache(config)
        trt_profile = self.builder.create_optimization_profile()
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        unknown = sorted(set(names) - set(profile))
        if unknown:
            raise BundleError(f"{manifest_graph}: network inputs {unknown} are not in the manifest's {role} graph ({sorted(profile)})")
        for name in names:
            low, opt, high = profile[name]
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
        if implicit:
            calibrator = self._calibrator(role, options.opt_batch) if precision == "int8" else None
            api.enable_implicit_precision(config, precision, calibrator, trt_profile)
        if on_dla:
            api.use_dla(config, options.dla_core, self.builder)  # type: ignore[arg-type]
        serialized = self.builder.build_serialized_network(network, config)
        if serialized is None:
            raise GlsnetError(
                f"TensorRT {api.version} could not build the {precision} {role} engine from {manifest_graph}; "
                "its log above says why (often: not enough GPU memory for the profile; lower --max-batch or --max-image-size)"
            )
        return bytes(serialized)

    def inspect(self, role: str, plan: bytes, manifest: Manifest, precision: str, on_dla: bool = False) -> int:
        """Deserialize the new engine: check its tensor names against the manifest; return its scratch memory."""
        runtime = self.api.trt.Runtime(self.logger)  # one per engine: a DLA engine needs the runtime's DLA core set first
        if on_dla:
            self.api.set_dla_core(runtime, self.options.dla_core, "build")  # type: ignore[arg-type]
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise GlsnetError(f"the {role} engine TensorRT just built does not deserialize")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        graph = manifest.graph(role, "fp32")
        expected = {t.name for t in (*graph.inputs, *graph.outputs)}
        if names != expected:
            raise BundleError(f"the {precision} {role} engine has tensors {sorted(names)}, the manifest expects {sorted(expected)}")
        return self.api.engine_device_memory(engine)

    def _attach_timing_cache(self, config: Any) -> None:
        if not self.options.timing_cache:
            return
        if self.timing_cache is None:
            data = self.cache_path.read_bytes() if self.cache_path.is_file() else b""
            if data:
                log.info("reusing the timing cache %s (%d bytes)", self.cache_path, len(data))
            self.timing_cache = config.create_timing_cache(data)
        if not config.set_timing_cache(self.timing_cache, False):
            log.warning("TensorRT did not accept the timing cache %s; building without it", self.cache_path)

    def save_timing_cache(self) -> None:
        if self.timing_cache is not None:
            write_bytes_atomic(self.cache_path, bytes(self.timing_cache.serialize()))

    def _calibrator(self, role: str, batch: int) -> Any:
        """A TensorRT 10 entropy calibrator that only replays the bundle's calibration cache."""
        from calibration.calibration_cache import CalibrationCache

        path = self.bundle_dir / "int8" / f"{role}.calib.cache"
        if not path.is_file():
            raise InputError(
                f"{path}: no calibration cache for the {role} graph; write it first with: glsnet-export build {self.bundle_dir} --int8"
            )
        cache = CalibrationCache.read(path)
        wanted = self.api.version.encoded
        if cache.version != wanted:
            log.warning("%s was written for TensorRT %d; re-stamping it for %d (the scales are unchanged)", path, cache.version, wanted)
            cache = cache.retarget(self.api.version.release)
        return cache_calibrator(self.api, cache.to_text().encode(), batch)


def cache_calibrator(api: TensorRTApi, cache: bytes, batch_size: int) -> Any:
    """An IInt8EntropyCalibrator2 that hands TensorRT ``cache`` and never a batch, so TensorRT never calibrates itself."""
    base = api.entropy_calibrator_base()

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.cache = cache

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return self.cache

        def write_calibration_cache(self, cache: bytes) -> None:
            """The bundle's cache is the source of truth; TensorRT's copy is not kept."""

    return CacheCalibrator()
