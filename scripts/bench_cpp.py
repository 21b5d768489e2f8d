"""Bench of the C++ runtime beside the Python runtime, same run, default configuration (``make bench``).

Prints wall time and peak RSS of ``glsnet-cpp run`` and ``glsnet run`` on a 2448 x 2448 image (the first
real DeepGlobe image when $GLSNET_DATA is set, else a seeded synthetic scene), whether their masks are
equal, and the peak RSS of ``glsnet-cpp`` on a 9792 x 2448 tiled TIFF against its own at 2448 x 2448.
Each run is its own process; its peak RSS comes from os.wait4 (that process alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.bench.segment_bench import synthetic_scene, write_tiled_tiff
from runtime.image_io.readers import open_image


def measured(command: list[str], log: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process; fails loudly if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed; see {log}:\n{log.read_text()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def default_bundle(out: Path) -> Path:
    made = out / "model-default-seed0"
    if not (made / "bundle" / "manifest.json").is_file():
        measured([sys.executable, "-m", "export.gpu.bench_reference", "make-bundle", "--out", str(made), "--preset", "default", "--seed", "0"],
                 out / "logs" / "make-bundle.log")
    return made / "bundle"


def bench_image(out: Path) -> Path:
    data = os.environ.get("GLSNET_DATA")
    real = sorted(Path(data).glob("*_sat.jpg")) if data else []
    if real:
        return real[0]
    from PIL import Image

    path = out / "scene2448.png"
    if not path.is_file():
        Image.fromarray(synthetic_scene(2448, 2448, seed=0)).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpp", type=Path, default=Path("build/cpp/glsnet-cpp"), help="the glsnet-cpp executable")
    parser.add_argument("--out", type=Path, default=Path("demo-out/bench-cpp"), help="folder for bundle, images, masks, report")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to run (default: a seeded random-init default-config bundle)")
    parser.add_argument("--tall-factor", type=int, default=4, help="height of the tall TIFF as a multiple of 2448")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or default_bundle(args.out)
    image = bench_image(args.out)
    tall = args.out / f"scene{2448 * args.tall_factor}x2448.tif"
    if not tall.is_file():
        write_tiled_tiff(tall, np.concatenate([synthetic_scene(2448, 2448, seed=i) for i in range(args.tall_factor)]))

    cpp = [str(args.cpp), "run", "--bundle", str(bundle)]
    python = [sys.executable, "-m", "runtime.cli", "run", "--bundle", str(bundle)]
    results = {
        "cpp_2448": measured([*cpp, str(image), "-o", str(args.out / "cpp")], args.out / "logs" / "cpp-2448.log"),
        "python_2448": measured([*python, str(image), "-o", str(args.out / "python")], args.out / "logs" / "python-2448.log"),
        "cpp_tall": measured([*cpp, str(tall), "-o", str(args.out / "cpp"), "--format", "tif"], args.out / "logs" / "cpp-tall.log"),
    }
    name = f"{image.stem}_mask.png"
    a, b = open_image(args.out / "cpp" / name), open_image(args.out / "python" / name)
    equal = float(np.mean(a.read_rows(0, a.height) == b.read_rows(0, b.height)))
    (cw, cr), (pw, pr), (_, tr) = results["cpp_2448"], results["python_2448"], results["cpp_tall"]
    print(f"bundle {bundle}, image {image} (2448 x 2448), tall TIFF {tall.name}")
    print(f"{'run':<34}{'wall s':>10}{'peak RSS MB':>14}")
    print(f"{'glsnet-cpp 2448 x 2448':<34}{cw:>10.1f}{cr / 1e6:>14.0f}")
    print(f"{'glsnet run 2448 x 2448':<34}{pw:>10.1f}{pr / 1e6:>14.0f}")
    print(f"{'glsnet-cpp ' + str(2448 * args.tall_factor) + ' x 2448 tiled TIFF':<34}{results['cpp_tall'][0]:>10.1f}{tr / 1e6:>14.0f}")
    print(f"C++ / Python at 2448: wall {cw / pw:.2f}x, peak RSS {cr / pr:.2f}x; C++ tall / C++ 2448 peak RSS {tr / cr:.2f}x")
    print(f"mask pixels equal between glsnet-cpp and glsnet run: {equal * 100:.4f}%")
    report = {k: {"wall_s": w, "peak_rss_bytes": r} for k, (w, r) in results.items()}
    report.update(mask_equal_fraction=equal, image=str(image), tall=str(tall), bundle=str(bundle))
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
