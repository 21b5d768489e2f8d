"""The PyTorch half of ``glsnet bench``, run as its own subprocess so its peak RSS is its own.

``make-bundle``: a seeded, randomly initialised model of the default configuration (or the small
one), saved as a checkpoint and exported as a bundle. ``run``: the reference
(glsnet.inference.predict_mask) on one image, timed, with the mask saved for comparison. The
runtime never imports this module; runtime.bench.segment_bench starts it with ``python -m``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def make_bundle(out: Path, preset: str, seed: int) -> None:
    import torch

    from export.graphs.onnx_export import ExportOptions, export_bundle
    from glsnet.checkpoint import save_checkpoint
    from glsnet.config import SMALL, GLSNetConfig
    from glsnet.model import build_glsnet

    torch.manual_seed(seed)
    model = build_glsnet(SMALL if preset == "small" else GLSNetConfig()).eval()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.safetensors"
    save_checkpoint(checkpoint, model, extra={"bench": f"random init, seed {seed}, preset {preset}"})
    export_bundle(checkpoint, out / "bundle", ExportOptions(force=True))


def run_reference(checkpoint: Path, image: Path, mask_out: Path, batch_size: int) -> dict:
    import numpy as np
    import torch

    from glsnet.checkpoint import load_model
    from glsnet.inference import predict_mask
    from runtime.image_io.preprocess import normalize
    from runtime.image_io.readers import open_image

    start = time.perf_counter()
    model, _ = load_model(checkpoint)
    source = open_image(image)
    pixels = source.read_rows(0, source.height)
    source.close()
    loaded = time.perf_counter()
    mask = predict_mask(model, normalize(pixels, model.config.normalization), batch_size=batch_size)  # the model's own, as the bundle's
    done = time.perf_counter()
    np.save(mask_out, mask)
    return {
        "load_s": loaded - start,
        "segment_s": done - loaded,
        "torch_threads": torch.get_num_threads(),
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-bundle")
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--preset", choices=("default", "small"), default="default")
    make.add_argument("--seed", type=int, default=0)
    run = sub.add_parser("run")
    run.add_argument("--checkpoint", type=Path, required=True)
    run.add_argument("--image", type=Path, required=True)
    run.add_argument("--mask-out", type=Path, required=True)
    run.add_argument("--batch-size", type=int, default=6)
    args = parser.parse_args()
    if args.command == "make-bundle":
        make_bundle(args.out, args.preset, args.seed)
    else:
        print(json.dumps(run_reference(args.checkpoint, args.image, args.mask_out, args.batch_size)))


if __name__ == "__main__":
    main()
