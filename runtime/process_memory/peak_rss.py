"""Peak resident memory of this process over one piece of work (one scene of a batch).

On Linux the kernel's high-water mark (VmHWM) is reset by writing 5 to /proc/self/clear_refs, so
each scene's peak is its own, baseline included. Elsewhere, or where that file is not writable,
the process's lifetime peak (getrusage) is reported instead, and reset_peak says which it is.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new peak from the current RSS; False when only the lifetime peak is available."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _vm_hwm() is not None


def peak_bytes() -> int:
    """Peak RSS since the last successful reset_peak (or since the process started)."""
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB on Linux


def _vm_hwm() -> int | None:
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
