"""Autoencoders (``train.task: autoencoder``, MSE loss): ``forward(x)`` reconstructs ``x``
(in the normalised input space), ``embed(x)`` is the ``latent_dim`` bottleneck used by the index.

* ``ConvAutoencoder``: 3 stride-2 conv layers (32-64-128) -> linear -> latent (16-d by default)
  -> linear -> 3 transposed convs -> resize to the input size.
* ``TimmEncoderAutoencoder``: a timm encoder (``resnet50`` in the published system) whose pooled
  features go through a linear bottleneck, with the same conv decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fashionops.models.backbones import Backbone


class ConvDecoder(nn.Module):
    """latent -> ``(B, 3, H, W)`` via a linear layer and three 2x transposed convs."""

    def __init__(self, latent_dim: int, output_hw: tuple[int, int], channels: int = 128) -> None:
        super().__init__()
        self.output_hw = (int(output_hw[0]), int(output_hw[1]))
        self.seed_hw = (max(1, math.ceil(output_hw[0] / 8)), max(1, math.ceil(output_hw[1] / 8)))
        self.channels = channels
        self.fc = nn.Linear(latent_dim, channels * self.seed_hw[0] * self.seed_hw[1])
        self.net = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(channels, 64, 4, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.channels, *self.seed_hw)
        x = self.net(x)
        if tuple(x.shape[-2:]) != self.output_hw:
            x = F.interpolate(x, size=self.output_hw, mode="bilinear", align_corners=False)
        return x


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder with a small latent (``embedding_dim = latent_dim``)."""

    loss_kind = "mse"

    def __init__(self, input_hw: tuple[int, int], latent_dim: int = 16) -> None:
        super().__init__()
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
        )
        eh, ew = self.input_hw
        for _ in range(3):
            eh, ew = (eh + 1) // 2, (ew + 1) // 2
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(128 * eh * ew, latent_dim))
        self.decoder = ConvDecoder(latent_dim, self.input_hw)
        self.embedding_dim = latent_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.embed(x))


class TimmEncoderAutoencoder(nn.Module):
    """timm encoder (e.g. ``resnet50``) -> pooled features -> linear latent -> conv decoder."""

    loss_kind = "mse"

    def __init__(self, backbone: Backbone, latent_dim: int = 16) -> None:
        super().__init__()
        self.backbone = backbone
        self.to_latent = nn.Linear(backbone.num_features, latent_dim)
        self.decoder = ConvDecoder(latent_dim, backbone.input_hw)
        self.embedding_dim = latent_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.backbone.pool(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.embed(x))
