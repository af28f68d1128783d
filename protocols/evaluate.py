"""Run a trained method over slice sets and turn its maps into metric rows.

``collect`` scores every slice once (maps kept on the method's device while metrics run there too);
``standard_rows`` computes the suite's core metrics of ``table1``: image AUROC/AP, pooled pixel
AUROC/AP, Dice at a threshold calibrated on healthy validation, and the best (oracle) Dice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark.contract import Method
from protocols import metrics as M
from protocols.stats import bootstrap_replicates


@dataclass
class ScoreSet:
    """Everything a protocol needs from one pass of a method over a slice set (same device as the maps)."""

    maps: torch.Tensor  # [N,1,H,W]
    scores: torch.Tensor  # [N]
    labels: torch.Tensor  # [N] int64
    lesion: torch.Tensor  # [N,1,H,W] float {0,1}
    brain: torch.Tensor  # [N,1,H,W] float [0,1]
    images: torch.Tensor  # [N,C,H,W]
    reconstructions: torch.Tensor | None
    manifest: pd.DataFrame
    wall_s: float

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def where(self, keep: np.ndarray | torch.Tensor) -> "ScoreSet":
        idx = torch.as_tensor(np.flatnonzero(np.asarray(keep)), device=self.maps.device)
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return ScoreSet(pick(self.maps), pick(self.scores), pick(self.labels), pick(self.lesion), pick(self.brain),
                        pick(self.images), pick(self.reconstructions),
                        self.manifest.iloc[idx.cpu().numpy()].reset_index(drop=True), self.wall_s)


def collect(method: Method, slices, *, batch_size: int = 32, progress: bool = True) -> ScoreSet:
    """Score every slice of ``slices`` (a SliceSet) with ``method``; returns maps on the method's device."""
    t0 = time.perf_counter()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("maps", "scores", "labels", "lesion", "brain", "images",
                                                             "recon")}
    n_batches = (len(slices) + batch_size - 1) // batch_size
    for batch in tqdm(slices.batches(batch_size, device=method.device), total=n_batches, desc=f"score {method.name}",
                      disable=not progress, leave=False, dynamic_ncols=True):
        out = method.score(batch)
        parts["maps"].append(out.anomaly_map)
        parts["scores"].append(out.image_score)
        parts["labels"].append(batch.label)
        parts["lesion"].append(batch.lesion_mask)
        parts["brain"].append(batch.brain_mask)
        parts["images"].append(batch.image)
        if out.reconstruction is not None:
            parts["recon"].append(out.reconstruction)
    if method.device.type == "cuda":
        torch.cuda.synchronize(method.device)
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    return ScoreSet(cat["maps"], cat["scores"], cat["labels"], cat["lesion"], cat["brain"], cat["images"],
                    cat["recon"], slices.manifest, time.perf_counter() - t0)


# The metric ids this module writes (footnoted by the tables; vocabulary of specs/evaluation.md).
STANDARD_METRICS = {
    "auroc": ("auroc|image", "image AUROC of the method's own image score over all test slices"),
    "ap": ("ap|image", "image AP (sklearn) of the method's own image score"),
    "auroc_pixel": ("auroc_pixel|pooled", "pixel AUROC, all pixels of all test slices pooled, no brain mask"),
    "ap_pixel": ("ap_pixel|pooled", "pixel AP (sklearn), all pixels of all test slices pooled"),
    "dice": ("dice|fpr@5%_healthy_brain",
             "pooled Dice at the threshold giving 5 % false-positive brain pixels on healthy validation"),
    "dice_oracle": ("dice|oracle_test|max1000",
                    "best pooled Dice over 1000 thresholds in [0, max] on the test set (oracle)"),
}


def _se(replicates: np.ndarray) -> np.ndarray:
    """Bootstrap standard error per column; NaN where fewer than 20 replicates are finite."""
    ok = np.isfinite(replicates)
    out = np.full(replicates.shape[1], np.nan)
    for j in range(replicates.shape[1]):
        if ok[:, j].sum() >= 20:
            out[j] = replicates[ok[:, j], j].std(ddof=0)
    return out


def standard_rows(test: ScoreSet, healthy_val: ScoreSet | None, *, fpr: float = 0.05,
                  n_boot: int = 200) -> list[dict[str, Any]]:
    """The core metrics as long-format rows (metric, metric_id, value, se, n, note).

    ``se`` is the bootstrap standard error of the value over test *subjects* (``n_boot`` resamples, all
    slices of a subject together; thresholds fixed): how far the number could move on another draw of
    test subjects. ``phbench check`` widens its tolerance to 2 se, since smaller moves are not evidence of
    a code change. ``n_boot=0`` skips it (se NaN).
    """
    rows: list[dict[str, Any]] = []
    subjects = test.manifest["subject"].astype(str).to_numpy()
    dev = test.maps.device

    def reps(metric) -> np.ndarray:
        if n_boot <= 0:
            return np.full((1, 2), np.nan)
        return bootstrap_replicates(lambda i: metric(torch.as_tensor(i, device=dev)), subjects, n_boot=n_boot)

    def add(metric: str, value: float, se: float = float("nan"), note: str = "", column_group: str = "") -> None:
        # both Dice rows share the canonical metric "dice"; the metric_id tells calibrated from oracle
        rows.append({"metric": "dice" if metric.startswith("dice") else metric,
                     "metric_id": STANDARD_METRICS[metric][0], "value": float(value), "se": float(se),
                     "n": len(test), "note": note, "column_group": column_group, "scale": "fraction"})

    image = M.image_auroc_ap(test.scores, test.labels)
    se = _se(reps(lambda i: [(r := M.image_auroc_ap(test.scores[i], test.labels[i]))["auroc"], r["ap"]]))
    add("auroc", image["auroc"], se[0])
    add("ap", image["ap"], se[1])
    has_lesion = test.lesion.flatten(1).amax(dim=1) > 0
    if not bool(has_lesion.any()):
        for m in ("auroc_pixel", "ap_pixel", "dice", "dice_oracle"):
            add(m, float("nan"), note="no lesion pixels in the test set")
        return rows
    auroc_px, ap_px = M.pooled_pixel_auroc_ap(test.maps, test.lesion)
    pos, neg = M.per_image_binned_counts(test.maps, test.lesion)  # a resample sums rows instead of re-sorting
    se = _se(reps(lambda i: M.auroc_ap_from_counts(pos[i].sum(0), neg[i].sum(0))))
    add("auroc_pixel", auroc_px, se[0])
    add("ap_pixel", ap_px, se[1])
    gt = test.lesion > 0.5
    if healthy_val is not None and len(healthy_val):
        t = M.threshold_at_fpr(healthy_val.maps, fpr, valid=healthy_val.brain > 0.5)
        pred = test.maps > t
        inter, npred, ngt = ((pred & gt).flatten(1).sum(1).double(), pred.flatten(1).sum(1).double(),
                             gt.flatten(1).sum(1).double())
        se = _se(reps(lambda i: float(2 * inter[i].sum() / (npred[i].sum() + ngt[i].sum()))))
        add("dice", M.dice(pred, test.lesion), se[0],
            note=f"threshold {t:.4g} from {len(healthy_val)} healthy validation slices")
    else:
        add("dice", float("nan"), note="no healthy validation slices to calibrate the threshold")
    best, thr = M.best_dice(test.maps, test.lesion, grid="max1000")
    # per-image counts on the test set's grid once; a resample only sums rows (its own max would move the grid)
    tp, fp, ng = M.per_image_counts(test.maps, gt, torch.ones_like(gt), M.threshold_grid("max1000", float(
        test.maps.max())))
    se = _se(reps(lambda i: float((2 * tp[i].sum(0) / (tp[i].sum(0) + fp[i].sum(0) + ng[i].sum())).max())))
    add("dice_oracle", best, se[0], note=f"oracle threshold {thr:.4g} chosen on the test set")
    return rows
