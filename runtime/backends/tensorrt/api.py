"""Every difference between TensorRT 10.x and 11.x, decided in one place from ``tensorrt.__version__``.

TensorRT 11 made networks strongly typed by default (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
is ignored, ``EXPLICIT_BATCH`` is gone) and removed weak typing: ``BuilderFlag.FP16``/``INT8`` and
``IBuilderConfig.int8_calibrator`` no longer exist, so precision lives in the ONNX graph (fp16
conversion, Q/DQ). It also removed ``ICudaEngine.device_memory_size`` in favour of
``device_memory_size_v2``. TensorRT 10 (JetPack 6 on Jetson Orin) has both ways; its DLA path uses
implicit precision with a calibration cache. DLA is documented for TensorRT 10.0 to 10.7, for nothing
from 10.8 to 11.4.0, and again from 11.4.1 on (Jetson AGX Orin with JetPack 7.2.2 or later). Nothing
else in the toolkit looks at the version.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from runtime.errors import GlsnetError, InputError, MissingDependencyError
from runtime.optional_import import require

log = logging.getLogger(__name__)

MIN_MAJOR = 10
DLA_LAST_IN_10 = (10, 7)  # TensorRT 10.0 .. 10.7 document DLA
DLA_BACK_IN_11 = (11, 4, 1)  # and 11.4.1 on, on Jetson AGX Orin with JetPack 7.2.2+


@dataclass(frozen=True, order=True)
class TensorRTVersion:
    major: int
    minor: int
    patch: int = 0
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> "TensorRTVersion":
        """'10.3.0', '10.3.0.30', '11.4.0.106' or '10.13.0.post1' -> the numbers that matter."""
        numbers = [int(n) for n in re.findall(r"\d+", str(text).split("+")[0])[:4]]
        if len(numbers) < 2:
            raise GlsnetError(f"cannot read a TensorRT version from {text!r}; expected something like '10.3.0'")
        return cls(*numbers)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f".{self.build}" if self.build else "")

    @property
    def release(self) -> str:
        """major.minor.patch: engines are portable between builds of one release only."""
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def encoded(self) -> int:
        """NV_TENSORRT_VERSION as the calibration cache header writes it (8.6.1 -> 8601, 10.3.0 -> 100300)."""
        if self.major >= 10:
            return self.major * 10000 + self.minor * 100 + self.patch
        return self.major * 1000 + self.minor * 100 + self.patch


@dataclass(frozen=True)
class TensorRTApi:
    """The TensorRT module and the calls that differ between its versions."""

    trt: ModuleType = field(repr=False, compare=False)
    version: TensorRTVersion

    # -------------------------------------------------------------- what this version can do
    @property
    def strongly_typed_by_default(self) -> bool:
        return self.version.major >= 11

    @property
    def has_implicit_precision(self) -> bool:
        """BuilderFlag.FP16/INT8 and INT8 calibrators (weakly typed networks): TensorRT 10 only."""
        return self.version.major == 10

    @property
    def has_dla(self) -> bool:
        v = self.version
        return (v.major == 10 and v.minor <= DLA_LAST_IN_10[1]) or (v.major, v.minor, v.patch) >= DLA_BACK_IN_11

    # -------------------------------------------------------------- building
    def network_flags(self, strongly_typed: bool = True) -> int:
        """The flags for ``Builder.create_network``: STRONGLY_TYPED on 10.x, nothing on 11.x (always strong)."""
        if self.version.major >= 11:
            if not strongly_typed:
                raise InputError(
                    f"TensorRT {self.version} builds strongly typed networks only (weak typing was removed in 11.0); "
                    "build from the bundle's fp16 or int8 graphs instead of implicit precision"
                )
            return 0
        if not strongly_typed:
            return 0
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def create_network(self, builder: Any, strongly_typed: bool = True) -> Any:
        return builder.create_network(self.network_flags(strongly_typed))

    def enable_implicit_precision(self, config: Any, precision: str, calibrator: Any = None, profile: Any = None) -> None:
        """TensorRT 10's weak typing for DLA: FP16 always (DLA runs FP16 or INT8), INT8 with a calibrator."""
        if not self.has_implicit_precision:
            raise InputError(
                f"TensorRT {self.version} has no implicit precision (BuilderFlag.FP16/INT8 and calibrators were removed "
                "in 11.0); build strongly typed from the bundle's fp16 or int8 (Q/DQ) graphs"
            )
        config.set_flag(self.trt.BuilderFlag.FP16)
        if precision == "int8":
            if calibrator is None:
                raise InputError("implicit INT8 needs a calibrator (the bundle's calibration cache)")
            config.set_flag(self.trt.BuilderFlag.INT8)
            config.int8_calibrator = calibrator
            if profile is not None:
                config.set_calibration_profile(profile)

    def require_dla(self) -> None:
        if not self.has_dla:
            raise InputError(
                f"TensorRT {self.version} does not support DLA (documented for 10.0-10.7 and from 11.4.1 on Jetson AGX "
                "Orin with JetPack 7.2.2+); build without --dla-core, or use TensorRT 10.3 (JetPack 6) or 11.4.1+"
            )

    def check_dla_core(self, owner: Any, core: int, what: str) -> None:
        """Refuse DLA core ``core`` unless ``owner`` (a Builder or Runtime) reports that many DLA cores."""
        self.require_dla()
        cores = int(getattr(owner, "num_DLA_cores", 0))
        if not 0 <= core < cores:
            have = "no DLA cores" if cores == 0 else f"DLA cores 0..{cores - 1}"
            raise InputError(
                f"DLA core {core} was requested at {what} time but this device has {have} "
                "(Orin NX 8 GB: one core, Orin NX 16 GB and AGX Orin: two, Orin Nano: none); choose another --dla-core"
            )

    def set_dla_core(self, runtime: Any, core: int, what: str = "run") -> None:
        """``IRuntime.DLA_core``: set before deserialising a DLA engine, which then runs on that core."""
        self.check_dla_core(runtime, core, what)
        runtime.DLA_core = int(core)

    def use_dla(self, config: Any, core: int, builder: Any = None) -> None:
        """Run every layer DLA can run on DLA core ``core``; the rest falls back to the GPU."""
        if builder is not None:
            self.check_dla_core(builder, core, "build")
        self.require_dla()
        config.default_device_type = self.trt.DeviceType.DLA
        config.DLA_core = int(core)
        config.set_flag(self.trt.BuilderFlag.GPU_FALLBACK)

    def entropy_calibrator_base(self) -> type:
        """``IInt8EntropyCalibrator2``, the class a TensorRT 10 calibrator derives from."""
        if not self.has_implicit_precision:
            raise InputError(f"TensorRT {self.version} has no INT8 calibrators; use the int8 (Q/DQ) graphs")
        return self.trt.IInt8EntropyCalibrator2

    # -------------------------------------------------------------- running
    def engine_device_memory(self, engine: Any) -> int:
        """Scratch memory a context of ``engine`` needs for its largest profile shapes."""
        if hasattr(engine, "device_memory_size_v2"):
            return int(engine.device_memory_size_v2)
        return int(engine.device_memory_size)  # TensorRT 10.0

    def context_device_memory(self, context: Any, engine: Any) -> int:
        """Scratch memory for the input shapes set on ``context`` now (smaller than the profile maximum)."""
        if hasattr(context, "update_device_memory_size_for_shapes"):
            size = int(context.update_device_memory_size_for_shapes())
            if size > 0:
                return size
            # 0 is the documented error value, never a size: use the profile's maximum instead
            log.debug("update_device_memory_size_for_shapes returned 0 (an error); using the engine's device_memory_size_v2")
        return self.engine_device_memory(engine)

    def create_context(self, engine: Any, user_managed_memory: bool) -> Any:
        """An execution context; with ``user_managed_memory`` it gets its scratch memory from ``set_context_memory``."""
        strategy = self.trt.ExecutionContextAllocationStrategy
        chosen = strategy.USER_MANAGED if user_managed_memory else strategy.STATIC
        context = engine.create_execution_context(chosen)
        if context is None:
            raise GlsnetError("TensorRT could not create an execution context (out of GPU memory?)")
        return context

    def set_context_memory(self, context: Any, ptr: int, nbytes: int) -> None:
        if hasattr(context, "set_device_memory"):
            context.set_device_memory(ptr, nbytes)  # 10.1+: size-checked
        else:
            context.device_memory = ptr  # TensorRT 10.0


_LOGGERS: dict[int, tuple[ModuleType, Any]] = {}  # id(tensorrt module) -> (module, its one logger)
_LOGGERS_LOCK = threading.Lock()


def process_logger(trt: ModuleType, verbose: bool = False) -> Any:
    """The one ``trt.Logger`` of this process for this TensorRT module, shared by builders and runtimes.

    TensorRT registers the first logger it is given for the whole process and ignores (with a
    warning) any other; so every Builder, Runtime and OnnxParser here gets this one. ``verbose``
    lowers its threshold (a verbose build), which then stays for the process.
    """
    with _LOGGERS_LOCK:
        entry = _LOGGERS.get(id(trt))
        if entry is None or entry[0] is not trt:
            entry = (trt, trt.Logger(trt.Logger.WARNING))
            _LOGGERS[id(trt)] = entry
        logger = entry[1]
        if verbose:
            logger.min_severity = trt.Logger.VERBOSE
        return logger


def load_tensorrt(feature: str = "TensorRT engines") -> ModuleType:
    return require("tensorrt", feature)


def tensorrt_api(trt: ModuleType | None = None, feature: str = "TensorRT engines") -> TensorRTApi:
    """The API wrapper for the installed TensorRT (or ``trt``, a module object tests can fake)."""
    trt = trt if trt is not None else load_tensorrt(feature)
    version = TensorRTVersion.parse(getattr(trt, "__version__", ""))
    if version.major < MIN_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {version} is installed but this toolkit needs TensorRT 10 or 11 "
            "(JetPack 6.1+ ships 10.3; JetPack 6.0 ships 8.6, which is not supported); "
            "install 'glsnet-deploy[tensorrt]' or upgrade JetPack"
        )
    return TensorRTApi(trt=trt, version=version)
