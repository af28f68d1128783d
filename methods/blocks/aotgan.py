"""AOT-GAN inpainting blocks as PHANES uses them (specs/phanes.md §4): generator, SM-PatchGAN and their losses.

Zeng et al., "Aggregated Contextual Transformations for High-Resolution Image Inpainting" (TVCG 2022), code
github.com/researchmm/AOT-GAN-for-Inpainting @2cd1afd ``src/model/aotgan.py``, ``src/loss/loss.py``; PHANES keeps a
modified copy (ci-ber/PHANES ``model_zoo/aotgan/`` @c8995ed) with 2 input channels (masked image, mask), 1 output
channel and an SM-PatchGAN whose real target is 0.

- :class:`AOTGenerator`: 7×7 conv → two stride-2 4×4 convs → ``n_blocks`` :class:`AOTBlock` → two bilinear ×2 +
  3×3 conv (:class:`UpConv`) → 3×3 conv → tanh. Widths default to the spec's (64, 128, 256).
- :class:`AOTBlock`: four dilated 3×3 branches of C/4 channels (rates 1, 2, 4, 8, reflection padded), fused by a
  3×3 conv and mixed into the input through a spatially standardised sigmoid gate.
- :class:`SMPatchDiscriminator`: four spectral-normalised bias-free 4×4 convs (s2, s2, s2, s1) + LeakyReLU(0.2),
  then a plain 4×4 conv to one channel (14×14 patches at 128 px).
- Losses: :func:`smgan_discriminator_loss` (soft mask target for the composite, 0 for the real image),
  :func:`smgan_generator_loss` (the shared LSGAN generator loss on the upsampled patch map),
  :func:`gram_matrix` / :func:`style_loss` / :func:`perceptual_loss` on feature dicts of a frozen trunk.

Why its own discriminator instead of ``methods.blocks.gan.PatchDiscriminator``: SM-PatchGAN has no biases in
its spectral-normalised convs and a plain (not spectral-normalised) head with a bias; the shared class cannot
express both, and the numbers of a spec-faithful D matter for the D loss PHANES trains.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.blocks.gan import init_normal_, lsgan_generator_loss

__all__ = ["AOTBlock", "UpConv", "AOTGenerator", "SMPatchDiscriminator", "aot_gate_norm", "smgan_target",
           "smgan_discriminator_loss", "smgan_generator_loss", "gram_matrix", "style_loss", "perceptual_loss",
           "AOT_RATES", "AOT_WIDTHS", "SMGAN_WIDTHS"]

AOT_RATES = (1, 2, 4, 8)
AOT_WIDTHS = (64, 128, 256)  # encoder widths; the AOT blocks run at the last one (dim 256)
SMGAN_WIDTHS = (64, 128, 256, 512)


def aot_gate_norm(feat: torch.Tensor) -> torch.Tensor:
    """AOT's ``my_layer_norm``: 5·(2·(g − mean)/(std + 1e-9) − 1) per image and channel over H, W (unbiased std).

    In fp32: the statistics of a bf16 feature map would shift the gate visibly."""
    g = feat.float()
    mean = g.mean((2, 3), keepdim=True)
    std = g.std((2, 3), keepdim=True) + 1e-9
    return 5 * (2 * (g - mean) / std - 1)


class AOTBlock(nn.Module):
    """Aggregated contextual transformation: four dilated branches (C → C/4 each), fuse, gated residual."""

    def __init__(self, dim: int = 256, rates: Sequence[int] = AOT_RATES):
        super().__init__()
        if dim % len(rates):
            raise ValueError(f"AOT block: dim {dim} is not divisible by the {len(rates)} branches")
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.ReflectionPad2d(r), nn.Conv2d(dim, dim // len(rates), 3, padding=0, dilation=r), nn.ReLU())
            for r in self.rates)
        self.fuse = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0))
        self.gate = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        gate = torch.sigmoid(aot_gate_norm(self.gate(x))).to(out.dtype)
        return x * (1 - gate) + out * gate


class UpConv(nn.Module):
    """Bilinear ×2 (align_corners=True) then a 3×3 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class AOTGenerator(nn.Module):
    """``G(x_masked, m)`` → raw tanh output in [−1, 1] (callers clamp to [0, 1] where the spec does).

    ``in_channels``: image channels + 1 (the mask); PHANES: 2 → 1. The feature map of the AOT blocks is 1/4 of the
    image side and must exceed the largest rate (reflection padding needs pad < size): 128 px → 32 > 8.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, widths: Sequence[int] = AOT_WIDTHS,
                 n_blocks: int = 8, rates: Sequence[int] = AOT_RATES):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"AOT generator: widths are (c1, c2, dim), got {tuple(widths)}")
        c1, c2, dim = (int(w) for w in widths)
        self.rates = tuple(rates)
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, c1, 7), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c2, dim, 4, stride=2, padding=1), nn.ReLU())
        self.middle = nn.Sequential(*[AOTBlock(dim, rates) for _ in range(n_blocks)])
        self.decoder = nn.Sequential(UpConv(dim, c2), nn.ReLU(), UpConv(c2, c1), nn.ReLU(),
                                     nn.Conv2d(c1, out_channels, 3, stride=1, padding=1))
        init_normal_(self)  # AOT init_weights("normal", 0.02): conv/linear ~ N(0, 0.02), biases 0

    def check_size(self, image_size: int) -> None:
        inner = image_size // 4
        if image_size % 4 or inner <= max(self.rates, default=0):
            raise ValueError(f"AOT generator: a {image_size}-px image gives {inner}-px AOT features; reflection "
                             f"padding at rate {max(self.rates)} needs more than {max(self.rates)} (≥ "
                             f"{4 * (max(self.rates) + 1)} px, a multiple of 4)")

    def forward(self, x_masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(torch.cat([x_masked, mask.to(x_masked.dtype)], dim=1))
        return torch.tanh(self.decoder(self.middle(h)))


class SMPatchDiscriminator(nn.Module):
    """SM-PatchGAN D: four spectral-normalised bias-free 4×4 convs (strides 2, 2, 2, 1; LeakyReLU 0.2), then a
    plain 4×4 conv with bias to one channel. Returns the raw patch map (no sigmoid; MSE losses)."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = SMGAN_WIDTHS):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"SM-PatchGAN: four widths, got {tuple(widths)}")
        sn = nn.utils.parametrizations.spectral_norm
        layers: list[nn.Module] = []
        cin = in_channels
        for w, stride in zip(widths, (2, 2, 2, 1)):
            layers += [sn(nn.Conv2d(cin, int(w), 4, stride=stride, padding=1, bias=False)), nn.LeakyReLU(0.2)]
            cin = int(w)
        layers.append(nn.Conv2d(cin, 1, 4, stride=1, padding=1))
        self.conv = nn.Sequential(*layers)
        init_normal_(self)  # same init as G; spectral-norm convs: their raw weight (as AOT's in-place init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# ---------------------------------------------------------------------------------------------------- losses


def _kornia_gaussian(ksize: int, sigma: float, device: torch.device) -> torch.Tensor:
    """AOT's ``get_gaussian_kernel``: exp(−(i − k//2)²/2σ²) for i < k, normalised to sum 1 (float32)."""
    t = torch.arange(ksize, device=device, dtype=torch.float64) - ksize // 2
    k = torch.exp(-(t * t) / (2.0 * float(sigma) ** 2))
    return (k / k.sum()).float()


def smgan_target(mask: torch.Tensor, ksize: int = 71, sigma: float = 10.0) -> torch.Tensor:
    """The soft SM-PatchGAN label of a composite: the mask blurred by a ``ksize``² Gaussian (σ) with zero padding,
    as AOT's ``gaussian_blur(masks, (71, 71), (10, 10))`` (separable; identical up to float rounding)."""
    if ksize % 2 == 0 or ksize <= 0:
        raise ValueError(f"kernel size must be odd and positive, got {ksize}")
    k = _kornia_gaussian(ksize, sigma, mask.device)
    b, c, h, w = mask.shape
    y = mask.float().reshape(b * c, 1, h, w)
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(ksize // 2, 0))
    y = F.conv2d(y, k.view(1, 1, 1, -1), padding=(0, ksize // 2))
    return y.reshape(b, c, h, w)


def _to_image_size(patches: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """D's patch map bilinearly upsampled (align_corners=True) to the image grid, fp32."""
    p = patches.float()
    if tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p, size=size, mode="bilinear", align_corners=True)
    return p


def smgan_discriminator_loss(d_fake: torch.Tensor, d_real: torch.Tensor, mask: torch.Tensor, *,
                             ksize: int = 71, sigma: float = 10.0) -> torch.Tensor:
    """MSE(D(comp.detach()), blur(mask)) + MSE(D(x), 0), the patch maps upsampled to the mask's size (PHANES's
    smgan: real target 0; the original AOT code uses 1). ``mask``: the part of the hole D must find (PHANES:
    the synthetic masks only)."""
    size = tuple(mask.shape[-2:])
    fake, real = _to_image_size(d_fake, size), _to_image_size(d_real, size)
    return F.mse_loss(fake, smgan_target(mask, ksize, sigma)) + F.mse_loss(real, torch.zeros_like(real))


def smgan_generator_loss(d_fake: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MSE(D(comp), 1) on the upsampled patch map: the shared LSGAN generator loss. AOT multiplies it by
    m/mean(m) after the MSE has been reduced to a scalar, which the final mean cancels, so it is left out."""
    return lsgan_generator_loss(_to_image_size(d_fake, size))


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """F Fᵀ / (C·H·W) per image, fp32: [B, C, C]."""
    b, c, h, w = feat.shape
    f = feat.float().reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_loss(pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               taps: Sequence[str]) -> torch.Tensor:
    """Σ_taps L1(Gram(pred), Gram(target)) (AOT ``Style``)."""
    return sum((F.l1_loss(gram_matrix(pred[t]), gram_matrix(target[t])) for t in taps),  # type: ignore[return-value]
               torch.zeros((), device=next(iter(pred.values())).device))


def perceptual_loss(pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], taps: Sequence[str],
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """Σ_taps w·L1(φ(pred), φ(target)) (AOT ``Perceptual``, weights 1), fp32."""
    weights = [1.0] * len(taps) if weights is None else list(weights)
    total = torch.zeros((), device=next(iter(pred.values())).device)
    for w, t in zip(weights, taps):
        total = total + w * F.l1_loss(pred[t].float(), target[t].float())
    return total
