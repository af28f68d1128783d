"""Baur et al. (MedIA 2021) convolutional encoder/decoder, shared by AE-D (dense) and AE-S (spatial).

Follows the ci-ber PyTorch port (specs/baselines.md §1–2): 4 × [5×5 conv stride 2 → BN → LeakyReLU]
with widths 32, 64, 128, 128 down to 8×8 at 128 px, and the mirrored transposed-conv decoder with a
sigmoid output for [0, 1] data.
"""

from __future__ import annotations

import torch
from torch import nn


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 5, stride=2, padding=2), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1),
                         nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class BaurEncoder(nn.Module):
    """[B, C, H, W] → [B, 128, H/16, W/16]."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        chans = (in_channels, *widths)
        self.layers = nn.Sequential(*(_down(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BaurDecoder(nn.Module):
    """[B, 128, H/16, W/16] → [B, C, H, W] in [0, 1] (sigmoid)."""

    def __init__(self, out_channels: int = 1, in_channels: int = 128, widths: tuple[int, ...] = (128, 64, 32, 32),
                 sigmoid: bool = True):
        super().__init__()
        chans = (in_channels, *widths)
        self.layers = nn.Sequential(*(_up(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)
        self.sigmoid = sigmoid

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.head(self.layers(h))
        return torch.sigmoid(y) if self.sigmoid else y


class DenseBottleneck(nn.Module):
    """1×1 conv to 16 channels → flatten → Linear to z → dropout → Linear back → 1×1 conv (AE-D)."""

    def __init__(self, channels: int = 128, spatial: int = 8, z_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.squeeze_channels = channels // 8
        self.spatial = spatial
        flat = self.squeeze_channels * spatial * spatial
        self.squeeze = nn.Conv2d(channels, self.squeeze_channels, 1)
        self.to_z = nn.Linear(flat, z_dim)
        self.from_z = nn.Linear(z_dim, flat)
        self.drop = nn.Dropout(dropout)
        self.expand = nn.Conv2d(self.squeeze_channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b = h.shape[0]
        z = self.drop(self.to_z(self.squeeze(h).flatten(1)))
        h = self.drop(self.from_z(z)).view(b, self.squeeze_channels, self.spatial, self.spatial)
        return self.expand(h)
