"""Focal loss and GLSNet's combined loss (glsnet.losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glsnet.losses import GLSNetLoss, focal_loss
from glsnet.model import GLSNetOutput


@pytest.fixture()
def logits_and_target():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=generator)
    target = torch.randint(0, 5, (2, 6, 7), generator=generator)
    target[0, :2] = 255
    return logits, target


def test_gamma_zero_is_cross_entropy(logits_and_target):
    logits, target = logits_and_target
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), expected)


def test_focal_loss_matches_a_hand_computed_pixel():
    logits = torch.tensor([[[[2.0]], [[0.0]], [[-1.0]]]])  # one pixel, 3 classes
    target = torch.tensor([[[1]]])
    p = math.exp(0.0) / (math.exp(2.0) + math.exp(0.0) + math.exp(-1.0))
    expected = -((1 - p) ** 6) * math.log(p)
    assert float(focal_loss(logits, target, gamma=6.0)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_is_a_mean_over_non_ignored_pixels_only(logits_and_target):
    logits, target = logits_and_target
    changed = logits.clone()
    changed[0, :, :2] = 100.0 * torch.randn_like(changed[0, :, :2])  # only ignored pixels change
    torch.testing.assert_close(focal_loss(changed, target), focal_loss(logits, target))
    valid = target != 255
    flat_logits = logits.permute(0, 2, 3, 1)[valid]  # [N, K] of the labelled pixels only
    torch.testing.assert_close(focal_loss(flat_logits, target[valid]), focal_loss(logits, target))


def test_focal_loss_down_weights_easy_pixels():
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    easy = torch.tensor([[[[3.0]], [[0.0]]]])
    assert float(focal_loss(easy, target, gamma=6.0)) < 1e-3 * float(focal_loss(easy, target, gamma=0.0))


def test_all_ignored_gives_zero_with_a_gradient_path():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = focal_loss(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_glsnet_loss_is_main_plus_0_15_times_each_aux_at_label_resolution():
    generator = torch.Generator().manual_seed(1)
    output = GLSNetOutput(
        logits=torch.randn(2, 4, 8, 8, generator=generator),  # stride 4 of a 32 px patch
        global_aux=torch.randn(1, 4, 2, 3, generator=generator),  # stride 32 of a 64 x 96 crop
        local_aux=torch.randn(2, 4, 1, 1, generator=generator),
    )
    patch_labels = torch.randint(0, 4, (2, 32, 32), generator=generator)
    crop_labels = torch.randint(0, 4, (64, 96), generator=generator)
    parts = GLSNetLoss()(output, patch_labels, crop_labels)
    up = lambda x, size: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    main = focal_loss(up(output.logits, (32, 32)), patch_labels)
    global_aux = focal_loss(up(output.global_aux, (64, 96)), crop_labels[None])
    local_aux = focal_loss(up(output.local_aux, (32, 32)), patch_labels)
    torch.testing.assert_close(parts.main, main)
    torch.testing.assert_close(parts.global_aux, global_aux)
    torch.testing.assert_close(parts.local_aux, local_aux)
    torch.testing.assert_close(parts.total, main + 0.15 * global_aux + 0.15 * local_aux)
    assert set(parts.as_floats()) == {"total", "main", "global_aux", "local_aux"}
