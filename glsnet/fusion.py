"""GL-Deep Fusion: the crop of global features per patch, two cross-attention encoders, one decoder.

Paper facts: queries, keys and values are the branch features themselves (no Q/K/V projection
matrices) and there is no feed-forward network. Encoder 1 takes queries from the global tokens
and keys/values from the local ones; encoder 2 is its mirror. The decoder attends from both
encoders' outputs to both, and a light convolutional head adds the local stride-4 features.

Token alignment (our design; the paper leaves it open): both branches are ResNets, whose stride-32
cell j is centred on pixel 32j of their input (every strided layer pads symmetrically). So local
token j of a patch at x1 is centred on image pixel x1 + 32j, and the global crop samples the global
map at exactly those pixels, at the same 32 px pitch, with a whole number of margin tokens
(``context`` x tokens, rounded) on each side: an (h + 2m) x (w + 2m) grid whose centre h x w
samples sit on the centres of the h x w local tokens. Encoder 2 lets every local token attend to
the whole crop (context); the centre of encoder 1's output is taken before the decoder, which adds
the two sequences token by token: token k of both then describes the same pixels of the image.

Token normalisation (our choice; the paper leaves it open): each token sequence passes a LayerNorm
before the encoders. With no Q/K projections, the only way training can sharpen the attention is to
scale the tokens; without the norms the local tokens grew about 6x (rms 4.8 -> 28) once the crop had
576 tokens, and INT8 could no longer represent them (docs/model.md, "Token normalisation").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V over [B, N, d] token sequences."""
    scale = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def bilinear_weights(x: torch.Tensor, axis: torch.Tensor, stride: int) -> torch.Tensor:
    """[B, out, in] weights that resample a feature axis at the pixel coordinates ``x`` [B, out].

    ``axis`` is arange(in) of the feature axis. Cell i of a stride-s map is centred on pixel s*i, so
    a continuous pixel coordinate x sits at feature coordinate (x - 0.5) / s. The tent
    max(0, 1 - |u - i|) is exact bilinear interpolation, and clamping u to the map's extent
    replicates its border, as RoIAlign does.
    """
    u = ((x - 0.5) / stride).clamp(min=0)
    u = torch.minimum(u, axis[-1])
    return (1.0 - (u[:, :, None] - axis[None, None, :]).abs()).clamp(min=0)


def margin_tokens(tokens: int, context: float) -> int:
    """Whole tokens of context on each side of a patch of ``tokens`` tokens: round(context x tokens)."""
    return int(round(context * tokens))


class GlobalCrop(nn.Module):
    """Crop each patch's footprint plus a margin of whole tokens out of the global feature map.

    For a patch of h x w tokens the crop is (h + 2m) x (w + 2m) samples at the local token pitch
    (the stride), m = ``margin_tokens`` per axis, so sample (i + m, j + m) lies at the centre of local
    token (i, j): patch pixel (stride i, stride j). A separable matmul (crop = Wy . F . Wx^T) instead
    of RoiAlign: plain MatMul and elementwise ops, no TensorRT plugin, exact in fp32, and dynamic in
    the batch and the map size.
    """

    def __init__(self, context: float, stride: int = 32) -> None:
        super().__init__()
        self.context = context
        self.stride = stride

    def margins(self, h: int, w: int) -> tuple[int, int]:
        """(rows, columns) of margin tokens around an h x w patch."""
        return margin_tokens(h, self.context), margin_tokens(w, self.context)

    def sample_points(self, boxes: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, h + 2my] y, [B, w + 2mx] x) continuous pixel coordinates of the crop's samples (pixel p
        spans [p, p + 1), so the centre of pixel x1 + stride j is x1 + stride j + 0.5)."""
        my, mx = self.margins(h, w)
        ys = self.token_centres(boxes[:, 1], my, h + 2 * my)
        xs = self.token_centres(boxes[:, 0], mx, w + 2 * mx)
        return ys, xs

    def token_centres(self, start: torch.Tensor, margin: int, count: int) -> torch.Tensor:
        """[B, count] centres of the tokens from ``margin`` tokens before the patch edge ``start`` on."""
        steps = (torch.arange(count, dtype=start.dtype, device=start.device) - margin) * self.stride + 0.5
        return start[:, None] + steps[None, :]

    def forward(self, global_features: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[1, d, Hg, Wg] map, [B, 4] boxes -> [B, d, h + 2my, w + 2mx] crops."""
        ys, xs = self.sample_points(boxes, h, w)
        feat_h, feat_w = global_features.shape[-2], global_features.shape[-1]
        wy = bilinear_weights(ys, torch.arange(feat_h, dtype=boxes.dtype, device=boxes.device), self.stride)  # [B, h', Hg]
        wx = bilinear_weights(xs, torch.arange(feat_w, dtype=boxes.dtype, device=boxes.device), self.stride)  # [B, w', Wg]
        cropped = torch.matmul(wy[:, None], global_features)  # [B, d, h', Wg]
        return torch.matmul(cropped, wx[:, None].transpose(-2, -1))  # [B, d, h', w']


def centre_tokens(tokens: torch.Tensor, rows: int, columns: int, margin_y: int, margin_x: int) -> torch.Tensor:
    """The centre ``rows`` x ``columns`` tokens of a [B, (rows + 2my) * (columns + 2mx), d] sequence."""
    batch, _, width = tokens.shape
    grid = tokens.reshape(batch, rows + 2 * margin_y, columns + 2 * margin_x, width)
    return grid[:, margin_y : margin_y + rows, margin_x : margin_x + columns].reshape(batch, rows * columns, width)


class CrossAttentionEncoder(nn.Module):
    """LayerNorm(queries + Attention(queries, context, context)); no projections, no FFN."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.norm(queries + attention(queries, context, context))


class FusionDecoder(nn.Module):
    """One attention layer over both encoder outputs: their token-wise sum (both sequences on the local
    token grid, token k covering the same pixels) queries the union of both sequences."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)

    def forward(self, from_global: torch.Tensor, from_local: torch.Tensor) -> torch.Tensor:
        queries = from_global + from_local
        memory = torch.cat([from_global, from_local], dim=1)
        return self.norm(queries + attention(queries, memory, memory))


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegmentationHead(nn.Module):
    """Fused tokens, upsampled to the local stride-4 grid and joined with its skip features, to logits."""

    def __init__(self, width: int, skip_width: int, head_width: int, num_classes: int) -> None:
        super().__init__()
        self.refine = nn.Sequential(conv_bn_relu(width + skip_width, head_width), conv_bn_relu(head_width, head_width))
        self.classify = nn.Conv2d(head_width, num_classes, kernel_size=1)

    def forward(self, fused: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        fused = F.interpolate(fused, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.classify(self.refine(torch.cat([fused, skip], dim=1)))


class GLDeepFusion(nn.Module):
    """(local tokens, local skip, global map, patch boxes) -> patch logits at stride 4."""

    def __init__(self, width: int, skip_width: int, head_width: int, num_classes: int, context: float) -> None:
        super().__init__()
        self.crop = GlobalCrop(context)
        self.local_norm = nn.LayerNorm(width)
        self.global_norm = nn.LayerNorm(width)
        self.global_to_local = CrossAttentionEncoder(width)  # encoder 1: queries global
        self.local_to_global = CrossAttentionEncoder(width)  # encoder 2: queries local
        self.decoder = FusionDecoder(width)
        self.head = SegmentationHead(width, skip_width, head_width, num_classes)

    def forward(
        self,
        local_features: torch.Tensor,
        local_skip: torch.Tensor,
        global_features: torch.Tensor,
        boxes: torch.Tensor,
    ) -> torch.Tensor:
        batch, width, h, w = local_features.shape
        h, w = int(h), int(w)  # fixed by the patch size (the bundle contract), so plain ints when traced
        margin_y, margin_x = self.crop.margins(h, w)
        global_crop = self.crop(global_features, boxes, h, w)  # [B, d, h + 2my, w + 2mx]
        local_tokens = self.local_norm(local_features.flatten(2).transpose(1, 2))  # [B, h*w, d]
        global_tokens = self.global_norm(global_crop.flatten(2).transpose(1, 2))  # [B, (h + 2my)(w + 2mx), d]
        from_global = self.global_to_local(global_tokens, local_tokens)
        from_global = centre_tokens(from_global, h, w, margin_y, margin_x)  # token k: local token k's pixels
        from_local = self.local_to_global(local_tokens, global_tokens)
        fused = self.decoder(from_global, from_local)
        fused = fused.transpose(1, 2).reshape(batch, width, h, w)
        return self.head(fused, local_skip)
