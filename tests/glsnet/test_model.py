"""GLSNet's structure: the paper's backbones, projection-free fusion, variants, whole-image inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from glsnet.config import SMALL, VARIANTS, GLSNetConfig, variant
from glsnet.inference import predict_logits, predict_mask
from glsnet.model import build_glsnet


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def without_fc(net: nn.Module) -> int:
    return parameter_count(net) - parameter_count(net.fc)


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(0)
    return build_glsnet(GLSNetConfig()).eval()


def test_branch_backbones_have_resnet18_and_resnet50_parameter_counts(default_model):
    assert parameter_count(default_model.global_branch.backbone) == without_fc(resnet18()) == 11_176_512
    assert parameter_count(default_model.local_branch.backbone) == without_fc(resnet50()) == 23_508_032


def test_fusion_has_no_linear_layers_so_no_qkv_projections_and_no_ffn(default_model):
    fusion = default_model.fusion
    assert not [name for name, m in fusion.named_modules() if isinstance(m, nn.Linear)]
    assert not [name for name, m in fusion.named_modules() if isinstance(m, nn.MultiheadAttention)]
    # the attention blocks (two encoders, one decoder) hold only their LayerNorms
    for block in (fusion.global_to_local, fusion.local_to_global, fusion.decoder):
        assert {type(m) for m in block.modules()} - {type(block)} == {nn.LayerNorm}


def test_fusion_attends_with_the_features_themselves(small_model):
    """Encoder output = LayerNorm(q + softmax(q k^T / sqrt(d)) k): no weights between the features and the attention."""
    encoder = small_model.fusion.global_to_local
    generator = torch.Generator().manual_seed(0)
    queries, context = torch.randn(2, 5, 64, generator=generator), torch.randn(2, 9, 64, generator=generator)
    attended = torch.softmax(queries @ context.transpose(1, 2) / 8.0, dim=-1) @ context
    expected = nn.functional.layer_norm(queries + attended, (64,), encoder.norm.weight, encoder.norm.bias)
    torch.testing.assert_close(encoder(queries, context), expected)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_three_variants_build_and_run_a_training_forward(name):
    small_sizes = {k: getattr(SMALL, k) for k in ("width", "skip_width", "head_width", "patch_size", "min_overlap")}
    config = variant(name, **small_sizes)
    model = build_glsnet(config)
    global_name, local_name = VARIANTS[name]
    assert model.global_branch.backbone.name == global_name
    assert model.local_branch.backbone.name == local_name
    p = config.patch_size
    image = torch.randn(1, 3, 2 * p, p)
    boxes = torch.tensor([[0.0, 0.0, p, p], [0.0, p, p, 2.0 * p]])
    with torch.no_grad():
        output = model.eval()(image, torch.randn(2, 3, p, p), boxes)
    assert output.logits.shape == (2, 7, p // 4, p // 4)
    assert output.global_aux.shape == (1, 7, 2 * p // 32, p // 32)
    assert output.local_aux.shape == (2, 7, p // 32, p // 32)


def test_parameter_groups_give_the_local_branch_its_own_learning_rate(small_model):
    groups = small_model.parameter_groups(1e-4, 2e-5)
    assert [g["lr"] for g in groups] == [1e-4, 2e-5]
    local_ids = {id(p) for p in small_model.local_branch.parameters()}
    assert local_ids <= {id(p) for p in groups[1]["params"]}
    assert not local_ids & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(small_model.parameters()))


def test_small_model_whole_image_inference_of_an_awkward_size(small_model):
    image = torch.randn(3, 200, 330)
    logits = predict_logits(small_model, image, batch_size=4)
    assert logits.shape == (7, 200, 330) and torch.isfinite(logits).all()
    mask = predict_mask(small_model, image)
    assert mask.shape == (200, 330) and mask.max() < 7


@pytest.mark.slow
def test_whole_image_inference_of_a_1024_image_with_the_default_config(default_model):
    image = torch.randn(3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    logits = predict_logits(default_model, image)
    assert logits.shape == (7, 1024, 1024)
    assert torch.isfinite(logits).all()
