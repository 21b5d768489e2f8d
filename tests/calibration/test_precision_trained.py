"""A small GLSNet trained briefly on the real DeepGlobe samples: FP16 and INT8 against fp32, measured and gated.

A randomly initialised network has near-tied logits, so any rounding flips classes and agreement
says little; a few dozen optimiser steps make its predictions decisive, as a deployed model's are.
Cost (2 CPU cores, uncontended): 0.25 s per step of the small config at a 192 px crop with 4
patches of 128 px, so 200 steps take about a minute; export, calibration, both conversions and both
gates about 45 s more. 400 steps, because INT8 needs decisive logits: with the aligned fusion and its
token LayerNorms, 200 steps gave 96.72 % INT8 agreement after the sensitivity check (gate 98 %). At 400
steps, with the crop sampled at the ResNet token centres (glsnet.fusion), INT8 agreed on 98.89 % of the
held-back pixels with every graph quantized (FP16 99.98 %); the test took about 5.5 minutes.
"""

from __future__ import annotations

import pytest

from calibration.calibration_cache import CalibrationCache
from calibration.tiles import TileOptions, calibrate_bundle
from export.build import BuildOptions, build_precision
from runtime.bundle.manifest import read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_STEPS = 400


@pytest.fixture(scope="module")
def trained_bundle(deepglobe_dir, tmp_path_factory):
    from export.graphs.onnx_export import export_bundle
    from glsnet.config import SMALL
    from glsnet.training import TrainOptions, train

    root = tmp_path_factory.mktemp("trained")
    options = TrainOptions(
        out=root / "model.safetensors", data=deepglobe_dir, config=SMALL, steps=TRAIN_STEPS, crop_size=192, batch_size=4,
        global_lr=1e-3, local_lr=1e-3, val_fraction=0.0, val_every=10**6, progress=False, seed=0,
    )
    result = train(options)
    assert result.losses[-1]["total"] < result.losses[0]["total"]
    bundle = root / "bundle"
    export_bundle(root / "model.safetensors", bundle)
    images = sorted(deepglobe_dir.glob("*_sat.jpg"))
    calibrate_bundle(bundle, images, TileOptions(count=96, holdout=48, scene_size=512, scenes_per_image=1, seed=0))
    return bundle


def test_fp16_and_int8_meet_the_gates_on_deepglobe(trained_bundle):
    fp16 = build_precision(trained_bundle, BuildOptions(precision="fp16", target="onnxruntime"))
    int8 = build_precision(trained_bundle, BuildOptions(precision="int8", target="onnxruntime"))
    manifest = read_manifest(trained_bundle)
    assert set(manifest.graphs) == {"fp32", "fp16", "int8"}
    for precision, result, agreement in (("fp16", fp16, 0.999), ("int8", int8, 0.98)):
        report = manifest.accuracy[precision]
        assert result.report.passed and report["passed"] and not report["forced"]
        images = report["images"]
        assert images["agreement"] >= agreement and images["pixels"] >= 2 * 512 * 512
        assert images["miou_labels_fp32"] is not None and images["miou_labels_candidate"] is not None
        assert images["miou_labels_fp32"] > 0.05  # the model learnt something: the comparison means something
        assert report["tiles"]["agreement"] >= agreement - 0.01
    assert manifest.accuracy["int8"]["images"]["miou_drop"] <= 1.0
    assert manifest.accuracy["fp16"]["images"]["agreement"] >= manifest.accuracy["int8"]["images"]["agreement"]
    caches = manifest.calibration["int8"]["tensorrt_caches"]
    for role, entry in caches.items():
        scales = CalibrationCache.read(trained_bundle / entry["file"]).scales
        assert scales and all(0 < s < float("inf") for s in scales.values())
    print(
        "\n".join(
            f"{p}: agreement {100 * manifest.accuracy[p]['images']['agreement']:.3f}% "
            f"mIoU vs fp32 {100 * manifest.accuracy[p]['images']['miou_vs_fp32']:.2f} "
            f"mIoU vs labels fp32 {100 * manifest.accuracy[p]['images']['miou_labels_fp32']:.2f} "
            f"candidate {100 * manifest.accuracy[p]['images']['miou_labels_candidate']:.2f}"
            for p in ("fp16", "int8")
        )
        + f"\nint8 nodes left in float: {manifest.calibration['int8']['excluded_nodes']}"
    )
