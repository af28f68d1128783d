"""Threshold rules, by the id that appears after the first ``|`` of a metric id.

Why: a binarised metric (Dice, ACC, box F1) means nothing without the rule that chose its threshold, and
the papers mix calibrated, fixed and test-set (oracle) rules. Every rule here has an id from the
``specs/evaluation.md`` vocabulary and says whether it looks at the test labels (``oracle``).

Rules (binarisation is ``map > t`` unless a rule says otherwise):
- ``fpr@5%_healthy_brain``  smallest t with ≤ 5 % of healthy *brain* pixels above t (exact order statistic).
- ``fpr@5%_healthy_image``  same over every pixel (no brain mask: OCT, fundus, jpg) -- or, given image scores
  instead of maps, the same order statistic over healthy image scores. Any percentage: ``fpr@1%_...``.
- ``fpr@5%_healthy_image|ra_code``  RA's search: grid 0, 0.001, …, 0.999, mean over slices of the per-slice
  percentage of *all* pixels > t, smallest t with mean ≤ 5 %.
- ``fpr@5%_healthy_image|phanes_code``  PHANES's search (``thresholding``, ci-ber/PHANES @ c8995ed): RA's grid
  and float32 '>' but the per-slice count is divided by ``anomaly_score.shape[-1] · anomaly_map.shape[-2]`` =
  1 · H (128) instead of H·W, so its "5 %" is ≈ 0.039 % of the pixels; no qualifying value returns 0.
- ``oracle_test|<grid>``  best pooled Dice on the test set (grids: pr_exact, max1000, unit101); oracle.
- ``oracle_test|itermask2``  IterMask2's global θ maximising mean per-image Dice; oracle.
- ``paper_fixed``  a constant printed in the paper / hard-coded in its code (see ``PAPER_FIXED``).
- ``p75_train_normal``  ProxyAno: ``sorted(train_normal_scores)[int(0.75 n)]``, decision ``score >= t``.

This module is the one place a threshold is chosen: ``protocols.evaluate`` and ``protocols.suites`` call
:func:`fit_threshold` or the named rule functions below (``fpr_threshold``, ``p75_train_normal``,
``paper_fixed``, ``oracle_dice``, ``oracle_grid``, ``oracle_dice_per_image``, ``oracle_itermask2``), so a
rule cannot drift between two copies.
``protocols.metrics`` keeps the primitives they call (``threshold_at_fpr``, ``best_dice``, ...).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from protocols import metrics as M

__all__ = ["ThresholdRule", "RULES", "PAPER_FIXED", "parse_rule", "fit_threshold", "ra_code_threshold",
           "ra_code_grid_fpr", "phanes_code_threshold", "p75_train_normal", "fpr_threshold", "paper_fixed",
           "oracle_dice", "oracle_grid", "oracle_dice_per_image", "oracle_itermask2"]


@dataclass(frozen=True)
class ThresholdRule:
    id: str
    description: str
    oracle: bool
    needs: str  # "healthy" (healthy maps / scores), "test" (test maps + masks), "train_scores", "none"


RULES: dict[str, ThresholdRule] = {r.id: r for r in [
    ThresholdRule("fpr@5%_healthy_brain", "≤ 5 % FP brain pixels on healthy validation (exact)", False, "healthy"),
    ThresholdRule("fpr@5%_healthy_image", "≤ 5 % FP pixels (whole image) / images on healthy data (exact)", False,
                  "healthy"),
    ThresholdRule("fpr@5%_healthy_image|ra_code", "RA code: grid 0..0.999, mean per-slice FPR over all pixels",
                  False, "healthy"),
    ThresholdRule("fpr@5%_healthy_image|phanes_code", "PHANES code: RA's grid search but count / H (128), "
                  "not H·W (≈ 0.039 % FPR)", False, "healthy"),
    ThresholdRule("oracle_test|pr_exact", "best pooled Dice over the exact PR curve on the test set", True, "test"),
    ThresholdRule("oracle_test|max1000", "best pooled Dice over 1000 steps in [0, max] on the test set", True, "test"),
    ThresholdRule("oracle_test|unit101", "best pooled Dice over linspace(0, 1, 101) on the test set", True, "test"),
    ThresholdRule("oracle_test|itermask2", "IterMask2 global θ maximising mean per-image Dice on the test set",
                  True, "test"),
    ThresholdRule("paper_fixed", "constant from the paper or its code", False, "none"),
    ThresholdRule("p75_train_normal", "75th percentile element of the training-normal scores (ProxyAno)", False,
                  "train_scores"),
]}

PAPER_FIXED: dict[str, float] = {
    # key: "<method or protocol>:<what>" -> value as used in the official code (map scale of that code)
    "ra:box_threshold": 0.009,  # RA DownstreamEvaluator, hard-coded (SqueezeNet-LPIPS maps: re-derive, footnote)
    "phanes:mask_train": 0.1,
    "phanes:mask_infer": 0.153,
    "autoddpm:mask": 0.13,
    "proxyano:pixel": 0.5,  # A_pix >= 0.5, decision uses >=
}

_FPR = re.compile(r"^fpr@(?P<pct>[0-9.]+)%_healthy_(?P<region>brain|image)(?:\|(?P<variant>ra_code|phanes_code))?$")


def parse_rule(rule_id: str) -> dict[str, Any]:
    """Split a rule id into its kind and parameters; raises ValueError for unknown ids."""
    m = _FPR.match(rule_id)
    if m:
        return {"kind": "fpr", "fpr": float(m["pct"]) / 100.0, "region": m["region"], "variant": m["variant"] or "exact",
                "oracle": False}
    if rule_id.startswith("oracle_test|"):
        grid = rule_id.split("|", 1)[1]
        if grid not in ("pr_exact", "max1000", "unit101", "itermask2"):
            raise ValueError(f"unknown oracle grid in {rule_id!r}")
        return {"kind": "oracle", "grid": grid, "oracle": True}
    if rule_id == "paper_fixed" or rule_id.startswith("paper_fixed|"):
        return {"kind": "fixed", "key": rule_id.partition("|")[2] or None, "oracle": False}
    if rule_id == "p75_train_normal":
        return {"kind": "p75", "oracle": False}
    raise ValueError(f"unknown threshold rule {rule_id!r}; known: {sorted(RULES)} (fpr@X% works for any X)")


def ra_code_threshold(healthy_maps: Any, fpr: float = 0.05, *, denominator: int | None = None,
                      official: bool = False) -> float:
    """RA's official search: t ∈ {0, 0.001, …, 0.999}; per slice 100·#(s > t)/denominator (default H·W,
    background included), averaged over slices; the smallest t with mean ≤ 100·fpr. Returns the last grid
    value (0.999) with a warning if none qualifies.

    ``official=True`` follows RA's ``PDownstreamEvaluator.thresholding`` (ci-ber/RA 9b7a2550,
    projects/23_ra_midl/DownstreamEvaluator.py l. 258-305) to the bit: the grid is ``np.linspace(0, 1, 1000,
    endpoint=False)`` (i·0.001, not i/1000); the maps are float32 there (residual × saliency) and numpy 1.21
    compares a float32 array with the float64 grid scalar in float32, so ``s > float32(t)`` on float32 maps;
    when no grid value qualifies the official scan returns its initial ``best_th = 0`` (warning here).
    Ties: the official code scans thresholds sorted by mean FPR with an unstable argsort, so among grid values
    with exactly the same mean FPR it may return any; both modes return the smallest (``protocols/ra.md`` §6).
    """
    s = M._scores(healthy_maps, "healthy_maps")
    if s.ndim < 3:
        raise ValueError(f"healthy_maps must be [N,(1,)H,W], got {tuple(s.shape)}")
    n = s.shape[0]
    if official:
        grid64, mean_fpr = ra_code_grid_fpr(s, denominator=denominator)
        ok = np.flatnonzero(mean_fpr <= 100.0 * fpr)
        if ok.size == 0:
            warnings.warn("ra_code_threshold: no grid value reaches the FPR target; returning 0 as RA's code does",
                          RuntimeWarning, stacklevel=2)
            return 0.0
        return float(grid64[int(ok[0])])
    flat = s.reshape(n, -1)
    denom = float(denominator if denominator is not None else flat.shape[1])
    grid = torch.arange(1000, dtype=torch.float64) / 1000.0
    srt = M._rowsort(flat.to(torch.float64))
    gt = flat.shape[1] - torch.searchsorted(srt.contiguous(), grid.to(srt.device).expand(n, -1).contiguous(),
                                            right=True)
    mean_fpr = (100.0 * gt.to(torch.float64) / denom).mean(0).cpu()
    ok = torch.nonzero(mean_fpr <= 100.0 * fpr).flatten()
    if ok.numel() == 0:
        warnings.warn("ra_code_threshold: no grid value reaches the FPR target; returning 0.999", RuntimeWarning,
                      stacklevel=2)
        return 0.999
    return float(grid[int(ok[0])])


def ra_code_grid_fpr(healthy_maps: Any, *, denominator: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The curve RA's ``thresholding`` scans: its grid ``np.linspace(0, 1, 1000, endpoint=False)`` and, per grid
    value t, the mean over slices of ``100 · #(float32 map > float32(t)) / denominator`` (default H·W, background
    included) -- the mean FPR in percent that the official code computes for each threshold. NaN pixels never
    fire (they fail '>' there too)."""
    s = M._scores(healthy_maps, "healthy_maps")
    if s.ndim < 3:
        raise ValueError(f"healthy_maps must be [N,(1,)H,W], got {tuple(s.shape)}")
    flat32 = s.reshape(s.shape[0], -1).detach().cpu().to(torch.float32).numpy()
    denom = float(denominator if denominator is not None else flat32.shape[1])
    grid64 = np.linspace(0, 1, endpoint=False, num=1000)
    srt = np.sort(flat32, axis=1)  # NaN sorts last: count only the part before it
    valid = (~np.isnan(flat32)).sum(axis=1, keepdims=True)
    above = valid - np.stack([np.searchsorted(r[:v], grid64.astype(np.float32), side="right")
                              for r, v in zip(srt, valid[:, 0])])
    return grid64, np.mean(above * 100 / denom, axis=0)  # per slice count·100/im_scale, then mean over slices


def phanes_code_threshold(healthy_maps: Any, fpr: float = 0.05) -> float:
    """PHANES's ``PDownstreamEvaluator.thresholding`` (ci-ber/PHANES @ c8995ed, projects/phanes/
    DownstreamEvaluator.py): grid ``np.linspace(0, 1, 1000, endpoint=False)``; per slice
    ``count_nonzero(map > th) · 100 / im_scale`` with ``im_scale = anomaly_score.shape[-1] · anomaly_map.shape[-2]``
    -- PHANES's score is ``np.mean(..., keepdims=True)`` of shape [B,1,1,1], so im_scale = 1 · H, not H·W, and
    its "5 %" allows 5·H/100 pixels per slice (≈ 0.039 % at 128²); mean over slices; the scan over thresholds
    sorted by mean FPR keeps the last one ≤ 100·fpr, i.e. the smallest grid value whose mean is ≤ 100·fpr
    (ties in the unstable argsort: the smallest, as :func:`ra_code_threshold`); none qualifying returns the
    initial ``best_th = 0`` (with a warning). The float32 maps meet float32(th) (numpy 1.24, PHANES's pin)."""
    s = M._scores(healthy_maps, "healthy_maps")
    if s.ndim < 3:
        raise ValueError(f"healthy_maps must be [N,(1,)H,W], got {tuple(s.shape)}")
    grid64, mean_fpr = ra_code_grid_fpr(s, denominator=int(s.shape[-2]))
    ok = np.flatnonzero(mean_fpr <= 100.0 * fpr)
    if ok.size == 0:
        warnings.warn("phanes_code_threshold: no grid value reaches the FPR target; returning 0 as PHANES's code "
                      "does", RuntimeWarning, stacklevel=2)
        return 0.0
    return float(grid64[int(ok[0])])


def fpr_threshold(healthy: Any, fpr: float, *, healthy_brain: Any = None) -> float:
    """``fpr@X%_healthy_brain`` (``healthy_brain`` given) / ``fpr@X%_healthy_image``, exact: the smallest t
    with at most ``fpr`` of the healthy pixels (or image scores) above t; the decision it calibrates is ``> t``."""
    return M.threshold_at_fpr(healthy, fpr, valid=healthy_brain)


def paper_fixed(key: float | str) -> float:
    """``paper_fixed``: a ``PAPER_FIXED`` key (the constant a paper or its code uses) or a finite number."""
    if isinstance(key, str):
        if key not in PAPER_FIXED:
            raise ValueError(f"paper_fixed: unknown key {key!r}; known: {sorted(PAPER_FIXED)}")
        return PAPER_FIXED[key]
    v = float(key)
    if not math.isfinite(v):
        raise ValueError("paper_fixed: value must be finite")
    return v


def oracle_dice(test_maps: Any, test_masks: Any, grid: str, *, test_brain: Any = None) -> tuple[float, float]:
    """``oracle_test|<grid>``: (best pooled Dice, its threshold) on the test set -- the rule and the metric are
    one search, so both come back rather than searching twice."""
    return M.best_dice(test_maps, test_masks, grid=grid, valid=test_brain)


def oracle_grid(grid: str, map_max: float) -> torch.Tensor:
    """The candidate thresholds of an ``oracle_test|<grid>`` search (a bootstrap resample takes its own best
    over them)."""
    return M.threshold_grid(grid, map_max)


def oracle_dice_per_image(test_maps: Any, test_masks: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``oracle_image``: each test image at its own best-Dice threshold (exact PR curve); (Dice, t) per image."""
    return M.best_dice_per_image(test_maps, test_masks)


def oracle_itermask2(test_maps: Any, test_masks: Any, test_brain: Any) -> tuple[float, float]:
    """``oracle_test|itermask2``: (best mean per-image Dice, global θ) of IterMask2's search on the test set."""
    return M.itermask2_global_dice(test_maps, test_masks, test_brain)


def p75_train_normal(train_scores: Any) -> float:
    """ProxyAno/P-Net: ``sorted(scores)[int(0.75 n)]`` (an element, not an interpolated percentile)."""
    s = M._scores(train_scores, "train_scores").reshape(-1)
    if s.numel() == 0:
        raise ValueError("train_scores is empty")
    return float(M._sort(s)[int(0.75 * s.numel())].item())


def fit_threshold(rule_id: str, *, healthy: Any = None, healthy_brain: Any = None, test_maps: Any = None,
                  test_masks: Any = None, test_brain: Any = None, train_scores: Any = None,
                  fixed: float | str | None = None) -> float:
    """Return the threshold of ``rule_id`` from what that rule may look at.

    ``healthy``: healthy validation maps [N,1,H,W] or healthy image scores [N]; ``healthy_brain`` required
    for ``_healthy_brain``. ``test_*``: only for oracle rules. ``fixed``: a number or a ``PAPER_FIXED`` key.
    Passing test data to a non-oracle rule is an error (it would leak labels).
    """
    r = parse_rule(rule_id)
    if r["kind"] == "fpr":
        if healthy is None:
            raise ValueError(f"{rule_id}: needs healthy maps or scores")
        if test_masks is not None:
            raise ValueError(f"{rule_id}: a calibrated rule must not see test labels")
        if r["variant"] == "ra_code":
            return ra_code_threshold(healthy, r["fpr"])
        if r["variant"] == "phanes_code":
            return phanes_code_threshold(healthy, r["fpr"])
        if r["region"] == "brain":
            if healthy_brain is None:
                raise ValueError(f"{rule_id}: needs healthy_brain (use _healthy_image when there is no brain mask)")
            return fpr_threshold(healthy, r["fpr"], healthy_brain=healthy_brain)
        return fpr_threshold(healthy, r["fpr"])
    if r["kind"] == "oracle":
        if test_maps is None or test_masks is None:
            raise ValueError(f"{rule_id}: needs test_maps and test_masks")
        if r["grid"] == "itermask2":
            if test_brain is None:
                raise ValueError(f"{rule_id}: needs test_brain")
            return oracle_itermask2(test_maps, test_masks, test_brain)[1]
        return oracle_dice(test_maps, test_masks, r["grid"], test_brain=test_brain)[1]
    if r["kind"] == "fixed":
        key = fixed if fixed is not None else r["key"]
        if key is None:
            raise ValueError("paper_fixed: give fixed=<value or PAPER_FIXED key>")
        return paper_fixed(key)
    if r["kind"] == "p75":
        if train_scores is None:
            raise ValueError("p75_train_normal: needs train_scores")
        return p75_train_normal(train_scores)
    raise AssertionError(r)  # pragma: no cover

