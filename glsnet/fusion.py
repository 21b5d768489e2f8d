"""GL-Deep Fusion: the crop of global features per patch, two cross-attention encoders, one decoder.

Paper facts: queries, keys and values are the branch features themselves (no Q/K/V projection
matrices) and there is no feed-forward network. Encoder 1 takes queries from the global tokens
and keys/values from the local ones; encoder 2 is its mirror. The decoder attends from both
encoders' outputs to both, and a light convolutional head adds the local stride-4 features.
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


def bilinear_crop_weights(
    start: torch.Tensor, end: torch.Tensor, out_size: torch.Tensor, axis: torch.Tensor, stride: int
) -> torch.Tensor:
    """[B, out, in] weights that resample a feature axis at ``out`` evenly spaced points in [start, end).

    ``start``/``end`` are [B] pixel coordinates; ``axis`` is arange(in) of the feature axis. Cell i of
    a stride-s map is centred on pixel s*i, so a continuous pixel coordinate x sits at feature
    coordinate (x - 0.5) / s. The tent max(0, 1 - |u - i|) is exact bilinear interpolation, and
    clamping u to the map's extent replicates its border, as RoIAlign does.
    """
    steps = (torch.arange(out_size, dtype=start.dtype, device=start.device) + 0.5) / out_size
    x = start[:, None] + steps[None, :] * (end - start)[:, None]
    u = ((x - 0.5) / stride).clamp(min=0)
    u = torch.minimum(u, axis[-1])
    return (1.0 - (u[:, :, None] - axis[None, None, :]).abs()).clamp(min=0)


class GlobalCrop(nn.Module):
    """Crop each patch's footprint plus a context margin out of the global feature map.

    A separable matmul (crop = Wy . F . Wx^T) instead of RoiAlign: plain MatMul and elementwise ops,
    no TensorRT plugin, exact in fp32, and dynamic in the batch and the map size.
    """

    def __init__(self, context: float, stride: int = 32) -> None:
        super().__init__()
        self.context = context
        self.stride = stride

    def forward(self, global_features: torch.Tensor, boxes: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        mx = (x2 - x1) * self.context
        my = (y2 - y1) * self.context
        feat_h, feat_w = global_features.shape[-2], global_features.shape[-1]
        ys = torch.arange(feat_h, dtype=boxes.dtype, device=boxes.device)
        xs = torch.arange(feat_w, dtype=boxes.dtype, device=boxes.device)
        wy = bilinear_crop_weights(y1 - my, y2 + my, out_h, ys, self.stride)  # [B, h, Hg]
        wx = bilinear_crop_weights(x1 - mx, x2 + mx, out_w, xs, self.stride)  # [B, w, Wg]
        cropped = torch.matmul(wy[:, None], global_features)  # [B, d, h, Wg]
        return torch.matmul(cropped, wx[:, None].transpose(-2, -1))  # [B, d, h, w]


class CrossAttentionEncoder(nn.Module):
    """LayerNorm(queries + Attention(queries, context, context)); no projections, no FFN."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.norm(queries + attention(queries, context, context))


class FusionDecoder(nn.Module):
    """One attention layer over both encoder outputs: aligned tokens query the union of both sequences."""

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
        global_crop = self.crop(global_features, boxes, h, w)
        local_tokens = local_features.flatten(2).transpose(1, 2)  # [B, h*w, d]
        global_tokens = global_crop.flatten(2).transpose(1, 2)
        from_global = self.global_to_local(global_tokens, local_tokens)
        from_local = self.local_to_global(local_tokens, global_tokens)
        fused = self.decoder(from_global, from_local)
        fused = fused.transpose(1, 2).reshape(batch, width, h, w)
        return self.head(fused, local_skip)
