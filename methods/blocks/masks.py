"""IterMask2's random "Gaussian patch" training masks (specs/itermask2.md §4), batched and seeded.

The official ``datasets/brats2021.py`` draws, per sample: a scale mode, a random covariance, a brain-pixel
centre, a peak-normalised 2-D Gaussian density on the brain, and ~30–2000 square patches (sides 4/8/16)
whose **row and column come from two independent draws** of that density (product of marginals — kept);
it does so on the native 240×240 slice and area-resizes ``keep`` to 128. We emulate that: the stored soft
128-px brain mask is upsampled to ``native_size`` (bilinear, ≥ 0.5), the recipe runs there, and ``keep``
is area-resized back. Everything is vectorised over the batch (inverse-CDF sampling with
``searchsorted``, patch painting with a 2-D difference array + cumsum), so masks are made on the GPU with
the data and are reproducible from one ``torch.Generator`` on that device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH_SIDES = (4, 8, 16)  # at the native 240-px scale; the side-32 patch is defined but never used


def _uniform(shape, lo, hi, gen, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device, dtype=torch.float64)


def _randint(lo: torch.Tensor, hi: torch.Tensor, gen, device) -> torch.Tensor:
    """Per-element integer in [lo, hi) (numpy ``randint(low, high)`` with float bounds → floor)."""
    lo, hi = lo.floor(), hi.floor()
    u = torch.rand(lo.shape, generator=gen, device=device, dtype=torch.float64)
    return (lo + (u * (hi - lo)).floor()).clamp(max=hi - 1).long()


def _cdf(weights: torch.Tensor) -> torch.Tensor:
    return weights.cumsum(dim=1, dtype=torch.float64)


def _sample_index(cdf: torch.Tensor, n: int, gen) -> torch.Tensor:
    """``n`` categorical draws per row (with replacement) by inverse CDF; ``cdf`` [B, K] from ``_cdf``."""
    u = torch.rand((cdf.shape[0], n), generator=gen, device=cdf.device, dtype=torch.float64) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True)
    return idx.clamp_(max=cdf.shape[1] - 1)


def native_brain(brain: torch.Tensor, native_size: int) -> torch.Tensor:
    """Binary brain mask at the native grid: bilinear upsampling of the soft mask, thresholded at 0.5."""
    if brain.shape[-1] == native_size and brain.shape[-2] == native_size:
        return (brain > 0).float()
    up = F.interpolate(brain.float(), size=(native_size, native_size), mode="bilinear", align_corners=False)
    return (up >= 0.5).float()


def gaussian_patch_keep(brain_native: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """``keep`` [B, 1, S, S] at the native grid: 1 everywhere, 0 inside the sampled patches (§4 steps 1–7)."""
    b, _, s, s2 = brain_native.shape
    if s != s2:
        raise ValueError("native grid must be square")
    dev = brain_native.device
    flat_brain = brain_native.reshape(b, -1)
    empty = flat_brain.sum(dim=1) == 0
    flat_brain = torch.where(empty[:, None], torch.ones_like(flat_brain), flat_brain)  # no brain: anywhere

    # 1–2: scale mode and covariance (grid units)
    mode = torch.randint(0, 3, (b,), generator=gen, device=dev)
    c11 = _uniform((b,), 0.3, 10.0, gen, dev)
    c22 = _uniform((b,), 0.3, 10.0, gen, dev)
    c12 = _uniform((b,), 0.0, 1.0, gen, dev) * (c11 * c22).sqrt()
    c12 = torch.where(torch.randint(0, 2, (b,), generator=gen, device=dev) == 0, -c12, c12)
    # 3: centre, a brain pixel chosen uniformly
    centre = _sample_index(_cdf(flat_brain), 1, gen)[:, 0]
    r0, col0 = (centre // s).double(), (centre % s).double()
    # 5: patch counts (drawn before positions; they only depend on mode and Σ)
    sq = (c11 * c22).sqrt()
    fine = mode == 2
    n4 = _randint(torch.where(fine, 5 * sq, 100 * sq), torch.where(fine, 20 * sq, 200 * sq), gen, dev)
    n8 = _randint(torch.full_like(sq, 5.0), torch.full_like(sq, 10.0), gen, dev)
    n16 = _randint(torch.full_like(sq, 3.0), torch.full_like(sq, 10.0), gen, dev)
    # 4: peak-normalised Gaussian; grid step 0.1 (1 unit = 10 px at 240) or 0.4 (1 unit = 2.5 px) scaled
    #    to the native size so that a unit covers the same fraction of the image
    step = torch.where(fine, 0.4, 0.1) * (240.0 / s)
    rows = torch.arange(s, device=dev, dtype=torch.float64)
    det = (c11 * c22 - c12**2).clamp_min(1e-12)
    # quadratic form of Σ⁻¹ split into row, column and cross terms (float32 from here: it is a weight)
    du = ((rows[None, :] - r0[:, None]) * step[:, None])  # [B, S]
    dv = ((rows[None, :] - col0[:, None]) * step[:, None])
    qa = (-0.5 * (c22 / det)[:, None] * du**2).float()[:, :, None]
    qb = (-0.5 * (c11 / det)[:, None] * dv**2).float()[:, None, :]
    qc = ((c12 / det)[:, None] * du).float()[:, :, None] * dv.float()[:, None, :]
    dens = torch.exp(qa + qb + qc).reshape(b, -1) * flat_brain  # peak 1 at the centre, a brain pixel
    # 6: positions, row from one draw and column from another (independent) draw
    n_max = int((n4 + n8 + n16).max())
    cdf = _cdf(dens)
    row = _sample_index(cdf, n_max, gen) // s
    col = _sample_index(cdf, n_max, gen) % s
    j = torch.arange(n_max, device=dev)[None, :]
    side = torch.where(j < n4[:, None], PATCH_SIDES[0], torch.where(j < (n4 + n8)[:, None], PATCH_SIDES[1],
                                                                     PATCH_SIDES[2]))
    side = (side.double() * (s / 240.0)).round().long().clamp_min(1)
    valid = (j < (n4 + n8 + n16)[:, None]).float()
    # 7: paint the l×l squares (top-left at (row, col), clipped at the edge) with a difference array
    pad = s + int(side.max()) + 1
    diff = torch.zeros((b, pad * pad), device=dev, dtype=torch.float32)  # counts: exact in fp32
    for dr, dc, sign in ((0, 0, 1.0), (1, 0, -1.0), (0, 1, -1.0), (1, 1, 1.0)):
        idx = (row + dr * side) * pad + (col + dc * side)
        diff.scatter_add_(1, idx, sign * valid)
    cover = diff.reshape(b, pad, pad).cumsum(1).cumsum(2)[:, :s, :s]
    return (cover < 0.5).to(brain_native.dtype)[:, None]


def random_patch_masks(brain: torch.Tensor, gen: torch.Generator | None = None, native_size: int = 240) -> torch.Tensor:
    """Training mask ``m = (1 − keep)·B`` [B, 1, H, W] (soft): fresh per call, reproducible from ``gen``.

    ``brain``: the stored (soft) brain mask [B, 1, H, W]. ``native_size``: the grid the official recipe
    runs on (240 for BraTS); use ``H`` to draw directly at the stored size (patch sides then scale down).
    """
    h, w = brain.shape[-2:]
    keep = gaussian_patch_keep(native_brain(brain, native_size), gen)
    if keep.shape[-2:] != (h, w):
        keep = F.interpolate(keep.float(), size=(h, w), mode="area")  # monai Resized default ('area')
    return ((1 - keep.to(brain.dtype)) * brain).contiguous()


def masked_fraction(mask: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Share of the brain covered by ``mask`` per sample (sanity checks, §4's 0.14 mean)."""
    return mask.flatten(1).sum(1) / brain.flatten(1).sum(1).clamp_min(1e-8)


__all__ = ["random_patch_masks", "gaussian_patch_keep", "native_brain", "masked_fraction", "PATCH_SIDES"]
