"""RA bounding-box localisation (Table 2(b), 3(b), Fig. 4(a)): detected boxes, per-box FP and F1.

Why two variants: RA's evaluation code differs from its paper in ways that move the numbers
(``specs/evaluation.md`` "How the official evaluation code really computes", ``protocols/ra.md`` §6):

``suite`` (corrected, default): box and healthy-tissue masks binarised at > 0.5; a pixel fires when
``map > t``; the box is detected when more than 10 % of its pixels fire; FP = Σ_healthy s_t / Σ_box s_t
(the paper's ratio, not floored; s_t = map where it fires, else 0); F1 = 2 / (2 + FP) when detected, else 0.

``ra_code`` (as the official code computes it): the box mask is used soft (not binarised), the healthy mask
binarised at > 0.5; a pixel fires when ``map >= t``; n_box = nonzero pixels of the soft box; FP =
floor(H / max(A, 1)); precision = TP / max(TP + FP, 1); F1 = 2·P·TP / (P + TP + 1e-8).

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


def _hw(x: Any, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected [H, W] (or [1, H, W]), got {a.shape}")
    return a


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
    s_all = M._scores(maps, "maps").cpu().to(torch.float64).numpy()
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
        else:
            st = np.where(s >= t, s, 0.0)
            a = float((st * box).sum())
            h = float((st * neg).sum())
            n_hit = int(np.count_nonzero(st * box))
            n_box = int(np.count_nonzero(box))
            tp = int(n_hit > detect_frac * n_box)
            fp = float(math.floor(h / max(a, 1.0)))
            prec = tp / max(tp + fp, 1.0)
            f1 = 2.0 * prec * tp / (prec + tp + 1e-8)
        recs.append({"box": k, "box_id": b.box_id, "image_index": i, "pathology": b.pathology, "counted": bool(b.counted),
                     "n_box": n_box, "n_hit": n_hit, "in_box_score": a, "healthy_score": h, "detected": tp,
                     "fp": fp, "f1": f1})
    per_box = pd.DataFrame(recs, columns=["box", "box_id", "image_index", "pathology", "counted", "n_box", "n_hit",
                                          "in_box_score", "healthy_score", "detected", "fp", "f1"])
    c = per_box[per_box["counted"]]
    if len(c) == 0:
        nan = M._nan("no counted box", 3)
        return {"detected_boxes": 0, "n_boxes": 0, "f1": nan, "fp_ratio": nan, "detection_rate": nan,
                "threshold": t, "variant": variant, "per_box": per_box, "per_pathology": pd.DataFrame()}
    fin = c["fp"][np.isfinite(c["fp"])]
    per_path = (c.groupby("pathology", sort=False)
                 .agg(n=("box", "size"), detected=("detected", "sum"), f1=("f1", "mean")).reset_index())
    per_path["rate"] = per_path["detected"] / per_path["n"]
    return {"detected_boxes": int(c["detected"].sum()), "n_boxes": int(len(c)), "f1": float(c["f1"].mean()),
            "fp_ratio": float(fin.mean()) if len(fin) else math.nan, "n_fp_infinite": int(len(c) - len(fin)),
            "detection_rate": float(c["detected"].mean()), "threshold": t, "variant": variant,
            "per_box": per_box, "per_pathology": per_path}
