"""Token alignment in GL-Deep Fusion: token k of the global and the local sequence cover the same pixels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glsnet.fusion import GLDeepFusion, GlobalCrop, margin_tokens

STRIDE = 32


class PassQueries(nn.Module):
    """An encoder that returns its queries unchanged, so the tokens' coordinates reach the decoder as they are."""

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return queries


def coordinate_map(height: int, width: int, channels: int) -> torch.Tensor:
    """[1, C, H, W] stride-32 map whose channel 0 is each cell's pixel x centre and channel 1 its y centre.

    Both are linear in the cell index, so bilinear sampling returns the sampled pixel coordinate itself.
    """
    features = torch.zeros(1, channels, height, width, dtype=torch.float64)
    features[0, 0] = (STRIDE * torch.arange(width, dtype=torch.float64) + 0.5)[None, :]
    features[0, 1] = (STRIDE * torch.arange(height, dtype=torch.float64) + 0.5)[:, None]
    return features


def local_token_centres(boxes: torch.Tensor, h: int, w: int, channels: int) -> torch.Tensor:
    """[B, C, h, w] local features carrying the pixel centre of each token: patch pixel (32 i, 32 j), as a ResNet
    centres its stride-32 cells (``test_a_resnet_token_is_centred_on_pixel_32_j``)."""
    x1, y1 = boxes[:, 0], boxes[:, 1]
    features = torch.zeros(len(boxes), channels, h, w, dtype=torch.float64)
    features[:, 0] = (x1[:, None] + STRIDE * torch.arange(w) + 0.5)[:, None, :]
    features[:, 1] = (y1[:, None] + STRIDE * torch.arange(h) + 0.5)[:, :, None]
    return features


def gradient_centroid(image: torch.Tensor, token: torch.Tensor) -> tuple[float, float]:
    """(y, x) centroid of |d token / d image|: where in the image a feature cell looks."""
    (grad,) = torch.autograd.grad(token, image, retain_graph=True)
    mass = grad[0].abs().sum(0)
    coords = torch.arange(mass.shape[0], dtype=mass.dtype)
    return float((mass.sum(1) * coords).sum() / mass.sum()), float((mass.sum(0) * coords).sum() / mass.sum())


def test_a_resnet_token_is_centred_on_pixel_32_j():
    """The convention the crop rests on, measured: cell (i, j) of the local branch looks at pixel (32 i, 32 j).

    The alternative, the centre of an equal 1/16 cell of the patch, would be 16 px further on at these tokens.
    """
    from glsnet.config import SMALL
    from glsnet.model import build_glsnet

    torch.manual_seed(0)
    branch = build_glsnet(SMALL).local_branch.eval()
    image = torch.randn(1, 3, 768, 768, requires_grad=True)  # large enough that these tokens' fields are not cut
    features, _ = branch(image)
    for i, j in ((10, 13), (7, 16)):
        y, x = gradient_centroid(image, features[0, :, i, j].sum())
        assert y == pytest.approx(STRIDE * i, abs=4) and x == pytest.approx(STRIDE * j, abs=4)


@pytest.mark.parametrize("patch, tokens", [(128, 4), (508, 16)])
def test_token_k_of_both_sequences_covers_the_same_pixel_box(patch, tokens):
    width = 8
    fusion = GLDeepFusion(width, skip_width=4, head_width=4, num_classes=3, context=0.25).double().eval()
    fusion.local_norm = fusion.global_norm = nn.Identity()  # geometry only: the tokens carry coordinates
    fusion.global_to_local = PassQueries()
    fusion.local_to_global = PassQueries()
    seen = {}
    fusion.decoder.register_forward_pre_hook(lambda module, args: seen.update(from_global=args[0], from_local=args[1]))
    # boxes well inside a 3000 x 2600 px map (no border clamping), at odd offsets, above 2048 px too
    boxes = torch.tensor([[700.0, 900.0, 700.0 + patch, 900.0 + patch], [2201.0, 1333.0, 2201.0 + patch, 1333.0 + patch]],
                         dtype=torch.float64)
    local = local_token_centres(boxes, tokens, tokens, width)
    skip = torch.zeros(2, 4, patch // 4, patch // 4, dtype=torch.float64)
    with torch.no_grad():
        fusion(local, skip, coordinate_map(2600 // STRIDE, 3000 // STRIDE, width), boxes)
    from_global, from_local = seen["from_global"], seen["from_local"]
    assert from_global.shape == from_local.shape == (2, tokens * tokens, width)
    torch.testing.assert_close(from_global[..., :2], from_local[..., :2], rtol=0, atol=1e-9)
    # the sequences run row-major over the patch: token k = (row k // w, column k % w)
    k = tokens + 1
    assert from_global[0, k, 0].item() == pytest.approx(700 + STRIDE + 0.5)
    assert from_global[0, k, 1].item() == pytest.approx(900 + STRIDE + 0.5)
    assert from_global[1, -1, 0].item() == pytest.approx(2201 + STRIDE * (tokens - 1) + 0.5)


def test_crop_is_the_patch_plus_whole_margin_tokens_at_the_local_pitch():
    crop = GlobalCrop(context=0.25)
    boxes = torch.tensor([[2049.0, 2051.0, 2557.0, 2559.0]], dtype=torch.float64)
    ys, xs = crop.sample_points(boxes, 16, 16)
    assert margin_tokens(16, 0.25) == 4 and xs.shape == ys.shape == (1, 24)
    torch.testing.assert_close(xs[0, 1:] - xs[0, :-1], torch.full((23,), float(STRIDE), dtype=torch.float64))
    assert xs[0, 4].item() == 2049.5  # first centre sample = first local token: the patch's first pixel
    assert xs[0, 0].item() == 2049.5 - 4 * STRIDE  # 4 whole tokens of margin
    assert xs[0, -1].item() == 2049.5 + 19 * STRIDE  # the crop spans 24 tokens, 1.5 patches
    assert ys[0, 4].item() == 2051.5


def test_fusion_output_ignores_global_features_beyond_the_margin():
    """Context reaches only as far as the margin: a change of the global map far from the patch changes nothing."""
    torch.manual_seed(0)
    fusion = GLDeepFusion(8, skip_width=4, head_width=4, num_classes=3, context=0.25).eval()
    features = torch.randn(1, 8, 40, 40)
    boxes = torch.tensor([[256.0, 256.0, 384.0, 384.0]])  # 128 px patch, 4 tokens, 1 margin token = 32 px
    local, skip = torch.randn(1, 8, 4, 4), torch.randn(1, 4, 32, 32)
    far = features.clone()
    far[..., 20:, :] += 5.0  # rows from pixel 640 on: beyond 384 + 32 (+ one cell of bilinear reach)
    near = features.clone()
    near[:, 0, 7, 7] += 5.0  # the margin cell just above-left of the patch (pixel ~224), one channel: the token
    # LayerNorm removes a shift of all channels alike
    with torch.no_grad():
        reference = fusion(local, skip, features, boxes)
        assert torch.equal(fusion(local, skip, far, boxes), reference)
        assert not torch.allclose(fusion(local, skip, near, boxes), reference)


def test_token_norms_make_the_fusion_blind_to_the_scale_of_the_branch_features():
    """Training cannot sharpen the projection-free attention by inflating one branch's features (which INT8 cannot hold)."""
    torch.manual_seed(0)
    fusion = GLDeepFusion(8, skip_width=4, head_width=4, num_classes=3, context=0.25).double().eval()
    features = torch.randn(1, 8, 40, 40, dtype=torch.float64)
    boxes = torch.tensor([[256.0, 256.0, 384.0, 384.0]], dtype=torch.float64)
    local, skip = torch.randn(1, 8, 4, 4, dtype=torch.float64), torch.randn(1, 4, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        reference = fusion(local, skip, features, boxes)
        # equal but for LayerNorm's epsilon (1e-5 beside a variance of about 1)
        torch.testing.assert_close(fusion(6.0 * local, skip, features, boxes), reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(fusion(local, skip, 6.0 * features, boxes), reference, rtol=0, atol=1e-5)
        fusion.local_norm = nn.Identity()
        assert (fusion(6.0 * local, skip, features, boxes) - reference).abs().max() > 1e-2
