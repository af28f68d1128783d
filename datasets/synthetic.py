"""Synthetic anomalies on healthy slices (RA Table 1, PHANES Table 1; training data of DRAEM / AFSC).

Why here, below methods and protocols: the synthetic protocol evaluates on these corruptions and methods
that train on synthetic anomalies draw them too, so both layers import one generator.

Why: both tables corrupt healthy slices and score how well a method finds / removes the corruption. The
generator parameters differ between RA's paper and the official (PHANES) code, so both sets are
selectable, everything is seeded (default 2109, the framework's seed), and every random draw is written
into the returned ``record`` so a cached corrupted set can be audited.

Kinds:
- ``sprites``: 3 filled rotated ellipses per image drawn in order hypo → mean → hyper intensity, exactly as
  PHANES's ``transforms/synthetic.py`` ``SyntheticSprites.__call__`` (ci-ber/PHANES @ c8995ed) draws them.
  Per ellipse, from one legacy numpy stream and in this order: the centre ``randint(lo, hi, 2)`` → (x = column,
  y = row), lo/hi = H/4, 3H/4 (32, 96 at 128 px); the two semi-axes ``abs(normal(μ, σ, 2))``, each
  ``int(max(a, 2))``; the angle ``randint(0, 360)``; then the band's two percentiles ``np.percentile`` of the
  *current* image (all pixels, background included, the earlier ellipses already drawn -- so the first,
  hypo-intense sprite of an image with ≥ 5 % zero background always gets value 0) and the value
  ``min(1, |uniform(p_lo, p_hi)|)``. The ellipse is rasterised by OpenCV as the code does:
  ``cv2.ellipse(img, (x, y), (ax, ay), angle, 0, 360, value, -1)`` (filled, 8-connected, axes are semi-axes)
  on the image in its own float dtype (float32 images as the code's), and the same call with colour 1 on the
  mask. ``percentiles_on="original"`` takes the percentiles on the clean image instead (not the code).
  Mask = union of the ellipses (not clipped to the brain, as in the code).
- ``copy_paste``: 1 rectangle, width and height integers 25…49, source and destination top-left integers
  in [lo, H − size − 1) with lo = int(H / 5) = 25 (paper) or int(H / 4) = 32 (code); the first index runs
  along rows (as the code); destination ← copy of the source patch; mask = destination rectangle. The draws
  (width, height, source x, y, destination x, y) are those of PHANES's ``CopyPaste`` with batch size 1.

Presets (``specs/README.md`` "Where the issues and specs differ", item 9). All use the code's draw order and
OpenCV rasteriser above (``protocols/ra.md`` §4: RA's official synthetic implementation *is* PHANES's
``SyntheticSprites``, with the paper's axis parameters):
- ``ra`` (default for RA Table 1): sprite axes (μ, σ) = (8, 12), copy-paste corner lower bound 25.
- ``ra_code``: axes (4, 6), lower bound 32 (the PHANES code defaults).
- ``phanes`` (default for PHANES Table 1): sprites only, axes (4, 6) -- the code's defaults; its paper gives
  no generator.

Generator v2 (``GENERATOR_ID``): v1 drew the value *before* the centre, axes and angle and filled pixel
centres inside the analytic ellipse (7–28 % fewer pixels than OpenCV's fill), so with the same seed every
sprite differed from the official one. v2 sprites (every preset) differ from v1; copy-paste is unchanged.
Draws use ``numpy.random.RandomState(seed)``: the same calls in the same order as ``np.random.seed(seed)``
followed by the code's ``np.random.*`` calls on the legacy global generator give the same numbers (tested).
One stream for the whole set in image order: the same seed and inputs give the same set.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

__all__ = ["PRESETS", "DEFAULT_SEED", "resolve_params", "make_synthetic", "ellipse_mask"]

DEFAULT_SEED = 2109
# The generator's name in every draw record and in the synthetic protocol's cache key: a stable id of these
# draws, not the module path (the module moved from protocols/ to datasets/ with identical draws). v2: the
# official SyntheticSprites draw order and OpenCV rasteriser (v1 sets are never reused).
GENERATOR_ID = "phbench.protocols.synthetic v2"
_SPRITE_BANDS = [(1.0, 5.0), (30.0, 70.0), (95.0, 99.0)]

PRESETS: dict[str, dict[str, Any]] = {
    "ra": {"axes_mean_std": (8.0, 12.0), "min_axis": 2, "n_per_band": 1, "bands": _SPRITE_BANDS,
           "centre_frac": (0.25, 0.75), "percentiles_on": "current", "rect_size": (25, 50), "corner_ratio": 5,
           "kinds": ("sprites", "copy_paste")},
    "ra_code": {"axes_mean_std": (4.0, 6.0), "min_axis": 2, "n_per_band": 1, "bands": _SPRITE_BANDS,
                "centre_frac": (0.25, 0.75), "percentiles_on": "current", "rect_size": (25, 50), "corner_ratio": 4,
                "kinds": ("sprites", "copy_paste")},
    "phanes": {"axes_mean_std": (4.0, 6.0), "min_axis": 2, "n_per_band": 1, "bands": _SPRITE_BANDS,
               "centre_frac": (0.25, 0.75), "percentiles_on": "current", "kinds": ("sprites",)},
}


def resolve_params(params: str | dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """Preset name, a dict of overrides on top of ``preset`` (default ``ra``), or None (``ra``)."""
    if params is None:
        params = "ra"
    if isinstance(params, str):
        if params not in PRESETS:
            raise ValueError(f"unknown synthetic preset {params!r}; known: {sorted(PRESETS)}")
        p = copy.deepcopy(PRESETS[params])
        p["preset"] = params
    else:
        base = params.get("preset", "ra")
        if base not in PRESETS:
            raise ValueError(f"unknown synthetic preset {base!r}")
        p = copy.deepcopy(PRESETS[base])
        p.update(copy.deepcopy(params))
        p["preset"] = base
        unknown = set(params) - set(PRESETS["ra"]) - {"preset"}
        if unknown:
            raise ValueError(f"unknown synthetic parameter(s) {sorted(unknown)}")
    if kind not in p["kinds"]:
        raise ValueError(f"preset {p['preset']!r} has no kind {kind!r}; it has {list(p['kinds'])}")
    if p.get("percentiles_on") not in ("current", "original"):
        raise ValueError("percentiles_on must be 'current' or 'original'")
    return p


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("datasets.synthetic rasterises ellipses with OpenCV as the official code does: "
                          "pip install opencv-python-headless") from err
    return cv2


def _draw_ellipse(canvas: np.ndarray, centre_xy: tuple[int, int], axes: tuple[int, int], angle: int,
                  colour: float) -> np.ndarray:
    """The official call: ``cv2.ellipse(canvas, centre, axes, angle, 0, 360, colour, -1)`` (filled,
    8-connected, no shift), drawn in place on a C-contiguous 2-D float array and returned."""
    out = _cv2().ellipse(canvas, (int(centre_xy[0]), int(centre_xy[1])), (int(axes[0]), int(axes[1])),
                         int(angle), 0, 360, float(colour), -1)
    if out is not canvas:  # OpenCV drew into a copy (non-contiguous input): keep the caller's array current
        canvas[...] = out
    return canvas


def ellipse_mask(h: int, w: int, cx: float, cy: float, ax: float, ay: float, angle_deg: float) -> np.ndarray:
    """Filled ellipse as OpenCV draws it (``cv2.ellipse(..., thickness=-1)``): centre (col x, row y) and
    semi-axes cast to int, as the official code passes them; returns a bool [h, w] mask."""
    return _draw_ellipse(np.zeros((h, w), np.float64), (int(cx), int(cy)), (int(ax), int(ay)),
                         int(angle_deg), 1.0) > 0


def _sprites(img: np.ndarray, rs: np.random.RandomState, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list]:
    """``SyntheticSprites.__call__`` for one image (``img`` 2-D, float32 or float64; drawn in that dtype)."""
    h, w = img.shape
    out = np.array(img, copy=True, order="C")
    mask = np.zeros((h, w), np.float64)
    draws = []
    lo_c, hi_c = int(p["centre_frac"][0] * w), int(p["centre_frac"][1] * w)
    lo_r, hi_r = int(p["centre_frac"][0] * h), int(p["centre_frac"][1] * h)
    mu, sd = p["axes_mean_std"]
    for band in p["bands"]:
        for _ in range(int(p["n_per_band"])):
            if (lo_c, hi_c) == (lo_r, hi_r):
                cx, cy = (int(v) for v in rs.randint(lo_c, hi_c, 2))  # the code: randint(32, 96, 2) → (x, y)
            else:  # non-square image: two scalar draws, the same stream as one size-2 draw
                cx, cy = int(rs.randint(lo_c, hi_c)), int(rs.randint(lo_r, hi_r))
            a = np.abs(rs.normal(mu, sd, 2))
            ax, ay = int(max(a[0], p["min_axis"])), int(max(a[1], p["min_axis"]))
            angle = int(rs.randint(0, 360))
            src = out if p["percentiles_on"] == "current" else img
            plo, phi = np.percentile(src, band[0]), np.percentile(src, band[1])  # two scalar calls, as the code
            value = float(np.minimum(1, np.abs(rs.uniform(plo, phi))))
            _draw_ellipse(out, (cx, cy), (ax, ay), angle, value)
            m = _draw_ellipse(np.zeros((h, w), np.float64), (cx, cy), (ax, ay), angle, 1.0) > 0
            mask[m] = 1.0  # == drawing colour 1 on the running mask, as the code does
            draws.append({"band": list(band), "percentiles": [float(plo), float(phi)], "value": value,
                          "centre_xy": [cx, cy], "axes": [ax, ay], "angle": angle, "pixels": int(m.sum())})
    return out, mask > 0, draws


def _copy_paste(img: np.ndarray, rs: np.random.RandomState, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict]:
    h, w = img.shape
    s_lo, s_hi = p["rect_size"]
    sx, sy = int(rs.randint(s_lo, s_hi)), int(rs.randint(s_lo, s_hi))  # sx along rows, sy along columns
    lo_x, lo_y = int(h / p["corner_ratio"]), int(w / p["corner_ratio"])
    if h - sx - 1 <= lo_x or w - sy - 1 <= lo_y:
        raise ValueError(f"image {h}x{w} too small for copy-paste rectangles of {s_lo}..{s_hi - 1} px")
    src = (int(rs.randint(lo_x, h - sx - 1)), int(rs.randint(lo_y, w - sy - 1)))
    dst = (int(rs.randint(lo_x, h - sx - 1)), int(rs.randint(lo_y, w - sy - 1)))
    out = img.copy()
    patch = img[src[0]:src[0] + sx, src[1]:src[1] + sy].copy()
    out[dst[0]:dst[0] + sx, dst[1]:dst[1] + sy] = patch
    mask = np.zeros((h, w), bool)
    mask[dst[0]:dst[0] + sx, dst[1]:dst[1] + sy] = True
    return out, mask, {"size_rc": [sx, sy], "src_rc": list(src), "dst_rc": list(dst)}


def make_synthetic(images: Any, brain: Any = None, kind: str = "sprites", params: str | dict[str, Any] | None = None,
                   seed: int = DEFAULT_SEED) -> tuple[Any, Any, dict[str, Any]]:
    """Corrupt healthy slices ``images`` [N,1,H,W] (values in [0, 1]).

    Returns ``(corrupted, masks, record)``: corrupted like ``images`` (same type, dtype and device), masks
    [N,1,H,W] float {0, 1}, record = {kind, seed, params, per_image draws}. ``brain`` is accepted for the
    record (its fraction covered by each mask) and never changes the draws, as in the official code.
    """
    is_torch = isinstance(images, torch.Tensor)
    x = images.detach().cpu().numpy() if is_torch else np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"images must be [N,1,H,W], got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or Inf")
    if kind not in ("sprites", "copy_paste"):
        raise ValueError(f"kind must be 'sprites' or 'copy_paste', got {kind!r}")
    p = resolve_params(params, kind)
    b = None
    if brain is not None:
        b = brain.detach().cpu().numpy() if isinstance(brain, torch.Tensor) else np.asarray(brain)
        if b.shape != x.shape:
            raise ValueError(f"brain shape {b.shape} != images shape {x.shape}")
    work = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    rs = np.random.RandomState(seed)
    out = np.empty_like(x)
    masks = np.zeros(x.shape, dtype=np.float32)
    per_image = []
    for i in range(x.shape[0]):
        img = x[i, 0].astype(work)  # the code draws on the float32 image it is given
        if kind == "sprites":
            o, m, d = _sprites(img, rs, p)
        else:
            o, m, d = _copy_paste(img, rs, p)
        out[i, 0] = o.astype(x.dtype)
        masks[i, 0] = m
        rec = {"index": i, "draws": d, "mask_pixels": int(m.sum())}
        if b is not None:
            rec["mask_in_brain_frac"] = float((m & (b[i, 0] > 0.5)).sum() / max(int(m.sum()), 1))
        per_image.append(rec)
    kept = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}
    record = {"kind": kind, "seed": int(seed), "params": kept, "generator": GENERATOR_ID,
              "opencv": _cv2().__version__ if kind == "sprites" else None, "images": per_image}
    if is_torch:
        return (torch.from_numpy(out).to(images.device), torch.from_numpy(masks).to(images.device), record)
    return out, masks, record
