"""The embedded default dataset: a brain-MRI phantom generated from the MNI ICBM152 2009a templates.

Why a phantom: the benchmark must run end to end with no download, yet through the same adapter code
path as real data. The nilearn wheel ships the 1 mm T1/GM/WM templates; from them we draw
"subjects" deterministically from a seed and write them as BraTS-like NIfTIs::

    <root>/subjects.csv                         subject, split (train|val|test), pathology
    <root>/<ID>/<ID>-{t1,t2,flair}.nii.gz       float32, 2 mm, RAS+, background exactly 0
    <root>/<ID>/<ID>-seg.nii.gz                 uint8 labels (tumour, stroke and ms subjects only)
    <root>/phantom.json                         generator version, seed, sizes, label map

Segmentation labels (any label > 0 is lesion; see ``LABELS``):
    1 core   tumour necrosis, stroke cavity
    2 lesion tumour oedema, MS plaque (lesions without a core/rim structure)
    3 rim    tumour enhancing rim, stroke gliotic rim

Train and val subjects are healthy. Test subjects follow ``TEST_CYCLE`` (1/4 healthy, then tumour > ms =
stroke = atrophy); ``atrophy`` (enlarged ventricles, widened sulci) is a global finding with no mask.

Speed: everything happens at 2 mm and only on an axial slab of ``slices_per_subject`` slices centred on
the brain's centre of mass, so a subject costs a fraction of a second. Each subject has its own
``numpy.random.default_rng((seed, split, index))``: it is reproducible on its own, and the first test
subjects are the same whatever the number of train subjects.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmark.errors import DataError
from benchmark.io import atomic_dir, exclusive
from datasets.adapters.phantom import PHANTOM_CHANNELS, PhantomAdapter
from datasets.recipes import Recipe, rule_every_brain_slice
from datasets.store import SliceStore

GENERATOR_VERSION = 3  # bump on any change that alters the written voxels: it is part of the cache key
SPACING_MM = 2.0
FOV_MM = 240.0  # the phantom dataset's in-plane field of view (PHANTOM_SCAN): a typical axial brain FOV
CHANNELS = PHANTOM_CHANNELS
LABELS = {1: "core (tumour necrosis, stroke cavity)",
          2: "lesion without core/rim (tumour oedema, MS plaque)",
          3: "rim (tumour enhancing rim, stroke gliotic rim)"}
TEST_CYCLE = ("healthy", "tumour", "ms", "stroke", "healthy", "tumour",
              "atrophy", "ms", "healthy", "tumour", "stroke", "atrophy")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}

# Phantom size per run profile (subjects per split, axial slices per subject). The table lives with the
# generator so datasets/ never asks the runner's profiles for it; ``benchmark.profiles`` reads it from here.
PHANTOM_SIZES: dict[str, dict[str, int]] = {
    "smoke": {"n_train": 3, "n_val": 1, "n_test": 3, "slices_per_subject": 12},
    "default": {"n_train": 24, "n_val": 4, "n_test": 12, "slices_per_subject": 24},
    "paper": {"n_train": 60, "n_val": 8, "n_test": 24, "slices_per_subject": 32},
}


def phantom_sizes(profile: str) -> dict[str, int]:
    """The phantom size of a profile name (a copy: callers may edit it)."""
    if profile not in PHANTOM_SIZES:
        raise KeyError(f"unknown profile {profile!r}; known: {', '.join(PHANTOM_SIZES)}")
    return dict(PHANTOM_SIZES[profile])


# Mean intensity of (CSF, GM, WM) per contrast, arbitrary units before the per-subject gain.
# T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM > CSF (fluid suppressed).
TISSUE_MEANS = {"t1": (0.30, 0.60, 0.85), "t2": (1.00, 0.55, 0.40), "flair": (0.10, 0.62, 0.48)}
# Lesion intensity per pathology and label as (t1, t2, flair), same units.
LESION_MEANS = {
    "tumour": {1: (0.22, 0.95, 0.65), 2: (0.50, 0.85, 0.95), 3: (0.55, 0.70, 0.85)},
    "stroke": {1: (0.28, 0.95, 0.14), 3: (0.55, 0.75, 0.85)},
    "ms": {2: (0.62, 0.80, 0.90)},
}



@dataclass(frozen=True)
class Acquisition:
    """How a generated subject is "scanned": the written in-plane grid, the noise and the sequence's contrast."""

    name: str  # in the phantom folder's name (cache key) unless this is PHANTOM_SCAN
    fov_mm: float | None  # square in-plane field of view centred on the brain; None: the brain box + 10 mm
    noise: tuple[float, float]  # noise sigma drawn per scan from this range, × 0.6 × the scan's gain
    tissue_means: dict[str, tuple[float, float, float]]  # (CSF, GM, WM) per contrast: the sequence's contrast
    jitter: tuple[float, float]  # per-scan factor range on each tissue mean (scanner and protocol spread)


# The phantom dataset (generator v3). scripts/phantom_realism.py measured v2 against IXI T1 and tumour-free LGG
# FLAIR and found, outside its [0.8, 1.25] band: a brain filling 1.6-1.8x the pixels of a real 128-px slice (v2's
# grid was the brain box + 10 mm), noise 3-4x lower, FLAIR CSF/WM 0.79x, and a subject-to-subject spread of the
# brain mean 0.26x LGG's (0.74x IXI's once grid and noise were fixed). v3: a 240 mm field of view, a 3x noise range,
# FLAIR CSF 0.10 -> 0.20 (fluid suppression is never complete) and a +-7.5 % instead of +-6 % per-scan spread of
# each tissue mean (more would overshoot IXI's within-set histogram distances).
PHANTOM_SCAN = Acquisition(name="fov240", fov_mm=FOV_MM, noise=(0.03, 0.075), jitter=(0.925, 1.075),
                           tissue_means={**TISSUE_MEANS, "flair": (0.20, 0.62, 0.48)})
# The brain box + 10 mm and v2's noise and contrast: miniature releases, which pad each subject into their release's
# own frame (240², 320², with a head), so their bytes and the smoke references computed on them stay as they were;
# and the behaviour tests' 32-64 px phantoms, where a 240 mm field would leave most lesions a pixel or two.
TIGHT_SCAN = Acquisition(name="tight", fov_mm=None, noise=(0.01, 0.025), tissue_means=TISSUE_MEANS, jitter=(0.94, 1.06))


# ---------------------------------------------------------------------------------------------------
# atlas: the templates at 2 mm, loaded once per process


@dataclass(frozen=True)
class _Atlas:
    gm: np.ndarray  # GM probability × brain, [X, Y, Z] at 2 mm
    wm: np.ndarray
    brain: np.ndarray  # brain fraction in [0, 1]
    vent: np.ndarray  # lateral/third ventricles {0, 1} (deep CSF)
    affine: np.ndarray  # 2 mm voxel → MNI mm
    centre: np.ndarray  # brain centre of mass (voxels): the deformation pivot and the slab centre
    vent_parts: tuple[tuple[np.ndarray, np.ndarray], ...]  # (centre, extent) per ventricle: atrophy warps
    box: tuple[tuple[int, int], tuple[int, int]]  # x, y range of the written grid (brain + margin)


def _block_mean(a: np.ndarray) -> np.ndarray:
    """1 mm → 2 mm by averaging 2×2×2 blocks (odd trailing voxels dropped): exact partial volumes."""
    x, y, z = (n // 2 for n in a.shape)
    return a[:2 * x, :2 * y, :2 * z].reshape(x, 2, y, 2, z, 2).mean(axis=(1, 3, 5), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _atlas() -> _Atlas:
    try:
        from nilearn import datasets as nd

        imgs = [f(resolution=1) for f in (nd.load_mni152_template, nd.load_mni152_gm_template,
                                          nd.load_mni152_wm_template)]
    except Exception as err:  # nilearn missing or its packaged templates unreadable
        raise DataError("nilearn", f"cannot load the MNI152 templates the phantom needs ({err})") from err
    t1, gm1, wm1 = (np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs)
    brain1 = (t1 > 0).astype(np.float32)  # the template is skull-stripped: T1 > 0 is the brain
    brain, gm, wm = _block_mean(brain1), _block_mean(gm1 * brain1), _block_mean(wm1 * brain1)
    for z in range(brain.shape[2]):  # the stripping left basal cisterns out: holes in axial slices → CSF
        inside = brain[:, :, z] > 0.5
        brain[:, :, z][ndimage.binary_fill_holes(inside) & ~inside] = 1.0
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    deep = ndimage.distance_transform_edt(brain > 0.5) * SPACING_MM > 14.0
    lab, _ = ndimage.label((csf > 0.5) & deep)
    big = np.bincount(lab.ravel()) >= 100  # the ventricles; drops specks of deep sulcal CSF
    big[0] = False
    vent = big[lab].astype(np.float32)
    half = np.diag([2.0, 2.0, 2.0, 1.0])
    half[:3, 3] = 0.5  # 2 mm voxel i is the centre of 1 mm voxels 2i and 2i+1
    affine = imgs[0].affine @ half
    parts = tuple((idx.mean(axis=0), idx.std(axis=0) * 1.2)
                  for idx in (np.argwhere(lab == k) for k in np.flatnonzero(big)))
    margin = 5  # voxels: room for the random scale and shift
    lo = np.argwhere(brain > 0.5).min(axis=0) - margin
    hi = np.argwhere(brain > 0.5).max(axis=0) + margin + 1
    box = tuple((int(max(0, lo[i])), int(min(brain.shape[i], hi[i]))) for i in range(2))
    return _Atlas(gm=gm, wm=wm, brain=brain, vent=vent, affine=affine,
                  centre=np.array(ndimage.center_of_mass(brain > 0.5)), vent_parts=parts,
                  box=box)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# random building blocks


def _fov_box(box: tuple[tuple[int, int], ...], fov_mm: float) -> tuple[tuple[int, int], ...]:
    """A square grid of ``fov_mm`` about the centre of the atlas's brain box (it may reach past the template:
    those voxels sample as background)."""
    n = int(round(fov_mm / SPACING_MM))
    return tuple(((lo + hi - n) // 2, (lo + hi - n) // 2 + n) for lo, hi in box)


def _interp_matrix(n: int, m: int, spacing: float) -> np.ndarray:
    """[n, m] Gaussian-kernel weights from ``m`` control points (every ``spacing`` voxels, one beyond each
    end) to ``n`` voxels; rows sum to 1. Separable matrix products are ~100× faster than 3-D zoom."""
    knots = (np.arange(m) - 1.0) * spacing
    w = np.exp(-0.5 * ((np.arange(n)[:, None] - knots[None, :]) / spacing) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Unit-variance smooth noise: Gaussian noise on a grid every ``spacing`` voxels, smoothly interpolated."""
    low = rng.standard_normal(tuple(int(np.ceil((n - 1) / spacing)) + 3 for n in shape)).astype(np.float32)
    mx, my, mz = (_interp_matrix(n, m, spacing) for n, m in zip(shape, low.shape))
    f = np.einsum("xa,abc->xbc", mx, low)  # einsum, not BLAS: predictable on a busy 2-core machine
    f = np.einsum("yb,xbc->xyc", my, f)
    f = np.einsum("zc,xyc->xyz", mz, f)
    return (f - f.mean()) / (f.std() + 1e-6)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _radial_warp(q: np.ndarray, centre: np.ndarray, alpha: float, sigma: np.ndarray) -> np.ndarray:
    """Magnify the tissue around ``centre`` (mass effect, ventricle enlargement).

    Sampling at c + (p - c)(1 - α g) with a Gaussian g is monotone along each ray for α < 1, so it never
    folds; it shows what sat near ``c`` over a larger area and pushes the surroundings outwards.
    """
    c = centre.reshape(3, 1, 1, 1).astype(np.float32)
    rel = q - c
    g = np.exp(-0.5 * ((rel / sigma.astype(np.float32).reshape(3, 1, 1, 1)) ** 2).sum(axis=0))
    return c + rel * (1.0 - np.float32(alpha) * g)


def _sample(vol: np.ndarray, q: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(vol, q, order=1, mode="constant", cval=0.0, prefilter=False)


def _pick(rng: np.random.Generator, *conds: np.ndarray) -> np.ndarray:
    """A random voxel satisfying the first non-empty condition (later ones are looser fallbacks)."""
    for cond in conds:
        idx = np.argwhere(cond)
        if len(idx):
            return idx[rng.integers(len(idx))]
    raise RuntimeError("phantom: no voxel left to place a lesion")  # the last fallback is the brain


def _blob(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray,
          rough: float, reach: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """An irregular ellipsoid as a level function (< 1 inside) on a box around ``centre``.

    Normalised ellipsoid radius (random orientation) plus smooth noise times ``rough``: the threshold
    at 1 gives a lobulated outline; lower thresholds give nested, equally irregular cores.
    """
    half = int(np.ceil(reach)) + 2
    box = tuple(slice(max(0, int(c) - half), min(n, int(c) + half + 1)) for c, n in zip(centre, shape))
    grid = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij")).astype(np.float32)
    rel = grid - centre.reshape(3, 1, 1, 1)
    rot = _rotation(*rng.uniform(-np.pi, np.pi, 3)).astype(np.float32)
    u = np.einsum("ij,jxyz->ixyz", rot, rel) / radii.reshape(3, 1, 1, 1).astype(np.float32)
    noise = ndimage.gaussian_filter(rng.standard_normal(rel.shape[1:]).astype(np.float32), 1.5)
    noise /= noise.std() + 1e-6
    level = np.sqrt((u ** 2).sum(axis=0)) + rough * noise
    local = tuple(int(c) - b.start for c, b in zip(centre, box))
    level[local] = min(level[local], 0.0)  # the centre voxel is always inside: no empty lesion
    return box, level


# ---------------------------------------------------------------------------------------------------
# one subject


@dataclass
class PhantomSubject:
    """A generated subject: images, labels and the tissue maps they came from (tests check contrasts)."""

    channels: dict[str, np.ndarray]  # t1, t2, flair: float32 [X, Y, S], 0 outside the brain
    seg: np.ndarray | None  # uint8 labels (LABELS) or None for healthy/atrophy
    tissue: dict[str, np.ndarray]  # csf, gm, wm fractions on the same grid
    brain: np.ndarray  # bool
    affine: np.ndarray
    pathology: str


def synth_subject(split: str, index: int, pathology: str, slices: int, seed: int = 0,
                  scan: Acquisition = PHANTOM_SCAN) -> PhantomSubject:
    """Generate one subject; a pure function of its arguments (its own RNG stream)."""
    if pathology not in ("healthy", "atrophy", *LESION_MEANS):
        raise ValueError(f"unknown phantom pathology {pathology!r}")
    atlas = _atlas()
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    (x0, x1), (y0, y1) = atlas.box if scan.fov_mm is None else _fov_box(atlas.box, scan.fov_mm)
    nz = atlas.brain.shape[2]
    if not 1 <= slices <= nz:
        raise ValueError(f"slices_per_subject must be in 1..{nz}, got {slices}")
    z0 = int(np.clip(round(atlas.centre[2] - slices / 2), 0, nz - slices))
    shape = (x1 - x0, y1 - y0, slices)
    # healthy anatomy: small random affine about the brain centre + smooth elastic displacement
    scale = np.exp(rng.normal(0.0, 0.04) + rng.normal(0.0, 0.02, 3))
    rot = _rotation(*np.deg2rad(rng.normal(0.0, [2.0, 2.0, 5.0])))
    a = (rot / scale[None, :]).astype(np.float32)  # sampling matrix: a brain scaled by `scale`
    shift = rng.normal(0.0, 1.5, 3)  # voxels (3 mm)
    c = atlas.centre.astype(np.float32).reshape(3, 1, 1, 1)
    axes = [np.arange(lo, lo + n, dtype=np.float32) - c.ravel()[i]
            for i, (lo, n) in enumerate(zip((x0, y0, z0), shape))]
    q = np.empty((3, *shape), np.float32)
    for i in range(3):  # a @ (p - c), separable over the grid axes: no meshgrid needed
        q[i] = (a[i, 0] * axes[0][:, None, None] + a[i, 1] * axes[1][None, :, None]
                + a[i, 2] * axes[2][None, None, :]) + (c.ravel()[i] + np.float32(shift[i]))
    q += np.stack([_smooth_field(rng, shape, 8.0) for _ in range(3)]) * np.float32(1.2)

    if pathology == "atrophy":  # enlarged ventricles (each one magnified) and a slightly smaller brain
        alpha = rng.uniform(0.40, 0.55)
        for centre, extent in atlas.vent_parts:
            q = _radial_warp(q, centre, alpha * rng.uniform(0.9, 1.1), extent)
        q = c + (q - c) * np.float32(rng.uniform(1.02, 1.05))

    lesional = pathology in LESION_MEANS  # pixel lesions need the ventricles and depth to be placed

    def tissue(q: np.ndarray) -> tuple[np.ndarray, ...]:
        brain_f = _sample(atlas.brain, q)
        brain = brain_f > 0.5
        gm = _sample(atlas.gm, q) * brain
        wm = _sample(atlas.wm, q) * brain
        vent = (_sample(atlas.vent, q) > 0.5) & brain if lesional else None
        return brain_f, brain, gm, wm, vent

    brain_f, brain, gm, wm, vent = tissue(q)
    # voxels to the brain surface (in-plane and z); lesion placement and atrophy only
    depth = ndimage.distance_transform_edt(brain) if pathology != "healthy" else None
    zz = np.arange(slices)[None, None, :]
    mid_z = (zz >= slices * 0.3) & (zz <= slices * 0.7)
    seg = None

    if pathology == "tumour":
        r_out = rng.uniform(5.0, 13.0) * rng.uniform(0.8, 1.2, 3)  # oedema extent, 10-26 mm
        r_out[2] = min(r_out[2], max(1.5, slices * 0.45))
        centre = _pick(rng, (wm > 0.5) & ~vent & (depth > r_out[:2].mean() * 0.6 + 2) & mid_z,
                       (wm > 0.3) & (depth > 3) & mid_z, brain)
        # mass effect: magnify the anatomy around the tumour before drawing it
        q = _radial_warp(q, q[(slice(None), *centre)], rng.uniform(0.2, 0.35), r_out * 0.7)
        brain_f, brain, gm, wm, vent = tissue(q)
        r_tum = r_out * rng.uniform(0.45, 0.65)
        reach = float(r_out.max()) * 1.6
        box, lvl_out = _blob(rng, shape, centre, r_out, 0.35, reach)
        _, lvl_tum = _blob(rng, shape, centre, r_tum, 0.2, reach)
        csf = np.clip(brain_f - gm - wm, 0.0, 1.0)
        seg = np.zeros(shape, np.uint8)
        s = seg[box]
        s[(lvl_out + 0.6 * csf[box] + 0.2 * gm[box] < 1.0) & ~vent[box]] = 2  # oedema spreads in WM
        s[lvl_tum < 1.0] = 3
        s[lvl_tum < rng.uniform(0.45, 0.7)] = 1
    elif pathology == "stroke":
        radii = rng.uniform(4.0, 9.0) * rng.uniform(0.7, 1.3, 3)  # 8-18 mm
        radii[2] = min(radii[2], max(1.5, slices * 0.45))
        midline = atlas.centre[0] - x0
        lateral = np.abs(np.arange(shape[0]) - midline)[:, None, None] > 6
        centre = _pick(rng, (gm + wm > 0.7) & ~vent & (depth >= 3) & (depth <= 9) & lateral & mid_z,
                       (gm + wm > 0.5) & (depth >= 2) & mid_z, brain)
        box, lvl = _blob(rng, shape, centre, radii, 0.4, float(radii.max()) * 1.6)
        seg = np.zeros(shape, np.uint8)
        s = seg[box]
        s[(lvl < 1.0) & ~vent[box]] = 3
        s[lvl < rng.uniform(0.6, 0.75)] = 1
    elif pathology == "ms":
        near_vent = ndimage.distance_transform_edt(~vent) if vent.any() else np.full(shape, np.inf)
        inner_z = (zz >= 1) & (zz <= slices - 2)
        seg = np.zeros(shape, np.uint8)
        for _ in range(int(rng.integers(4, 10))):
            radii = rng.uniform(1.2, 2.8) * np.ones(3)
            radii[rng.integers(3)] *= rng.uniform(1.2, 1.8)  # ovoid, like Dawson's fingers
            radii[2] = min(radii[2], max(1.0, slices * 0.3))
            centre = _pick(rng, (wm > 0.5) & (near_vent >= 1) & (near_vent <= 5) & inner_z,
                           (wm > 0.5) & (depth > 4) & inner_z, brain)
            box, lvl = _blob(rng, shape, centre, radii, 0.2, float(radii.max()) * 1.6)
            seg[box][(lvl < 1.0) & ~vent[box]] = 2

    if seg is not None:
        seg *= brain  # lesions live inside the brain
        if not seg.any():  # only if every voxel was clipped away: keep the (in-brain) centre voxel
            seg[tuple(centre)] = max(LESION_MEANS[pathology])
    if pathology == "atrophy":  # widened sulci: outer GM partly replaced by CSF
        rim = np.clip(1.0 - depth / 4.0, 0.0, 1.0)
        gm = gm * (1.0 - rng.uniform(0.45, 0.65) * rim * (0.75 + 0.25 * _smooth_field(rng, shape, 3.0)))
    gm = np.clip(gm, 0.0, 1.0)
    csf = np.clip(brain_f - gm - wm, 0.0, 1.0) * brain

    # tissue and lesion texture are anatomy, shared by the contrasts; bias, gain and noise are per scan
    texture = 1.0 + 0.03 * _smooth_field(rng, shape, 3.0)
    soft: dict[int, np.ndarray] = {}
    if seg is not None:
        lesion_texture = 1.0 + 0.06 * _smooth_field(rng, shape, 2.0)
        for label in LESION_MEANS[pathology]:  # partial volume at the lesion border
            soft[label] = ndimage.gaussian_filter((seg == label).astype(np.float32), 0.6)
        soft_sum = sum(soft.values())
    channels = {}
    for k, name in enumerate(CHANNELS):
        mu = (np.asarray(scan.tissue_means[name]) * rng.uniform(*scan.jitter, 3)).astype(np.float32)
        img = (csf * mu[0] + gm * mu[1] + wm * mu[2]) * texture
        if soft:
            value = sum(m * np.float32(LESION_MEANS[pathology][label][k] * rng.uniform(0.92, 1.08))
                        for label, m in soft.items())
            img = img * (1.0 - soft_sum) + value * lesion_texture
        img *= np.exp(0.12 * _smooth_field(rng, shape, 24.0))  # smooth multiplicative bias field
        gain = np.float32(rng.uniform(600.0, 1400.0))
        img *= gain
        sigma = np.float32(rng.uniform(*scan.noise) * gain * 0.6)
        noise = rng.standard_normal((2, *shape), dtype=np.float32) * sigma
        noisy = np.hypot(img + noise[0], noise[1])  # Rician magnitude noise
        channels[name] = np.where(brain, np.maximum(noisy, 1e-3 * gain), np.float32(0.0)).astype(np.float32)

    affine = atlas.affine.copy()
    affine[:3, 3] = atlas.affine[:3, :3] @ np.array([x0, y0, z0]) + atlas.affine[:3, 3]
    return PhantomSubject(channels=channels, seg=None if seg is None else seg.astype(np.uint8),
                          tissue={"csf": csf, "gm": gm, "wm": wm}, brain=brain, affine=affine,
                          pathology=pathology)


# ---------------------------------------------------------------------------------------------------
# the dataset on disk


def plan(n_train: int, n_val: int, n_test: int) -> list[tuple[str, str, int, str]]:
    """(subject id, split, index in split, pathology) for every subject, in writing order."""
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for j in range(n):
            rows.append((f"phantom-{split}-{j:03d}", split, j,
                         TEST_CYCLE[j % len(TEST_CYCLE)] if split == "test" else "healthy"))
    return rows


def _write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    """gzip with mtime 0 and level 1 (``.nii.gz``; ``.nii`` uncompressed): byte-identical output for identical
    arrays, and fast."""
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)  # scanner-anatomical; RAS+ already
    img.set_sform(affine, code=1)
    if path.suffix != ".gz":  # an uncompressed .nii (ISLES 2015 ships them)
        path.write_bytes(img.to_bytes())
        return
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(img.to_bytes())
    path.write_bytes(buf.getvalue())


def phantom_key(*, n_train: int, n_val: int, n_test: int, slices_per_subject: int, seed: int = 0,
                scan: Acquisition = PHANTOM_SCAN) -> str:
    """Folder name = cache key: generator version, the scan when not the default, seed and sizes."""
    kind = "" if scan == PHANTOM_SCAN else f"-{scan.name}"
    return f"phantom-v{GENERATOR_VERSION}{kind}-seed{seed}-{n_train}tr-{n_val}va-{n_test}te-{slices_per_subject}z"


def write_phantom(root: str | Path, *, n_train: int, n_val: int, n_test: int, slices_per_subject: int,
                  seed: int = 0, scan: Acquisition = PHANTOM_SCAN) -> Path:
    """Generate the phantom under ``root`` (or reuse the complete one there); return the folder with subjects.csv.

    Built under a temporary name and renamed when complete (``atomic_dir``), so an interrupted run
    never leaves a folder that looks usable.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(n) < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if n_train + n_val + n_test == 0:
        raise ValueError("phantom needs at least one subject")
    out = Path(root) / phantom_key(n_train=n_train, n_val=n_val, n_test=n_test,
                                   slices_per_subject=slices_per_subject, seed=seed, scan=scan)
    if (out / "subjects.csv").is_file():
        return out
    with exclusive(out.parent / f".{out.name}.lock", "generating the phantom"):  # one writer; the others reuse it
        if not (out / "subjects.csv").is_file():
            _generate(out, n_train, n_val, n_test, slices_per_subject, seed, scan)
    return out


def _generate(out: Path, n_train: int, n_val: int, n_test: int, slices_per_subject: int, seed: int,
              scan: Acquisition) -> None:
    rows = plan(n_train, n_val, n_test)
    with atomic_dir(out) as tmp:
        for sid, split, j, pathology in rows:
            subj = synth_subject(split, j, pathology, slices_per_subject, seed, scan)
            folder = tmp / sid
            folder.mkdir()
            for name, arr in subj.channels.items():
                _write_nifti(folder / f"{sid}-{name}.nii.gz", arr, subj.affine)
            if subj.seg is not None:
                _write_nifti(folder / f"{sid}-seg.nii.gz", subj.seg, subj.affine)
        meta = {"generator_version": GENERATOR_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
                "n_test": n_test, "slices_per_subject": slices_per_subject, "spacing_mm": SPACING_MM,
                "scan": asdict(scan), "channels": list(CHANNELS),
                "labels": {str(k): v for k, v in LABELS.items()},
                "template": "MNI ICBM152 2009a (nilearn), 1 mm block-averaged to 2 mm"}
        (tmp / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n")
        with (tmp / "subjects.csv").open("w", newline="") as fh:  # last: marks a complete folder
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["subject", "split", "pathology"])
            w.writerows((sid, split, pathology) for sid, split, _, pathology in rows)


def phantom_recipe(modality: str = "flair", size: int = 128, normalise: str = "median") -> Recipe:
    """Brain median → 0.5 per volume, every brain slice of the slab, ``size``² pixels.

    v2 (with generator v3) replaced v1's per-volume 98th percentile: in a tumour subject the bright tumour set the
    98th percentile and darkened all its healthy tissue by ~5 %, so every score summed over a slice ranked tumour
    slices below healthy ones (scripts/why_image_auroc.py). The size (when not 128) and the normalisation (when not
    the median; the behaviour tests keep v1's ``p98``) are in the name: the store cache key holds only the recipe id.
    """
    if modality not in CHANNELS:
        raise ValueError(f"phantom modality must be one of {CHANNELS}, got {modality!r}")
    name = f"phantom-{modality}" + ("" if size == 128 else f"-{size}") + ("" if normalise == "median" else
                                                                          f"-{normalise}")
    return Recipe(name=name, version=2, channels=(modality,), slice_rule=rule_every_brain_slice(0.05),
                  normalise=normalise, size=size)


def phantom_store(profile: str = "default", *, modality: str = "flair", size: int = 128, seed: int = 0,
                  cache_dir: str | Path | None = None, sizes: dict[str, int] | None = None,
                  scan: Acquisition = PHANTOM_SCAN, normalise: str = "median") -> SliceStore:
    """The phantom of ``profile``'s size (``PHANTOM_SIZES``) as a slice store (generated and prepared once,
    then reused); ``sizes`` given replaces the profile's size.

    Phantom folders go to ``cache_dir`` (default ``DEFAULT_CACHE/phantom``); stores to ``cache_dir/stores``
    when ``cache_dir`` is given, else to ``prepare``'s default. ``scan`` and ``normalise`` other than the defaults
    are for the behaviour tests (``TIGHT_SCAN`` with ``p98``: v2's data, for their seconds-long trainings).
    """
    from datasets import base

    sizes = phantom_sizes(profile) if sizes is None else dict(sizes)
    base_dir = Path(cache_dir) if cache_dir is not None else base.DEFAULT_CACHE / "phantom"
    root = write_phantom(base_dir, seed=seed, scan=scan, **sizes)
    stores = base_dir / "stores" if cache_dir is not None else None
    return base.prepare(PhantomAdapter(root), phantom_recipe(modality, size, normalise), cache_dir=stores)
