"""The one interface every backend implements, modelled on Polygraphy's runners.

Constructors only store arguments; ``activate`` loads the graph or engine. The public methods
validate, then call the ``_impl`` hooks that a backend implements. Stream-aware backends (TensorRT)
add an asynchronous enqueue in their own module; the schedulers are written against these
interfaces, never against a vendor API.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from runtime.errors import GlsnetError, InputError

Dim = int | str | None


@dataclass(frozen=True)
class TensorMeta:
    """A graph input or output as the backend sees it: numpy dtype and shape (None/str = dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def accepts(self, array: np.ndarray) -> str | None:
        """None if ``array`` fits, else a sentence saying why not."""
        if array.dtype != self.dtype:
            return f"dtype {array.dtype} but the graph expects {self.dtype}"
        if array.ndim != len(self.shape):
            return f"rank {array.ndim} (shape {array.shape}) but the graph expects rank {len(self.shape)} {self.shape}"
        for axis, (got, want) in enumerate(zip(array.shape, self.shape)):
            if isinstance(want, int) and want >= 0 and got != want:
                return f"size {got} on axis {axis} (shape {array.shape}) but the graph expects {want}"
        return None


class Backend(abc.ABC):
    """Runs one graph: activate -> infer(feed) -> outputs -> deactivate."""

    name = "backend"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_s = 0.0

    # -------------------------------------------------------------- lifecycle
    def activate(self) -> "Backend":
        if not self.is_active:
            self._activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -------------------------------------------------------------- metadata
    def input_metadata(self) -> dict[str, TensorMeta]:
        self._require_active()
        return self._input_metadata_impl()

    def output_metadata(self) -> dict[str, TensorMeta]:
        self._require_active()
        return self._output_metadata_impl()

    # -------------------------------------------------------------- inference
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on host arrays; returns host arrays keyed by output name."""
        self._require_active()
        meta = self._input_metadata_impl()
        missing = sorted(set(meta) - set(feed))
        extra = sorted(set(feed) - set(meta))
        if missing or extra:
            raise InputError(f"{self.name}: inputs missing {missing}, unexpected {extra}; expected {sorted(meta)}")
        for name, array in feed.items():
            problem = meta[name].accepts(np.asarray(array))
            if problem:
                raise InputError(f"{self.name}: input {name!r} has {problem}")
        start = time.perf_counter()
        outputs = self._infer_impl(feed)
        self.last_inference_s = time.perf_counter() - start
        return outputs

    def _require_active(self) -> None:
        if not self.is_active:
            raise GlsnetError(f"{self.name}: call activate() (or use it in a with-block) before using it")

    # -------------------------------------------------------------- hooks
    @abc.abstractmethod
    def _activate_impl(self) -> None: ...

    @abc.abstractmethod
    def _deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def _input_metadata_impl(self) -> dict[str, TensorMeta]: ...

    @abc.abstractmethod
    def _output_metadata_impl(self) -> dict[str, TensorMeta]: ...

    @abc.abstractmethod
    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
