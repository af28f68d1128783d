"""RA's anomaly map (Bercea et al., MIDL 2023, eq. 5), reusable by PHANES.

    s(x̄) = |eq(x_ph) − eq(x̄)| · G_σ(LPIPS(x_ph, x̄)) · G_σ(LPIPS(eq(x_ph), eq(x̄)))

eq = CLAHE with scikit-image defaults (specs/ra.md §5), G_σ = scipy's gaussian_filter(σ=2, truncate 4,
mode 'reflect'), LPIPS = spatial LPIPS with ``normalize=True``. Switching ``equalize`` / ``perceptual`` off gives
the Table 3 ablation maps.

CLAHE runs in scikit-image on CPU numpy, one 2-D image at a time (≈ 9 ms per 128² slice): a torch port would
have to match skimage's tile interpolation and clip redistribution bit for bit to keep the paper's maps, so the
maps pay one device→host→device copy per batch instead. The Gaussian is a torch port (exactly scipy's kernel
and boundary rule, checked against scipy in the tests), so it stays on the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def clahe(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``skimage.exposure.equalize_adapthist`` (defaults: kernel H/8, clip 0.01, 256 bins) on every 2-D plane.

    Input [B, C, H, W] in [0, 1]; output the same shape, float32, on the input's device. skimage self-normalises
    each image before and after; a constant image comes back as all ones.
    """
    from skimage import exposure

    arr = x.detach().float().cpu().numpy()
    out = np.empty_like(arr)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):  # a 3-D array would be treated as a volume, so go plane by plane
            plane = arr[b, c]
            # skimage silently turns NaN into finite values; keep it NaN so that ScoreOutput.validate sees it
            out[b, c] = exposure.equalize_adapthist(plane, **kwargs) if np.isfinite(plane).all() else np.nan
    return torch.from_numpy(out).to(x.device)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's kernel: radius = int(truncate·σ + 0.5), exp(−x²/2σ²) normalised to sum 1 (float64)."""
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 / float(sigma) ** 2 * t * t)
    return k / k.sum()


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy's 'reflect' (d c b a | a b c d | d c b a) extension, valid for any pad ≥ 0."""
    idx = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def gaussian_smooth(x: torch.Tensor, sigma: float = 2.0, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian over the last two axes of [B, C, H, W], equal to scipy.ndimage.gaussian_filter on each
    plane (mode 'reflect'). Filtering RA's singleton batch/channel axes in scipy is a no-op, so only H, W count.
    """
    k = gaussian_kernel1d(sigma, truncate).to(device=x.device, dtype=torch.float32)
    r = (k.numel() - 1) // 2
    b, c, h, w = x.shape
    y = x.float().reshape(b * c, 1, h, w)
    y = y.index_select(2, _reflect_index(h, r, x.device))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    y = y.index_select(3, _reflect_index(w, r, x.device))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return y.reshape(b, c, h, w)


def lpips_map(model: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spatial LPIPS [B, 1, H, W] of [0, 1] images (``normalize=True``) in fp32; ``model`` built with spatial=True.

    One-channel images are fed as they are: LPIPS's per-RGB shift/scale broadcasts them, which equals repeating
    the grey channel three times.
    """
    if not getattr(model, "spatial", False):
        raise ValueError("lpips_map needs an LPIPS model built with spatial=True")
    with torch.autocast(device_type=a.device.type, enabled=False):
        return model(a.float(), b.float(), normalize=True).float()


def ra_anomaly_map(x: torch.Tensor, x_ph: torch.Tensor, lpips_model: Any = None, *, equalize: bool = True,
                   perceptual: bool = True, sigma: float = 2.0) -> dict[str, torch.Tensor]:
    """RA eq. 5 for a batch; returns ``{'map', 'residual'}`` (+ ``'lpips'``, ``'lpips_eq'`` smoothed factors).

    Both images are clamped to [0, 1] first (official ``compute_residual``). ``equalize=False`` uses eq = identity
    literally, so the two LPIPS factors coincide and the map is |x_ph − x̄|·G(LPIPS)² (spec §6 [assumption]);
    ``perceptual=False`` drops both LPIPS factors; both off gives the plain residual |x_ph − x̄|.
    The residual is summed over channels (a no-op for RA's single-channel slices).
    """
    x = x.float().clamp(0, 1)
    x_ph = x_ph.float().clamp(0, 1)
    ex, eph = (clahe(x), clahe(x_ph)) if equalize else (x, x_ph)
    residual = (eph - ex).abs().sum(dim=1, keepdim=True)
    out = {"residual": residual}
    amap = residual
    if perceptual:
        if lpips_model is None:
            raise ValueError("ra_anomaly_map: perceptual=True needs an LPIPS model (methods.blocks.perceptual)")
        s1 = gaussian_smooth(lpips_map(lpips_model, x, x_ph), sigma)
        s2 = gaussian_smooth(lpips_map(lpips_model, ex, eph), sigma) if equalize else s1
        out["lpips"], out["lpips_eq"] = s1, s2
        amap = residual * s1 * s2
    out["map"] = amap
    return out
