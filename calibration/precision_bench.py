"""CPU latency and peak memory of each precision a bundle holds, each in its own subprocess.

    python -m calibration.precision_bench BUNDLE IMAGE [--runs 2] [--threads N]

Every precision gets a fresh process (os.wait4 gives that process's own peak RSS) that opens a
runtime Segmenter, segments IMAGE ``runs`` times and reports the first run (sessions created on
first use) and the best later run. Ratios are against fp32 measured in the same invocation;
the masks' agreement with fp32 is printed too. A benchmark: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _worker(bundle: str, image: str, precision: str, runs: int, threads: int | None, mask_out: str) -> None:
    from runtime.image_io.readers import open_image
    from runtime.segmenter import Segmenter

    source = open_image(image)
    pixels = source.read_rows(0, source.height)
    source.close()
    times = []
    with Segmenter(bundle, precision=precision, threads=threads) as segmenter:
        for _ in range(runs):
            start = time.perf_counter()
            mask = segmenter.segment(pixels)
            times.append(time.perf_counter() - start)
        graphs = segmenter.graphs.source
    np.save(mask_out, mask)
    print(json.dumps({"precision": precision, "times": times, "graphs": graphs, "shape": list(mask.shape)}))


def measure(bundle: Path, image: Path, precision: str, runs: int, threads: int | None, work: Path) -> dict:
    mask_path = work / f"{precision}.npy"
    args = [sys.executable, "-m", "calibration.precision_bench", "--worker", str(bundle), str(image), precision,
            "--runs", str(runs), "--mask-out", str(mask_path)]
    if threads:
        args += ["--threads", str(threads)]
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout = process.stdout.read()  # type: ignore[union-attr]
    stderr = process.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{precision}: the worker failed:\n{stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(wall_s=wall, peak_rss_mib=usage.ru_maxrss / 1024.0, mask=np.load(mask_path))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("precision", nargs="?", default=None)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mask-out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(str(args.bundle), str(args.image), args.precision, args.runs, args.threads, args.mask_out)
        return
    from rich.console import Console
    from rich.table import Table

    from runtime.bundle.manifest import PRECISIONS, read_manifest

    precisions = [p for p in PRECISIONS if p in read_manifest(args.bundle).graphs]
    with tempfile.TemporaryDirectory(prefix="glsnet-precision-bench-") as tmp:
        results = {p: measure(args.bundle, args.image, p, args.runs, args.threads, Path(tmp)) for p in precisions}
    reference = results["fp32"]
    best_ref = min(reference["times"][1:] or reference["times"])
    table = Table(title=f"{args.image.name}: {reference['shape'][0]} x {reference['shape'][1]}, ONNX Runtime CPU, one process each")
    for column in ("precision", "graphs", "first s", "best s", "x fp32", "peak MiB", "x fp32", "agree %"):
        table.add_column(column, justify="left" if column in ("precision", "graphs") else "right")
    for precision, r in results.items():
        best = min(r["times"][1:] or r["times"])
        table.add_row(
            precision, "ORT engine" if r["graphs"].startswith("onnxruntime engine") else r["graphs"], f"{r['times'][0]:.2f}", f"{best:.2f}", f"{best / best_ref:.2f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] / reference['peak_rss_mib']:.2f}",
            f"{100 * float(np.mean(r['mask'] == reference['mask'])):.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
