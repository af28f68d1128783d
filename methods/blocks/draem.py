"""DRAEM's discriminative sub-network and its two losses (specs/baselines.md §15; facts from VitjanZ/DRAEM
model_unet.py, loss.py @2dbf673). The reconstructive sub-network is ``EncoderDecoder.draem`` (methods/blocks/encdec.py).

Users: ``draem`` (segmentation net, 2C → 2 logits, focal + SSIM losses) and ``afsc`` (the same U-Net as its pixel
pair discriminator, 2 → 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.blocks.encdec import Encoder, conv_bn_relu, double_conv
from methods.blocks.gan import init_normal_

ENCODER_MULTS = (1, 2, 4, 8, 8, 8)
DECODER_MULTS = (8, 4, 2, 1, 1)


class DiscriminativeUNet(nn.Module):
    """DRAEM's ``DiscriminativeSubNetwork``: a U-Net with skips (why: the segmentation must be pixel-accurate).

    Encoder: ``double_conv`` levels b·(1, 2, 4, 8, 8, 8) with max-pool 2 between them (five poolings, so the side
    must divide by 32; 128 px → 4 × 4 at the bottom). Decoder, five stages of widths b·(8, 4, 2, 1, 1): bilinear ×2
    (align_corners=True) → Conv3×3-BN-ReLU to the stage width, concat the encoder feature of that resolution,
    ``double_conv`` back to the stage width. Final 3×3 conv to ``out_channels``, no activation. DRAEM's N(0, 0.02)
    init (``init_normal_``; conv biases zeroed, see its docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, base_width: int = 64):
        super().__init__()
        self.encoder = Encoder(in_channels, [base_width * m for m in ENCODER_MULTS])
        skips = [base_width * m for m in ENCODER_MULTS[:-1]][::-1]  # widths of b5 … b1
        c = base_width * ENCODER_MULTS[-1]
        ups, merges = [], []
        for mult, skip in zip(DECODER_MULTS, skips):
            w = base_width * mult
            ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                                     *conv_bn_relu(c, w)))
            merges.append(double_conv(w + skip, w))
            c = w
        self.ups, self.merges = nn.ModuleList(ups), nn.ModuleList(merges)
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)
        self.stride = self.encoder.stride
        init_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"DiscriminativeUNet: input {tuple(x.shape[-2:])} must divide by {self.stride}")
        levels = self.encoder.levels
        feats = [levels[0](x)]
        for level in levels[1:]:
            feats.append(level(self.encoder.pool(feats[-1])))
        h = feats.pop()
        for up, merge in zip(self.ups, self.merges):
            h = merge(torch.cat([up(h), feats.pop()], dim=1))
        return self.head(h)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """DRAEM's focal loss on the 2-class softmax: mean over pixels of −(1 − p_t)^γ · log p_t.

    ``logits`` [B, 2, H, W] (the softmax is taken here; DRAEM applies it before its loss), ``target`` [B, 1, H, W]
    with values 0/1. As in DRAEM's ``FocalLoss``: the one-hot target is clipped to [smooth, 1 − smooth] and
    p_t = Σ_c onehot_c·p_c + smooth; α = 1. Computed in fp32.
    """
    if logits.shape[1] != 2:
        raise ValueError(f"focal_loss: expected 2-class logits [B, 2, H, W], got {tuple(logits.shape)}")
    p = torch.softmax(logits.float(), dim=1)
    t = target.float().round().clamp(0.0, 1.0)
    onehot = torch.cat([1.0 - t, t], dim=1).clamp(smooth, 1.0 - smooth)
    pt = (onehot * p).sum(dim=1) + smooth
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian [size, size] centred on pixel size // 2 (DRAEM's ``create_window``)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g).float()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5,
             data_range: float | torch.Tensor | None = None) -> torch.Tensor:
    """SSIM map [B, C, H, W] of DRAEM's ``ssim``: Gaussian window per channel, zero padding window // 2, population
    (co)variances, C1 = (0.01 L)², C2 = (0.03 L)². ``data_range`` None = DRAEM's rule from ``a``: L = 255 if
    max(a) > 128 else 1, minus −1 if min(a) < −0.5 (else 0). Differentiable; fp32 even under autocast."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.float(), b.float()
        if data_range is None:  # as tensors: no host sync per training step
            hi = torch.where(a.detach().max() > 128, 255.0, 1.0)
            lo = torch.where(a.detach().min() < -0.5, -1.0, 0.0)
            data_range = hi - lo
        c = a.shape[1]
        w = gaussian_window(window, sigma).to(a.device)[None, None].expand(c, 1, window, window)

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, w, padding=window // 2, groups=c)

        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a * mu_a
        var_b = blur(b * b) - mu_b * mu_b
        cov = blur(a * b) - mu_a * mu_b
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


def ssim_loss(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """1 − mean SSIM (DRAEM's ``SSIM`` loss, called as ssim(reconstruction, target))."""
    return 1.0 - ssim_map(a, b, window).mean()
