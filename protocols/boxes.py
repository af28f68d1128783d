"""RA bounding-box localisation (Table 2(b), 3(b), Fig. 4(a)): detected boxes, per-box FP and F1.

Why two variants: RA's evaluation code differs from its paper in ways that move the numbers
(``specs/evaluation.md`` "How the official evaluation code really computes", ``protocols/ra.md`` §6):

``suite`` (corrected, default): box and healthy-tissue masks binarised at > 0.5; a pixel fires when
``map > t``; the box is detected when more than 10 % of its pixels fire; FP = Σ_healthy s_t / Σ_box s_t
(the paper's ratio, not floored; s_t = map where it fires, else 0); F1 = 2 / (2 + FP) when detected, else 0.

``ra_code`` (as the official code computes it, in its float32 arithmetic): the box mask is used soft (not
binarised), the healthy mask binarised at > 0.5; a pixel fires when ``float32(map) >= float32(t)``; n_box =
nonzero pixels of the soft box; FP = int(H / max(A, 1)) (float32 sums and division); precision = TP /
max(TP + FP, 1); F1 = 2·P·TP / (P + TP + 1e-8). See :func:`_ra_code_box`.

The threshold comes from :mod:`protocols.thresholds` (``fpr@5%_healthy_image`` exact, its ``|ra_code``
grid search, or ``paper_fixed`` 0.009).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from protocols import metrics as M

__all__ = ["Box", "localise", "VARIANTS"]

VARIANTS = ("suite", "ra_code")


@dataclass
class Box:
    image_index: int  # row of ``maps``
    mask: Any  # [H, W] box mask (filled rectangle; may be soft after resizing)
    pathology: str
    counted: bool = True  # False for the 16 artefact boxes (evaluated, never reported)
    box_id: str = ""


def _hw(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(dtype)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected [H, W] (or [1, H, W]), got {a.shape}")
    return a


def _ra_code_box(s32: np.ndarray, box32: np.ndarray, neg: np.ndarray, t: float, detect_frac: float
                 ) -> tuple[float, float, int, int, int, float, float, float]:
    """One box as ``PDownstreamEvaluator.object_localization`` scores it (ci-ber/RA 9b7a2550,
    projects/23_ra_midl/DownstreamEvaluator.py l. 356-423), dtype for dtype: the map (residual × saliency) and
    the soft box mask are float32 numpy arrays; ``x[x < th] = 0`` compares in float32 (numpy casts the Python
    threshold to float32), so a pixel equal to float32(t) is kept; the healthy mask is binarised (> 0.5 → 1,
    < 1 → 0) as float32; A and H are float32 ``np.sum`` of the products; n_hit / n_box are
    ``np.count_nonzero`` of the float32 product / soft mask; FP = int(H / max(A, 1)) with the float32
    division (truncation, Python ``max`` semantics); P = TP / max(TP + FP, 1); F1 = 2·P·TP / (P + TP + 1e-8).

    Returns (A, H, n_hit, n_box, TP, FP, P, F1). An empty box (no nonzero mask pixel) is a miss there
    (0 > 0 is false): TP 0, P 0, F1 0, as the official code logs it. A non-finite H / max(A, 1) (the
    official ``int()`` would raise) gives FP, P and F1 NaN.
    """
    x_combo = np.array(s32, dtype=np.float32, copy=True)
    x_combo[x_combo < np.float32(t)] = 0
    neg32 = np.asarray(neg, dtype=np.float32)
    x_pos = x_combo * box32
    x_neg = x_combo * neg32
    a32 = np.sum(x_pos)  # float32, numpy pairwise summation as in the official code
    h32 = np.sum(x_neg)
    n_hit = int(np.count_nonzero(x_pos))
    n_box = int(np.count_nonzero(box32))
    tp = 1 if n_hit > detect_frac * n_box else 0
    if 1 > a32:  # Python max(A, 1) keeps A unless 1 > A; H / 1 is exact in any dtype
        q = float(h32)
    else:
        q = float(np.divide(h32, a32, dtype=np.float32))
    if not math.isfinite(q):
        return float(a32), float(h32), n_hit, n_box, tp, math.nan, math.nan, math.nan
    fp = int(q)
    prec = tp / max(tp + fp, 1)
    f1 = 2 * (prec * tp) / (prec + tp + 1e-8)
    return float(a32), float(h32), n_hit, n_box, tp, float(fp), float(prec), float(f1)


def localise(maps: Any, boxes: Sequence[Box], healthy_masks: Any, threshold: float, *,
             variant: str = "suite", detect_frac: float = 0.1) -> dict[str, Any]:
    """Score every box; returns aggregates over ``counted`` boxes and the per-box / per-pathology tables.

    ``maps`` [N,1,H,W]; ``healthy_masks`` [N,1,H,W] per image (brain minus every annotated box).
    Aggregates: ``detected_boxes`` (k), ``n_boxes``, ``f1`` (mean per-box F1, fraction), ``fp_ratio``
    (mean FP), ``detection_rate``; ``per_pathology`` DataFrame (n, detected, rate, mean F1).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    s_t = M._scores(maps, "maps").cpu()
    s_all = s_t.to(torch.float64).numpy()
    s32_all = s_t.to(torch.float32).numpy() if variant == "ra_code" else None  # the official code's dtype
    hm_all = M._scores(healthy_masks, "healthy_masks").cpu().numpy()
    if s_all.ndim != 4 or s_all.shape[1] != 1 or hm_all.shape != s_all.shape:
        raise ValueError(f"maps and healthy_masks must be equal [N,1,H,W]; got {s_all.shape}, {hm_all.shape}")
    t = float(threshold)
    recs = []
    for k, b in enumerate(boxes):
        i = int(b.image_index)
        if not 0 <= i < s_all.shape[0]:
            raise ValueError(f"box {k}: image_index {i} out of range")
        s = s_all[i, 0]
        box = _hw(b.mask, f"box {k} mask")
        if box.shape != s.shape:
            raise ValueError(f"box {k}: mask shape {box.shape} != map shape {s.shape}")
        neg = hm_all[i, 0] > 0.5
        if variant == "suite":
            pos = box > 0.5
            fire = s > t
            st = np.where(fire, s, 0.0)
            a = float(st[pos].sum())
            h = float(st[neg].sum())
            n_box = int(pos.sum())
            n_hit = int((fire & pos).sum())
            tp = int(n_box > 0 and n_hit > detect_frac * n_box)
            fp = (h / a) if a > 0 else (math.inf if h > 0 else 0.0)
            f1 = 2.0 / (2.0 + fp) if tp else 0.0
            prec = math.nan  # the suite reports no per-box precision
        else:
            a, h, n_hit, n_box, tp, fp, prec, f1 = _ra_code_box(s32_all[i, 0], _hw(b.mask, "", np.float32), neg, t,
                                                                detect_frac)
        recs.append({"box": k, "box_id": b.box_id, "image_index": i, "pathology": b.pathology, "counted": bool(b.counted),
                     "n_box": n_box, "n_hit": n_hit, "in_box_score": a, "healthy_score": h, "detected": tp,
                     "fp": fp, "precision": prec, "f1": f1})
    per_box = pd.DataFrame(recs, columns=["box", "box_id", "image_index", "pathology", "counted", "n_box", "n_hit",
                                          "in_box_score", "healthy_score", "detected", "fp", "precision",
                                          "f1"])
    c = per_box[per_box["counted"]]
    if len(c) == 0:
        nan = M._nan("no counted box", 3)
        return {"detected_boxes": 0, "n_boxes": 0, "f1": nan, "fp_ratio": nan, "detection_rate": nan, "precision": nan,
                "threshold": t, "variant": variant, "per_box": per_box, "per_pathology": pd.DataFrame()}
    fin = c["fp"][np.isfinite(c["fp"])]
    per_path = (c.groupby("pathology", sort=False)
                 .agg(n=("box", "size"), detected=("detected", "sum"), f1=("f1", "mean")).reset_index())
    per_path["rate"] = per_path["detected"] / per_path["n"]
    return {"detected_boxes": int(c["detected"].sum()), "n_boxes": int(len(c)), "f1": float(c["f1"].mean()),
            "fp_ratio": float(fin.mean()) if len(fin) else math.nan, "n_fp_infinite": int(len(c) - len(fin)),
            "detection_rate": float(c["detected"].mean()), "threshold": t, "variant": variant,
            "precision": float(c["precision"].mean()) if variant == "ra_code" else math.nan,
            "per_box": per_box, "per_pathology": per_path}
