"""Attention modules that sit between a backbone's unpooled features and the head.

* ``CBAM`` (Woo et al., 2018): channel attention (shared MLP over avg- and max-pooled
  descriptors, reduction ratio ``r``) followed by spatial attention (a ``k x k`` conv over the
  channel-wise avg/max maps). Used on CNN feature maps ``(B, C, H, W)``; the published
  ResNet18+CBAM uses ``r=16, k=7`` and AlexNet+CBAM ``r=8, k=5``.
* ``SpatialAttentionPool``: attention-weighted pooling ("ViT-SA"): a small scoring MLP gives
  one score per position (patch token or feature-map cell), softmax over positions, and the
  features are summed with those weights. Works on tokens ``(B, N, C)`` and maps.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` per channel."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv_k([mean_c(x); max_c(x)]))`` per position."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            kernel_size += 1  # odd kernel keeps the map size with symmetric padding
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Module):
    """Convolutional Block Attention Module on a ``(B, C, H, W)`` map; output has the same shape."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"CBAM expects a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        return self.spatial(self.channel(x))


class SpatialAttentionPool(nn.Module):
    """Attention-weighted pooling of positions: ``(B, N, C)`` tokens or ``(B, C, H, W)`` -> ``(B, C)``.

    ``last_weights`` keeps the most recent ``(B, N)`` attention weights for inspection.
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(1, channels // 4)
        self.score = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        if x.ndim != 3:
            raise ValueError(f"SpatialAttentionPool expects (B, N, C) or (B, C, H, W), got {tuple(x.shape)}")
        weights = torch.softmax(self.score(x).squeeze(-1), dim=1)  # (B, N)
        self.last_weights = weights.detach()
        return torch.einsum("bn,bnc->bc", weights, x)
