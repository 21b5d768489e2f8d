"""Smaller patch overlaps against the bundle's default: patches, FLOPs per image and mask agreement.

    python scripts/bench_overlap.py --bundle BUNDLE [--overlaps 32,24,16] [IMAGES...]

Every image (default: the real DeepGlobe images under $GLSNET_DATA) is segmented with the bundle's
``patch.min_overlap`` and with each overlap given; each row shows the grid, the FLOPs of the image
through the bundle (from the counts export recorded) and the share of pixels whose class equals the
default's. One Segmenter per overlap, so sessions are created once. A benchmark: it prints numbers
and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from runtime.algorithm.patch_grid import make_grid
from runtime.atomic_file import write_text_atomic
from runtime.bench.segment_bench import bundle_flops
from runtime.image_io.readers import open_image
from runtime.segmenter import Segmenter


def pixels_of(path: Path) -> np.ndarray:
    source = open_image(path)
    try:
        return source.read_rows(0, source.height)
    finally:
        source.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="images to segment (default: $GLSNET_DATA/*_sat.jpg)")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    parser.add_argument("--overlaps", default="32,24,16", help="comma-separated minimum overlaps (px) to compare with the default")
    parser.add_argument("--precision", default="fp32", help="graph set to run")
    parser.add_argument("--out", type=Path, default=None, help="write the report here as JSON")
    args = parser.parse_args()
    images = args.images or sorted(Path(os.environ.get("GLSNET_DATA", "")).glob("*_sat.jpg"))
    if not images:
        parser.error("no images: give IMAGES or set $GLSNET_DATA to a DeepGlobe folder")
    overlaps = [int(o) for o in args.overlaps.split(",") if o]
    default = Segmenter(args.bundle, precision=args.precision)
    manifest = default.manifest
    segmenters = {o: Segmenter(args.bundle, precision=args.precision, min_overlap=o) for o in overlaps}
    rows: dict[int, dict] = {}
    for index, path in enumerate(images, 1):
        pixels = pixels_of(path)
        height, width = pixels.shape[:2]
        print(f"[{index}/{len(images)}] {path.name} ({width} x {height})", flush=True)
        reference = default.segment(pixels)
        for overlap, segmenter in [(manifest.patch.min_overlap, None), *segmenters.items()]:
            mask = reference if segmenter is None else segmenter.segment(pixels)
            grid = make_grid(height, width, manifest.patch.size, overlap)
            patches = len(grid.ys) * len(grid.xs)
            row = rows.setdefault(overlap, {"min_overlap": overlap, "images": [], "agreement": [], "flops": [], "grid": []})
            row["images"].append(path.name)
            row["agreement"].append(float(np.mean(mask == reference)))
            row["flops"].append(bundle_flops(manifest, height, width, patches))
            row["grid"].append(f"{len(grid.ys)} x {len(grid.xs)}, stride {grid.stride_y}")
    print(f"\nbundle {args.bundle} ({args.precision}), {len(images)} images; default min_overlap {manifest.patch.min_overlap} px")
    print(f"{'min overlap':>12}  {'grid (first image)':<22}{'TFLOP/image':>12}{'mean agree':>12}{'worst agree':>13}")
    for overlap, row in rows.items():
        flops = [f for f in row["flops"] if f is not None]
        shown = f"{np.mean(flops) / 1e12:.2f}" if flops else "n/a"
        print(f"{overlap:>12}  {row['grid'][0]:<22}{shown:>12}{100 * np.mean(row['agreement']):>11.3f}%{100 * min(row['agreement']):>12.3f}%")
    if args.out:
        write_text_atomic(args.out, json.dumps(list(rows.values()), indent=2) + "\n")


if __name__ == "__main__":
    main()
