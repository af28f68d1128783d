"""DCGAN-family stacks of 4×4 stride-2 convolutions (specs/baselines.md §25, row ``DCGANConvStack``), written once.

Users: the Zimmerer VAE (no norm, no bias, LeakyReLU 0.01) and, with BatchNorm and LeakyReLU 0.2 / ReLU, the
AnoGAN / GANomaly encoders, decoders and discriminators and Sparse-GAN's encoder. Every layout is one of:

- :class:`DCGANEncoder`: ``len(widths)`` × [Conv 4×4 s2 p1 → (norm) → activation], then optionally the "to 1×1"
  end conv whose kernel is the remaining spatial size (no activation: a latent, μ‖log σ, or a logit);
- :class:`DCGANDecoder`: the "from 1×1" ConvTranspose (kernel = the start size) → (norm) → activation, then
  ConvTranspose 4×4 s2 p1 → (norm) → activation per further width, then ConvTranspose 4×4 s2 p1 to the image
  channels with an optional output activation.

Sizes come from arguments (the image size of the slice store): :func:`stage_count` says how many stride-2 stages
reach the end size, and :func:`fit_widths` stretches a width list to that many stages, so one config serves 64, 128
and 256 px.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

Norm = Callable[[int], nn.Module]  # channels → module, e.g. nn.BatchNorm2d
Activation = Callable[[], nn.Module]  # e.g. partial(nn.LeakyReLU, 0.2)

LEAKY_02: Activation = partial(nn.LeakyReLU, 0.2)


def stage_count(image_size: int, end_size: int = 4) -> int:
    """The number of stride-2 stages from ``image_size`` down to ``end_size`` (their ratio must be 2^k, k ≥ 1).

    Why a check here: a 4×4 stride-2 stack halves exactly, so any other ratio would silently end at a size the
    "to 1×1" conv or the decoder's start does not expect."""
    ratio, rest = divmod(image_size, end_size)
    if rest or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(f"image size {image_size} is not {end_size}·2^k (k ≥ 1): a stack of stride-2 stages "
                         f"cannot end at {end_size}×{end_size}")
    return ratio.bit_length() - 1


def fit_widths(widths: Sequence[int], stages: int) -> tuple[int, ...]:
    """``widths`` for ``stages`` stages: the first ``stages`` of them, the last one repeated when more are needed.

    RA App. A adapts Zimmerer's 64-px VAE (16, 32, 64, 256) to 128 px by duplicating the last 256-filter layer;
    the same rule gives the 256-px network, and truncation gives back the 64-px one."""
    if not widths or stages < 1:
        raise ValueError(f"need at least one width and one stage, got widths {tuple(widths)}, {stages} stage(s)")
    return tuple(widths[:stages]) + (widths[-1],) * max(0, stages - len(widths))


def _block(layer: nn.Module, channels: int, norm: Norm | None, activation: Activation) -> nn.Sequential:
    parts = [layer] + ([norm(channels)] if norm is not None else []) + [activation()]
    return nn.Sequential(*parts)


class DCGANEncoder(nn.Module):
    """[B, C, S, S] → [B, out_channels, 1, 1] (or the last feature map [B, widths[-1], s, s] without an end conv).

    ``norm_first=False`` leaves the first stage without norm (DCGAN / GANomaly discriminators and encoders);
    ``features`` holds the stages alone (GANomaly's discriminator features, feature matching)."""

    def __init__(self, in_channels: int, widths: Sequence[int], out_channels: int | None = None, *, image_size: int,
                 norm: Norm | None = None, norm_first: bool = False, activation: Activation = LEAKY_02,
                 bias: bool = False):
        super().__init__()
        widths = tuple(widths)
        self.end_size = image_size // 2 ** len(widths)
        if self.end_size < 1 or self.end_size * 2 ** len(widths) != image_size:
            raise ValueError(f"{len(widths)} stride-2 stages do not divide image size {image_size}")
        chans = (in_channels, *widths)
        self.features = nn.Sequential(*(
            _block(nn.Conv2d(a, b, 4, stride=2, padding=1, bias=bias), b, norm if (i or norm_first) else None,
                   activation)
            for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))))
        self.end = None if out_channels is None else nn.Conv2d(widths[-1], out_channels, self.end_size, bias=bias)
        self.out_channels = widths[-1] if out_channels is None else out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return h if self.end is None else self.end(h)


class DCGANDecoder(nn.Module):
    """[B, in_channels] or [B, in_channels, 1, 1] → [B, out_channels, S, S].

    ``widths`` run from the 1×1 side (the reverse of the matching encoder's): ``widths[0]`` channels at the start
    size S / 2^len(widths), one stride-2 ConvTranspose per further width, and the last one to the image. The
    output activation (``out_activation``, e.g. nn.Tanh for GANs) is off by default: the Zimmerer VAE has none."""

    def __init__(self, in_channels: int, widths: Sequence[int], out_channels: int, *, image_size: int,
                 norm: Norm | None = None, activation: Activation = LEAKY_02, bias: bool = False,
                 out_activation: Activation | None = None):
        super().__init__()
        widths = tuple(widths)
        self.start_size = image_size // 2 ** len(widths)
        if self.start_size < 1 or self.start_size * 2 ** len(widths) != image_size:
            raise ValueError(f"{len(widths)} stride-2 stages do not build image size {image_size}")
        self.in_channels = in_channels
        start = _block(nn.ConvTranspose2d(in_channels, widths[0], self.start_size, bias=bias), widths[0], norm,
                       activation)
        ups = (_block(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=bias), b, norm, activation)
               for a, b in zip(widths[:-1], widths[1:]))
        self.layers = nn.Sequential(start, *ups)
        self.end = nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1, bias=bias)
        self.out_activation = out_activation() if out_activation is not None else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.view(z.shape[0], self.in_channels, 1, 1) if z.ndim == 2 else z
        return self.out_activation(self.end(self.layers(h)))
