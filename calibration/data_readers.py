"""Graph inputs built from calibration tiles, and ONNX Runtime's calibration data reader over them.

Each graph gets exactly what the runtime would give it: the global graph a normalised scene padded to
at least one patch; the local graph batches of normalised patches of one scene; the fusion graph the
fp32 outputs of the other two for the same scene and patches, plus the patches' boxes in scene
pixels. ``FeedReader`` implements onnxruntime.quantization's CalibrationDataReader protocol
(``get_next`` returns a feed dict, then None); ONNX Runtime accepts any object with ``get_next``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from calibration.integer_kernels import DISABLED_OPTIMIZERS
from calibration.tiles import TileSet
from runtime.bundle.manifest import (
    FUSION_INPUTS,
    GLOBAL_INPUT,
    GLOBAL_OUTPUT,
    LOCAL_INPUT,
    LOCAL_OUTPUTS,
    Manifest,
    graph_path,
)
from runtime.image_io.preprocess import normalize
from runtime.optional_import import require

Feed = dict[str, np.ndarray]


def cpu_session(path: str | Path, threads: int = 0):
    """An ONNX Runtime CPU session (all optimisations but those that stop Q/DQ graphs from running as
    integer kernels, as in the engines the build saves; ``threads`` 0 lets ORT choose)."""
    ort = require("onnxruntime", "calibration and accuracy checks")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS))


def fp32_sessions(bundle_dir: str | Path, manifest: Manifest, threads: int = 0) -> dict:
    """role -> CPU session of the bundle's checksum-verified fp32 graphs."""
    return {role: cpu_session(graph_path(bundle_dir, manifest.graph(role, "fp32")), threads) for role in ("global", "local", "fusion")}


class TileFeeds:
    """Feeds for each graph from one split of the tiles, in batches of patches of one scene.

    ``reference`` holds the fp32 sessions that produce the fusion graph's inputs; their outputs are
    cached up to ``cache_bytes`` so that repeated passes (sensitivity checks, gates) run them once.
    """

    def __init__(
        self,
        tiles: TileSet,
        manifest: Manifest,
        split: int,
        reference: dict,
        batch_size: int = 8,
        cache_bytes: int = 256 << 20,
    ) -> None:
        self.tiles = tiles
        self.manifest = manifest
        self.split = split
        self.reference = reference
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple, tuple[np.ndarray, ...]] = {}
        self._cached = 0
        indices = tiles.indices(split)
        self.batches: list[tuple[int, np.ndarray]] = []
        for scene in np.unique(tiles.patches[indices, 0]) if len(indices) else []:
            members = indices[tiles.patches[indices, 0] == scene]
            for start in range(0, len(members), batch_size):
                self.batches.append((int(scene), members[start : start + batch_size]))
        self.scenes = sorted({scene for scene, _ in self.batches})

    # -------------------------------------------------------------- raw inputs

    @property
    def patch_size(self) -> int:
        return self.manifest.patch.size

    def scene_input(self, scene: int) -> np.ndarray:
        """[1, C, H', W'] normalised scene, zero-padded (in normalised space) to at least one patch."""
        image = normalize(self.tiles.scenes[scene], self.manifest.normalization)
        p = self.patch_size
        _, h, w = image.shape
        if h < p or w < p:
            image = np.pad(image, ((0, 0), (0, max(0, p - h)), (0, max(0, p - w))))
        return image[None]

    def patch_input(self, indices: np.ndarray) -> np.ndarray:
        p = self.patch_size
        out = []
        for index in indices:
            patch = normalize(self.tiles.patch_pixels(int(index)), self.manifest.normalization)
            _, h, w = patch.shape
            if h < p or w < p:
                patch = np.pad(patch, ((0, 0), (0, p - h), (0, p - w)))
            out.append(patch)
        return np.stack(out).astype(np.float32)

    def boxes(self, indices: np.ndarray) -> np.ndarray:
        p = self.patch_size
        ys = self.tiles.patches[indices, 1].astype(np.float32)
        xs = self.tiles.patches[indices, 2].astype(np.float32)
        return np.stack([xs, ys, xs + p, ys + p], axis=1)

    def labels(self, indices: np.ndarray) -> np.ndarray | None:
        """[B, P, P] labels of the patches (None without masks); padding is IGNORE."""
        if not self.tiles.has_labels:
            return None
        p = self.patch_size
        out = np.full((len(indices), p, p), 255, dtype=np.uint8)
        for k, index in enumerate(indices):
            label = self.tiles.patch_label(int(index))
            if label is not None:
                out[k, : label.shape[0], : label.shape[1]] = label
        return out

    # -------------------------------------------------------------- reference (fp32) outputs

    def _remember(self, key: tuple, value: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        size = sum(v.nbytes for v in value)
        if self._cached + size <= self.cache_bytes:
            self._cache[key] = value
            self._cached += size
        return value

    def reference_global(self, scene: int) -> np.ndarray:
        key = ("global", scene)
        if key not in self._cache:
            out = self.reference["global"].run([GLOBAL_OUTPUT], {GLOBAL_INPUT: self.scene_input(scene)})
            return self._remember(key, tuple(out))[0]
        return self._cache[key][0]

    def reference_local(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        key = ("local", batch)
        if key not in self._cache:
            _, indices = self.batches[batch]
            out = self.reference["local"].run(list(LOCAL_OUTPUTS), {LOCAL_INPUT: self.patch_input(indices)})
            return self._remember(key, tuple(out))  # type: ignore[return-value]
        return self._cache[key]  # type: ignore[return-value]

    def remember(self, role: str, index: int, outputs: dict[str, np.ndarray]) -> None:
        """Keep the fp32 outputs that a calibration pass over ``feeds(role)`` computed for its feed ``index``, so the
        fusion's feeds need not run the branch again (at paper size that was most of the fusion's calibration)."""
        names = {"global": (GLOBAL_OUTPUT,), "local": tuple(LOCAL_OUTPUTS)}.get(role, ())
        if not names or not all(name in outputs for name in names):
            return
        key = ("global", self.scenes[index]) if role == "global" else ("local", index)
        if key not in self._cache:
            self._remember(key, tuple(outputs[name] for name in names))  # each feed's arrays are its own, not reused

    # -------------------------------------------------------------- feeds

    def global_feed(self, scene: int) -> Feed:
        return {GLOBAL_INPUT: self.scene_input(scene)}

    def local_feed(self, batch: int) -> Feed:
        return {LOCAL_INPUT: self.patch_input(self.batches[batch][1])}

    def fusion_feed(self, batch: int) -> Feed:
        scene, indices = self.batches[batch]
        local_features, local_skip = self.reference_local(batch)
        values = (local_features, local_skip, self.reference_global(scene), self.boxes(indices))
        return dict(zip(FUSION_INPUTS, values))

    def feeds(self, role: str) -> Iterator[Feed]:
        if role == "global":
            return (self.global_feed(s) for s in self.scenes)
        if role == "local":
            return (self.local_feed(b) for b in range(len(self.batches)))
        if role == "fusion":
            return (self.fusion_feed(b) for b in range(len(self.batches)))
        raise ValueError(f"unknown graph role {role!r}; expected global, local or fusion")

    def count(self, role: str) -> int:
        return len(self.scenes) if role == "global" else len(self.batches)


class FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over a feed generator: get_next() -> feed or None."""

    def __init__(self, make_feeds: Callable[[], Iterator[Feed]], limit: int | None = None) -> None:
        self._make_feeds = make_feeds
        self._limit = limit
        self._iterator: Iterator[Feed] | None = None
        self._served = 0

    def get_next(self) -> Feed | None:
        if self._iterator is None:
            self._iterator = self._make_feeds()
        if self._limit is not None and self._served >= self._limit:
            return None
        feed = next(self._iterator, None)
        if feed is not None:
            self._served += 1
        return feed

    def rewind(self) -> None:
        self._iterator = None
        self._served = 0

    def __iter__(self) -> Iterator[Feed]:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed


def reader(feeds: TileFeeds, role: str) -> FeedReader:
    """The calibration data reader for one graph of the bundle."""
    return FeedReader(lambda: feeds.feeds(role))
