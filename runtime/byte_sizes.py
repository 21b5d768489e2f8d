"""Memory sizes as people write them ('2GB', '1.5GiB') and as the runtime prints them.

Shared by the memory plan, the bundle summary, the batch report and the CLI, so it sits below all
of them.
"""

from __future__ import annotations

import re

from runtime.errors import InputError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_memory_size(text: str | int | None) -> int | None:
    """'2GB', '1.5GiB', '512MB' or a byte count -> bytes (decimal units unless 'iB')."""
    if text is None:
        return None
    if isinstance(text, bool) or (isinstance(text, int) and text <= 0):
        raise InputError(f"memory size {text!r} must be a positive byte count")
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise InputError(f"memory size {text!r} is not understood; write it like 2GB, 1.5GiB or 800MB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InputError(f"memory size {text!r} must be positive")
    return value


def format_bytes(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f} GB"
    return f"{count / 1e6:.0f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"
