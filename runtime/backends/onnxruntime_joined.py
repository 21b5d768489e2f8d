"""Two graphs in one ONNX Runtime session: the first's ``joints`` feed the second (runtime.backends.graph_join).

The session's inputs are both graphs' other inputs, its outputs the second's and any other outputs of the first;
``joint_metadata`` describes the joints, so that each graph can still be checked against the manifest.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Sequence

from runtime.backends.base import TensorMeta
from runtime.backends.graph_join import GraphJoinError, JoinedModel, join_graphs
from runtime.backends.onnxruntime import RESIDENT_WEIGHT_FACTOR, OnnxRuntimeBackend, OrtOptions
from runtime.errors import BundleError


class JoinedOnnxRuntimeBackend(OnnxRuntimeBackend):
    """The graph at ``first`` joined with the graph at ``second`` on ``joints``, run as one session.

    ``activate`` raises GraphJoinError when the two cannot be joined or the joined model does not load: the
    caller then runs them as two backends, whose own errors name the file at fault.
    """

    def __init__(self, first: str | Path, second: str | Path, joints: Sequence[str], options: OrtOptions | None = None) -> None:
        super().__init__(first, options)
        self.second_path = Path(second)
        self.joints = tuple(joints)
        self.name = f"onnxruntime[{self.options.device}]:{self.model_path.name}+{self.second_path.name}"
        self._joint_metadata: dict[str, TensorMeta] = {}
        self._memory_file: int | None = None

    def _activate_impl(self) -> None:
        try:
            super()._activate_impl()
        except BundleError as exc:  # the files themselves are judged when they load as two sessions
            cause = exc.__cause__ or exc
            raise GraphJoinError(
                f"ONNX Runtime could not load {self.model_path.name} joined with {self.second_path.name} ({type(cause).__name__}: {cause})"
            ) from exc
        finally:
            if self._memory_file is not None:
                os.close(self._memory_file)
                self._memory_file = None
        # ONNX Runtime's Python InferenceSession keeps a model given as bytes for as long as the session lives (its
        # own comment calls that bad), to rebuild the session when a GPU provider fails; on the CPU it is never read,
        # and on the paper-size bundle it is 94 MB of resident memory
        if getattr(self.session, "_model_bytes", None) is not None:
            self.session._model_bytes = None
        # nor may it rebuild the session from the in-memory file's path: the descriptor is closed, and its number
        # may name another file by then
        self.session.disable_fallback()

    def _model(self) -> str | bytes:
        if not self.second_path.is_file():
            raise BundleError(f"{self.second_path}: graph file not found")
        # the first graph is read where the page cache holds it, and written once, into the joined model's file
        try:
            with open(self.model_path, "rb") as file:
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file
            raise GraphJoinError(f"{self.model_path}: cannot map the graph file ({exc})") from exc
        refusal = None
        try:
            joined = join_graphs(memoryview(mapped), self.second_path.read_bytes(), self.joints)
            self._joint_metadata = joined.joints
            model = self._memory_file_path(joined) or joined.model
            del joined  # its pieces are views of the mapping
        except GraphJoinError as exc:
            refusal = str(exc)  # raised afresh below: this error's traceback holds views of the mapping
        try:
            mapped.close()
        except BufferError:  # a view still held somewhere: the mapping goes with it
            pass
        if refusal is not None:
            raise GraphJoinError(refusal)
        return model

    def _memory_file_path(self, joined: JoinedModel) -> str | None:
        """The joined model written to an anonymous in-memory file, as a path ONNX Runtime opens; None without one.

        Given as bytes, the model is copied twice more before ONNX Runtime parses it (into a bytes object, then by
        the binding into a string), each copy in new pages: creating the joined session took 0.96-1.26 s against
        0.51-0.59 s for the two graphs apart (paper-size bundle, fresh processes). From a file it reads its way.
        """
        if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
            return None
        try:
            descriptor = os.memfd_create("glsnet-joined-graph", os.MFD_CLOEXEC)
        except OSError:
            return None
        self._memory_file = descriptor  # closed once the session is created, or has failed to be
        try:
            with open(descriptor, "wb", closefd=False) as file:
                joined.write(file)
        except OSError:  # no room for it: the model goes as bytes
            os.close(descriptor)
            self._memory_file = None
            return None
        return f"/proc/self/fd/{descriptor}"

    def joint_metadata(self) -> dict[str, TensorMeta]:
        """The joints' dtypes and shapes, as the first graph declares them."""
        self._require_active()
        return self._joint_metadata

    @property
    def weight_bytes(self) -> int:
        """Both graphs' weights (see OnnxRuntimeBackend.weight_bytes)."""
        return int((self.model_path.stat().st_size + self.second_path.stat().st_size) * RESIDENT_WEIGHT_FACTOR)
