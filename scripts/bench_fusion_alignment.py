"""Fusion graph cost before/after a change: FLOPs (export.graphs.inspect_graphs) and peak RSS in ONNX Runtime, one run.

Two steps, because the two graphs come from two versions of the code:

    PYTHONPATH=<old checkout> python scripts/bench_fusion_alignment.py export --out old.onnx
    PYTHONPATH=<new checkout> python scripts/bench_fusion_alignment.py export --out new.onnx
    python scripts/bench_fusion_alignment.py compare old.onnx new.onnx --batch 6

``export`` writes the fusion graph of the paper-sized model (seeded random weights: cost does not
depend on the values). ``compare`` counts each graph's Conv/MatMul FLOPs at a 2448 x 2448 image and
measures, in a fresh child process per graph (alternating, ``--repeats`` times), the peak RSS of
creating an ONNX Runtime session and running it on a batch: the numbers of both come from one run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

CHILD = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort
path, batch, fh, fw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
options = ort.SessionOptions(); options.intra_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
shapes = {i.name: i.shape for i in session.get_inputs()}
rng = np.random.default_rng(0)
feed = {}
for name, shape in shapes.items():
    dims = [batch if d == "batch" else fh if d == "feat_height" else fw if d == "feat_width" else d for d in shape]
    feed[name] = rng.standard_normal(dims).astype(np.float32)
feed["boxes"] = np.tile(np.array([[512.0, 512.0, 1020.0, 1020.0]], np.float32), (batch, 1))
session.run(None, feed)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mib": base / 1024, "peak_mib": peak / 1024}))
"""


@app.command()
def export(out: Path = typer.Option(..., "--out", help="fusion .onnx to write")) -> None:
    """Write the fusion graph of the paper-sized GLSNet with the code on PYTHONPATH."""
    import torch

    from export.graphs.onnx_export import ExportOptions, export_graph
    from glsnet.config import GLSNetConfig
    from glsnet.model import build_glsnet

    torch.manual_seed(0)
    export_graph(build_glsnet(GLSNetConfig()).eval(), "fusion", out, ExportOptions())
    typer.echo(f"wrote {out}")


@app.command()
def compare(
    before: Path = typer.Argument(...), after: Path = typer.Argument(...),
    batch: int = typer.Option(6), size: int = typer.Option(2448), repeats: int = typer.Option(3),
) -> None:
    """FLOPs and ONNX Runtime peak RSS of two fusion graphs, and their ratios (after / before)."""
    import onnx

    from export.graphs.inspect_graphs import ExampleSize, estimate_flops

    example = ExampleSize(size, size, batch)
    dims = example.dims()
    flops = {}
    for name, path in (("before", before), ("after", after)):
        flops[name], complete = estimate_flops(onnx.load(str(path)), dims)
        typer.echo(f"{name}: {flops[name] / 1e9:.3f} GFLOP (Conv/MatMul, {example.describe()}){'' if complete else ' (lower bound)'}")
    typer.echo(f"FLOPs after / before: {flops['after'] / flops['before']:.3f}")
    peaks: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeats):
        for name, path in (("before", before), ("after", after)):
            run = subprocess.run([sys.executable, "-c", CHILD, str(path), str(batch), str(dims["feat_height"]), str(dims["feat_width"])],
                                 capture_output=True, text=True, check=True)
            peaks[name].append(json.loads(run.stdout)["peak_mib"])
    for name in peaks:
        typer.echo(f"{name}: peak RSS {min(peaks[name]):.1f} MiB (min of {repeats}; all {[round(p, 1) for p in peaks[name]]})")
    typer.echo(f"peak RSS after / before: {min(peaks['after']) / min(peaks['before']):.3f} "
               f"({min(peaks['after']) - min(peaks['before']):+.1f} MiB)")


if __name__ == "__main__":
    app()
