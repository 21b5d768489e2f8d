"""The paper's Deep-Deep (Table 4): ResNet50 / ResNet50 each with an FPN; it builds, trains a step,
exports to the three graphs and passes export parity (small sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glsnet.checkpoint import load_model, save_checkpoint
from glsnet.config import SMALL, variant
from glsnet.fpn import FPNEncoder
from glsnet.model import build_glsnet
from glsnet.training import preset_config

SMALL_SIZES = {k: getattr(SMALL, k) for k in ("width", "skip_width", "head_width", "patch_size", "min_overlap")}


@pytest.fixture(scope="module")
def deep_deep():
    torch.manual_seed(0)
    model = build_glsnet(variant("deep-deep", **SMALL_SIZES))
    with torch.no_grad():  # norms as training leaves them (see tests/conftest.py small_model)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def test_deep_deep_is_resnet50_with_an_fpn_in_both_branches(deep_deep):
    assert deep_deep.config.fpn and preset_config("small", "deep-deep").fpn and not preset_config("small", "shallow-deep").fpn
    for branch in (deep_deep.global_branch, deep_deep.local_branch):
        assert isinstance(branch.backbone, FPNEncoder) and branch.backbone.resnet.name == "resnet50"


@pytest.mark.parametrize("size", [(128, 128), (200, 260), (301, 157)])
def test_the_pyramid_keeps_the_resnets_level_sizes(deep_deep, size):
    encoder = deep_deep.global_branch.backbone
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        plain = [f.shape[-2:] for f in encoder.resnet(x)]
        pyramid = encoder(x)
    assert [f.shape[-2:] for f in pyramid] == plain
    assert all(f.shape[1] == SMALL.width for f in pyramid)


def test_deep_deep_checkpoint_round_trips(deep_deep, tmp_path: Path):
    path = save_checkpoint(tmp_path / "dd.safetensors", deep_deep)
    model, _ = load_model(path)
    assert model.config.fpn and isinstance(model.local_branch.backbone, FPNEncoder)


@pytest.mark.slow
def test_deep_deep_exports_to_the_three_graphs_and_passes_parity(deep_deep, tmp_path: Path):
    import json

    from export.graphs.onnx_export import export_bundle
    from export.graphs.verify import VerifyOptions, verify_bundle

    bundle = tmp_path / "dd"
    export_bundle(deep_deep, bundle)
    assert {"global.onnx", "local.onnx", "fusion.onnx"} <= {p.name for p in bundle.iterdir()}
    assert not json.loads((bundle / "manifest.json").read_text()).get("global_stages")  # an FPN is not cut into stages
    report = verify_bundle(bundle, None, deep_deep, VerifyOptions(synthetic_size=300))
    assert report, "\n".join(report.lines())
    assert report.pixel_agreement >= 0.9999
