"""Reading back the config entries a backend's ONNX Runtime session was created with."""

from __future__ import annotations

from typing import Iterable

from runtime.backends.onnxruntime import OnnxRuntimeBackend


def session_config_entries(backend: OnnxRuntimeBackend, keys: Iterable[str]) -> dict[str, str]:
    """The entries among ``keys`` that the backend's session was given, with their values."""
    options = backend.session.get_session_options()
    found = {}
    for key in keys:
        try:
            found[key] = options.get_session_config_entry(key)
        except Exception:  # noqa: BLE001  ONNX Runtime raises for a key that was never set
            pass
    return found
