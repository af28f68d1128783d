"""ProxyAno's proxies (proxyano.md §2, §2.1), their on-disk cache, and the pseudo-abnormal proxy constructor (§5.2).

A proxy is an image-shaped summary of a slice that keeps its normal structure: the superpixel image (SI: every SLIC
superpixel filled with its mean intensity) by default, or one of Table III's alternatives (Canny edges, a Gaussian-
smoothed image, 8×8 mean patches, and two concatenations). Users: ProxyAno's proxy-extraction module (its training
target) and Cycle-GAN's second domain (baselines.md §14).

Why a cache: SLIC is CPU-bound (~50–100 ms per 256² image), so the proxies of a slice set are computed once, in
parallel, and saved beside the slice store under the set's content key and the proxy settings; :class:`ProxyTable`
then serves them to training steps by slice row (``SliceBatch.index``) from the device.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmark.io import atomic_path

PROXY_KINDS = ("SI", "edge", "smooth", "smooth_patches", "edge+smooth", "edge+smooth_patches")


@dataclass(frozen=True)
class ProxySettings:
    """Every number a proxy depends on (proxyano.md §2 and O2 / O9); part of the cache key and of the train key."""

    slic_segments: int = 800
    slic_compactness: float = 0.1  # on grey [0, 1] (≈ Lab c = 10); c = 10 here would give a square grid (§2 warning)
    canny_sigma: float = 1.0
    smooth_kernel: int = 11
    smooth_sigma: float = 2.5
    patch: int = 8


def proxy_channels(kind: str, image_channels: int = 1) -> int:
    """Channels of a proxy of ``kind`` for an image of ``image_channels`` channels (concatenations add up)."""
    if kind not in PROXY_KINDS:
        raise ValueError(f"unknown proxy {kind!r} (one of {', '.join(PROXY_KINDS)})")
    return image_channels * len(kind.split("+"))


def superpixel_image(img01: np.ndarray, n_segments: int = 800, compactness: float = 0.1) -> np.ndarray:
    """SLIC superpixels of a [H, W] (or [H, W, C]) image in [0, 1], each filled with its mean intensity (the SI).

    skimage defaults otherwise (max_num_iter 10, sigma 0, enforce_connectivity), start_label 0 (§2)."""
    from skimage.segmentation import slic

    img = np.asarray(img01, dtype=np.float64)
    labels = slic(img, n_segments=n_segments, compactness=compactness,
                  channel_axis=None if img.ndim == 2 else -1, start_label=0)
    flat = labels.ravel()
    counts = np.bincount(flat)
    if img.ndim == 2:
        return (np.bincount(flat, img.ravel()) / counts)[labels].astype(np.float32)
    means = np.stack([np.bincount(flat, img[..., c].ravel()) / counts for c in range(img.shape[-1])], -1)
    return means[labels].astype(np.float32)


def edge_map(img01: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Binary Canny edges of a [H, W] image in [0, 1] (skimage, default hysteresis thresholds), as float {0, 1}."""
    from skimage.feature import canny

    return canny(np.asarray(img01, dtype=np.float64), sigma=sigma).astype(np.float32)


def smooth_image(img01: np.ndarray, kernel: int = 11, sigma: float = 2.5) -> np.ndarray:
    """Gaussian blur (OpenCV, ``kernel``×``kernel``, σ = ``sigma``; the group's P-Net defaults, §2.1)."""
    import cv2

    return cv2.GaussianBlur(np.asarray(img01, dtype=np.float32), (kernel, kernel), sigma)


def smooth_patches(img01: np.ndarray, patch: int = 8) -> np.ndarray:
    """Non-overlapping ``patch``×``patch`` squares, each filled with its mean (Table III's 'smooth patches')."""
    img = np.asarray(img01, dtype=np.float32)
    h, w = img.shape
    if h % patch or w % patch:
        raise ValueError(f"smooth patches of {patch} px need a side divisible by {patch}, got {h}×{w}")
    means = img.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return np.repeat(np.repeat(means, patch, 0), patch, 1)


def compute_proxy(image: np.ndarray, kind: str, settings: ProxySettings = ProxySettings()) -> np.ndarray:
    """The proxy of one [C, H, W] image in [0, 1] as [P, H, W] float32. The SI segments all channels jointly; the
    other proxies are per channel; concatenations stack [edge, smooth…] in that order (§2.1, order assumed)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"expected a [C, H, W] image, got shape {img.shape}")
    s = settings
    parts = []
    for part in kind.split("+"):
        if part == "SI":
            si = superpixel_image(img[0] if len(img) == 1 else np.moveaxis(img, 0, -1), s.slic_segments,
                                  s.slic_compactness)
            parts.append(si[None] if si.ndim == 2 else np.moveaxis(si, -1, 0))
        elif part == "edge":
            parts.append(np.stack([edge_map(c, s.canny_sigma) for c in img]))
        elif part == "smooth":
            parts.append(np.stack([smooth_image(c, s.smooth_kernel, s.smooth_sigma) for c in img]))
        elif part == "smooth_patches":
            parts.append(np.stack([smooth_patches(c, s.patch) for c in img]))
        else:
            raise ValueError(f"unknown proxy {kind!r} (one of {', '.join(PROXY_KINDS)})")
    return np.concatenate(parts).astype(np.float32)


def _proxy_job(args: tuple[np.ndarray, str, ProxySettings]) -> np.ndarray:
    return compute_proxy(*args)


def compute_proxies(images: np.ndarray, kind: str, settings: ProxySettings = ProxySettings(),
                    workers: int | None = None) -> np.ndarray:
    """Proxies of [N, C, H, W] images → [N, P, H, W]; in a process pool when there are many (SLIC holds the GIL)."""
    n = len(images)
    workers = min(workers or os.cpu_count() or 1, n)
    if workers <= 1 or n < 16:
        out = [compute_proxy(im, kind, settings) for im in images]
    else:
        with ProcessPoolExecutor(workers) as pool:
            out = list(pool.map(_proxy_job, ((im, kind, settings) for im in images), chunksize=max(1, n // (4 * workers))))
    if not out:
        return np.zeros((0, proxy_channels(kind, images.shape[1]), *images.shape[2:]), np.float32)
    return np.stack(out)


def proxy_cache_file(slices: Any, kind: str, settings: ProxySettings) -> Path:
    """Where a slice set's proxies are cached: ``<store>/proxies/<content key>-<kind>-<settings hash>.npy``."""
    key = hashlib.sha256(json.dumps({"kind": kind, **asdict(settings)}, sort_keys=True).encode()).hexdigest()[:12]
    safe_kind = kind.replace("+", "-")
    return Path(slices.store.path) / "proxies" / f"{slices.cache_key}-{safe_kind}-{key}.npy"


def cached_proxies(slices: Any, kind: str, settings: ProxySettings = ProxySettings()) -> np.ndarray:
    """The proxies of every slice of ``slices`` (a ``SliceSet``), computed once and read back from the cache file
    (written atomically: an interrupted run never leaves a partial file that a later one would read)."""
    path = proxy_cache_file(slices, kind, settings)
    images = slices.materialize("cpu")[0].numpy()
    want = (len(images), proxy_channels(kind, images.shape[1]), *images.shape[2:])
    if path.exists():
        try:
            arr = np.load(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable proxy cache ({err}); delete it to recompute") from err
        if arr.shape != want:
            raise ValueError(f"{path}: proxy cache holds {arr.shape}, expected {want}; delete it to recompute")
        return arr
    arr = compute_proxies(images, kind, settings)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return arr


class ProxyTable:
    """Proxies of some slice sets on one device, looked up by slice row (``SliceBatch.index``)."""

    def __init__(self, rows: torch.Tensor, proxies: torch.Tensor):
        self.proxies = proxies
        size = int(rows.max()) + 1 if len(rows) else 0
        self.position = torch.full((size,), -1, dtype=torch.long, device=proxies.device)
        self.position[rows.to(proxies.device)] = torch.arange(len(rows), device=proxies.device)

    @classmethod
    def build(cls, slice_sets: Sequence[Any], kind: str = "SI", *, settings: ProxySettings = ProxySettings(),
              device: torch.device | str = "cpu") -> "ProxyTable":
        """Proxies of every slice of ``slice_sets`` (each cached on disk), moved to ``device`` once."""
        rows, arrays = [], []
        for ss in slice_sets:
            if ss is None or not len(ss):
                continue
            arrays.append(cached_proxies(ss, kind, settings))
            rows.append(torch.from_numpy(np.asarray(ss.rows, dtype=np.int64)))
        if not arrays:
            raise ValueError("no slices to compute proxies of")
        return cls(torch.cat(rows), torch.from_numpy(np.concatenate(arrays)).to(device))

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        idx = index.to(self.position.device).long()
        pos = torch.full_like(idx, -1)
        known = idx < len(self.position)
        pos[known] = self.position[idx[known]]
        if bool((pos < 0).any()):
            missing = idx[pos < 0][:5].tolist()
            raise KeyError(f"no proxy for slice rows {missing}: proxies exist only for the slice sets given to "
                           "ProxyTable.build (the training and validation sets)")
        return self.proxies[pos]


def paste_patches(proxy: torch.Tensor, source: torch.Tensor, generator: torch.Generator, *, min_frac: float = 1 / 16,
                  max_frac: float = 0.5, n_patches: int = 1, prob: float = 1.0, same_image_source: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """ProxyAno's pseudo-abnormal proxy constructor (PAPC, §5.2): paste raw image patches onto proxies.

    ``proxy`` [B, P, H, W], ``source`` [B, C, H, W] (raw images; a P-channel proxy takes the image in each channel).
    For each sample, with probability ``prob``, ``n_patches`` rectangles with sides drawn independently from
    U{⌊min_frac·H⌋, …, ⌊max_frac·H⌋} (16…128 at 256 px) are cut at a uniform corner of another image of the batch
    (a random permutation; ``same_image_source`` takes the sample's own image) and pasted at an independent uniform
    corner. Returns (P' = P̂·(1 − M) + I_src·M, M [B, 1, H, W]). All draws come from ``generator`` (CPU)."""
    b, p, h, w = proxy.shape
    lo, hi = max(1, int(min_frac * h)), max(1, int(max_frac * h))
    if hi < lo:
        raise ValueError(f"patch sizes: max_frac {max_frac} gives {hi} px < min_frac's {lo} px")
    perm = torch.arange(b) if same_image_source else torch.randperm(b, generator=generator)
    src = source[perm.to(source.device)]
    if src.shape[1] != p:
        src = src.mean(dim=1, keepdim=True).expand(-1, p, -1, -1) if src.shape[1] != 1 else src.expand(-1, p, -1, -1)
    mask = torch.zeros(b, 1, h, w, device=proxy.device, dtype=proxy.dtype)
    pasted = proxy.clone()
    for i in range(b):
        if prob < 1.0 and float(torch.rand((), generator=generator)) >= prob:
            continue
        for _ in range(n_patches):
            ph, pw = (int(v) for v in torch.randint(lo, hi + 1, (2,), generator=generator))
            sy, sx = int(torch.randint(0, h - ph + 1, (), generator=generator)), int(
                torch.randint(0, w - pw + 1, (), generator=generator))
            ty, tx = int(torch.randint(0, h - ph + 1, (), generator=generator)), int(
                torch.randint(0, w - pw + 1, (), generator=generator))
            pasted[i, :, ty:ty + ph, tx:tx + pw] = src[i, :, sy:sy + ph, sx:sx + pw].to(proxy.dtype)
            mask[i, :, ty:ty + ph, tx:tx + pw] = 1.0
    return pasted, mask
