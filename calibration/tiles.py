"""Calibration tiles: scenes and patches sampled from real images, balanced, seeded, stored in the bundle.

What the graphs see at run time is what they are calibrated on:
- the global graph sees a *scene*: a large crop (``scene_size`` px, default 1024; the whole image when
  it is smaller) at full resolution, so its activations have run-time statistics;
- the local graph sees *patches* of the runtime's patch size taken inside the scenes;
- the fusion graph sees the fp32 global features of a patch's scene, the fp32 local outputs of the
  patch and its box, computed with ONNX Runtime when they are read (calibration.data_readers).

Patches are chosen class-balanced (by the dominant label, when a mask lies beside the image) or
texture-balanced (by brightness and gradient terciles, when none does). A share of the scenes is
held back with its own patches: the accuracy gate judges converted graphs on those only.

Stored as ``calibration/tiles.npz`` in the bundle: scenes as their source pixel type (uint8 for
JPEG/PNG), label masks as uint8, and patch positions; nothing derived is stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.atomic_file import atomic_path
from runtime.bundle.manifest import Manifest, sha256_file
from runtime.errors import BundleError, InputError
from runtime.image_io.readers import ArraySource, open_image

log = logging.getLogger(__name__)

TILES_FILE = "calibration/tiles.npz"
FORMAT = "glsnet-calibration-tiles/1"
CALIBRATION, HOLDOUT = 0, 1
IGNORE = 255
MASK_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class TileOptions:
    """How calibration tiles are sampled. ``count`` patches calibrate; ``holdout`` patches judge."""

    count: int = 256
    holdout: int = 64
    holdout_fraction: float = 0.25  # share of scenes held back for the accuracy gate
    scene_size: int = 1024  # side of the crops the global graph sees (the whole image when smaller)
    scenes_per_image: int = 2
    candidates_per_scene: int = 96  # random patch positions per scene to balance from
    seed: int = 0
    min_recommended: int = 128  # fewer calibration patches than this draws a warning

    def __post_init__(self) -> None:
        if self.count < 1 or self.holdout < 0:
            raise InputError(f"calibration: count must be >= 1 and holdout >= 0, got {self.count} and {self.holdout}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise InputError(f"calibration: holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
        if self.scene_size < 32 or self.scenes_per_image < 1 or self.candidates_per_scene < 1:
            raise InputError(
                "calibration: scene_size must be >= 32 and scenes_per_image, candidates_per_scene >= 1; "
                f"got {self.scene_size}, {self.scenes_per_image}, {self.candidates_per_scene}"
            )


@dataclass
class TileSet:
    """Scenes (pixels, optional labels) and patch positions inside them, with their split and stratum."""

    scenes: list[np.ndarray]  # [H, W, C] source pixel type
    labels: list[np.ndarray | None]  # [H, W] uint8 class indices (IGNORE where unknown), or None
    scene_split: np.ndarray  # [S] CALIBRATION or HOLDOUT
    scene_source: np.ndarray  # [S] index into sources
    scene_origin: np.ndarray  # [S, 2] (y, x) of the scene in its source image
    patches: np.ndarray  # [N, 3] int32: scene index, y, x
    patch_split: np.ndarray  # [N]
    patch_stratum: np.ndarray  # [N] int16: class index, or texture bin
    patch_size: int
    sources: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # method, seed, options: what manifest.calibration records

    def indices(self, split: int) -> np.ndarray:
        return np.flatnonzero(self.patch_split == split)

    def scene_indices(self, split: int) -> np.ndarray:
        return np.flatnonzero(self.scene_split == split)

    def patch_pixels(self, index: int) -> np.ndarray:
        """[P, P, C] pixels of one patch; a scene smaller than a patch is padded later, in normalised space."""
        s, y, x = (int(v) for v in self.patches[index])
        p = self.patch_size
        return self.scenes[s][y : y + p, x : x + p]

    def patch_label(self, index: int) -> np.ndarray | None:
        s, y, x = (int(v) for v in self.patches[index])
        label = self.labels[s]
        return None if label is None else label[y : y + self.patch_size, x : x + self.patch_size]

    @property
    def has_labels(self) -> bool:
        return any(label is not None for label in self.labels)

    def counts(self) -> dict[str, int]:
        return {
            "scenes": len(self.scenes),
            "calibration_scenes": int((self.scene_split == CALIBRATION).sum()),
            "holdout_scenes": int((self.scene_split == HOLDOUT).sum()),
            "calibration_patches": int((self.patch_split == CALIBRATION).sum()),
            "holdout_patches": int((self.patch_split == HOLDOUT).sum()),
        }


# ---------------------------------------------------------------- reading sources


def find_mask(image: Path) -> Path | None:
    """The label mask beside an image: DeepGlobe's ``X_sat.jpg`` -> ``X_mask.png``, else ``X_mask.png``."""
    stems = [re.sub(r"_sat$", "_mask", image.stem)] if image.stem.endswith("_sat") else []
    stems.append(image.stem + "_mask")
    for stem in stems:
        for suffix in MASK_SUFFIXES:
            candidate = image.with_name(stem + suffix)
            if candidate.is_file():
                return candidate
    return None


def mask_to_classes(mask: np.ndarray, palette: Sequence[Sequence[int]], where: str) -> np.ndarray:
    """Class indices from a mask: index masks pass through; RGB masks are matched to the palette.

    RGB masks are binarised at 128 per channel first (DeepGlobe's masks are 0/255 per channel, up to
    compression noise). Pixels of no palette colour, and indices beyond the classes, become IGNORE.
    """
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim == 2:
        out = mask.astype(np.int64)
        return np.where((out >= 0) & (out < len(palette)), out, IGNORE).astype(np.uint8)
    if mask.ndim != 3 or mask.shape[2] < 3:
        raise InputError(f"{where}: a mask must be [H, W] class indices or [H, W, 3] palette colours, got {mask.shape}")
    binary = (mask[:, :, :3] >= 128).astype(np.int64)
    code = binary[:, :, 0] * 4 + binary[:, :, 1] * 2 + binary[:, :, 2]
    lut = np.full(8, IGNORE, dtype=np.uint8)
    for index, rgb in enumerate(palette):
        bits = [1 if v >= 128 else 0 for v in rgb]
        lut[bits[0] * 4 + bits[1] * 2 + bits[2]] = index
    return lut[code]


def _open(image: str | Path | np.ndarray, name: str):
    if isinstance(image, np.ndarray):
        return ArraySource(image, name=name)
    return open_image(image)


def _read_scenes(image, name: str, rng: np.random.Generator, options: TileOptions, min_bands: int):
    """(height, width, [(top, left, pixels)]) for the scenes of one image, decoding it once."""
    source = _open(image, name)
    try:
        if source.bands < min_bands:
            raise InputError(
                f"{source.name}: has {source.bands} band(s) but the model reads {min_bands}; "
                "calibrate with images like the ones the model will see"
            )
        boxes = _scene_boxes(source.height, source.width, options, rng)
        return source.height, source.width, [
            (top, left, np.ascontiguousarray(source.read_rows(top, top + h)[:, left : left + w])) for top, left, h, w in boxes
        ]
    finally:
        source.close()


def _read_labels(mask_path: Path, size: tuple[int, int], regions, palette) -> list[np.ndarray | None]:
    source = open_image(mask_path)
    try:
        if (source.height, source.width) != size:
            log.warning("%s: mask is %s, image is %s; labels ignored", mask_path, (source.height, source.width), size)
            return [None] * len(regions)
        return [
            mask_to_classes(source.read_rows(top, top + h)[:, left : left + w], palette, str(mask_path))
            for top, left, h, w in regions
        ]
    finally:
        source.close()


# ---------------------------------------------------------------- sampling


def _texture_statistics(pixels: np.ndarray) -> tuple[float, float]:
    """(brightness, gradient energy) of a patch on a 4x subsampled luminance: cheap and label-free."""
    small = pixels[::4, ::4].astype(np.float32)
    luminance = small[:, :, :3].mean(axis=2) if small.shape[2] >= 3 else small.mean(axis=2)
    gy = np.abs(np.diff(luminance, axis=0)).mean() if luminance.shape[0] > 1 else 0.0
    gx = np.abs(np.diff(luminance, axis=1)).mean() if luminance.shape[1] > 1 else 0.0
    return float(luminance.mean()), float(gx + gy)


def _terciles(values: np.ndarray) -> np.ndarray:
    if len(values) < 3:
        return np.zeros(len(values), dtype=np.int64)
    edges = np.quantile(values, [1 / 3, 2 / 3])
    return np.searchsorted(edges, values, side="right")


def balanced_choice(strata: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``count`` indices, one stratum at a time in turn, random within each; deterministic under rng."""
    groups = [rng.permutation(np.flatnonzero(strata == s)) for s in rng.permutation(np.unique(strata))]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count and any(depth < len(g) for g in groups):
        for group in groups:
            if depth < len(group) and len(chosen) < count:
                chosen.append(int(group[depth]))
        depth += 1
    return np.array(chosen, dtype=np.int64)


def _scene_boxes(height: int, width: int, options: TileOptions, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    h, w = min(options.scene_size, height), min(options.scene_size, width)
    if (h, w) == (height, width):
        return [(0, 0, h, w)]
    return [
        (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
        for _ in range(options.scenes_per_image)
    ]


def _candidates(scene: np.ndarray, patch_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    h, w = scene.shape[:2]
    ys = rng.integers(0, max(h - patch_size, 0) + 1, size=n)
    xs = rng.integers(0, max(w - patch_size, 0) + 1, size=n)
    return np.unique(np.stack([ys, xs], axis=1), axis=0)


def _dominant_class(label: np.ndarray, num_classes: int) -> int:
    counts = np.bincount(label[label != IGNORE].ravel(), minlength=num_classes)
    return int(counts.argmax()) if counts.sum() else -1


def _describe(image, name: str, mask: Path | None, height: int, width: int) -> dict:
    if isinstance(image, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        return {"file": name, "sha256": digest, "mask": None, "mask_sha256": None, "height": height, "width": width}
    return {"file": str(image), "sha256": sha256_file(image), "mask": str(mask) if mask else None,
            "mask_sha256": sha256_file(mask) if mask else None, "height": height, "width": width}


def sample_tiles(
    images: Sequence[str | Path | np.ndarray],
    manifest: Manifest,
    options: TileOptions = TileOptions(),
    labels: Sequence[np.ndarray | None] | None = None,
    names: Sequence[str] | None = None,
) -> TileSet:
    """Sample scenes and balanced patches from image files (masks beside them are used) or arrays.

    ``labels`` gives class-index masks for in-memory images (files find their masks themselves), and
    ``names`` what errors and the manifest call them (the file they were read from; default array[i]).
    """
    if not images:
        raise InputError("calibration needs at least one image (PNG, JPEG or TIFF); none was given")
    patch_size = manifest.patch.size
    rng = np.random.default_rng(options.seed)
    scenes: list[np.ndarray] = []
    scene_labels: list[np.ndarray | None] = []
    scene_source: list[int] = []
    scene_origin: list[tuple[int, int]] = []
    sources: list[dict] = []
    min_bands = max(manifest.normalization.bands) + 1
    for index, image in enumerate(images):
        if isinstance(image, np.ndarray):
            name = names[index] if names is not None else f"array[{index}]"
        else:
            image = Path(image)
            name = str(image)
        height, width, regions = _read_scenes(image, name, rng, options, min_bands)
        boxes = [(top, left, *pixels.shape[:2]) for top, left, pixels in regions]
        mask = None if isinstance(image, np.ndarray) else find_mask(image)
        if labels is not None and labels[index] is not None:
            given = np.asarray(labels[index])
            region_labels = [mask_to_classes(given[t : t + h, l : l + w], manifest.palette, f"labels of {name}") for t, l, h, w in boxes]
        elif mask is not None:
            region_labels = _read_labels(mask, (height, width), boxes, manifest.palette)
        else:
            region_labels = [None] * len(regions)
        sources.append(_describe(image, name, mask, height, width))
        for (top, left, pixels), label in zip(regions, region_labels):
            scenes.append(pixels)
            scene_labels.append(label)
            scene_source.append(index)
            scene_origin.append((top, left))
    labels_per_scene = scene_labels

    scene_split = np.full(len(scenes), CALIBRATION, dtype=np.uint8)
    if options.holdout > 0 and options.holdout_fraction > 0:
        if len(scenes) >= 2:
            n_hold = min(len(scenes) - 1, max(1, round(options.holdout_fraction * len(scenes))))
            scene_split[rng.choice(len(scenes), size=n_hold, replace=False)] = HOLDOUT
        else:
            log.warning("only one scene: the held-back patches come from the same scene as the calibration patches")

    use_labels = all(label is not None for label in labels_per_scene)
    pool_scene, pool_origin, pool_stratum = [], [], []
    brightness, texture = [], []
    for s, scene in enumerate(scenes):
        for y, x in _candidates(scene, patch_size, options.candidates_per_scene, rng):
            pixels = scene[y : y + patch_size, x : x + patch_size]
            pool_scene.append(s)
            pool_origin.append((int(y), int(x)))
            if use_labels:
                label = labels_per_scene[s][y : y + patch_size, x : x + patch_size]  # type: ignore[index]
                pool_stratum.append(_dominant_class(label, manifest.num_classes))
            b, t = _texture_statistics(pixels)
            brightness.append(b)
            texture.append(t)
    pool_scene_arr = np.array(pool_scene, dtype=np.int64)
    if use_labels:
        strata = np.array(pool_stratum, dtype=np.int64)
        method = "class-balanced: dominant label of each patch (masks beside the images)"
    else:
        strata = _terciles(np.array(brightness)) * 3 + _terciles(np.array(texture))
        method = "texture-balanced: terciles of brightness x mean gradient (no masks found)"

    chosen_patches, chosen_split = [], []
    single_scene = len(scenes) == 1 and options.holdout > 0 and options.holdout_fraction > 0
    for split, wanted in ((CALIBRATION, options.count), (HOLDOUT, options.holdout)):
        if single_scene:
            taken = set(chosen_patches)
            pool = np.array([i for i in range(len(pool_scene)) if i not in taken], dtype=np.int64)
        else:
            pool = np.flatnonzero(scene_split[pool_scene_arr] == split)
        if wanted == 0 or len(pool) == 0:
            continue
        picked = pool[balanced_choice(strata[pool], wanted, rng)]
        chosen_patches.extend(int(i) for i in picked)
        chosen_split.extend([split] * len(picked))

    patches = np.array([(pool_scene[i], *pool_origin[i]) for i in chosen_patches], dtype=np.int32).reshape(-1, 3)
    tiles = TileSet(
        scenes=scenes,
        labels=labels_per_scene if use_labels else [None] * len(scenes),
        scene_split=scene_split,
        scene_source=np.array(scene_source, dtype=np.int32),
        scene_origin=np.array(scene_origin, dtype=np.int32).reshape(-1, 2),
        patches=patches,
        patch_split=np.array(chosen_split, dtype=np.uint8),
        patch_stratum=strata[chosen_patches].astype(np.int16) if chosen_patches else np.zeros(0, np.int16),
        patch_size=patch_size,
        sources=sources,
    )
    counts = tiles.counts()
    if counts["calibration_patches"] < min(options.count, options.min_recommended):
        log.warning(
            "only %d calibration patches from %d image(s) (asked for %d; at least %d recommended): "
            "INT8 scales may not represent your data; pass more images",
            counts["calibration_patches"], len(images), options.count, options.min_recommended,
        )
    tiles.info = {
        "format": FORMAT,
        "file": TILES_FILE,
        "seed": options.seed,
        "method": method,
        "global_inputs": f"scenes: crops of up to {options.scene_size} px at full resolution (whole images when smaller)",
        "local_inputs": f"patches of {patch_size} px inside the scenes",
        "fusion_inputs": "recomputed with the fp32 global and local graphs (ONNX Runtime) when read",
        "options": asdict(options),
        "counts": counts,
        "strata": {str(int(k)): int(v) for k, v in zip(*np.unique(tiles.patch_stratum, return_counts=True))},
        "sources": sources,
    }
    return tiles


# ---------------------------------------------------------------- storage


def save_tiles(tiles: TileSet, path: str | Path) -> str:
    """Write the tiles as one compressed npz (atomically); returns its sha256."""
    arrays: dict[str, np.ndarray] = {}
    for i, scene in enumerate(tiles.scenes):
        arrays[f"scene_{i:04d}"] = scene
        if tiles.labels[i] is not None:
            arrays[f"label_{i:04d}"] = tiles.labels[i]  # type: ignore[assignment]
    arrays.update(
        scene_split=tiles.scene_split,
        scene_source=tiles.scene_source,
        scene_origin=tiles.scene_origin,
        patches=tiles.patches,
        patch_split=tiles.patch_split,
        patch_stratum=tiles.patch_stratum,
        patch_size=np.array(tiles.patch_size, dtype=np.int32),
        info=np.frombuffer(json.dumps(tiles.info, sort_keys=True).encode("utf-8"), dtype=np.uint8),
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return sha256_file(path)


def load_tiles(path: str | Path) -> TileSet:
    """Read tiles written by save_tiles; BundleError names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no calibration tiles; make them with: glsnet-export calibrate BUNDLE IMAGES...")
    try:
        with np.load(path, allow_pickle=False) as data:
            info = json.loads(bytes(data["info"]).decode("utf-8"))
            if info.get("format") != FORMAT:
                raise BundleError(f"{path}: format {info.get('format')!r}, expected {FORMAT!r}; calibrate again")
            count = len(data["scene_split"])
            scenes = [data[f"scene_{i:04d}"] for i in range(count)]
            labels = [data[f"label_{i:04d}"] if f"label_{i:04d}" in data.files else None for i in range(count)]
            return TileSet(
                scenes=scenes,
                labels=labels,
                scene_split=data["scene_split"],
                scene_source=data["scene_source"],
                scene_origin=data["scene_origin"],
                patches=data["patches"],
                patch_split=data["patch_split"],
                patch_stratum=data["patch_stratum"],
                patch_size=int(data["patch_size"]),
                sources=info.get("sources", []),
                info=info,
            )
    except (KeyError, ValueError, OSError) as exc:
        raise BundleError(f"{path}: not a readable calibration tile file ({exc}); calibrate again") from exc


def tiles_digest(tiles: TileSet) -> str:
    """A sha256 over every array of the tiles (independent of zip metadata): equal tiles, equal digest."""
    digest = hashlib.sha256()
    for array in [*tiles.scenes, *(l for l in tiles.labels if l is not None), tiles.scene_split, tiles.patches, tiles.patch_split]:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- the bundle


def calibrate_bundle(
    bundle_dir: str | Path,
    images: Sequence[str | Path | np.ndarray],
    options: TileOptions = TileOptions(),
    labels: Sequence[np.ndarray | None] | None = None,
    names: Sequence[str] | None = None,
) -> TileSet:
    """Sample tiles from ``images``, store them in the bundle and record how in manifest.calibration["tiles"].

    ``images`` are files (masks beside them are used) or arrays with their class-index ``labels``
    and the ``names`` of the files they came from (a dataset layout read by glsnet.data). The bundle
    must hold its fp32 graphs (the fusion inputs are computed with them when the tiles are read).
    """
    import time

    from runtime.bundle.manifest import graph_path, read_manifest, write_manifest

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for role in ("global", "local", "fusion"):
        graph_path(bundle_dir, manifest.graph(role, "fp32"))
    missing = [str(p) for p in images if not isinstance(p, np.ndarray) and not Path(p).is_file()]
    if missing:
        raise InputError(f"calibration images not found: {', '.join(missing[:5])}; pass existing PNG, JPEG or TIFF files")
    tiles = sample_tiles(images, manifest, options, labels, names)
    sha = save_tiles(tiles, bundle_dir / TILES_FILE)
    calibration = dict(manifest.calibration or {})
    calibration["tiles"] = {**tiles.info, "sha256": sha, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_manifest(bundle_dir, read_manifest(bundle_dir).replace(calibration=calibration))
    return tiles


def bundle_tiles(bundle_dir: str | Path, manifest: Manifest) -> TileSet | None:
    """The bundle's calibration tiles, checksum-verified, or None when it has none."""
    from runtime.bundle.manifest import verify_file

    entry = (manifest.calibration or {}).get("tiles")
    if not entry:
        return None
    return load_tiles(verify_file(bundle_dir, entry["file"], entry["sha256"]))
