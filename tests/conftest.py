"""Shared fixtures: small seeded configurations, and the real DeepGlobe folder when $GLSNET_DATA is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ENV = "GLSNET_DATA"


@pytest.fixture(scope="session")
def deepglobe_dir() -> Path:
    """The real DeepGlobe samples; tests that use it skip with a reason when $GLSNET_DATA is unset."""
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"${DATA_ENV} is not set: point it at a DeepGlobe folder (CI uses ../shared/data/deepglobe)")
    path = Path(value)
    if not any(path.glob("*_sat.jpg")):
        pytest.skip(f"${DATA_ENV}={value} holds no *_sat.jpg images")
    return path


@pytest.fixture(scope="session")
def small_config():
    from glsnet.config import SMALL

    return SMALL


@pytest.fixture(scope="session")
def small_model(small_config):
    """A seeded, randomly initialised small GLSNet in eval mode.

    Its norms are perturbed as training would leave them: BatchNorm statistics, and LayerNorm scales
    and shifts. With identity LayerNorms the fusion's normalised tokens give near-uniform logits, and
    a 100 x 90 scene came out as one class, which proves little in a mask comparison.
    """
    import torch

    from glsnet.model import build_glsnet

    torch.manual_seed(0)
    model = build_glsnet(small_config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, small_model) -> Path:
    """The small model exported once per session as an fp32 bundle (three graphs + manifest)."""
    from export.graphs.onnx_export import export_bundle

    path = tmp_path_factory.mktemp("bundle") / "small"
    export_bundle(small_model, path)
    return path
