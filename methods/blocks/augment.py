"""RA/PHANES training augmentation on the device: random affine (rotation ≤ 10°, translation ≤ 10 %,
scale 0.9–1.1) then a horizontal flip with p = 0.5.

The official loaders run torchvision ``RandomAffine(10, (0.1, 0.1), (0.9, 1.1))`` + ``RandomHorizontalFlip(0.5)``
on an 8-bit PIL copy of every training slice (specs/ra.md §1). Here the same parameter draws (angle uniform,
translation uniform then rounded to whole pixels, scale uniform, no shear) become one ``F.affine_grid`` per batch,
sampled with nearest neighbour and zero fill like torchvision's defaults, so the data never leave the GPU. The
8-bit PIL round trip is skipped: inputs are already 8-bit-quantised and nearest sampling keeps their values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def affine_params(n: int, height: int, width: int, *, generator: torch.Generator | None = None,
                  degrees: float = 10.0, translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1),
                  hflip_p: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-sample draws on the CPU generator (reproducible whatever the device): angle (deg), tx, ty (px), s, flip."""
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    angle = (2 * u[:, 0] - 1) * degrees
    tx = torch.round((2 * u[:, 1] - 1) * translate * width)
    ty = torch.round((2 * u[:, 2] - 1) * translate * height)
    s = scale[0] + u[:, 3] * (scale[1] - scale[0])
    flip = u[:, 4] < hflip_p
    return {"angle": angle, "tx": tx, "ty": ty, "scale": s, "flip": flip}


def affine_theta(params: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
    """[N, 2, 3] output→input maps in ``affine_grid``'s normalised coordinates (align_corners=False).

    Forward map in centred pixels: y = s·R·x + t, then x ↦ −x when flipped. ``affine_grid`` wants the inverse,
    x = R⁻¹(F·y − t)/s, conjugated by D = diag(2/W, 2/H) so that rotations stay rotations on non-square images.
    """
    a = params["angle"] * math.pi / 180.0
    cos, sin, s = torch.cos(a), torch.sin(a), params["scale"]
    inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / s[:, None, None]  # R⁻¹/s
    d = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    lin = d[None, :, None] * inv / d[None, None, :]  # D R⁻¹ D⁻¹ / s
    flip = torch.where(params["flip"], -1.0, 1.0).to(torch.float64)
    lin = lin * torch.stack([flip, torch.ones_like(flip)], -1)[:, None, :]  # right-multiply by F = diag(±1, 1)
    t = torch.stack([params["tx"], params["ty"]], -1)
    off = -(d[None, :] * (inv @ t[..., None])[..., 0])
    return torch.cat([lin, off[..., None]], dim=2)


def random_affine(images: torch.Tensor, *extra: torch.Tensor, generator: torch.Generator | None = None,
                  mode: str = "nearest", **ranges) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Augment ``images`` [B, C, H, W] (and ``extra`` maps, e.g. masks, with the same draws, always nearest).

    ``ranges``: ``degrees``, ``translate``, ``scale``, ``hflip_p`` (defaults are RA's). Empty areas are filled with 0.
    """
    b, _, h, w = images.shape
    theta = affine_theta(affine_params(b, h, w, generator=generator, **ranges), h, w)
    grid = F.affine_grid(theta.to(images.device, torch.float32), [b, 1, h, w], align_corners=False)
    out = F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="zeros", align_corners=False)
    if not extra:
        return out
    rest = tuple(F.grid_sample(e, grid.to(e.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
                 for e in extra)
    return (out, *rest)
