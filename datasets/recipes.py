"""Named, versioned preprocessing recipes and the primitives they are built from.

A recipe fixes everything between the raw volume and the stored slice: modality, slice rule,
intensity normalisation, padding, size. Its ``id`` (``name@vN``) is part of the slice-store cache key
and of every result row, so changing a recipe means bumping its version.

``aux_channels`` (optional): modalities stored *beside* the image, not in it (the store's ``aux`` array,
``SliceBatch.aux``): each is prepared exactly like an input channel (its own volume through the same
normalisation rule, the same slices, padding and resize) -- Cyclic-UNet's intermediate modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from benchmark.errors import DataError
from datasets.base import Subject, Volume
from datasets.store import PreparedSlice

# ---------------------------------------------------------------------------------------------------
# primitives


def check_finite(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.size == 0:
        raise DataError(source, "empty array")
    if not np.isfinite(arr).all():
        raise DataError(source, f"contains {int((~np.isfinite(arr)).sum())} NaN/Inf values")
    if not np.any(arr):
        raise DataError(source, "all-zero volume")
    return arr


def percentile_normalise(x: np.ndarray, pct: float = 98.0, mask: np.ndarray | None = None,
                         clip: bool = True) -> np.ndarray:
    """Divide by the ``pct`` percentile of ``mask`` pixels (default: pixels > 0); clip to [0, 1]."""
    sel = x[mask > 0] if mask is not None else x[x > 0]
    if sel.size == 0:
        sel = x.ravel()
    ref = float(np.percentile(sel, pct))
    out = x / ref if ref > 0 else np.zeros_like(x)
    return np.clip(out, 0.0, 1.0) if clip else out


def median_normalise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Map the median of ``mask`` voxels to 0.5; clip to [0, 1].

    A lesion-robust scale: a bright lesion of a few percent of the brain barely moves the median, whereas it can be
    (or hold) the 98th percentile, which then darkens that subject's healthy tissue relative to healthy subjects'."""
    sel = x[mask > 0]
    ref = float(np.median(sel)) if sel.size else 0.0
    return np.clip(x * (0.5 / ref), 0.0, 1.0) if ref > 0 else np.zeros_like(x)


def zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance inside ``mask``; background stays 0."""
    sel = x[mask > 0]
    mu, sd = float(sel.mean()), float(sel.std())
    return np.where(mask > 0, (x - mu) / (sd if sd > 0 else 1.0), 0.0)


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def pad_to_square(x: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Centrally pad the last two axes to a square."""
    h, w = x.shape[-2:]
    s = max(h, w)
    ph, pw = s - h, s - w
    pad = [(0, 0)] * (x.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(x, pad, constant_values=value)


def resize(x: np.ndarray, size: int, mode: str = "area") -> np.ndarray:
    """Resize the last two axes to ``size``×``size`` (area for down-sampling, bilinear otherwise)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    shape = t.shape
    t = t.reshape(-1, 1, *shape[-2:])
    if mode == "area" and (shape[-1] < size or shape[-2] < size):
        mode = "bilinear"
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    t = F.interpolate(t, size=(size, size), mode=mode, **kw)
    return t.reshape(*shape[:-2], size, size).numpy()


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary mask resize: area-average then ≥ 0.5, so small lesions keep their extent."""
    return (resize(mask.astype(np.float32), size, "area") >= 0.5).astype(np.uint8)


def lesion_boxes(mask: np.ndarray, min_pixels: int = 1) -> list[list[int]]:
    """One [x0, y0, x1, y1] box (inclusive-exclusive) per 8-connected lesion component."""
    lab, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or int((lab[sl] == i).sum()) < min_pixels:
            continue
        boxes.append([int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)])
    return boxes


def axial(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of a RAS volume, displayed radiologically upright (anterior at the top)."""
    return np.rot90(vol[:, :, z])


# ---------------------------------------------------------------------------------------------------
# slice rules: volume → list of z indices


def _brain_fraction(brain: np.ndarray) -> np.ndarray:
    return (brain > 0).reshape(-1, brain.shape[-1]).mean(axis=0)


SliceRule = Callable[[Volume, np.ndarray], list[int]]


def rule_every_brain_slice(min_fraction: float = 0.05) -> SliceRule:
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        return [int(z) for z in np.flatnonzero(_brain_fraction(brain) >= min_fraction)]
    return rule


def rule_central_fraction(fraction: float, min_fraction: float = 0.05) -> SliceRule:
    """The central ``fraction`` of the brain-bearing slices (avoids tiny top/bottom slices)."""
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        zs = np.flatnonzero(_brain_fraction(brain) >= min_fraction)
        if zs.size == 0:
            return []
        lo, hi = zs.min(), zs.max()
        mid, half = (lo + hi) / 2.0, (hi - lo) * fraction / 2.0
        return [int(z) for z in zs if mid - half <= z <= mid + half]
    return rule


def rule_mid_axial() -> SliceRule:
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        zs = np.flatnonzero(_brain_fraction(brain) > 0)
        return [int((zs.min() + zs.max()) // 2)] if zs.size else []
    return rule


def rule_range(lo: int, hi: int) -> SliceRule:
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        return [z for z in range(lo, hi) if z < brain.shape[-1]]
    return rule


# ---------------------------------------------------------------------------------------------------
# recipes

NORMALISERS = {"p98", "p99", "median", "zscore", "minmax", "none"}


@dataclass(frozen=True)
class Recipe:
    """Raw volume → slices. ``channels``: modalities stacked as image channels (in order); ``aux_channels``:
    modalities prepared the same way but stored apart, as the store's auxiliary array (default none)."""

    name: str
    version: int
    channels: tuple[str, ...]
    slice_rule: SliceRule
    normalise: str = "p98"  # per volume, over brain voxels
    size: int = 128
    pad_value: float = 0.0
    min_lesion_pixels: int = 1  # at store size, for a slice to count as anomalous
    aux_channels: tuple[str, ...] = ()  # stored beside the image (store ``aux``), prepared like ``channels``

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    def _normalise(self, x: np.ndarray, brain: np.ndarray) -> np.ndarray:
        if self.normalise == "p98":
            return percentile_normalise(x, 98.0, brain)
        if self.normalise == "p99":
            return percentile_normalise(x, 99.0, brain)
        if self.normalise == "median":
            return median_normalise(x, brain)
        if self.normalise == "zscore":
            return zscore(x, brain)
        if self.normalise == "minmax":
            return minmax(x)
        if self.normalise == "none":
            return x
        raise ValueError(f"recipe {self.id}: unknown normalisation {self.normalise!r}; known {sorted(NORMALISERS)}")

    def slices(self, vol: Volume, subject: Subject, split: str) -> list[PreparedSlice]:
        # the auxiliary modalities ride along as extra channels through every step and are split off at the end
        names = (*self.channels, *self.aux_channels)
        n_in = len(self.channels)
        chans = [check_finite(np.asarray(vol.channel(c), dtype=np.float32), vol.source or subject.id)
                 for c in names]
        shape = chans[0].shape
        for c, arr in zip(names, chans):
            if arr.shape != shape:
                raise DataError(subject.files.get(c, vol.source), f"shape {arr.shape} differs from {shape}")
        if vol.lesion is not None and vol.lesion.shape != shape:
            raise DataError(subject.files.get("seg", vol.source),
                            f"mask shape {vol.lesion.shape} differs from image shape {shape}")
        brain = vol.brain if vol.brain is not None else (chans[0] > 0)
        brain = brain.astype(np.float32)
        chans = [self._normalise(a, brain) for a in chans]
        if len(shape) == 2:  # 2-D dataset: the image is the slice
            picks = [(0, lambda a: a)]
        else:
            picks = [(z, (lambda a, z=z: axial(a, z))) for z in self.slice_rule(vol, brain)]
        out = []
        for z, take in picks:
            img = np.stack([resize(pad_to_square(take(a), self.pad_value), self.size) for a in chans])
            b = np.clip(resize(pad_to_square(take(brain)), self.size), 0.0, 1.0)
            les = None
            if vol.lesion is not None:
                les = resize_mask(pad_to_square(take(vol.lesion)), self.size)
            n_les = int(les.sum()) if les is not None else 0
            anomalous = n_les >= self.min_lesion_pixels or (les is None and subject.pathology != "healthy")
            out.append(PreparedSlice(
                image=img[:n_in].astype(np.float32), brain=b, lesion=les, subject=subject.id, slice=int(z),
                split=split, label=int(anomalous), pathology=subject.pathology if anomalous else "healthy",
                boxes=lesion_boxes(les) if les is not None and n_les else [],
                source=str(vol.source), aux=img[n_in:].astype(np.float32) if self.aux_channels else None,
            ))
        return out
