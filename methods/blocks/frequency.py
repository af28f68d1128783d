"""Frequency-domain guidance: IterMask2's high-pass image ``x_hf`` (specs/itermask2.md §2).

The low-frequency disc of the centred spectrum gets amplitude 1 (not 0) while every phase is kept, so the
network sees edges and texture but no contrast/intensity information it could copy into a lesion.
Batched torch on any device; always computed in float32 (autocast off), as the official code is fp32.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=16)
def _disc_cpu(h: int, w: int, radius: float) -> torch.Tensor:
    """Bool [H, W]: bins of the fftshift-ed spectrum strictly inside ``radius`` of (H//2, W//2)."""
    u = torch.arange(h, dtype=torch.float64)[:, None] - h // 2
    v = torch.arange(w, dtype=torch.float64)[None, :] - w // 2
    return (u**2 + v**2).sqrt() < radius


def low_frequency_disc(h: int, w: int, radius: float = 15.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """The set L = {d < r} (strict; 697 bins for 128×128 and r = 15), in fftshift-ed index space."""
    return _disc_cpu(int(h), int(w), float(radius)).to(device)


def highpass(x: torch.Tensor, radius: float = 15.0) -> torch.Tensor:
    """x_hf = Re(ifft2(ifftshift(A_m·e^{iφ}))) with A_m = 1 inside the disc, |F| outside, φ = angle(F).

    ``x``: [..., H, W] real. Returns float32 of the same shape. Inside the disc a zero bin has angle 0,
    so it becomes 1+0j, exactly like ``abs_ones * exp(1j*angle)`` in the official code.
    """
    dev_type = x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    with torch.autocast(device_type=dev_type, enabled=False):
        xf = x.float()
        h, w = xf.shape[-2:]
        spec = torch.fft.fftshift(torch.fft.fft2(xf), dim=(-2, -1))
        disc = low_frequency_disc(h, w, radius, xf.device)
        unit = torch.polar(torch.ones_like(spec.real), torch.angle(spec))
        spec = torch.where(disc, unit, spec)
        return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real.contiguous()
