"""Metric computations of phbench, each exact and named by a stable ``metric_id``.

Why this module exists: the five papers print the same metric names for different computations
(``specs/evaluation.md``). Every function here does one computation, says which, and is exact (ties are
handled like scikit-learn, never approximated by binning), so a table cell can be traced to one rule.

Conventions (all functions):
- Inputs may be torch tensors (CPU or CUDA) or numpy arrays; results are Python floats (or a tensor for
  per-image vectors). CUDA inputs are computed on the GPU.
- Scores / maps: any real dtype; half precision is widened to float32, integers to float64.
  **NaN or Inf in a score raises ValueError** (the contract already rejects them; a silent NaN would rank
  arbitrarily).
- Labels / masks: bool or numeric with values in {0, 1}; anything else raises ValueError. A ``valid``
  mask (brain) may be bool or numeric; numeric is binarised at ``> 0.5`` (the brain mask is soft at the
  border, RA's code binarises the same way).
- Shape mismatch raises ValueError. An empty selection (no pixel at all) raises ValueError.
- A metric that is undefined on well-formed input (only one class present, both masks empty) returns
  ``float('nan')`` and emits ``warnings.warn`` with the reason -- never a quiet 0.5 / 0 / 1. AUROC of
  constant scores is exactly 0.5 and returned as such, but with a warning (no ranking information).
- Binarisation is always ``pred = map > t``.

Speed: pooled pixel AUROC and AP share one sort of the positive and one of the negative scores (values
only, no argsort; on CPU numpy's SIMD sort) and then use ``searchsorted``; 10.7 M pixels take well under
a second on two CPU cores.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "MetricSpec", "METRICS", "metric_spec",
    "auroc", "average_precision", "image_auroc_ap", "pooled_pixel_auroc_ap", "pooled_pixel_auprc_trapezoid",
    "per_volume_pixel_auroc_ap",
    "per_image_binned_counts", "auroc_ap_from_counts",
    "per_image_pixel_ap",
    "dice", "dice_per_image", "per_image_counts", "best_dice", "best_dice_per_image", "threshold_at_fpr",
    "threshold_grid",
    "itermask2_normalise", "itermask2_global_dice", "itermask2_scores", "mean_dice_at", "itermask2_code_metrics",
    "itermask2_dice_code", "itermask2_prediction",
    "sensitivity_precision_per_image", "size_stratified_dice", "SIZE_BINS", "ssim_normal", "ssim_ra_code",
    "image_acc_f1", "pixel_acc_f1", "balanced_pixel_counts", "fpr_at_tpr_ra_code", "mean_score_gap", "masked_mse",
    "masked_lpips",
    "PHANES_DICE_EPS", "phanes_code_dice_terms", "phanes_code_dice", "phanes_code_grid", "phanes_code_best_dice",
    "per_image_ap_phanes_code", "lesion_gt1px", "masked_mse_phanes_code", "ssim_inside_mask_phanes_code",
    "l1_clamped_phanes_code",
]


# ----------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------
def _as_tensor(x: Any, name: str) -> torch.Tensor:
    """Accept numpy / torch / python sequences without copying device tensors."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:  # pragma: no cover - message only
            raise TypeError(f"{name}: cannot convert {type(x).__name__} to a tensor") from exc
    return t


def _scores(x: Any, name: str = "scores") -> torch.Tensor:
    """Real-valued scores, widened so that sorting is exact; NaN/Inf raise (never rank arbitrarily)."""
    t = _as_tensor(x, name)
    if t.dtype == torch.bool:
        t = t.to(torch.float32)
    elif t.is_complex():
        raise TypeError(f"{name}: complex dtype {t.dtype} is not a score")
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    elif not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if t.numel() and not _all_finite(t):
        raise ValueError(f"{name}: contains NaN or Inf ({int((~torch.isfinite(t)).sum())} values)")
    return t


def _all_finite(t: torch.Tensor) -> bool:
    # numpy on CPU: torch's elementwise reductions are several times slower on a shared 2-core box
    return bool(np.isfinite(t.numpy()).all()) if t.device.type == "cpu" else bool(torch.isfinite(t).all())


def _binary(x: Any, name: str = "labels") -> torch.Tensor:
    """Labels / masks must be {0, 1}: a soft mask would silently change every count."""
    t = _as_tensor(x, name)
    if t.dtype == torch.bool:
        return t
    if t.is_complex():
        raise TypeError(f"{name}: complex dtype {t.dtype}")
    if t.numel():
        if t.device.type == "cpu":
            a = t.numpy()
            ok = np.count_nonzero(a == 0) + np.count_nonzero(a == 1) == a.size
        else:
            ok = not bool(((t != 0) & (t != 1)).any())
        if not ok:
            if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: contains NaN or Inf")
            bad = (t != 0) & (t != 1)
            vals = torch.unique(t[bad])[:5].tolist()
            raise ValueError(f"{name}: must be binary {{0, 1}}; found other values, e.g. {vals}")
    if t.device.type == "cpu":
        return torch.from_numpy(t.numpy() != 0)
    return t != 0


def _valid(x: Any, like: torch.Tensor, name: str = "valid") -> torch.Tensor:
    """Region of interest; numeric masks are binarised at > 0.5 (soft brain borders)."""
    t = _as_tensor(x, name)
    if t.dtype != torch.bool:
        t = torch.from_numpy(t.numpy() > 0.5) if t.device.type == "cpu" else (t > 0.5)
    t = t.to(like.device)
    try:
        t = torch.broadcast_to(t, like.shape)
    except RuntimeError as exc:
        raise ValueError(f"{name}: shape {tuple(t.shape)} does not broadcast to {tuple(like.shape)}") from exc
    return t


def _pair(scores: Any, labels: Any, valid: Any = None, *, sname: str = "scores",
          lname: str = "labels") -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (scores, bool labels) on the scores' device, restricted to ``valid``."""
    s = _scores(scores, sname)
    y = _binary(labels, lname).to(s.device)
    if tuple(s.shape) != tuple(y.shape):
        raise ValueError(f"{sname} shape {tuple(s.shape)} != {lname} shape {tuple(y.shape)}")
    if valid is not None:
        v = _valid(valid, s)
        s, y = _select(s, v), _select(y, v)
    s, y = s.reshape(-1), y.reshape(-1)
    if s.numel() == 0:
        raise ValueError(f"{sname}: no element to evaluate (empty input or empty valid mask)")
    return s, y


def _sort(t: torch.Tensor) -> torch.Tensor:
    """Ascending values-only sort: numpy's SIMD sort on CPU (~25x faster than torch.sort there)."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.sort(t.numpy(), kind="quicksort"))
    return torch.sort(t).values


def _select(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Boolean selection (flattened); numpy on CPU, ~10x faster than torch's there."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(t.numpy()[m.numpy()]))
    return t[m]




def _nan(reason: str, stacklevel: int = 3) -> float:
    warnings.warn(f"metric undefined, returning NaN: {reason}", RuntimeWarning, stacklevel=stacklevel)
    return float("nan")


@dataclass
class _Ranked:
    """Sorted positives/negatives reduced to distinct positive values -- shared by AUROC, AP and Dice."""

    pos: torch.Tensor  # ascending scores of positives
    neg: torch.Tensor  # ascending scores of negatives
    u: torch.Tensor  # distinct positive values, ascending
    c: torch.Tensor  # multiplicity of each distinct positive value
    pos_ge: torch.Tensor  # positives with score >= u
    neg_lt: torch.Tensor  # negatives with score < u
    neg_le: torch.Tensor  # negatives with score <= u

    @property
    def P(self) -> int:
        return int(self.pos.numel())

    @property
    def N(self) -> int:
        return int(self.neg.numel())


def _rank(s: torch.Tensor, y: torch.Tensor) -> _Ranked:
    if s.device.type == "cpu":
        return _rank_numpy(s.numpy(), y.numpy())
    return _rank_torch(s, y)


def _rank_torch(s: torch.Tensor, y: torch.Tensor) -> _Ranked:
    """Device path (CUDA): pure torch, same result as the numpy path (tested on CPU)."""
    pos, neg = torch.sort(s[y]).values, torch.sort(s[~y]).values
    if pos.numel():
        u, c = torch.unique_consecutive(pos, return_counts=True)
    else:
        u, c = pos, torch.zeros(0, dtype=torch.int64, device=pos.device)
    start = torch.cumsum(c, 0) - c  # index of the first occurrence of each u in pos
    pos_ge = pos.numel() - start
    neg_lt = torch.searchsorted(neg, u, right=False)
    neg_le = torch.searchsorted(neg, u, right=True)
    return _Ranked(pos, neg, u, c, pos_ge, neg_lt, neg_le)


def _rank_numpy(s: np.ndarray, y: np.ndarray) -> _Ranked:
    """CPU twin of :func:`_rank` (numpy's SIMD sort and vectorised indexing), same fields as tensors."""
    pos = np.sort(s[y], kind="quicksort")
    neg = np.sort(s[~y], kind="quicksort")
    if pos.size:
        first = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
        u = pos[first]
        c = np.diff(np.r_[first, pos.size]).astype(np.int64)
    else:
        first, u, c = np.zeros(0, np.int64), pos, np.zeros(0, np.int64)
    pos_ge = (pos.size - first).astype(np.int64)
    neg_lt = np.searchsorted(neg, u, side="left").astype(np.int64)
    neg_le = np.searchsorted(neg, u, side="right").astype(np.int64)
    f = torch.from_numpy
    return _Ranked(f(pos), f(neg), f(u), f(c), f(pos_ge), f(neg_lt), f(neg_le))


def _auroc_from(r: _Ranked) -> float:
    """Mann-Whitney U with average ranks == trapezoid ROC area on distinct thresholds (sklearn).

    Constant scores give exactly 0.5, which a table would read as chance-level ranking; the issue forbids a
    silent 0.5, so that case warns (a constant map usually means a collapsed model or a broken pipeline).
    """
    if r.P == 0 or r.N == 0:
        return _nan(f"AUROC needs both classes (positives={r.P}, negatives={r.N})", 4)
    if r.u.numel() == 1 and int(r.neg_lt[0]) == 0 and int(r.neg_le[0]) == r.N:  # one value shared by all
        warnings.warn(f"AUROC of constant scores (all {r.P + r.N} equal to {float(r.u[0])!r}): 0.5 carries no "
                      "ranking information", RuntimeWarning, stacklevel=3)
    twice_u = int(((r.neg_lt + r.neg_le) * r.c).sum().item())  # 2 * (#neg below + 0.5 #neg tied), exact int
    return twice_u / (2.0 * r.P * r.N)


def _ap_from(r: _Ranked) -> float:
    """Step-wise AP: sum over distinct positive values of Δrecall * precision (sklearn's definition)."""
    if r.P == 0:
        return _nan("average precision needs at least one positive", 4)
    neg_ge = (r.N - r.neg_lt).to(torch.float64)
    pos_ge = r.pos_ge.to(torch.float64)
    return float((r.c.to(torch.float64) * pos_ge / (pos_ge + neg_ge)).sum().item() / r.P)


def _auprc_trapezoid_from(r: _Ranked) -> float:
    """Trapezoid area under sklearn's PR curve, ``auc(recall, precision)`` of ``precision_recall_curve``.

    The curve has one point per distinct score (plus recall 0, precision 1 at the top). Recall only moves
    at distinct positive values u, by c/P; the segment ending at u starts at the point of the next higher
    distinct score, whose counts are those of scores > u (the top end point when nothing is above u).
    Segments between negative-only scores have zero width, so summing over u is exact.
    """
    if r.P == 0:
        return _nan("AUPRC needs at least one positive", 4)
    f = torch.float64
    c = r.c.to(f)
    tp_ge, fp_ge = r.pos_ge.to(f), (r.N - r.neg_lt).to(f)
    tp_gt, fp_gt = tp_ge - c, (r.N - r.neg_le).to(f)
    prec_ge = tp_ge / (tp_ge + fp_ge)
    den_gt = tp_gt + fp_gt
    prec_gt = torch.where(den_gt > 0, tp_gt / den_gt.clamp_min(1), torch.ones_like(den_gt))
    return float((c * (prec_ge + prec_gt)).sum().item() / (2.0 * r.P))


# ----------------------------------------------------------------------------------------------------
# ranking metrics
# ----------------------------------------------------------------------------------------------------
def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score`` (ties: average ranks).

    NaN + warning when only one class is present. Any shape; scores and labels must match.
    """
    return _auroc_from(_rank(*_pair(scores, labels)))


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision, equal to ``sklearn.metrics.average_precision_score`` (step-wise, distinct
    thresholds). NaN + warning without positives (sklearn warns and returns a meaningless value)."""
    return _ap_from(_rank(*_pair(scores, labels)))


def image_auroc_ap(scores: Any, labels: Any) -> dict[str, float]:
    """Image-level AUROC and AP with the counts they rest on (for the table's ``n`` column)."""
    s, y = _pair(scores, labels)
    r = _rank(s, y)
    return {"auroc": _auroc_from(r), "ap": _ap_from(r), "n": int(s.numel()), "n_pos": r.P, "n_neg": r.N}


def fpr_at_tpr_ra_code(scores: Any, labels: Any, tpr: float = 0.95) -> dict[str, float]:
    """FPR at a TPR as RA's ``DownstreamEvaluator.global_detection`` prints it (``fpr_at_tpr95|…|ra_code``).

    RA calls ``sklearn.metrics.roc_curve(labels, predictions)`` (default ``drop_intermediate=True``), takes
    the first curve point with ``tpr >= target`` and prints its fpr and threshold: no interpolation. This is
    that computation, step by step: scores in their own dtype (RA's are float32 map means, so ties are float32
    ties), stable descending order, one point per distinct score, sklearn's dropping of collinear points
    (it can move the first point with tpr ≥ target further along a diagonal run of tied positives and
    negatives), a leading (0, 0) point, fpr and tpr in float64. ``threshold`` is the score of that point
    (``score >= threshold`` is called positive). NaN + warning when a class is missing (RA's code would
    raise there). Returns ``{"fpr", "threshold", "n_pos", "n_neg"}``.
    """
    if not 0.0 < float(tpr) <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    st, yt = _pair(scores, labels)
    s, y = st.cpu().numpy(), yt.cpu().numpy()
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return {"fpr": _nan(f"FPR at TPR needs both classes (positives={n_pos}, negatives={n_neg})"),
                "threshold": math.nan, "n_pos": n_pos, "n_neg": n_neg}
    order = np.argsort(s, kind="mergesort")[::-1]
    s, yf = s[order], y[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(yf)[last]
    fps = 1 + last - tps
    ths = s[last]
    if tps.size > 2:  # sklearn drop_intermediate: keep the ends and every point where the curve bends
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps, ths = tps[keep], fps[keep], ths[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    tpr_c, fpr_c = tps / tps[-1], fps / fps[-1]
    k = int(np.flatnonzero(tpr_c >= float(tpr))[0])  # k >= 1: tpr_c[0] == 0 < tpr
    return {"fpr": float(fpr_c[k]), "threshold": float(ths[k - 1]), "n_pos": n_pos, "n_neg": n_neg}


def ssim_ra_code(recon: Any, image: Any, *, data_range: float = 1.0) -> np.ndarray:
    """Per-slice SSIM as RA's ``DownstreamEvaluator`` logs it (``ssim|image|ra_code``): scikit-image's
    ``structural_similarity(x_rec_, x_, data_range=1.)`` with every other argument at its default (7×7
    uniform window, sample covariance, K1 0.01, K2 0.03, mean of the SSIM map with the 3-px border cropped),
    on channel 0 of the unclamped float32 arrays (the network's output; skimage then computes in float32).

    ``recon`` / ``image``: [N,C,H,W] (or [N,H,W]). Returns float64 [N]; NaN where a slice is smaller than the
    7-px window (skimage raises there; RA's code would stop) or the arrays are not finite. The caller
    averages with ``np.nanmean`` as RA logs it.
    """
    from skimage.metrics import structural_similarity

    r = recon.detach().cpu().float().numpy() if isinstance(recon, torch.Tensor) else np.asarray(recon, np.float32)
    x = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if r.shape != x.shape or r.ndim not in (3, 4):
        raise ValueError(f"recon and image must be equal [N,C,H,W] or [N,H,W], got {r.shape} and {x.shape}")
    if r.ndim == 4:
        r, x = r[:, 0], x[:, 0]  # RA: x[i][0], x_rec[i][0]
    out = np.full(len(r), np.nan)
    if min(r.shape[-2:]) < 7:
        return out
    for i in range(len(r)):
        if np.isfinite(r[i]).all() and np.isfinite(x[i]).all():
            out[i] = float(structural_similarity(np.ascontiguousarray(r[i], np.float32),
                                                 np.ascontiguousarray(x[i], np.float32), data_range=data_range))
    return out


def pooled_pixel_auroc_ap(maps: Any, masks: Any, valid: Any = None) -> tuple[float, float]:
    """Pixel AUROC and AP with all pixels of all images pooled (``auroc_pixel|pooled``, ``ap_pixel|pooled``).

    ``maps`` and ``masks`` [N,1,H,W]; ``valid`` restricts the pixels (brain), None = every pixel (the
    papers' computation). One sort serves both metrics.
    """
    r = _rank(*_pair(maps, masks, valid, sname="maps", lname="masks"))
    return _auroc_from(r), _ap_from(r)


def pooled_pixel_auprc_trapezoid(maps: Any, masks: Any, valid: Any = None) -> float:
    """Pooled pixel area under the PR curve by the trapezoid rule (``auprc|pooled|trapezoid``), equal to
    ``sklearn.metrics.auc(recall, precision)`` on ``precision_recall_curve``.

    Why a separate id: some evaluation code integrates the PR curve this way, and linearly interpolated
    precision differs from sklearn's step-wise ``average_precision_score`` (``auprc|pooled``), higher or
    lower depending on the curve's shape, so the two must never share a column. Same pixels and ``valid``
    rule as :func:`pooled_pixel_auroc_ap`. NaN + warning without lesion pixels (like AP); 1.0 without normal
    pixels (precision is 1 everywhere, as in sklearn).
    """
    return _auprc_trapezoid_from(_rank(*_pair(maps, masks, valid, sname="maps", lname="masks")))


def per_image_binned_counts(maps: Any, masks: Any, bins: int = 4096, seed: int = 0, valid: Any = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, lesion and normal pixel counts in ``bins`` quantile bins of the pooled map values
    ([N, ≤bins] float64 each; edges from a seeded sample of ≤ 2²⁰ pixels).

    Why: summing the rows of any subset of images and calling :func:`auroc_ap_from_counts` gives that
    subset's pooled pixel AUROC/AP in O(N·bins), up to ties inside a bin -- which makes a bootstrap over
    subjects of pooled metrics cheap (one sort instead of one per resample). Not for reported values.
    """
    m = _scores(maps, "maps")
    g = _binary(masks, "masks").to(m.device)
    if tuple(m.shape) != tuple(g.shape):
        raise ValueError(f"maps shape {tuple(m.shape)} != masks shape {tuple(g.shape)}")
    n = m.shape[0]
    flat = m.reshape(n, -1).to(torch.float64)
    keep = None if valid is None else _valid(valid, m).reshape(n, -1)  # e.g. brain pixels only
    values = flat.reshape(-1) if keep is None else flat[keep]
    if values.numel() > 2 ** 20:
        pick = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(seed))[: 2 ** 20]
        values = values[pick.to(values.device)]
    q = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=values.device)[1:-1]
    edges = torch.unique(torch.quantile(values, q))
    nb = edges.numel() + 1
    idx = torch.bucketize(flat, edges) + torch.arange(n, device=flat.device)[:, None] * nb
    lesion = g.reshape(n, -1)
    normal = ~lesion
    if keep is not None:
        lesion, normal = lesion & keep, normal & keep
    pos = torch.bincount(idx[lesion], minlength=n * nb).reshape(n, nb).to(torch.float64)
    neg = torch.bincount(idx[normal], minlength=n * nb).reshape(n, nb).to(torch.float64)
    return pos, neg


def auroc_ap_from_counts(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, float]:
    """AUROC (ties in a bin count ½) and step-wise AP (sklearn's definition, bins as distinct scores) from
    lesion/normal counts per ascending score bin. NaN (no warning) where a class is missing."""
    big_p, big_n = float(pos.sum()), float(neg.sum())
    if big_p == 0:
        return math.nan, math.nan
    tp = torch.flip(torch.cumsum(torch.flip(pos, [0]), 0), [0])  # lesion pixels in this bin or above
    fp = torch.flip(torch.cumsum(torch.flip(neg, [0]), 0), [0])
    ap = float((pos * tp / (tp + fp).clamp_min(1)).sum() / big_p)
    if big_n == 0:
        return math.nan, ap
    below = torch.cumsum(neg, 0) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (big_p * big_n)), ap


def per_volume_pixel_auroc_ap(maps: Any, masks: Any, subject_ids: Sequence[Any], valid: Any = None
                              ) -> dict[str, Any]:
    """Pixel AUROC/AP pooled within each subject (volume), then averaged over subjects
    (``auroc_pixel|per_volume``). Subjects without lesion pixels are excluded from the mean (their AUROC is
    undefined) and counted in ``n_skipped``; returns the means and the per-subject values."""
    m = _scores(maps, "maps")
    g = _binary(masks, "masks").to(m.device)
    if tuple(m.shape) != tuple(g.shape):
        raise ValueError(f"maps shape {tuple(m.shape)} != masks shape {tuple(g.shape)}")
    ids = list(subject_ids)
    if len(ids) != m.shape[0]:
        raise ValueError(f"subject_ids has {len(ids)} entries for {m.shape[0]} images")
    v = None if valid is None else _valid(valid, m)
    per: dict[Any, tuple[float, float]] = {}
    skipped = []
    for sid in dict.fromkeys(ids):
        idx = torch.tensor([i for i, x in enumerate(ids) if x == sid], device=m.device)
        s, y = _pair(m[idx], g[idx], None if v is None else v[idx])
        r = _rank(s, y)
        if r.P == 0 or r.N == 0:
            skipped.append(sid)
            continue
        per[sid] = (_auroc_from(r), _ap_from(r))
    if not per:
        nan = _nan("no subject has both lesion and normal pixels", 3)
        return {"auroc": nan, "ap": nan, "n": 0, "n_skipped": len(skipped), "per_subject": {}}
    a = np.array(list(per.values()))
    return {"auroc": float(a[:, 0].mean()), "ap": float(a[:, 1].mean()), "n": len(per),
            "n_skipped": len(skipped), "per_subject": per}


def per_image_pixel_ap(maps: Any, masks: Any, valid: Any = None) -> torch.Tensor:
    """AP of each image's pixels (PHANES logs its mean; also the per-slice input of the Wilcoxon test).
    NaN (no warning per image) where an image has no lesion pixel."""
    m = _scores(maps, "maps")
    g = _binary(masks, "masks").to(m.device)
    if tuple(m.shape) != tuple(g.shape):
        raise ValueError(f"maps shape {tuple(m.shape)} != masks shape {tuple(g.shape)}")
    v = None if valid is None else _valid(valid, m)
    out = torch.full((m.shape[0],), float("nan"), dtype=torch.float64)
    for i in range(m.shape[0]):
        s, y = _pair(m[i], g[i], None if v is None else v[i])
        if bool(y.any()):
            out[i] = _ap_from(_rank(s, y))
    return out


def afsc_slice_score(maps: Any, size: int = 21) -> torch.Tensor:
    """AFSC / DRAEM slice score: the maximum of the ``size``×``size`` mean-filtered map ([N] float64).

    The mean filter zero-pads (``avg_pool2d(..., count_include_pad=True)``), as the DRAEM evaluation does.
    """
    m = _scores(maps, "maps")
    if m.dim() != 4:
        raise ValueError(f"maps must be [N,1,H,W], got {tuple(m.shape)}")
    pooled = torch.nn.functional.avg_pool2d(m.float(), size, stride=1, padding=size // 2)
    return pooled.flatten(1).amax(1).double()


# ----------------------------------------------------------------------------------------------------
# overlap metrics
# ----------------------------------------------------------------------------------------------------
def _overlap_pair(pred_bin: Any, gt: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = _binary(pred_bin, "pred_bin")
    g = _binary(gt, "gt").to(p.device)
    if tuple(p.shape) != tuple(g.shape):
        raise ValueError(f"pred_bin shape {tuple(p.shape)} != gt shape {tuple(g.shape)}")
    return p, g


def dice(pred_bin: Any, gt: Any) -> float:
    """Pooled Dice 2|P∩G| / (|P|+|G|) over everything given.

    Both empty -> NaN + warning: 0/0 has no value, and 1 (or 0) would bias a mean either way. Inputs
    must be binary.
    """
    p, g = _overlap_pair(pred_bin, gt)
    inter = int((p & g).sum().item())
    denom = int(p.sum().item()) + int(g.sum().item())
    if denom == 0:
        return _nan("Dice with empty prediction and empty ground truth", 3)
    return 2.0 * inter / denom


def dice_per_image(pred_bin: Any, gt: Any) -> torch.Tensor:
    """Dice of each image ([N, ...] -> float64 [N]); NaN where both are empty (one warning with the count)."""
    p, g = _overlap_pair(pred_bin, gt)
    p, g = p.reshape(p.shape[0], -1), g.reshape(g.shape[0], -1)
    inter = (p & g).sum(1).to(torch.float64)
    denom = (p.sum(1) + g.sum(1)).to(torch.float64)
    out = 2.0 * inter / denom  # 0/0 -> NaN
    n_nan = int((denom == 0).sum().item())
    if n_nan:
        warnings.warn(f"Dice undefined (both empty) for {n_nan} image(s): NaN", RuntimeWarning, stacklevel=2)
    return out


def threshold_grid(grid: str | Sequence[float] | torch.Tensor, maps_max: float) -> torch.Tensor:
    """Named threshold grids (binarisation ``map > t``):
    ``max1000`` = 1000 values linspace(0, max) (PHANES Table 1 code); ``unit101`` = linspace(0, 1, 101)
    (autoDDPM evaluator); ``itermask2`` = 0, 1e-4, ..., 99e-4 (IterMask2 code); or explicit values."""
    if isinstance(grid, str):
        if grid == "max1000":
            return torch.linspace(0.0, float(maps_max), 1000, dtype=torch.float64)
        if grid == "unit101":
            return torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
        if grid == "itermask2":
            return torch.arange(100, dtype=torch.float64) / 10000  # the code's thres / 10000, exactly
        raise ValueError(f"unknown threshold grid {grid!r}; known: pr_exact, max1000, unit101, itermask2")
    t = _scores(grid, "grid").to(torch.float64).reshape(-1).cpu()
    if t.numel() == 0:
        raise ValueError("grid: no threshold given")
    return t


def best_dice(maps: Any, masks: Any, *, grid: str | Sequence[float] = "max1000", valid: Any = None
              ) -> tuple[float, float]:
    """Oracle pooled Dice: the best Dice over thresholds chosen on the test maps themselves.

    ``grid="pr_exact"``: max F1 over the exact PR curve (every distinct value; AFSC, ``dice|oracle_test|
    pr_exact``); ``"max1000"``: 1000 linear steps in [0, max of the (valid) maps] (PHANES,
    ``dice|oracle_test|max1000``); ``"unit101"`` or explicit thresholds. Returns (dice, t) with the
    prediction ``map > t`` (for pr_exact t is the next lower observed value, -inf if none). Ties: the
    first (lowest) threshold. NaN + warning when there is no lesion pixel.
    """
    s, y = _pair(maps, masks, valid, sname="maps", lname="masks")
    r = _rank(s, y)
    if r.P == 0:
        return _nan("best Dice needs at least one lesion pixel", 3), float("nan")
    if isinstance(grid, str) and grid == "pr_exact":
        tp = r.pos_ge.to(torch.float64)
        fp = (r.N - r.neg_lt).to(torch.float64)
        d = 2.0 * tp / (tp + fp + r.P)
        k = int(torch.argmax(d).item())
        below = []
        if int(r.neg_lt[k]) > 0:
            below.append(float(r.neg[int(r.neg_lt[k]) - 1]))
        start = r.P - int(r.pos_ge[k])
        if start > 0:
            below.append(float(r.pos[start - 1]))
        thr = max(below) if below else float("-inf")
        return float(d[k].item()), thr
    mx = max(float(r.pos[-1]), float(r.neg[-1]) if r.N else float("-inf"))
    th = threshold_grid(grid, mx)
    d, _ = _dice_on_grid(r, th.to(device=r.pos.device))
    k = int(torch.argmax(d).item())
    return float(d[k].item()), float(th[k].item())


def _dice_on_grid(r: _Ranked, th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled Dice at every threshold (``> t``) from the sorted classes: O(T log n). Compared in float64
    so a float32 map meets a float64 grid value exactly as numpy would compare them."""
    th = th.to(torch.float64)
    tp = (r.P - torch.searchsorted(r.pos.to(torch.float64), th, right=True)).to(torch.float64)
    fp = (r.N - torch.searchsorted(r.neg.to(torch.float64), th, right=True)).to(torch.float64)
    denom = tp + fp + r.P
    return 2.0 * tp / denom, denom


def threshold_at_fpr(healthy_maps: Any, fpr: float = 0.05, valid: Any = None) -> float:
    """Smallest t such that the fraction of healthy (valid) pixels with ``map > t`` is <= ``fpr``
    (``fpr@5%_healthy_brain`` with the brain as ``valid``, ``fpr@5%_healthy_image`` without).

    Exact order statistic: with n pixels and m = floor(fpr * n) allowed false positives, t is the
    (n - m)-th smallest value. fpr >= 1 returns -inf (every threshold qualifies).
    """
    if not (0.0 <= float(fpr) <= 1.0):
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    s = _scores(healthy_maps, "healthy_maps")
    s = _select(s, _valid(valid, s)) if valid is not None else s.reshape(-1)
    n = int(s.numel())
    if n == 0:
        raise ValueError("healthy_maps: no pixel to calibrate on (empty input or empty valid mask)")
    m = int(math.floor(float(fpr) * n * (1 + 1e-12)))
    if m >= n:
        return float("-inf")
    return float(_sort(s)[n - m - 1].item())


def best_dice_per_image(maps: Any, masks: Any, *, grid: str | Sequence[float] = "pr_exact", valid: Any = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image oracle Dice (grey rows of IterMask2 / DAE: each image gets its own best threshold).

    Returns (dice [N], threshold [N]) as float64; NaN for images without lesion pixels (one warning).
    Never comparable to a calibrated Dice: label it ``oracle``.
    """
    m = _scores(maps, "maps")
    g = _binary(masks, "masks").to(m.device)
    if tuple(m.shape) != tuple(g.shape):
        raise ValueError(f"maps shape {tuple(m.shape)} != masks shape {tuple(g.shape)}")
    v = None if valid is None else _valid(valid, m)
    d = torch.full((m.shape[0],), float("nan"), dtype=torch.float64)
    t = torch.full_like(d, float("nan"))
    empty = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(m.shape[0]):
            s, y = _pair(m[i], g[i], None if v is None else v[i])
            if not bool(y.any()):
                empty += 1
                continue
            d[i], t[i] = best_dice(s, y, grid=grid)
    if empty:
        warnings.warn(f"per-image oracle Dice undefined for {empty} image(s) without lesion: NaN",
                      RuntimeWarning, stacklevel=2)
    return d, t


# ----------------------------------------------------------------------------------------------------
# IterMask2 protocol (specs/protocols/itermask2.md §4)
# ----------------------------------------------------------------------------------------------------
SIZE_BINS: dict[str, tuple[float, float]] = {"small": (0, 200), "medium": (200, 800), "large": (800, math.inf)}
"""Lesion-area bins in pixels of the 128² slice: < 200, 200-799, >= 800 (the authors' evaluation code)."""


def itermask2_normalise(maps: Any, brain: Any) -> torch.Tensor:
    """IterMask2's map, in float64 as its numpy code: min-max over the *whole* test tensor (all images, background
    included), times the soft brain mask. One min/max for the set is what the code does; per-image scaling would
    change ranks. Constant maps give all zeros: the code's 0/0 NaNs make ``θ < NaN`` false everywhere, as zeros
    do for every θ ≥ 0 of its grid."""
    a = _scores(maps, "maps").to(torch.float64)
    b = _scores(brain, "brain").to(device=a.device, dtype=torch.float64)
    if tuple(b.shape) != tuple(a.shape):
        raise ValueError(f"brain shape {tuple(b.shape)} != maps shape {tuple(a.shape)}")
    lo, hi = a.min(), a.max()
    if float(hi - lo) == 0.0:
        warnings.warn("itermask2_normalise: constant maps, normalised map is all zero", RuntimeWarning, stacklevel=2)
        return torch.zeros_like(a)
    return (a - lo) / (hi - lo) * b


def _rowsort(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def per_image_counts(maps_n: torch.Tensor, gt: torch.Tensor, keep: torch.Tensor, th: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and threshold: TP, FP (pixels with map > t inside ``keep``) and |G| -- one row sort."""
    n = maps_n.shape[0]
    a = maps_n.reshape(n, -1)
    g = gt.reshape(n, -1)
    k = keep.reshape(n, -1)
    ninf = torch.tensor(float("-inf"), dtype=a.dtype, device=a.device)
    pos = _rowsort(torch.where(g & k, a, ninf))
    neg = _rowsort(torch.where(~g & k, a, ninf))
    tt = th.to(device=a.device, dtype=a.dtype).expand(n, -1).contiguous()
    width = a.shape[1]
    tp = width - torch.searchsorted(pos, tt, right=True)
    fp = width - torch.searchsorted(neg, tt, right=True)
    return tp.to(torch.float64), fp.to(torch.float64), g.sum(1).to(torch.float64)


def _pair_images(maps: Any, gt: Any) -> tuple[torch.Tensor, torch.Tensor]:
    m = _scores(maps, "maps")
    g = _binary(gt, "gt").to(m.device)
    if tuple(m.shape) != tuple(g.shape):
        raise ValueError(f"maps shape {tuple(m.shape)} != gt shape {tuple(g.shape)}")
    if m.ndim < 2 or m.shape[0] == 0:
        raise ValueError(f"maps must be [N, ...] with N >= 1, got {tuple(m.shape)}")
    return m, g


def itermask2_prediction(maps_n: torch.Tensor, brain: torch.Tensor, theta: float) -> torch.Tensor:
    """The code's soft prediction ``where(θ < map, 1.0, 0.0) · B`` (float64): B's soft rim survives in it."""
    b = brain.to(device=maps_n.device, dtype=torch.float64)
    return torch.where(maps_n > theta, torch.ones_like(b), torch.zeros_like(b)) * b


def itermask2_dice_code(pred_soft: Any, gt: Any) -> torch.Tensor:
    """Per-image Dice as IterMask2's ``dice_score(seg, pred)`` computes it ([N, ...] → float64 [N]).

    The code passes the arguments swapped: the GT is binarised (> 0.5) and the *prediction* is cast to int, so
    a soft prediction counts only where it reaches 1 (a brain-rim pixel with B < 1 never does), with its integer
    value as weight. 2·Σ(g·p) / Σ(g + p); 0/0 (empty GT, nothing predicted) is NaN, as numpy returns it."""
    p = _as_tensor(pred_soft, "pred").to(torch.float64)
    g = _binary(gt, "gt").to(device=p.device, dtype=torch.float64)
    if tuple(p.shape) != tuple(g.shape):
        raise ValueError(f"pred shape {tuple(p.shape)} != gt shape {tuple(g.shape)}")
    n = p.shape[0]
    p, g = torch.trunc(p).reshape(n, -1), g.reshape(n, -1)
    return 2.0 * (p * g).sum(1) / (p + g).sum(1)


def mean_dice_at(maps_n: Any, gt: Any, brain: Any, thresholds: Sequence[float] | torch.Tensor | str = "itermask2"
                 ) -> torch.Tensor:
    """Per-image Dice [N, T] of the code's prediction ``where(t < map) · B`` at each threshold
    (:func:`itermask2_dice_code`: int cast of the prediction). NaN where prediction and GT are both empty."""
    m, g = _pair_images(maps_n, gt)
    m = m.to(torch.float64)
    b = _scores(brain, "brain").to(device=m.device, dtype=torch.float64)
    th = threshold_grid(thresholds, 1.0)  # named grids here: itermask2 / unit101 (maps are in [0, 1])
    weight = torch.trunc(b).reshape(m.shape[0], -1)  # the int cast of 1·B where the map is above t
    if bool(((weight != 0) & (weight != 1)).any()):
        return torch.stack([itermask2_dice_code(itermask2_prediction(m, b, float(t)), g) for t in th], dim=1)
    tp, fp, ng = per_image_counts(m, g, weight.reshape(m.shape) > 0, th)
    return 2.0 * tp / (tp + fp + ng[:, None])


def _sequential_mean(rows: torch.Tensor) -> np.ndarray:
    """Mean over the first axis summed image by image, in the order the code's ``+=`` loop adds them: the same
    float64 rounding, so a near-tie between two thresholds breaks as it does there."""
    acc = np.zeros(rows.shape[1:], np.float64)
    for r in rows.cpu().numpy():
        acc += r
    return acc / rows.shape[0]


def itermask2_global_dice(maps: Any, gt: Any, brain: Any, *, grid: str | Sequence[float] = "itermask2",
                          normalise: bool = True, nan_policy: str = "official") -> tuple[float, float]:
    """``dice|per_image|oracle_test|itermask2``: one global θ on the grid 0..0.0099 maximising the mean
    per-image Dice on the test set (oracle), maps min-max normalised over the set × brain first.

    nan_policy ``official`` (the code): every image counts; a NaN Dice (empty GT, nothing predicted) makes that
    θ's mean NaN, and numpy's argmax takes the first NaN θ. ``omit``: NaN images are left out of each mean.
    Returns (mean Dice, θ).
    """
    mn = itermask2_normalise(maps, brain) if normalise else _scores(maps, "maps").to(torch.float64)
    th = threshold_grid(grid, 1.0)
    d = mean_dice_at(mn, gt, brain, th)
    if nan_policy == "official":
        mean = _sequential_mean(d)
        k = int(np.argmax(mean))  # numpy: the first NaN wins, else the first maximum
    elif nan_policy == "omit":
        mean = torch.nanmean(d, dim=0).numpy()
        if bool(np.isnan(mean).all()):
            return _nan("no image with a defined Dice", 3), float("nan")
        k = int(np.argmax(np.nan_to_num(mean, nan=-1.0)))
    else:
        raise ValueError(f"nan_policy must be 'official' or 'omit', got {nan_policy!r}")
    return float(mean[k]), float(th[k].item())


def sensitivity_precision_per_image(pred: Any, gt: Any, *, empty_gt: str = "nan") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image sensitivity TP/(TP+FN) and precision TP/(TP+FP), 0 when nothing is predicted (IterMask2's
    rule). ``pred`` may be soft: it is binarised at ``!= 0`` as the code does, so soft brain-border pixels count
    (Dice drops them -- an inconsistency kept on purpose). An image without lesion has sensitivity NaN
    (``empty_gt="nan"``) or 0.0 (``"zero"``: the code under numpy 1.x, where ``tp / float(0)`` raises
    ZeroDivisionError and its handler returns 0.0)."""
    if empty_gt not in ("nan", "zero"):
        raise ValueError(f"empty_gt must be 'nan' or 'zero', got {empty_gt!r}")
    p = _as_tensor(pred, "pred")
    p = p if p.dtype == torch.bool else (p != 0)
    g = _binary(gt, "gt").to(p.device)
    if tuple(p.shape) != tuple(g.shape):
        raise ValueError(f"pred shape {tuple(p.shape)} != gt shape {tuple(g.shape)}")
    n = p.shape[0]
    p, g = p.reshape(n, -1), g.reshape(n, -1)
    tp = (p & g).sum(1).to(torch.float64)
    ng = g.sum(1).to(torch.float64)
    npred = p.sum(1).to(torch.float64)
    sens = tp / ng if empty_gt == "nan" else torch.where(ng > 0, tp / ng.clamp_min(1), torch.zeros_like(tp))
    prec = torch.where(npred > 0, tp / npred.clamp_min(1), torch.zeros_like(tp))
    return sens, prec


def size_stratified_dice(dice_per_img: Any, gt: Any, bins: Mapping[str, tuple[float, float]] = SIZE_BINS, *,
                         lesion_free: str = "none") -> dict[str, float]:
    """Mean per-image Dice within lesion-area bins (``dice_small`` / ``dice_medium`` / ``dice_large``); also
    returns ``n_<bin>``. An image without lesion pixels is in no bin (``lesion_free="none"``, the suite) or in the
    small bin, its area 0 being < 200 (``"small"``, the code). A NaN Dice in a bin makes its mean NaN under
    ``"small"`` (the code's plain sum) and is skipped under ``"none"``. An empty bin gives NaN + warning (the
    official code raises ZeroDivisionError there)."""
    if lesion_free not in ("none", "small"):
        raise ValueError(f"lesion_free must be 'none' or 'small', got {lesion_free!r}")
    d = _as_tensor(dice_per_img, "dice_per_img").to(torch.float64).reshape(-1).cpu()
    g = _binary(gt, "gt")
    area = g.reshape(g.shape[0], -1).sum(1).cpu().to(torch.float64)
    if area.numel() != d.numel():
        raise ValueError(f"{d.numel()} Dice values for {area.numel()} masks")
    out: dict[str, float] = {}
    for name, (lo, hi) in bins.items():
        floor = lo if lesion_free == "small" else max(lo, 1)
        sel = (area >= floor) & (area < hi)
        out[f"n_{name}"] = int(sel.sum())
        if not bool(sel.any()):
            out[f"dice_{name}"] = _nan(f"size bin {name!r} [{lo}, {hi}) is empty", 3)
        elif lesion_free == "small":
            out[f"dice_{name}"] = float(_sequential_mean(d[sel][:, None])[0])
        else:
            out[f"dice_{name}"] = float(torch.nanmean(d[sel]).item())
    return out


def itermask2_code_metrics(error_maps: Any, gt: Any, brain: Any, *, grid: str | Sequence[float] = "itermask2"
                           ) -> dict[str, Any]:
    """IterMask2's ``test.py`` (``best_threshold=False``) from the error maps on: every white-row number it logs
    except SSIM (:func:`ssim_normal` variant ``itermask2``), computed as the code computes it.

    ``error_maps``: (x − R)² of the test set [N,1,H,W] (any real map works; float64 throughout, as the code's
    numpy arrays). Steps: min-max over the set × B; θ = k/10000, k = 0..99, maximising the mean of
    :func:`itermask2_dice_code` (every image counts; NaN → numpy's argmax takes the first NaN); at that θ:
    Dice, sensitivity and precision per image (prediction ``!= 0``; an image without lesion has sensitivity 0.0
    and stays in the mean, numpy 1.x), and Dice per lesion-size bin (< 200, 200–799, ≥ 800 GT pixels; a
    lesion-free image is 'small'). Means are summed image by image as the code does. Returns the means, θ, its
    grid index and the per-image arrays (for bootstrap and paired tests)."""
    m, g = _pair_images(error_maps, gt)
    b = _scores(brain, "brain").to(device=m.device, dtype=torch.float64)
    mn = itermask2_normalise(m, b)
    th = threshold_grid(grid, 1.0)
    d_all = mean_dice_at(mn, g, b, th)
    mean = _sequential_mean(d_all)
    k = int(np.argmax(mean))
    theta = float(th[k].item())
    with warnings.catch_warnings():  # an empty size bin is NaN here; its reason is the caller's to report
        warnings.simplefilter("ignore", RuntimeWarning)
        at = itermask2_scores(mn, g, b, theta)
    return {**at, "dice": float(mean[k]), "theta": theta, "theta_index": k, "mean_dice_per_theta": mean,
            "dice_per_theta": d_all, "normalised": mn}


def itermask2_scores(maps_n: Any, gt: Any, brain: Any, theta: float) -> dict[str, Any]:
    """All IterMask2 white-row metrics at one θ on normalised maps, as the code computes them: DSC (int cast of
    the prediction), Sens. (``!= 0``; 0.0 without lesion), Prec., DS_s/m/l (lesion-free images are 'small');
    means summed image by image, and the per-image values and lesion areas behind them."""
    m, g = _pair_images(maps_n, gt)
    b = _scores(brain, "brain").to(device=m.device, dtype=torch.float64)
    pred = itermask2_prediction(m.to(torch.float64), b, theta)
    d = itermask2_dice_code(pred, g).cpu()
    sens, prec = (v.cpu() for v in sensitivity_precision_per_image(pred, g, empty_gt="zero"))
    out = {"dice": float(_sequential_mean(d[:, None])[0]), "sensitivity": float(_sequential_mean(sens[:, None])[0]),
           "precision": float(_sequential_mean(prec[:, None])[0]), "n": int(m.shape[0]),
           "dice_per_image": d, "sensitivity_per_image": sens, "precision_per_image": prec,
           "area": g.reshape(g.shape[0], -1).sum(1).cpu().to(torch.float64)}
    out.update(size_stratified_dice(d, g, lesion_free="small"))
    return out


def ssim_normal(recon: Any, image: Any, brain: Any, lesion: Any, *, data_range: float | None = None,
                variant: str = "normal_brain") -> dict[str, float]:
    """SSIM between reconstruction and input on normal tissue (scikit-image, Gaussian σ=1.5 window,
    k1 0.01, k2 0.03, population covariance -- the torchmetrics settings of IterMask2).

    ``variant="normal_brain"`` (suite, ``ssim|normal_brain``): full SSIM map of the unmasked images,
    averaged over pixels with brain > 0.5 and no lesion. ``"itermask2"`` (``ssim|itermask2_code``): both
    images multiplied by B·(1−G), the mean of each image's SSIM map (5-px border cropped, zeros counted).
    ``data_range`` default = max(R·B) − min(R·B) over the whole set (IterMask2's choice), recorded in the
    result so the table can footnote it.
    """
    from skimage.metrics import structural_similarity

    r = _scores(recon, "recon").cpu().to(torch.float64)
    x = _scores(image, "image").cpu().to(torch.float64)
    b = _scores(brain, "brain").cpu().to(torch.float64)
    g = _binary(lesion, "lesion").cpu()
    if not (r.shape == x.shape and r.shape[0] == b.shape[0] == g.shape[0] and r.ndim == 4):
        raise ValueError(f"recon/image must be [N,C,H,W] with matching brain/lesion; got {tuple(r.shape)}, "
                         f"{tuple(x.shape)}, {tuple(b.shape)}, {tuple(g.shape)}")
    if data_range is None:
        rb = r * b
        data_range = float(rb.max() - rb.min())
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, K1=0.01, K2=0.03)
    vals = []
    for i in range(r.shape[0]):
        for c in range(r.shape[1]):
            ri, xi = r[i, c].numpy(), x[i, c].numpy()
            keep = (b[i, 0] > 0.5) & ~g[i, 0]
            if variant == "itermask2":
                w = (b[i, 0] * (~g[i, 0]).to(torch.float64)).numpy()
                vals.append(structural_similarity(ri * w, xi * w, **kw))
            elif variant == "normal_brain":
                if not bool(keep.any()):
                    continue
                _, smap = structural_similarity(ri, xi, full=True, **kw)
                vals.append(float(smap[keep.numpy()].mean()))
            else:
                raise ValueError(f"unknown SSIM variant {variant!r}; known: normal_brain, itermask2")
    if not vals:
        return {"ssim": _nan("no image has normal brain pixels", 3), "n": 0, "data_range": data_range}
    return {"ssim": float(np.mean(vals)), "n": len(vals), "data_range": float(data_range)}


# ----------------------------------------------------------------------------------------------------
# image-level decisions, ProxyAno score statistics, reconstruction errors
# ----------------------------------------------------------------------------------------------------
def image_acc_f1(scores: Any, labels: Any, threshold: float, *, positive: int = 1, strict: bool = False
                 ) -> dict[str, float]:
    """ACC and F1 at a given threshold; predicted abnormal iff ``score >= threshold`` (ProxyAno / P-Net
    code), or ``score > threshold`` with ``strict=True`` (the rule :func:`threshold_at_fpr` calibrates for).
    ``positive=1``: abnormal is the positive class of F1; 0: normal (diagnostic of proxyano §2.2)."""
    if not math.isfinite(float(threshold)) and not math.isinf(float(threshold)):
        raise ValueError(f"threshold is NaN: no decision rule (got {threshold!r})")
    s, y = _pair(scores, labels)
    pred = s > float(threshold) if strict else s >= float(threshold)
    if positive == 0:
        pred, y = ~pred, ~y
    elif positive != 1:
        raise ValueError(f"positive must be 0 or 1, got {positive}")
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    n = int(y.numel())
    acc = float((pred == y).sum().item()) / n
    f1 = 2.0 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else _nan("F1 with no positive and no prediction", 3)
    return {"acc": acc, "f1": f1, "threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "n": n}


def pixel_acc_f1(maps: Any, masks: Any, threshold: float = 0.5, valid: Any = None) -> dict[str, float]:
    """Pixel ACC/F1 pooled over all pixels at ``map >= threshold`` (ProxyAno fundus: 0.5, lesion = positive)."""
    s, y = _pair(maps, masks, valid, sname="maps", lname="masks")
    return image_acc_f1(s, y, threshold)


def balanced_pixel_counts(maps: Any, masks: Any, threshold: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Per-image (tp, fp, fn, tn) of ProxyAno's balanced pixel variant (protocols/proxyano.md §2.3, an assumption:
    the paper's fundus ACC/F1 look balanced). Each map is min–max scaled to [0, 1] on its own (a constant map is 0
    everywhere: nothing predicted); each image contributes all its lesion pixels and as many non-lesion pixels,
    drawn without replacement by ``numpy.random.default_rng([seed, i])`` (every non-lesion pixel when there are
    fewer); an image without lesion contributes none. Pixels are abnormal iff scaled map ≥ ``threshold``.
    Returns an [N, 4] float64 tensor, so a resample of images pools its counts."""
    m, g = _pair_images(maps, masks)
    out = torch.zeros((m.shape[0], 4), dtype=torch.float64)
    for i in range(m.shape[0]):
        y = g[i].reshape(-1).cpu().numpy()
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        v = m[i].reshape(-1).to(torch.float64).cpu().numpy()
        lo, hi = float(v.min()), float(v.max())
        scaled = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        neg = np.flatnonzero(~y)
        if len(neg) > n_pos:
            neg = np.sort(np.random.default_rng([seed, i]).choice(neg, size=n_pos, replace=False))
        pred_pos, pred_neg = scaled[y] >= threshold, scaled[neg] >= threshold
        out[i] = torch.tensor([pred_pos.sum(), pred_neg.sum(), (~pred_pos).sum(), (~pred_neg).sum()],
                              dtype=torch.float64)
    return out


def mean_score_gap(scores: Any, labels: Any, *, norm: str = "normal_minmax") -> dict[str, float]:
    """ProxyAno Table II: mean score of normal and abnormal test images and their gap (abnormal − normal).

    ``norm="normal_minmax"`` (default) maps the *normal* test scores' min to 0 and max to 1 (abnormal scores
    may leave [0, 1]); ``"raw"`` no scaling. The scale-free ratio abnormal/normal of the raw means is always
    returned. Undefined cases give NaN + warning (module rule): only one class present (everything NaN);
    all normal scores equal under ``normal_minmax`` (no scale: the three scaled values NaN, ratio kept); a
    raw normal mean of 0 (ratio NaN).
    """
    if norm not in ("normal_minmax", "raw"):
        raise ValueError(f"norm must be 'normal_minmax' or 'raw', got {norm!r}")
    s, y = _pair(scores, labels)
    s = s.to(torch.float64)
    if not bool(y.any()) or bool(y.all()):
        nan = _nan("mean score gap needs normal and abnormal images", 3)
        return {"mean_score_normal": nan, "mean_score_abnormal": nan, "score_gap": nan, "ratio": nan}
    raw_n, raw_a = float(s[~y].mean()), float(s[y].mean())
    ratio = raw_a / raw_n if raw_n != 0 else _nan("score ratio with a mean normal score of 0", 3)
    if norm == "normal_minmax":
        lo, hi = s[~y].min(), s[~y].max()
        if float(hi - lo) == 0:
            nan = _nan("normal_minmax scaling with all normal scores equal", 3)
            return {"mean_score_normal": nan, "mean_score_abnormal": nan, "score_gap": nan, "ratio": ratio}
        s = (s - lo) / (hi - lo)
    mn, ma = float(s[~y].mean()), float(s[y].mean())
    return {"mean_score_normal": mn, "mean_score_abnormal": ma, "score_gap": ma - mn, "ratio": ratio}


def _region(mask: Any, like: torch.Tensor, inside: bool) -> torch.Tensor:
    m = _binary(mask, "mask").to(like.device)
    if m.shape[0] != like.shape[0] or tuple(m.shape[-2:]) != tuple(like.shape[-2:]):
        raise ValueError(f"mask shape {tuple(m.shape)} does not match {tuple(like.shape)}")
    m = m if m.ndim == like.ndim else m.reshape(m.shape[0], 1, *m.shape[-2:])
    m = m.any(1, keepdim=True) if m.shape[1] != 1 else m
    return m if inside else ~m


def masked_mse(x: Any, y: Any, mask: Any, *, inside: bool = True, kind: str = "mse") -> torch.Tensor:
    """Per-image mean error over the mask region: Σ(e·m)/Σm (RA/PHANES Table 1). ``kind="mse"`` squared
    error, ``"l1"`` absolute error (what RA's code logs as "MSE"). NaN where the region is empty.
    Channels are averaged first. Returns float64 [N]."""
    a = _scores(x, "x")
    b = _scores(y, "y").to(a.device)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"x and y must be equal [N,C,H,W], got {tuple(a.shape)} and {tuple(b.shape)}")
    e = (a - b).to(torch.float64)
    e = e.square() if kind == "mse" else e.abs() if kind == "l1" else None
    if e is None:
        raise ValueError(f"kind must be 'mse' or 'l1', got {kind!r}")
    e = e.mean(1, keepdim=True)
    m = _region(mask, a, inside).to(torch.float64)
    return ((e * m).sum((1, 2, 3)) / m.sum((1, 2, 3))).cpu()


def masked_lpips(net: Callable[..., torch.Tensor], x: Any, y: Any, mask: Any, *, inside: bool = True,
                 batch_size: int = 32, zero_as_nan: bool = False) -> torch.Tensor:
    """Per-image mean of a spatial LPIPS map over the mask region (PHANES ``lpips`` healthy/anomaly).

    ``net`` is any ``lpips.LPIPS(..., spatial=True)``-like callable ``net(x, y, normalize=True)`` returning
    [B,1,H,W] (built elsewhere, offline weights). Inputs in [0, 1]; grey images are repeated to 3 channels.
    ``zero_as_nan=True`` drops region pixels whose LPIPS is exactly 0, as PHANES's code does. NaN where the
    region is empty. Returns float64 [N] (multiply by 100 for the printed scale).
    """
    a = _scores(x, "x")
    b = _scores(y, "y").to(a.device)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"x and y must be equal [N,C,H,W], got {tuple(a.shape)} and {tuple(b.shape)}")
    region = _region(mask, a, inside)
    dev = next((p.device for p in getattr(net, "parameters", lambda: iter(()))()), a.device)
    out = []
    with torch.no_grad():
        for i in range(0, a.shape[0], batch_size):
            xa, xb = a[i:i + batch_size].float(), b[i:i + batch_size].float()
            if xa.shape[1] == 1:
                xa, xb = xa.repeat(1, 3, 1, 1), xb.repeat(1, 3, 1, 1)
            d = net(xa.to(dev), xb.to(dev), normalize=True)
            if d.ndim != 4 or d.shape[1] != 1:
                raise ValueError(f"LPIPS net must return [B,1,H,W] spatial maps (spatial=True), got {tuple(d.shape)}")
            if tuple(d.shape[-2:]) != tuple(a.shape[-2:]):
                d = torch.nn.functional.interpolate(d, size=a.shape[-2:], mode="bilinear", align_corners=False)
            out.append(d.to(torch.float64).cpu())
    d = torch.cat(out)
    m = region.cpu()
    if zero_as_nan:
        m = m & (d != 0)
    mf = m.to(torch.float64)
    return (d * mf).sum((1, 2, 3)) / mf.sum((1, 2, 3))


# ----------------------------------------------------------------------------------------------------
# PHANES's official evaluation, as coded (``|phanes_code`` ids)
# ----------------------------------------------------------------------------------------------------
# ci-ber/PHANES @ c8995ed: projects/phanes/DownstreamEvaluator.py (``synthetic_anomaly_detection_with_sprites``,
# ``pathology_localization``, ``thresholding``) and optim/metrics/{dice,auprc}.py. The code's arrays are numpy
# float32 (maps, images, reconstructions) and float64 (synthetic masks); numpy 1.24 (its pin) compares a float32
# array with a float64 scalar in float32. These functions reproduce those computations, quirks included; the
# suite's corrected ids stay beside them.
PHANES_DICE_EPS = 1e-6  # optim/metrics/dice.py: dice = 2·I / (Σinputs + Σtargets + eps)


def _code_maps(maps: Any, name: str = "maps") -> np.ndarray:
    """Maps as the code's numpy arrays: their own float dtype (float32 stays float32), on the CPU."""
    return _scores(maps, name).detach().cpu().numpy()


def phanes_code_dice_terms(maps: Any, masks: Any, thresholds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and threshold, the sums the code's ``compute_dice(predictions, gt, th)`` adds up.

    The code binarises in place: ``predictions[predictions > th] = 1``, then ``predictions[predictions < 1] = 0``.
    A value v > th becomes 1, a value v < 1 (and ≤ th) becomes 0, and a value 1 ≤ v ≤ th (only when th ≥ 1)
    *keeps its raw value v*. ``th`` is compared in the map's dtype (a float32 map meets float32(th), numpy 1.24
    value-based casting). Returns float64 ``(inter [N,T], pred [N,T], gt [N])``: Σ inputs·targets, Σ inputs and
    |G| of each image; the code's pooled Dice is ``2·Σinter / (Σpred + Σgt + 1e-6)`` over the images it pools.
    Sums are exact float64 (the code sums 0/1 float32 values exactly too; raw values ≥ 1 may differ from its
    float32 sum in the last bits).
    """
    m = _code_maps(maps)
    g = _binary(masks, "masks").cpu().numpy()
    if m.shape != g.shape or m.ndim < 2:
        raise ValueError(f"maps shape {m.shape} != masks shape {g.shape} (or not [N, ...])")
    th = np.asarray(thresholds, np.float64).reshape(-1).astype(m.dtype)  # the comparison's precision
    one = m.dtype.type(1)
    n = m.shape[0]
    inter = np.zeros((n, th.size))
    pred = np.zeros((n, th.size))
    for i in range(n):
        v = m[i].reshape(-1)
        for vals, out in ((v, pred), (v[g[i].reshape(-1)], inter)):
            s = np.sort(vals)
            n_le = np.searchsorted(s, th, side="right")  # values ≤ th stay (0, or raw when ≥ 1)
            first_ge1 = np.searchsorted(s, one, side="left")
            cs = np.concatenate([[0.0], np.cumsum(s, dtype=np.float64)])
            raw = np.where(n_le > first_ge1, cs[n_le] - cs[np.minimum(first_ge1, n_le)], 0.0)
            out[i] = (s.size - n_le) + raw
    return inter, pred, g.reshape(n, -1).sum(1).astype(np.float64)


def phanes_code_dice(maps: Any, masks: Any, threshold: float) -> float:
    """The code's pooled ``compute_dice`` at one threshold: raw values ≥ 1 kept (see
    :func:`phanes_code_dice_terms`) and ``+1e-6`` in the denominator, so empty prediction and empty GT give 0,
    never NaN."""
    inter, pred, gt = phanes_code_dice_terms(maps, masks, [threshold])
    return float(2.0 * inter.sum() / (pred.sum() + gt.sum() + PHANES_DICE_EPS))


def phanes_code_grid(maps: Any) -> np.ndarray:
    """Table 1's Dice thresholds: ``np.linspace(0, np.max(pred), 1000)`` (float64 grid to the map maximum)."""
    return np.linspace(0, float(np.max(_code_maps(maps))), 1000)


def phanes_code_best_dice(maps: Any, masks: Any) -> tuple[float, float]:
    """``dice|oracle_test|max1000|phanes_code``: ``synthetic_anomaly_detection_with_sprites``'s "Total DICE",
    the maximum of ``compute_dice`` over ``linspace(0, max(maps), 1000)`` on the pooled maps. Returns (Dice, the
    first threshold reaching it)."""
    th = phanes_code_grid(maps)
    inter, pred, gt = phanes_code_dice_terms(maps, masks, th)
    d = 2.0 * inter.sum(0) / (pred.sum(0) + gt.sum() + PHANES_DICE_EPS)
    k = int(np.argmax(d))
    return float(d[k]), float(th[k])


def per_image_ap_phanes_code(maps: Any, masks: Any) -> torch.Tensor:
    """Each image's ``compute_auprc`` (sklearn ``average_precision_score`` on the flattened map, float32 ties),
    float64 [N]. An image without lesion pixel gets −0.0 as PHANES's scikit-learn (1.1.1) returns it: recall is
    set to 1 everywhere, AP = −Σ 0·precision = −0.0 (current scikit-learn clips it to 0.0; the same number in a
    mean), never NaN -- so such images pull the code's mean down."""
    m = _scores(maps, "maps")
    g = _binary(masks, "masks").to(m.device)
    if tuple(m.shape) != tuple(g.shape):
        raise ValueError(f"maps shape {tuple(m.shape)} != masks shape {tuple(g.shape)}")
    out = torch.full((m.shape[0],), -0.0, dtype=torch.float64)
    for i in range(m.shape[0]):
        s, y = _pair(m[i], g[i])
        if bool(y.any()):
            out[i] = _ap_from(_rank(s, y))
    return out


def lesion_gt1px(masks: Any) -> np.ndarray:
    """``pathology_localization``'s slice rule: a slice is scored only if ``torch.sum(masks[i][0]) > 1`` on the
    binarised mask (more than one lesion pixel in channel 0). bool [N]."""
    g = _binary(masks, "masks")
    g = g[:, 0] if g.ndim == 4 else g
    return (g.reshape(g.shape[0], -1).sum(1) > 1).cpu().numpy()


def _code_pair(recon: Any, clean: Any) -> tuple[np.ndarray, np.ndarray]:
    """Channel 0 of reconstruction and clean slice as the code's float32 numpy arrays (``x_rec[i][0]``, ``x[i][0]``
    of its float32 tensors)."""
    r = _scores(recon, "recon").detach().cpu().float().numpy()
    x = _scores(clean, "clean").detach().cpu().float().numpy()
    if r.shape != x.shape or r.ndim != 4:
        raise ValueError(f"recon and clean must be equal [N,C,H,W], got {r.shape} and {x.shape}")
    return r[:, 0], x[:, 0]


def masked_mse_phanes_code(recon: Any, clean: Any, mask: Any, *, inside: bool = True) -> np.ndarray:
    """Table 1's "MSE_an" (``inside``) and "MSE" (healthy, ``inside=False``) per image, as coded:
    ``np.sum(((x_rec_ − x_) · m)²) / np.sum(m)`` with m the synthetic mask (inside) or ``|1 − m|`` (healthy) --
    and the healthy error is divided by the *anomaly* area ``Σ m`` too, not by the healthy area. The difference
    is taken in float32 (the code's arrays), the rest in float64. Empty mask: what numpy gives
    (NaN inside, inf healthy). float64 [N]."""
    r, x = _code_pair(recon, clean)
    g = _binary(mask, "mask").cpu().numpy()
    g = (g[:, 0] if g.ndim == 4 else g).astype(np.float64)
    if g.shape != r.shape:
        raise ValueError(f"mask shape {g.shape} != images {r.shape}")
    w = g if inside else np.abs(1 - g)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([np.sum(((r[i] - x[i]) * w[i]) ** 2.0) / np.sum(g[i]) for i in range(len(r))], np.float64)


def ssim_inside_mask_phanes_code(recon: Any, clean: Any, mask: Any) -> np.ndarray:
    """Table 1's "SSIM" per image, as coded: ``ssim(x_rec_, x_, data_range=1., full=True)`` (scikit-image
    defaults: 7×7 uniform window, sample covariance; float32 arrays, unclamped reconstruction vs the clean
    slice), the full (uncropped) float32 SSIM map multiplied in place by the synthetic mask, every exact 0 set to
    NaN (outside the mask, and inside pixels whose SSIM is exactly 0) and ``np.nanmean`` in float32. NaN when
    nothing is left or a slice is smaller than the window. float64 [N]."""
    from skimage.metrics import structural_similarity

    r, x = _code_pair(recon, clean)
    g = _binary(mask, "mask").cpu().numpy()
    g = (g[:, 0] if g.ndim == 4 else g).astype(np.float64)
    out = np.full(len(r), np.nan)
    if min(r.shape[-2:]) < 7:
        return out
    for i in range(len(r)):
        if not (np.isfinite(r[i]).all() and np.isfinite(x[i]).all()):
            continue
        _, smap = structural_similarity(np.ascontiguousarray(r[i]), np.ascontiguousarray(x[i]), data_range=1.0,
                                        full=True)
        smap *= g[i]
        smap[smap == 0] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[i] = float(np.nanmean(smap))
    return out


def l1_clamped_phanes_code(recon: Any, image: Any) -> np.ndarray:
    """Table 2's logged "MSE" per slice, as coded: ``L1Loss()(clamp(x_rec, 0, 1)[i][0], x[i][0])``, the mean
    absolute error (not squared) of the reconstruction clamped to [0, 1] against the input, over the whole
    slice, in torch float32. float64 [N]."""
    r = _scores(recon, "recon")
    x = _scores(image, "image").to(r.device)
    if r.shape != x.shape or r.ndim != 4:
        raise ValueError(f"recon and image must be equal [N,C,H,W], got {tuple(r.shape)} and {tuple(x.shape)}")
    rc = torch.clamp(r.float(), 0, 1)[:, 0]
    return np.array([float(torch.nn.functional.l1_loss(rc[i], x[i, 0].float())) for i in range(r.shape[0])])


# ----------------------------------------------------------------------------------------------------
# registry of metric ids
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """What a ``metric_id`` means: the CSV ``metric`` it fills, whether its threshold was picked on the test
    set (oracle: never rank calibrated and oracle numbers together) and its direction."""

    id: str
    csv_metric: str
    description: str
    oracle: bool = False
    higher_is_better: bool = True
    function: str = ""


def _m(id: str, description: str, *, oracle: bool = False, hib: bool = True, fn: str = "") -> MetricSpec:
    return MetricSpec(id, id.split("|")[0], description, oracle, hib, fn)


_SPECS = [
    _m("auroc|image", "image-level AUROC of the method's image score (sklearn-exact)", fn="image_auroc_ap"),
    _m("ap|image", "image-level average precision (sklearn-exact)", fn="image_auroc_ap"),
    _m("auroc|image|afsc_max21", "image AUROC, score = max of the 21×21 mean-filtered map, slices pooled (AFSC)",
       fn="image_auroc_ap"),
    _m("ap|image|afsc_max21", "image AP, score = max of the 21×21 mean-filtered map (AFSC)", fn="image_auroc_ap"),
    _m("auroc|image|map_mean", "image AUROC, score = mean of the anomaly map over all pixels (RA global detection)",
       fn="image_auroc_ap"),
    _m("fpr_at_tpr95|image|map_mean|ra_code", "image FPR at 95 % TPR, score = float32 mean of the anomaly map, "
       "normal test slices vs each group: first point of sklearn roc_curve with TPR ≥ 0.95, no interpolation "
       "(RA code, printed only)", hib=False, fn="fpr_at_tpr_ra_code"),
    _m("fpr_at_tpr99|image|map_mean|ra_code", "image FPR at 99 % TPR, score = float32 mean of the anomaly map, "
       "normal test slices vs each group: first point of sklearn roc_curve with TPR ≥ 0.99, no interpolation "
       "(RA code, printed only)", hib=False, fn="fpr_at_tpr_ra_code"),
    _m("auroc|image|eq13", "image AUROC of ProxyAno's latent distance (eq. 13)", fn="image_auroc_ap"),
    _m("auroc|image|recon_frobenius", "image AUROC of the image-space score ‖I − Î‖_F (ProxyAno image-space rows)",
       fn="image_auroc_ap"),
    _m("auroc_pixel|pooled", "pixel AUROC, all pixels of all test images pooled, no brain mask", fn="pooled_pixel_auroc_ap"),
    _m("ap_pixel|pooled", "pixel AP, all pixels of all test images pooled, no brain mask", fn="pooled_pixel_auroc_ap"),
    _m("auprc|pooled", "pooled pixel AP (sklearn average_precision_score), as ap_pixel|pooled (RA, PHANES)",
       fn="pooled_pixel_auroc_ap"),
    _m("auprc|pooled|trapezoid", "pooled pixel area under the PR curve by the trapezoid rule (sklearn "
       "auc(recall, precision)); differs from sklearn average_precision_score (auprc|pooled, step-wise): "
       "interpolated precision reads higher or lower; never mix the two", fn="pooled_pixel_auprc_trapezoid"),
    _m("auroc_pixel|pooled_brain", "pixel AUROC pooled over brain pixels (brain > 0.5) only", fn="pooled_pixel_auroc_ap"),
    _m("ap_pixel|pooled_brain", "pixel AP pooled over brain pixels only", fn="pooled_pixel_auroc_ap"),
    _m("auroc_pixel|per_volume", "pixel AUROC pooled per subject, mean over subjects with lesion",
       fn="per_volume_pixel_auroc_ap"),
    _m("ap_pixel|per_volume", "pixel AP pooled per subject, mean over subjects with lesion",
       fn="per_volume_pixel_auroc_ap"),
    _m("ap_pixel|per_image", "mean over slices of each slice's pixel AP", fn="per_image_pixel_ap"),
    _m("dice|oracle_test|pr_exact", "pooled Dice over every pixel (no brain mask) at the best threshold on the test set, exact PR "
       "curve (AFSC); oracle",
       oracle=True, fn="best_dice"),
    _m("dice|oracle_test|max1000", "pooled Dice over every pixel (no brain mask), best of 1000 thresholds in [0, max map] on the "
       "test set (PHANES); oracle",
       oracle=True, fn="best_dice"),
    _m("dice|oracle_test|unit101", "pooled Dice over every pixel (no brain mask), best of linspace(0, 1, 101) on the test set "
       "(autoDDPM); oracle",
       oracle=True, fn="best_dice"),
    _m("dice|per_image|oracle_test|itermask2",
       "mean per-image Dice at one global θ ∈ {0,…,0.0099} maximising it on the test set; map (x−R)² min-max over the "
       "set × brain; prediction cast to int (brain rim < 1 never counts); every image in the mean (IterMask2 code, "
       "white rows); oracle", oracle=True, fn="itermask2_code_metrics"),
    _m("dice|per_image|oracle_image", "mean of each image's best Dice (own threshold per image; grey rows); oracle",
       oracle=True, fn="best_dice_per_image"),
    _m("dice|fpr@5%_healthy_brain", "pooled Dice at the threshold giving ≤ 5 % FP brain pixels on healthy validation; "
       "predictions inside the test brain only", fn="dice"),
    _m("dice|fpr@5%_healthy_image", "pooled Dice at the threshold giving ≤ 5 % FP pixels (whole image) on healthy data",
       fn="dice"),
    _m("dice|per_image|fpr@5%_healthy_brain", "mean per-image Dice at the calibrated healthy-brain threshold, over the slices with a "
       "lesion (predictions inside the brain)",
       fn="dice_per_image"),
    _m("dice|paper_fixed", "pooled Dice at the paper's / code's fixed threshold", fn="dice"),
    _m("sensitivity|pooled|fpr@5%_healthy_brain", "pooled |P∩G|/|G| at the calibrated healthy-brain threshold (P inside the brain)",
       fn="dice"),
    _m("precision|pooled|fpr@5%_healthy_brain", "pooled |P∩G|/|P| at the calibrated healthy-brain threshold (P inside the brain)",
       fn="dice"),
    _m("sensitivity|per_image|oracle_test|itermask2", "mean per-image TP/(TP+FN) at IterMask2's θ (pred != 0; "
       "0.0 for an image without lesion, kept in the mean: the code under numpy 1.x)", oracle=True,
       fn="itermask2_code_metrics"),
    _m("precision|per_image|oracle_test|itermask2", "mean per-image TP/(TP+FP), 0 when nothing predicted",
       oracle=True, fn="itermask2_code_metrics"),
    _m("dice_small|per_image|oracle_test|itermask2", "mean per-image Dice, lesions < 200 px (lesion-free images "
       "included, as the code bins area 0)", oracle=True, fn="itermask2_code_metrics"),
    _m("dice_medium|per_image|oracle_test|itermask2", "mean per-image Dice, lesions 200–799 px", oracle=True,
       fn="itermask2_code_metrics"),
    _m("dice_large|per_image|oracle_test|itermask2", "mean per-image Dice, lesions ≥ 800 px", oracle=True,
       fn="itermask2_code_metrics"),
    _m("ssim|normal_brain", "SSIM map (σ=1.5 Gaussian) averaged over normal brain pixels (suite)", fn="ssim_normal"),
    _m("ssim|image|ra_code", "SSIM of reconstruction vs input per slice, scikit-image defaults (7×7 uniform window), "
       "data_range 1, channel 0 float32 unclamped; np.nanmean per group of slices (RA code, logged only)",
       fn="ssim_ra_code"),
    _m("ssim|itermask2_code", "SSIM of R·B·(1−G) vs x·B·(1−G), mean SSIM map per image (IterMask2 code)",
       fn="ssim_normal"),
    _m("acc|image|p75_train_normal", "image ACC at the 75th pct of training-normal scores, score ≥ t (ProxyAno)",
       fn="image_acc_f1"),
    _m("f1|image|p75_train_normal", "image F1 (abnormal positive) at the 75th pct of training-normal scores",
       fn="image_acc_f1"),
    _m("acc|image|fpr@5%_healthy_image", "image ACC at the 95th pct of held-out normal scores, score > t",
       fn="image_acc_f1"),
    _m("f1|image|fpr@5%_healthy_image", "image F1 at the 95th pct of held-out normal scores, score > t",
       fn="image_acc_f1"),
    _m("acc_pixel|pooled|paper_fixed", "pixel ACC over all pixels at A_pix ≥ 0.5 (ProxyAno fundus)", fn="pixel_acc_f1"),
    _m("f1_pixel|pooled|paper_fixed", "pixel F1 (lesion positive) at A_pix ≥ 0.5", fn="pixel_acc_f1"),
    _m("acc_pixel_bal|pooled|paper_fixed", "pixel ACC at 0.5 of per-image min-max maps, lesion pixels + as many "
       "random normal ones per image (ProxyAno fundus, balanced variant)", fn="balanced_pixel_counts"),
    _m("f1_pixel_bal|pooled|paper_fixed", "pixel F1 (lesion positive) of the balanced variant",
       fn="balanced_pixel_counts"),
    _m("mean_score_normal|normal_minmax", "mean eq.-13 score of normal test images, min-max by normal scores",
       hib=False, fn="mean_score_gap"),
    _m("mean_score_abnormal|normal_minmax", "mean eq.-13 score of abnormal test images, min-max by normal scores",
       fn="mean_score_gap"),
    _m("score_gap|normal_minmax", "abnormal − normal mean score (ProxyAno Table II)", fn="mean_score_gap"),
    _m("mse|inside_mask", "per-image mean squared error inside the synthetic mask, mean over images", hib=False,
       fn="masked_mse"),
    _m("mse|inside_mask|l1_ra_code", "per-image mean absolute error inside the mask (what RA's code logs as MSE)",
       hib=False, fn="masked_mse"),
    _m("mse|outside_mask", "per-image mean squared error outside the mask", hib=False, fn="masked_mse"),
    _m("lpips|inside_mask", "AlexNet spatial LPIPS averaged inside the mask, mean over images", hib=False,
       fn="masked_lpips"),
    _m("lpips|outside_mask", "AlexNet spatial LPIPS averaged outside the mask (PHANES 'healthy')", hib=False,
       fn="masked_lpips"),
    # PHANES's official evaluator as coded (ci-ber/PHANES @ c8995ed, projects/phanes/DownstreamEvaluator.py)
    _m("dice|oracle_test|max1000|phanes_code", "PHANES code Table 1 'Total DICE': max over linspace(0, max map, "
       "1000) of compute_dice on the pooled maps (map > t → 1, values in [1, t] keep their raw value, + 1e-6 in the "
       "denominator); oracle", oracle=True, fn="phanes_code_best_dice"),
    _m("dice|fpr@5%_healthy_image|phanes_code", "pooled compute_dice (raw values in [1, t] kept, + 1e-6) at PHANES's "
       "thresholding result on healthy validation (count / H, not H·W: ≈ 0.039 % FPR at 128²)",
       fn="phanes_code_dice"),
    _m("ap_pixel|per_image|phanes_code", "PHANES code: np.nanmean of per-image sklearn AP (compute_auprc); an "
       "image without lesion counts as −0.0", fn="per_image_ap_phanes_code"),
    _m("mse|inside_mask|phanes_code", "PHANES code 'MSE_an': Σ((x_rec − x)·m)² / Σm per image (float32 "
       "difference), np.nanmean", hib=False, fn="masked_mse_phanes_code"),
    _m("mse|outside_mask|phanes_code", "PHANES code 'MSE' (healthy): Σ((x_rec − x)·(1 − m))² divided by the "
       "anomaly area Σm, not the healthy area; np.nanmean", hib=False, fn="masked_mse_phanes_code"),
    _m("ssim|inside_mask|phanes_code", "PHANES code 'SSIM': skimage SSIM map (7×7 uniform, data_range 1, float32) "
       "× synthetic mask, exact zeros dropped, nanmean per image", fn="ssim_inside_mask_phanes_code"),
    _m("lpips|inside_mask|phanes_code", "PHANES code 'LPIPS_an': AlexNet spatial LPIPS inside the mask, exact "
       "zeros dropped (nanmean)", hib=False, fn="masked_lpips"),
    _m("lpips|outside_mask|phanes_code", "PHANES code 'LPIPS' (healthy): AlexNet spatial LPIPS outside the mask, "
       "exact zeros dropped (nanmean)", hib=False, fn="masked_lpips"),
    _m("auprc|pooled|lesion_gt1px|phanes_code", "PHANES code Table 2 'Total AUPRC': pooled sklearn AP over the "
       "slices with > 1 lesion pixel (the others skipped)", fn="pooled_pixel_auroc_ap"),
    _m("ap_pixel|per_image|lesion_gt1px|phanes_code", "PHANES code Table 2 'AUPRC mean': np.nanmean of per-slice "
       "sklearn AP over the slices with > 1 lesion pixel", fn="per_image_ap_phanes_code"),
    _m("dice|oracle_test|max1000|lesion_gt1px|phanes_code", "PHANES's Table 1 Dice rule (compute_dice, 1000 "
       "thresholds in [0, max]) on the slices its Table 2 code scores (> 1 lesion pixel); oracle", oracle=True,
       fn="phanes_code_best_dice"),
    _m("mse|image|l1_clamp01|lesion_gt1px|phanes_code", "PHANES code Table 2 'MSE': L1 of the reconstruction "
       "clamped to [0, 1] vs the input over the slice, slices with > 1 lesion pixel", hib=False,
       fn="l1_clamped_phanes_code"),
    _m("ssim|image|clamp01|lesion_gt1px|phanes_code", "PHANES code Table 2 'SSIM': skimage SSIM (7×7 uniform, "
       "data_range 1) of the clamped reconstruction vs the input, slices with > 1 lesion pixel", fn="ssim_ra_code"),
    _m("detected_boxes|fpr@5%_healthy_image", "boxes with > 10 % pixels firing at the ≤ 5 % healthy-FPR threshold",
       fn="protocols.boxes.localise"),
    _m("detected_boxes|fpr@5%_healthy_image|ra_code", "RA code: detected boxes (> 10 % of the soft box's nonzero "
       "pixels at float32 map ≥ t) at RA's grid-search threshold", fn="protocols.boxes.localise"),
    _m("detection_rate|per_box|fpr@5%_healthy_image|ra_code", "RA code: fraction of boxes detected at RA's "
       "grid-search threshold (per pathology: RA Fig. 4a)", fn="protocols.boxes.localise"),
    _m("detected_boxes|paper_fixed|ra_code", "RA code: detected boxes at the hard-coded threshold 0.009",
       fn="protocols.boxes.localise"),
    _m("f1|per_box|fpr@5%_healthy_image", "mean over boxes of F1 = 2/(2+FP), 0 if missed (suite computation)",
       fn="protocols.boxes.localise"),
    _m("f1|per_box|fpr@5%_healthy_image|ra_code", "mean box F1 as RA's code computes it (floored FP, soft boxes)",
       fn="protocols.boxes.localise"),
    _m("f1|per_box|paper_fixed|ra_code", "RA code box F1 at the hard-coded threshold 0.009",
       fn="protocols.boxes.localise"),
    _m("precision|per_box|fpr@5%_healthy_image|ra_code", "mean over boxes of TP / max(TP + FP, 1) as RA's code "
       "logs it (floored FP, soft boxes) at RA's grid-search threshold", fn="protocols.boxes.localise"),
    _m("detection_rate|per_box|fpr@5%_healthy_image", "fraction of boxes with > 10 % of pixels firing at the "
       "≤ 5 % healthy-FPR threshold", fn="protocols.boxes.localise"),
    _m("fp_ratio|per_box|fpr@5%_healthy_image", "mean over boxes of healthy/in-box summed score", hib=False,
       fn="protocols.boxes.localise"),
]
METRICS: dict[str, MetricSpec] = {s.id: s for s in _SPECS}


def metric_spec(metric_id: str) -> MetricSpec:
    """Look an id up; unknown ids get a spec inferred from their parts (``oracle_test`` → oracle), so new
    combinations still render, but tables should prefer registered ids."""
    if metric_id in METRICS:
        return METRICS[metric_id]
    base = metric_id.split("|")[0]
    lower = {"mse", "lpips", "mean_score_normal", "fp_ratio", "fpr"}
    return MetricSpec(metric_id, base, "(unregistered id)", oracle="oracle" in metric_id,
                      higher_is_better=base not in lower)
