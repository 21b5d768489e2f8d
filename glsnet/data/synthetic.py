"""Seeded synthetic aerial scenes labelled with DeepGlobe's classes: numpy only, fast, deterministic.

They stand in for real data where none is available (tests, the demo without $GLSNET_DATA) and
let the runtime be exercised on images of any size. A scene is built in layers:

1. land cover: a domain-warped Voronoi partition (cells of ~450 px) whose regions are
   agriculture, rangeland, forest, barren or urban;
2. agriculture regions are split into parcels, each with its own crop colour and row texture;
3. forest is blobby: tree clumps spill into open land and clearings open inside forests;
4. water: lakes where a smooth noise field peaks, and meandering rivers with smooth banks;
5. urban regions get a road grid, roofs of varied colours with cast shadows, and highways cross
   the scene; cars (tiny rectangles on the roads) are small objects, labelled urban like the roads.

Every random draw comes from one ``numpy.random.Generator`` seeded by ``seed``, in a fixed order,
so the same seed and size give identical pixels and labels. The work is O(pixels): a
2448 x 2448 scene takes about a second, and 9792 x 2448 about four.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glsnet.config import DEEPGLOBE_PALETTE
from runtime.atomic_file import atomic_path
from runtime.errors import InputError

UNKNOWN, URBAN, AGRICULTURE, RANGELAND, FOREST, WATER, BARREN = range(7)

# Land-cover classes drawn for Voronoi regions, and how often.
_REGION_CLASSES = np.array([AGRICULTURE, RANGELAND, FOREST, BARREN, URBAN])
_REGION_WEIGHTS = np.array([0.36, 0.22, 0.18, 0.09, 0.15])

_BASE_COLOURS = {  # mean RGB of each class; every region perturbs its own
    URBAN: (128, 122, 114),
    AGRICULTURE: (120, 135, 75),
    RANGELAND: (135, 140, 95),
    FOREST: (45, 72, 42),
    WATER: (32, 58, 78),
    BARREN: (172, 152, 122),
}
_CROP_COLOURS = np.array(  # parcel colours: green crops, ripe crops, ploughed soil, stubble
    [(82, 128, 58), (110, 150, 70), (150, 160, 90), (190, 175, 110), (120, 95, 70), (160, 130, 95), (95, 110, 60)],
    dtype=np.float32,
)
_ROOF_COLOURS = np.array(
    [(160, 72, 60), (185, 95, 75), (150, 150, 155), (205, 205, 200), (120, 110, 105), (95, 95, 100), (175, 160, 140)],
    dtype=np.float32,
)
_CAR_COLOURS = np.array([(230, 230, 230), (30, 30, 35), (180, 30, 30), (40, 60, 150), (160, 160, 165)], dtype=np.uint8)


# ---------------------------------------------------------------- noise and partitions


def _axis_weights(length: int, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid index and smoothstep weight of each pixel along one axis, for value noise of ``cell`` px."""
    position = (np.arange(length, dtype=np.float32) + 0.5) / cell
    index = np.floor(position).astype(np.intp)
    t = position - index
    return index, t * t * (3.0 - 2.0 * t)


def _interpolate(grid: np.ndarray, height: int, width: int, cell: float) -> np.ndarray:
    """Smoothstep-interpolate a value grid whose nodes lie ``cell`` px apart onto [height, width] px."""
    iy, ty = _axis_weights(height, cell)
    ix, tx = _axis_weights(width, cell)
    rows = grid[iy] * (1.0 - ty)[:, None] + grid[iy + 1] * ty[:, None]
    return rows[:, ix] * (1.0 - tx) + rows[:, ix + 1] * tx


def _noise_grid(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    return rng.random((int(height / cell) + 2, int(width / cell) + 2), dtype=np.float32)


def value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1], float32 [H, W], with features about ``cell`` pixels wide."""
    return _interpolate(_noise_grid(rng, height, width, cell), height, width, cell)


def fractal_noise(rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Sum of value-noise octaves (each half the size and weight of the previous), in [0, 1].

    The octaves are summed on the finest octave's grid and interpolated to pixels once, so the
    cost is that of one ``value_noise`` whatever the number of octaves.
    """
    finest = max(cell / 2 ** (octaves - 1), 1.0)
    grid_h, grid_w = int(height / finest) + 2, int(width / finest) + 2
    total = np.zeros((grid_h, grid_w), dtype=np.float32)
    weight, weights = 1.0, 0.0
    for octave in range(octaves):
        ratio = max(cell / 2**octave, 1.0) / finest  # this octave's cell, in finest-grid nodes
        grid = rng.random((int(grid_h / ratio) + 3, int(grid_w / ratio) + 3), dtype=np.float32)
        total += weight * _interpolate(grid, grid_h, grid_w, ratio)
        weights += weight
        weight /= 2.0
    return _interpolate(total / weights, height, width, finest)


def warped_voronoi(rng: np.random.Generator, height: int, width: int, cell: int, warp: float) -> tuple[np.ndarray, int]:
    """Region ids int32 [H, W] of a jittered-grid Voronoi partition with noisy (domain-warped) borders.

    One seed per grid cell, so each pixel compares only the seeds of the 3 x 3 cells around it.
    Computed at half resolution and repeated: borders are organic at 2 px granularity.
    """
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    half = cell / 2.0
    ny, nx = int(np.ceil(h2 / half)) + 4, int(np.ceil(w2 / half)) + 4  # two cells of margin each side
    seed_y = (np.arange(ny, dtype=np.float32)[:, None] - 2 + rng.uniform(0.15, 0.85, (ny, nx)).astype(np.float32)) * half
    seed_x = (np.arange(nx, dtype=np.float32)[None, :] - 2 + rng.uniform(0.15, 0.85, (ny, nx)).astype(np.float32)) * half
    amplitude = warp / 2.0
    y = np.arange(h2, dtype=np.float32)[:, None] + amplitude * (value_noise(rng, h2, w2, half) - 0.5)
    x = np.arange(w2, dtype=np.float32)[None, :] + amplitude * (value_noise(rng, h2, w2, half) - 0.5)
    cy = np.floor(y / half).astype(np.intp) + 2
    cx = np.floor(x / half).astype(np.intp) + 2
    best = np.full((h2, w2), np.inf, dtype=np.float32)
    region = np.zeros((h2, w2), dtype=np.int32)
    for dy in (-1, 0, 1):
        gy = np.clip(cy + dy, 0, ny - 1)
        for dx in (-1, 0, 1):
            gx = np.clip(cx + dx, 0, nx - 1)
            distance = (seed_y[gy, gx] - y) ** 2 + (seed_x[gy, gx] - x) ** 2
            closer = distance < best
            best = np.where(closer, distance, best)
            region = np.where(closer, (gy * nx + gx).astype(np.int32), region)
    full = np.repeat(np.repeat(region, 2, axis=0), 2, axis=1)[:height, :width]
    return np.ascontiguousarray(full), ny * nx


# ---------------------------------------------------------------- layers


def _rivers(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Boolean [H, W]: 0-2 meandering rivers with smoothly varying width."""
    water = np.zeros((height, width), dtype=bool)
    for _ in range(rng.choice(3, p=[0.35, 0.45, 0.2])):
        vertical = rng.random() < 0.5
        length, across = (height, width) if vertical else (width, height)
        t = np.arange(length, dtype=np.float32)
        centre = rng.uniform(0.15, 0.85) * across
        for _ in range(3):
            wavelength = rng.uniform(300, 1600)
            centre = centre + rng.uniform(15, 90) * np.sin(2 * np.pi * t / wavelength + rng.uniform(0, 2 * np.pi))
        half_width = rng.uniform(9, 30) * (1.0 + 0.35 * (value_noise(rng, 1, length, 400)[0] - 0.5))
        offset = np.arange(across, dtype=np.float32)
        band = np.abs(offset[:, None] - centre[None, :]) < half_width[None, :]  # [across, length]
        water |= band.T if vertical else band
    return water


def _highways(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Boolean [H, W] of 0-2 straight roads across the scene, and their (angle, offset, half width)."""
    roads = np.zeros((height, width), dtype=bool)
    lines = []
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    for _ in range(rng.choice(3, p=[0.3, 0.5, 0.2])):
        angle = rng.uniform(0, np.pi)
        normal_y, normal_x = np.cos(angle), -np.sin(angle)
        corners = [y * normal_y + x * normal_x for y in (0, height) for x in (0, width)]
        offset = min(corners) + rng.uniform(0.2, 0.8) * (max(corners) - min(corners))
        half_width = rng.uniform(5, 9)
        roads |= np.abs(yy * normal_y + xx * normal_x - offset) < half_width
        lines.append((float(angle), float(offset), float(half_width)))
    return roads, lines


def _place_cars(rng: np.random.Generator, image: np.ndarray, road: np.ndarray, horizontal: np.ndarray, count: int) -> None:
    """Draw ``count`` tiny cars (about 4 x 9 px) on road pixels, aligned with their road."""
    candidates = np.flatnonzero(road)
    if candidates.size == 0 or count == 0:
        return
    height, width = road.shape
    for index in rng.choice(candidates, size=min(count, candidates.size), replace=False):
        y, x = divmod(int(index), width)
        long_side, short_side = int(rng.integers(7, 11)), int(rng.integers(3, 5))
        h, w = (short_side, long_side) if horizontal[y, x] else (long_side, short_side)
        y0, x0 = max(0, y - h // 2), max(0, x - w // 2)
        image[y0 : min(height, y0 + h), x0 : min(width, x0 + w)] = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]


def synthetic_scene(height: int, width: int, seed: int | Sequence[int] = 0) -> tuple[np.ndarray, np.ndarray]:
    """An aerial-like scene: (image uint8 [H, W, 3], labels uint8 [H, W] in DeepGlobe's classes 1..6).

    Colour is one look-up in a table of flat "surface" colours (a region's class colour, a parcel's
    crop, a roof, a road, each also in shadow) plus one grey-level texture field, so the full-colour
    image is touched only a few times.
    """
    if height < 1 or width < 1:
        raise InputError(f"synthetic scene size must be positive, got {height} x {width}")
    rng = np.random.default_rng(seed)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]

    # 1. land-cover regions and their classes
    region, n_regions = warped_voronoi(rng, height, width, cell=int(rng.integers(380, 520)), warp=260)
    region_class = rng.choice(_REGION_CLASSES, size=n_regions, p=_REGION_WEIGHTS).astype(np.uint8)
    labels = region_class[region]
    base = np.array([_BASE_COLOURS.get(c, (0, 0, 0)) for c in range(7)], dtype=np.float32)
    region_colours = (base[None, :, :] + rng.normal(0.0, 9.0, (n_regions, 1, 3)).astype(np.float32)).reshape(-1, 3)

    # 3. blobby forest: clumps spill into open land, clearings open inside forests
    blobs = fractal_noise(rng, height, width, 160, octaves=3)
    open_land = (labels == RANGELAND) | (labels == AGRICULTURE) | (labels == BARREN)
    labels[open_land & (blobs > 0.74)] = FOREST
    labels[(labels == FOREST) & (blobs < 0.28)] = RANGELAND

    # 4. water: lakes at the peaks of a smooth field, and rivers
    water = fractal_noise(rng, height, width, 420, octaves=2) > 0.80
    water |= _rivers(rng, height, width)
    labels[water] = WATER
    surface = region * 7 + labels  # a region's tint of its (possibly changed) class colour

    # 2. agriculture parcels with crop rows
    parcel, n_parcels = warped_voronoi(rng, height, width, cell=int(rng.integers(150, 260)), warp=30)
    angle = rng.uniform(0, np.pi, n_parcels).astype(np.float32)
    period = rng.uniform(5, 14, n_parcels).astype(np.float32)
    amplitude = rng.uniform(6, 22, n_parcels).astype(np.float32)
    crop_colours = _CROP_COLOURS[rng.integers(len(_CROP_COLOURS), size=n_parcels)]
    crop_colours = crop_colours + rng.normal(0, 6, (n_parcels, 3)).astype(np.float32)
    field = labels == AGRICULTURE
    rows = amplitude[parcel] * np.sin((2 * np.pi) * (xx * (np.cos(angle) / period)[parcel] + yy * (np.sin(angle) / period)[parcel]))
    texture = np.where(field, rows, np.float32(0.0))
    surface = np.where(field, np.int32(len(region_colours)) + parcel, surface)
    del rows, blobs, open_land  # free full-size temporaries early: large scenes stay within a few GB

    # textures for the natural classes: fine grain (tree crowns) and mottling, per class
    fine_amplitude = np.array([10, 10, 8, 18, 70, 3, 22], dtype=np.float32)
    mottle_amplitude = np.array([8, 8, 8, 45, 25, 12, 35], dtype=np.float32)
    fine = value_noise(rng, height, width, 3.0) - 0.5
    mottle = fractal_noise(rng, height, width, 48, octaves=3) - 0.5
    texture += fine_amplitude[labels] * fine + mottle_amplitude[labels] * mottle

    # 5. urban blocks: a road grid per region, roofs with cast shadows; highways; cars on every road
    urban = labels == URBAN
    block_h, block_w = rng.uniform(40, 90, (2, n_regions)).astype(np.float32)
    road_width = rng.uniform(5, 9, n_regions).astype(np.float32)[region]
    shift_y, shift_x = rng.uniform(0, 90, (2, n_regions)).astype(np.float32)
    by = (yy + shift_y[region]) / block_h[region]
    bx = (xx + shift_x[region]) / block_w[region]
    in_y = (by - np.floor(by)) * block_h[region]  # position inside the block, px
    in_x = (bx - np.floor(bx)) * block_w[region]
    road_h = urban & (in_y < road_width)
    road_v = urban & (in_x < road_width)
    block = (np.floor(by).astype(np.int32) * 7919 + np.floor(bx).astype(np.int32) * 104729 + region) % 4096
    roof_colours = _ROOF_COLOURS[rng.integers(len(_ROOF_COLOURS), size=4096)] + rng.normal(0, 8, (4096, 3)).astype(np.float32)
    margin = rng.uniform(3, 10, 4096).astype(np.float32)[block]
    roof = urban & (in_y > road_width + margin) & (in_x > road_width + margin)
    roof &= (in_y < block_h[region] - margin * 0.6) & (in_x < block_w[region] - margin * 0.6)
    roof_base = len(region_colours) + n_parcels
    surface = np.where(roof, np.int32(roof_base) + block, surface)
    del by, bx, in_y, in_x, margin, block
    highway, _ = _highways(rng, height, width)
    highway &= ~water
    labels[highway] = URBAN
    roads = road_h | road_v | highway
    road_index = roof_base + len(roof_colours)
    surface[roads] = road_index
    shadow = np.zeros_like(roof)
    shadow[2:, 2:] = roof[:-2, :-2]
    shadow &= urban & ~roof & ~roads

    # colour = surface colour (darker in shadow) + texture + lighting + sensor grain; cars on top
    table = np.concatenate([region_colours, crop_colours, roof_colours, np.array([[88, 88, 90]], np.float32)])
    table = np.concatenate([table, table * 0.55])
    surface = np.where(shadow, surface + np.int32(len(table) // 2), surface)
    texture += 10.0 * (value_noise(rng, height, width, 900) - 0.5)
    texture += rng.normal(0.0, 3.0, (height, width)).astype(np.float32)
    image = table[surface]
    image += texture[..., None]
    image = np.clip(image, 0, 255, out=image).astype(np.uint8)
    _place_cars(rng, image, roads, road_h | (highway & ~road_v), int(roads.sum() / 900))
    return image, labels


@dataclass(frozen=True)
class SyntheticScenes:
    """``count`` seeded scenes generated on demand (glsnet.data.scenes.Scenes); scene i uses seed (seed, i)."""

    count: int
    height: int
    width: int
    seed: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"synthetic-s{self.seed}-{i:03d}" for i in range(self.count))

    @property
    def validation_names(self) -> tuple[str, ...]:
        return ()

    def source(self, index: int) -> str:
        return f"synthetic scene {self.names[index]}"

    def __len__(self) -> int:
        return self.count

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_scene(self.height, self.width, seed=(self.seed, index))


# ---------------------------------------------------------------- files


def write_scene(image_path: str | Path, image: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """Write ``image`` losslessly as PNG at ``image_path`` and its DeepGlobe colour mask beside it.

    The mask goes to ``<id>_mask.png`` when the image is named ``<id>_sat.png`` (DeepGlobe's layout),
    otherwise to ``<stem>_mask.png``.
    """
    from PIL import Image

    from glsnet.data.palette import colorize

    image_path = Path(image_path)
    stem = image_path.stem[: -len("_sat")] if image_path.stem.endswith("_sat") else image_path.stem
    mask_path = image_path.with_name(f"{stem}_mask.png")
    with atomic_path(image_path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
    with atomic_path(mask_path) as tmp:
        Image.fromarray(colorize(labels, DEEPGLOBE_PALETTE)).save(tmp, format="PNG")
    return image_path, mask_path


def write_synthetic_folder(folder: str | Path, count: int, height: int, width: int, seed: int = 0) -> list[Path]:
    """A DeepGlobe-layout folder of ``count`` scenes: ``synthetic-s<seed>-<i>_sat.png`` + ``_mask.png``.

    Images are PNG, not JPEG, so they are lossless (the DeepGlobe reader accepts both). Scene ``i``
    uses seed ``(seed, i)``, so a folder of more scenes starts with the same ones.
    """
    if count < 1:
        raise InputError(f"synthetic folder: count must be >= 1, got {count}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes(count, height, width, seed)
    written = []
    for i in range(count):
        image, labels = scenes.read(i)
        path, _ = write_scene(folder / f"{scenes.names[i]}_sat.png", image, labels)
        written.append(path)
    return written

