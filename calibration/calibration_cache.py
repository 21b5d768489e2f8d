"""TensorRT's calibration cache, the text format TensorRT 10 reads for implicit INT8 (and DLA).

    TRT-<version>-EntropyCalibration2
    <tensor name>: <8 hex digits: the big-endian IEEE float32 scale>

One line per tensor, scale = amax / 127 (symmetric int8). TensorRT compares the header's
algorithm with its calibrator's; a calibrator whose readCalibrationCache returns this text makes
TensorRT skip calibration and use these scales. ``<version>`` is TensorRT's NV_TENSORRT_VERSION:
major*10000 + minor*100 + patch from TensorRT 10 on (major*1000 + minor*100 + patch before).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from runtime.atomic_file import write_text_atomic
from runtime.errors import InputError

ALGORITHM = "EntropyCalibration2"
INT8_MAX = 127.0
DEFAULT_TENSORRT_VERSION = "10.0.0"
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


def tensorrt_version_number(version: str) -> int:
    """'10.3.0' -> 100300 (TensorRT >= 10), '8.6.1' -> 8601."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    if not parts:
        raise InputError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR.PATCH")
    major, minor, patch = (parts + [0, 0])[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


@dataclass(frozen=True)
class CalibrationCache:
    """Per-tensor int8 scales with the header TensorRT checks."""

    scales: dict[str, float] = field(default_factory=dict)
    version: int = tensorrt_version_number(DEFAULT_TENSORRT_VERSION)
    algorithm: str = ALGORITHM

    @classmethod
    def from_amax(cls, amax: Mapping[str, float], tensorrt_version: str = DEFAULT_TENSORRT_VERSION) -> "CalibrationCache":
        """Scales amax/127; tensors with a zero or non-finite amax are left out (TensorRT keeps them unquantized)."""
        scales = {
            name: float(value) / INT8_MAX
            for name, value in amax.items()
            if math.isfinite(float(value)) and float(value) > 0.0
        }
        return cls(scales=scales, version=tensorrt_version_number(tensorrt_version))

    def to_text(self) -> str:
        for name in self.scales:
            if "\n" in name or ": " in name:
                raise InputError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        lines = [f"TRT-{self.version}-{self.algorithm}"]
        lines += [f"{name}: {scale_to_hex(scale)}" for name, scale in self.scales.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, where: str = "calibration cache") -> "CalibrationCache":
        lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
        if not lines:
            raise InputError(f"{where}: empty; expected a first line 'TRT-<version>-{ALGORITHM}'")
        header = _HEADER.match(lines[0])
        if not header:
            raise InputError(f"{where}: first line {lines[0]!r} is not 'TRT-<version>-<algorithm>'")
        scales: dict[str, float] = {}
        for number, line in enumerate(lines[1:], start=2):
            match = _LINE.match(line)
            if not match:
                raise InputError(f"{where}: line {number} {line!r} is not '<tensor>: <8 hex digits>'")
            scales[match.group(1)] = hex_to_scale(match.group(2))
        return cls(scales=scales, version=int(header.group(1)), algorithm=header.group(2))

    def retarget(self, tensorrt_version: str) -> "CalibrationCache":
        """The same scales with the header of another TensorRT version (the engine builder's)."""
        return CalibrationCache(dict(self.scales), tensorrt_version_number(tensorrt_version), self.algorithm)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        write_text_atomic(path, self.to_text())
        return path

    @classmethod
    def read(cls, path: str | Path) -> "CalibrationCache":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such calibration cache; build INT8 with: glsnet-export build BUNDLE --int8")
        return cls.parse(path.read_text(encoding="utf-8"), where=str(path))
