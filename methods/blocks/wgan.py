"""Residual WGAN-GP networks of Gulrajani et al.'s 64×64 "Good" generator / critic, as f-AnoGAN uses them
(specs/baselines.md §25, row ``WGANResBlocks``; facts from tSchlegl/f-AnoGAN wgangp_64x64.py, z_encoding_izif.py).

- :class:`WGANResBlock`: a pre-activation residual block, norm → ReLU → conv 3×3 → norm → ReLU → conv 3×3, plus a
  shortcut (identity when nothing changes, else a 1×1 conv). ``"down"``: the second conv is followed by a 2×2 mean
  pool (ConvMeanPool) and the shortcut mean-pools before its 1×1 conv (MeanPoolConv); ``"up"``: the first conv and
  the shortcut's 1×1 conv see a 2× nearest up-sampled input (the reference's UpsampleConv: four channel copies
  through depth_to_space are a nearest up-sampling).
- :class:`WGANResGenerator`: Linear z → 4×4×widths[-1], one ``"up"`` block per width towards full resolution, norm,
  ReLU, conv 3×3 to the image channels, tanh. Batch norm in the reference.
- :class:`WGANResEncoder`: conv 3×3, one ``"down"`` block per width down to 4×4, flatten (``features``: the critic's
  penultimate features f(·) of f-AnoGAN's izi_f loss), Linear to ``out_features`` (1 for the critic; z with an
  optional tanh for f-AnoGAN's encoder). Layer norm (:func:`layer_norm`) in the critic, batch norm in the encoder.

Widths run from full resolution to 4×4: :func:`wgan_widths` gives the reference's (DIM, 2, 4, 8, 8 × DIM) at 64 px and
repeats the widest for every further halving (128 px: one more 8·DIM stage, 256 px: two), the rule of
:func:`methods.blocks.dcgan.fit_widths`. Weights start as tflib initialises them (uniform, He-scaled convs inside the
residual branches and the generator's output conv, Glorot-scaled 1×1 shortcuts, input convs and Linears, zero biases).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from methods.blocks.dcgan import fit_widths, stage_count

Norm = Callable[[int], nn.Module]
RESAMPLES = (None, "down", "up")
WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8)  # × DIM, full resolution → 4×4 at 64 px (critic input conv, Res1..Res4 outputs)


def layer_norm(channels: int) -> nn.Module:
    """tflib's Layernorm over (C, H, W) with a per-channel scale and offset: GroupNorm with one group (eps 1e-5).
    It has no running statistics, so a critic built on it scores each image independently of its batch."""
    return nn.GroupNorm(1, channels, eps=1e-5)


def wgan_widths(image_size: int, dim: int) -> tuple[int, ...]:
    """Channel widths from full resolution down to 4×4: ``stage_count(image_size)`` + 1 entries, (1, 2, 4, 8, 8) × dim
    at 64 px, the widest repeated for larger images (and truncated for smaller ones)."""
    if dim < 1:
        raise ValueError(f"dim must be ≥ 1, got {dim}")
    return fit_widths(tuple(m * dim for m in WIDTH_MULTIPLIERS), stage_count(image_size, 4) + 1)


def _uniform_(weight: torch.Tensor, std: float) -> None:
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def conv3(in_channels: int, out_channels: int, kernel: int = 3, *, bias: bool = True, he: bool = True) -> nn.Conv2d:
    """A 'SAME'-padded stride-1 conv with tflib's init: uniform, std √(g / (fan_in + fan_out)), g = 4 (He) or 2
    (Glorot), fan = channels × k²; zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)
    fans = (in_channels + out_channels) * kernel * kernel
    _uniform_(conv.weight, math.sqrt((4.0 if he else 2.0) / fans))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int) -> nn.Linear:
    """tflib's default (Glorot) Linear: uniform, std √(2 / (in + out)), zero bias."""
    layer = nn.Linear(in_features, out_features)
    _uniform_(layer.weight, math.sqrt(2.0 / (in_features + out_features)))
    nn.init.zeros_(layer.bias)
    return layer


class WGANResBlock(nn.Module):
    """Pre-activation residual block (module docstring); ``resample`` ∈ {None, "down", "up"}."""

    def __init__(self, in_channels: int, out_channels: int, resample: str | None, norm: Norm):
        super().__init__()
        if resample not in RESAMPLES:
            raise ValueError(f"unknown resample {resample!r}; known: {RESAMPLES}")
        self.resample = resample
        if resample == "down":
            mid = in_channels
            shortcut: nn.Module = nn.Sequential(nn.AvgPool2d(2), conv3(in_channels, out_channels, 1, he=False))
            conv1: nn.Module = conv3(in_channels, in_channels, bias=False)
            conv2: nn.Module = nn.Sequential(conv3(in_channels, out_channels), nn.AvgPool2d(2))
        elif resample == "up":
            mid = out_channels
            shortcut = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     conv3(in_channels, out_channels, 1, he=False))
            conv1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                  conv3(in_channels, out_channels, bias=False))
            conv2 = conv3(out_channels, out_channels)
        else:
            mid = in_channels
            shortcut = nn.Identity() if in_channels == out_channels else conv3(in_channels, out_channels, 1, he=False)
            conv1 = conv3(in_channels, in_channels, bias=False)
            conv2 = conv3(in_channels, out_channels)
        self.shortcut = shortcut
        self.residual = nn.Sequential(norm(in_channels), nn.ReLU(), conv1, norm(mid), nn.ReLU(), conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class WGANResGenerator(nn.Module):
    """z [B, z_dim] → image [B, out_channels, S, S] in [−1, 1], S = 4 · 2^(len(widths) − 1).

    ``widths`` run from full resolution to 4×4 (as :func:`wgan_widths` gives them): the Linear maps z to
    widths[-1] channels at 4×4 and each up block moves one width towards widths[0]."""

    def __init__(self, z_dim: int, widths: Sequence[int], out_channels: int, *, norm: Norm = nn.BatchNorm2d):
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(f"need at least two widths (one up block), got {widths}")
        self.z_dim, self.start_channels = z_dim, widths[-1]
        self.image_size = 4 * 2 ** (len(widths) - 1)
        self.input = linear(z_dim, 16 * widths[-1])
        rev = widths[::-1]
        self.blocks = nn.Sequential(*(WGANResBlock(a, b, "up", norm) for a, b in zip(rev[:-1], rev[1:])))
        self.output = nn.Sequential(norm(widths[0]), nn.ReLU(), conv3(widths[0], out_channels), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.input(z).view(z.shape[0], self.start_channels, 4, 4)
        return self.output(self.blocks(h))


class WGANResEncoder(nn.Module):
    """image [B, in_channels, S, S] → [B, out_features] (the critic: [B], one score per image).

    ``features(x)``: the flattened 4×4 output of the last down block, [B, 16 · widths[-1]] (the critic's
    penultimate layer). ``out_activation``: e.g. nn.Tanh for f-AnoGAN's encoder (``Z_REG_TYPE = 'tanh_fc'``)."""

    def __init__(self, in_channels: int, widths: Sequence[int], out_features: int, *, norm: Norm = layer_norm,
                 out_activation: Callable[[], nn.Module] | None = None):
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(f"need at least two widths (one down block), got {widths}")
        self.image_size = 4 * 2 ** (len(widths) - 1)
        self.out_features = out_features
        self.input = conv3(in_channels, widths[0], he=False)
        self.blocks = nn.Sequential(*(WGANResBlock(a, b, "down", norm) for a, b in zip(widths[:-1], widths[1:])))
        self.head = linear(16 * widths[-1], out_features)
        self.out_activation = out_activation() if out_activation is not None else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_activation(self.head(self.features(x)))
        return out.flatten() if self.out_features == 1 else out
