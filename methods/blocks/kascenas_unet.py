"""Kascenas et al.'s denoising U-Net (MIDL 2022), the network of the ``dae`` baseline (specs/baselines.md §5, §25).

Layout from the spec: ``depth`` levels of widths ``2**(wf + i)`` (depth 4, wf 6 → 64, 128, 256, 512); every
level is a conv block [ReflectionPad(1) → weight-standardised conv 3×3 → Swish → GroupNorm] × 2, whose GroupNorm
has as many groups as the middle divisor of its channel count; 2×2 average pooling between encoder levels; each
decoder level is ConvTranspose 2×2 stride 2 → concatenation with the encoder skip → conv block; a 1×1 head with no
activation (the output is an image in the input's own intensity scale, not a [0, 1] sigmoid image).

Kept separate from ``methods/blocks/unet.py`` (the guided-diffusion layout) because its blocks differ in every
part: padding, conv, activation, norm and resampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WS_EPS = 1e-5  # [assumption] the spec names weight standardisation but not its ε


def middle_divisor(n: int) -> int:
    """The middle element of the sorted divisors of ``n`` (the upper one of two for an even divisor count):
    64 → 8, 128 → 16, 256 → 16, 512 → 32. Why: the GroupNorm group count of the spec's conv block."""
    if n < 1:
        raise ValueError(f"channel count must be positive, got {n}")
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return divisors[len(divisors) // 2]


def unet_widths(depth: int = 4, wf: int = 6) -> tuple[int, ...]:
    """Per-level widths ``2**(wf + i)`` of the official ``depth``/``wf`` parametrisation."""
    if depth < 1 or wf < 0:
        raise ValueError(f"need depth ≥ 1 and wf ≥ 0, got depth={depth}, wf={wf}")
    return tuple(2 ** (wf + i) for i in range(depth))


class WSConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel on every call: w' = (w − mean) / sqrt(var + ε),
    mean and (biased) variance over the input-channel and spatial axes. Why: the spec's conv; standardising the
    stored parameter (fp32) keeps the statistics exact under bf16 autocast, which casts only the conv itself."""

    def standardised_weight(self) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return (w - mean) / torch.sqrt(var + WS_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardised_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and returned in the input's dtype (statistics stay exact under bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ConvBlock(nn.Sequential):
    """[ReflectionPad(1) → WS conv 3×3 → Swish → GroupNorm(middle divisor)] × 2: ``in_ch`` → ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int):
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers += [nn.ReflectionPad2d(1), WSConv2d(c_in, out_ch, 3), nn.SiLU(),
                       GroupNorm32(middle_divisor(out_ch), out_ch)]
        super().__init__(*layers)


class UpBlock(nn.Module):
    """ConvTranspose 2×2 stride 2 (``in_ch`` → ``out_ch``) → concatenate the skip → conv block (2·out → out)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.block = ConvBlock(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class KascenasUNet(nn.Module):
    """The DAE U-Net: ``in_channels`` → ``out_channels`` (default: the same), ``depth`` levels, widths
    ``2**(wf + i)``. Input sides must be multiples of ``2**(depth − 1)`` (``size_multiple``)."""

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, *, depth: int = 4, wf: int = 6):
        super().__init__()
        self.widths = unet_widths(depth, wf)
        self.size_multiple = 2 ** (depth - 1)
        ins = (in_channels, *self.widths[:-1])
        self.down = nn.ModuleList(ConvBlock(i, o) for i, o in zip(ins, self.widths))
        self.up = nn.ModuleList(UpBlock(self.widths[i + 1], self.widths[i]) for i in reversed(range(depth - 1)))
        self.head = nn.Conv2d(self.widths[0], out_channels or in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(f"KascenasUNet of depth {len(self.widths)}: input {tuple(x.shape[-2:])} is not a "
                             f"multiple of {self.size_multiple}")
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottom level feeds the first up block directly
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)
