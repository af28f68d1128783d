"""Run a trained method over slice sets and turn its maps into metric rows, by metric id.

``collect`` scores every slice once (maps kept on the method's device while metrics run there too).
``METRIC_BUILDERS`` maps each metric id a table may ask for (``protocols.metrics.METRICS`` says what it
means) to its computation; ``metric_rows`` turns a table's ids into long rows with a bootstrap se and 95 %
CI over test subjects, plus each subject's own value (for paired tests between methods).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from benchmark.contract import Method
from benchmark.scoring import Scorer, as_scorer
from protocols import metrics as M
from protocols import thresholds as T
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
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # first dim N: e.g. latent_score [N], masks

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def where(self, keep: np.ndarray | torch.Tensor) -> "ScoreSet":
        idx = torch.as_tensor(np.flatnonzero(np.asarray(keep)), device=self.maps.device)
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return ScoreSet(pick(self.maps), pick(self.scores), pick(self.labels), pick(self.lesion), pick(self.brain),
                        pick(self.images), pick(self.reconstructions),
                        self.manifest.iloc[idx.cpu().numpy()].reset_index(drop=True), self.wall_s,
                        {k: pick(v) for k, v in self.extras.items()})


def collect(scorer: Scorer | Method, slices, *, progress: bool = True) -> ScoreSet:
    """Every slice of ``slices`` scored by ``scorer`` (the runner's cached scorer, or a bare method), with the
    slices' images, masks and labels beside the maps, all on the method's device. A slice set that any table
    scored before under the same score key is read from the cache: no network pass."""
    sc = as_scorer(scorer, progress=progress)
    s = sc.scores(slices)
    image, brain, lesion, label, _ = slices.materialize(sc.device)
    if len(s) != len(slices):
        raise ValueError(f"{sc.name}: {len(s)} scores for {len(slices)} slices")
    return ScoreSet(s.anomaly_map, s.image_score, label, lesion, brain, image, s.reconstruction, slices.manifest,
                    s.wall_s, dict(s.extras))


# ----------------------------------------------------------------------------------------------------
# metric ids → estimates
# ----------------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    """One metric's value and how to recompute it on any multiset of test slices.

    ``on(idx)`` (slice indices, repeats allowed) is what makes the statistics uniform: a bootstrap over
    subjects, a subject's own value for a paired test and the CI all call it, with every threshold held at
    the value chosen on the full set. ``on=None``: no cheap recomputation; se / CI / per-subject stay NaN.
    """

    value: float
    on: Callable[[np.ndarray], float] | None = None
    note: str = ""
    scale: str = "fraction"


def _nanmean_on(values: torch.Tensor | np.ndarray) -> Callable[[np.ndarray], float]:
    v = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)

    def on(idx: np.ndarray) -> float:
        x = v[idx]
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else math.nan
    return on


def _per_image(values: torch.Tensor | np.ndarray, note: str = "") -> Estimate:
    """A mean over images of a per-image value (NaN images left out)."""
    on = _nanmean_on(values)
    return Estimate(on(np.arange(len(values))), on, note)


def _quiet(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn()


class MetricContext:
    """What the metric builders share for one scored test set: labels, thresholds and sorted counts are
    computed once, lazily, and only for the ids a table asks for."""

    def __init__(self, test: ScoreSet, healthy_val: ScoreSet | Callable[[], ScoreSet | None] | None, *,
                 fpr: float = 0.05,
                 clean: torch.Tensor | None = None, lpips_net: Callable | None = None,
                 train: ScoreSet | None = None, per_image_oracle: bool = False):
        # the healthy validation scores, or how to get them: scored only when an id needs them (a diffusion model's
        # hundreds of passes per slice are not spent on validation slices that no metric of the table reads)
        self.test, self._val, self.fpr = test, healthy_val, fpr
        # a grey row (variant hint threshold=per_image_best): IterMask2's ids take each image's own best instead
        # of the one global θ
        self.per_image_oracle = per_image_oracle
        self.train = train  # the scored training normals, for ProxyAno's p75_train_normal rule
        self.clean = clean  # healthy originals of synthetic anomalies (reconstruction targets)
        self.lpips_net = lpips_net
        self._cache: dict[str, Any] = {}
        self.subjects = test.manifest["subject"].astype(str).to_numpy() if len(test) else np.array([], str)
        self.n = len(test)

    @property
    def val(self) -> ScoreSet | None:
        if callable(self._val):
            self._val = self._val()
        return self._val

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def gt(self) -> torch.Tensor:
        return self.cached("gt", lambda: self.test.lesion > 0.5)

    @property
    def has_lesion(self) -> bool:
        return self.cached("has_lesion", lambda: bool(self.gt.any()))

    def calibrated(self, region: str) -> tuple[float, str]:
        """Threshold at ``fpr`` false-positive pixels of the healthy validation maps (brain or whole image)."""
        def make() -> tuple[float, str]:
            if self.val is None or not len(self.val):
                raise Undefined("no healthy validation slices to calibrate the threshold")
            valid = self.val.brain > 0.5 if region == "brain" else None
            t = T.fpr_threshold(self.val.maps, self.fpr, healthy_brain=valid)
            return t, f"threshold {t:.4g} from {len(self.val)} healthy validation slices"
        return self.cached(f"thr_{region}", make)

    def counts_at(self, t: float, region: str = "image") -> tuple[torch.Tensor, ...]:
        """Per image: |P∩G|, |P|, |G| at ``map > t`` (float64, CPU).

        ``region="brain"``: predictions only inside the brain (brain > 0.5), the pixels a healthy-brain
        threshold was calibrated on; background never counts as a false positive it was not calibrated for.
        """
        def make():
            pred = self.test.maps > t
            if region == "brain":
                pred = pred & (self.test.brain > 0.5)
            gt = self.gt
            return tuple(x.flatten(1).sum(1).double().cpu() for x in (pred & gt, pred, gt))
        return self.cached(f"counts_{region}_{t!r}", make)

    def binned(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cached("binned", lambda: tuple(x.cpu() for x in M.per_image_binned_counts(self.test.maps,
                                                                                            self.test.lesion)))

    def itermask2_error(self) -> tuple[torch.Tensor, str]:
        """IterMask2's error map (x − R)² in float64, as its code builds it from the final reconstruction; a method
        without a reconstruction is scored on its own map (said in every cell's note)."""
        rec = self.test.reconstructions
        if rec is None:
            return self.test.maps.to(torch.float64), "map: the method's own anomaly map (no reconstruction)"
        x = self.test.images.to(torch.float64)
        return (x - rec.to(torch.float64)) ** 2, "map (x − R)²"

    def itermask2(self) -> dict[str, Any]:
        """IterMask2's protocol (``protocols.metrics.itermask2_code_metrics``): maps min-max over the set × brain,
        one θ maximising the mean per-image Dice. On a grey row (``per_image_oracle``) each image gets its own best:
        the method's own per-image mask search when it returns one (IterMask2: ``oracle_dice`` / ``oracle_mask``),
        else the best θ of the same grid per image."""
        def make():
            err, how = self.itermask2_error()
            r = M.itermask2_code_metrics(err, self.gt, self.test.brain)
            out = {"dice": r["dice_per_image"], "sens": r["sensitivity_per_image"], "prec": r["precision_per_image"],
                   "area": r["area"], "value": {"dice": r["dice"], "sensitivity": r["sensitivity"],
                                                "precision": r["precision"], **{k: r[f"dice_{k}"] for k in M.SIZE_BINS}},
                   "note": f"oracle θ {r['theta']:.4g} (IterMask2 grid) chosen on the test set; {how}"}
            if self.per_image_oracle:
                out.update(self._itermask2_per_image(r, how))
            return out
        return self.cached("itermask2", make)

    def _itermask2_per_image(self, white: dict[str, Any], how: str) -> dict[str, Any]:
        """A grey row from the white row's search (``M.itermask2_code_metrics``): its normalised maps and every
        image's Dice at every θ of the grid, so nothing is recomputed."""
        ex = self.test.extras
        if "oracle_dice" in ex and "oracle_mask" in ex:
            dice = ex["oracle_dice"].to(torch.float64).reshape(-1).cpu()
            pred = ex["oracle_mask"]
            note = "grey row: each image's best mask of the method's own search (oracle)"
        else:
            mn, d_all = white["normalised"], white["dice_per_theta"]
            best = torch.nan_to_num(d_all, nan=-1.0).argmax(1)
            dice = d_all.gather(1, best[:, None])[:, 0].cpu()
            th = M.threshold_grid("itermask2", 1.0).to(mn.device)[best].view(-1, *([1] * (mn.ndim - 1)))
            pred = M.itermask2_prediction(mn, self.test.brain, 0.0) * (mn > th)
            note = f"grey row: each image at its own best θ of the IterMask2 grid (oracle); {how}"
        sens, prec = M.sensitivity_precision_per_image(pred, self.gt, empty_gt="zero")
        area = white["area"]
        bins = {k: float(np.nanmean(dice[(area >= lo) & (area < hi)].numpy())) if bool(((area >= lo) & (area < hi))
                .any()) else math.nan for k, (lo, hi) in M.SIZE_BINS.items()}
        return {"dice": dice, "sens": sens.cpu(), "prec": prec.cpu(), "note": note,
                "value": {"dice": float(dice.mean()), "sensitivity": float(sens.mean()),
                          "precision": float(prec.mean()), **bins}}


class Undefined(Exception):
    """A metric that cannot be computed on this input: its row is NaN and the reason goes into ``note``."""


def _image(ctx: MetricContext, which: str, scores: torch.Tensor | None = None) -> Estimate:
    s = ctx.test.scores if scores is None else scores
    y = ctx.test.labels
    if y.min() == y.max():
        raise Undefined("image-level metric needs normal and abnormal test slices")
    value = _quiet(lambda: M.image_auroc_ap(s, y)[which])  # the constant case is said in the row's note
    return Estimate(value, lambda i: M.image_auroc_ap(s[i], y[i])[which], _constant_note(s, "image scores"))


def _constant_note(values: torch.Tensor, what: str) -> str:
    """A row note when every score is equal: AUROC is then exactly 0.5 (AP the prevalence) by ties, which
    says nothing about detection -- the reader must see that in the table, not only in a log warning."""
    lo, hi = float(values.min()), float(values.max())
    return (f"CONSTANT {what} (all {lo:.4g}): AUROC 0.5 / AP = prevalence by ties, no ranking information"
            if lo == hi else "")


def _latent_score(ctx: MetricContext) -> torch.Tensor:
    s = ctx.test.extras.get("latent_score")
    if s is None:
        raise Undefined("the method reports no latent-space score (ScoreOutput.extras['latent_score'])")
    return s.float()


def _image_space_score(ctx: MetricContext) -> torch.Tensor:
    """ProxyAno's image-space score ‖I − Î‖_F per slice (needs a reconstruction)."""
    if ctx.test.reconstructions is None:
        raise Undefined("the method gives no reconstruction")
    return ctx.cached("frobenius", lambda: (ctx.test.images.float() - ctx.test.reconstructions.float()
                                            ).flatten(1).norm(dim=1))


def _map_mean(ctx: MetricContext) -> torch.Tensor:
    return ctx.cached("map_mean", lambda: ctx.test.maps.flatten(1).mean(1))


def _afsc_score(ctx: MetricContext) -> torch.Tensor:
    return ctx.cached("afsc_max21", lambda: M.afsc_slice_score(ctx.test.maps))


def _need_lesion(ctx: MetricContext) -> None:
    if not ctx.has_lesion:
        raise Undefined("no lesion pixels in the test set")


def _pooled(ctx: MetricContext, which: int) -> Estimate:
    _need_lesion(ctx)
    exact = ctx.cached("pooled", lambda: _quiet(lambda: M.pooled_pixel_auroc_ap(ctx.test.maps, ctx.test.lesion)))
    pos, neg = ctx.binned()  # a resample sums rows of binned counts instead of re-sorting
    return Estimate(exact[which], lambda i: M.auroc_ap_from_counts(pos[i].sum(0), neg[i].sum(0))[which],
                    _constant_note(ctx.test.maps, "anomaly maps"))


def _pooled_brain(ctx: MetricContext, which: int) -> Estimate:
    _need_lesion(ctx)
    b = ctx.test.brain > 0.5
    exact = ctx.cached("pooled_brain", lambda: M.pooled_pixel_auroc_ap(ctx.test.maps, ctx.test.lesion, valid=b))
    pos, neg = ctx.cached("binned_brain", lambda: tuple(x.cpu() for x in M.per_image_binned_counts(
        ctx.test.maps, ctx.test.lesion, valid=b)))
    return Estimate(exact[which], lambda i: M.auroc_ap_from_counts(pos[i].sum(0), neg[i].sum(0))[which])


def _auprc_trapezoid(ctx: MetricContext) -> Estimate:
    _need_lesion(ctx)
    value = M.pooled_pixel_auprc_trapezoid(ctx.test.maps, ctx.test.lesion)
    pos, neg = ctx.binned()
    return Estimate(value, lambda i: _trapezoid_from_counts(pos[i].sum(0), neg[i].sum(0)),
                    "trapezoid area under the PR curve (differs from sklearn AP)")


def _trapezoid_from_counts(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Trapezoid PR area from per-bin counts (bins as distinct scores; for the bootstrap, not for values)."""
    big_p = float(pos.sum())
    if big_p == 0:
        return math.nan
    tp = torch.cumsum(torch.flip(pos, [0]), 0)  # descending thresholds
    fp = torch.cumsum(torch.flip(neg, [0]), 0)
    keep = (tp + fp) > 0
    recall = torch.cat([torch.zeros(1, dtype=tp.dtype), tp[keep] / big_p])
    precision = torch.cat([torch.ones(1, dtype=tp.dtype), tp[keep] / (tp[keep] + fp[keep])])
    return float(torch.trapezoid(precision, recall))


def _slice_weights_on(per_slice_value: np.ndarray, weight: np.ndarray) -> Callable[[np.ndarray], float]:
    """Mean over subjects from per-slice copies of a subject value weighted 1/n_slices (so a resample that
    draws a subject twice counts it twice)."""
    def on(idx: np.ndarray) -> float:
        v, w = per_slice_value[idx], weight[idx]
        ok = np.isfinite(v)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan
    return on


def _per_volume(ctx: MetricContext, which: str) -> Estimate:
    _need_lesion(ctx)
    r = ctx.cached("per_volume", lambda: _quiet(lambda: M.per_volume_pixel_auroc_ap(
        ctx.test.maps, ctx.test.lesion, list(ctx.subjects))))
    k = 0 if which == "auroc" else 1
    per_slice = np.array([r["per_subject"].get(s, (math.nan, math.nan))[k] for s in ctx.subjects], np.float64)
    _, inv, cnt = np.unique(ctx.subjects, return_inverse=True, return_counts=True)
    on = _slice_weights_on(per_slice, 1.0 / cnt[inv])
    note = f"{r['n']} subjects with lesion; {r['n_skipped']} without lesion left out"
    return Estimate(float(r[which]), on, note)


def _dice_calibrated(ctx: MetricContext, region: str, per_image: bool = False) -> Estimate:
    _need_lesion(ctx)
    t, note = ctx.calibrated(region)
    inter, npred, ngt = ctx.counts_at(t, region)
    if region == "brain":
        note += "; predictions inside the brain only"
    if per_image:  # over the slices with a lesion: a healthy slice has no Dice to average (see METRICS)
        d = torch.where(ngt > 0, 2 * inter / (npred + ngt).clamp_min(1), torch.full_like(inter, math.nan))
        return _per_image(d, note + f"; mean over the {int((ngt > 0).sum())} slices with a lesion")
    on = lambda i: float(2 * inter[i].sum() / (npred[i].sum() + ngt[i].sum()))  # noqa: E731
    return Estimate(on(np.arange(ctx.n)), on, note)


def _rate_calibrated(ctx: MetricContext, which: str) -> Estimate:
    """Pooled sensitivity |P∩G|/|G| or precision |P∩G|/|P| at the calibrated healthy-brain threshold."""
    _need_lesion(ctx)
    t, note = ctx.calibrated("brain")
    inter, npred, ngt = ctx.counts_at(t, "brain")
    note += "; predictions inside the brain only"
    den = ngt if which == "sensitivity" else npred

    def on(i: np.ndarray) -> float:
        d = float(den[i].sum())
        return float(inter[i].sum()) / d if d else math.nan
    value = on(np.arange(ctx.n))
    if not math.isfinite(value):
        raise Undefined("nothing predicted at the calibrated threshold: precision undefined")
    return Estimate(value, on, note)


def _dice_oracle(ctx: MetricContext, grid: str) -> Estimate:
    _need_lesion(ctx)
    best, thr = T.oracle_dice(ctx.test.maps, ctx.test.lesion, grid)
    # per-image counts on a fixed grid; a resample takes its own best over that grid (its own oracle)
    se_grid = "max1000" if grid == "pr_exact" else grid
    tp, fp, ng = ctx.cached(f"grid_{se_grid}", lambda: tuple(x.cpu() for x in M.per_image_counts(
        ctx.test.maps, ctx.gt, torch.ones_like(ctx.gt), T.oracle_grid(se_grid, float(ctx.test.maps.max())))))
    on = lambda i: float((2 * tp[i].sum(0) / (tp[i].sum(0) + fp[i].sum(0) + ng[i].sum()).clamp_min(1)).max())  # noqa: E731
    return Estimate(best, on, f"oracle threshold {thr:.4g} chosen on the test set")


def _dice_oracle_image(ctx: MetricContext) -> Estimate:
    _need_lesion(ctx)
    d, _ = _quiet(lambda: T.oracle_dice_per_image(ctx.test.maps, ctx.test.lesion))
    return _per_image(d, "each lesion slice at its own best threshold (oracle); slices without lesion left out")


def _itermask2(ctx: MetricContext, key: str) -> Estimate:
    """One IterMask2 number as its code computes it: every test slice counts (an image without lesion has
    sensitivity 0, sits in the 'small' bin, and a NaN Dice makes the mean NaN), means summed in the code's order;
    the bootstrap recomputes plain means over the resampled slices with θ held."""
    _need_lesion(ctx)
    r = ctx.itermask2()
    value = r["value"][key]
    if key in SIZE_BIN_KEYS:
        lo, hi = M.SIZE_BINS[key]
        sel = ((r["area"] >= lo) & (r["area"] < hi)).numpy()
        if not sel.any():
            raise Undefined(f"no test slice with a lesion area in [{lo}, {hi}) px (the official code raises "
                            "ZeroDivisionError here)")
        values = r["dice"].numpy()

        def on_bin(idx: np.ndarray) -> float:
            keep = idx[sel[idx]]
            return float(values[keep].mean()) if keep.size else math.nan
        return Estimate(value, on_bin, r["note"] + f"; {int(sel.sum())} slices in the bin")
    values = {"dice": r["dice"], "sensitivity": r["sens"], "precision": r["prec"]}[key].numpy()
    note = r["note"]
    if math.isnan(value):
        note += ("; NaN: a slice without lesion and without prediction has Dice 0/0, and the code's mean keeps it"
                 if key == "dice" else "")
    return Estimate(value, lambda idx: float(values[idx].mean()), note)


SIZE_BIN_KEYS = tuple(M.SIZE_BINS)


def _ssim(ctx: MetricContext, variant: str) -> Estimate:
    """SSIM of the reconstruction (float64, as IterMask2's code casts its arrays); on a grey row, the
    reconstruction of the method's own per-image oracle when it returns one."""
    rec = ctx.test.reconstructions
    note = ""
    if ctx.per_image_oracle and "oracle_reconstruction" in ctx.test.extras:
        rec, note = ctx.test.extras["oracle_reconstruction"], "; reconstruction of the per-image oracle mask"
    if rec is None:
        raise Undefined("the method gives no reconstruction")
    rec = rec.to(torch.float64)
    ref = (ctx.test.images if ctx.clean is None else ctx.clean).to(torch.float64)
    brain = ctx.test.brain.to(torch.float64)
    rb = rec * brain
    data_range = float(rb.max() - rb.min())
    if not data_range > 0:
        raise Undefined("constant reconstruction: SSIM data range is 0")
    vals = []
    for i in range(ctx.n):
        r = _quiet(lambda: M.ssim_normal(rec[i:i + 1], ref[i:i + 1], brain[i:i + 1],
                                         ctx.test.lesion[i:i + 1], data_range=data_range, variant=variant))
        vals.append(r["ssim"])
    return _per_image(torch.tensor(vals, dtype=torch.float64), f"data range {data_range:.4g} (max−min of R·B){note}")


def _image_decision(ctx: MetricContext, which: str, t: float, *, strict: bool, note: str) -> Estimate:
    """Image ACC or F1 (abnormal positive) of the test scores at threshold ``t``, the threshold held fixed
    across resamples; ``strict``: abnormal iff score > t, else score ≥ t."""
    y, s = ctx.test.labels, ctx.test.scores
    if y.min() == y.max():
        raise Undefined("image-level metric needs normal and abnormal test slices")
    rule = lambda i: M.image_acc_f1(s[i], y[i], t, strict=strict)[which]  # noqa: E731
    return Estimate(rule(np.arange(ctx.n)), rule, note)


def _acc_f1(ctx: MetricContext, which: str) -> Estimate:
    if ctx.val is None or not len(ctx.val):
        raise Undefined("no healthy validation slices to calibrate the image threshold")
    t = T.fpr_threshold(ctx.val.scores, ctx.fpr)
    return _image_decision(ctx, which, t, strict=True,  # '>': the rule fpr_threshold calibrates for
                           note=f"score > {t:.4g} (≤ {ctx.fpr:.0%} of {len(ctx.val)} healthy validation scores above)")


def _pixel_acc_f1_fixed(ctx: MetricContext, which: str, t: float | None = None) -> Estimate:
    """Pixel ACC / F1 pooled over every pixel at ``map ≥ t`` (ProxyAno fundus: A_pix ≥ 0.5, lesion positive;
    default t is ``PAPER_FIXED["proxyano:pixel"]``)."""
    _need_lesion(ctx)
    t = T.paper_fixed("proxyano:pixel") if t is None else t

    def make():
        pred = ctx.test.maps >= t
        gt = ctx.gt
        return tuple(x.flatten(1).sum(1).double().cpu() for x in (pred & gt, pred & ~gt, ~pred & gt))
    tp, fp, fn = ctx.cached(f"fixed_{t!r}", make)
    per_image = float(ctx.test.maps[0].numel())

    def on(i: np.ndarray) -> float:
        a, b, c = float(tp[i].sum()), float(fp[i].sum()), float(fn[i].sum())
        if which == "acc":
            return 1.0 - (b + c) / (per_image * len(i))
        return 2 * a / (2 * a + b + c) if (2 * a + b + c) else math.nan
    return Estimate(on(np.arange(ctx.n)), on, f"fixed threshold: map ≥ {t:g} is predicted lesion")


def _pixel_acc_f1_balanced(ctx: MetricContext, which: str) -> Estimate:
    """ProxyAno fundus, balanced variant (:func:`protocols.metrics.balanced_pixel_counts`): pooled over the images
    of a resample."""
    _need_lesion(ctx)
    t = T.paper_fixed("proxyano:pixel")
    counts = ctx.cached("balanced_counts", lambda: M.balanced_pixel_counts(ctx.test.maps, ctx.gt, t).numpy())

    def on(i: np.ndarray) -> float:
        tp, fp, fn, tn = counts[i].sum(0)
        n = tp + fp + fn + tn
        if which == "acc":
            return float((tp + tn) / n) if n else math.nan
        return float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else math.nan
    return Estimate(on(np.arange(ctx.n)), on, f"per-image min-max maps ≥ {t:g}; each image's lesion pixels + as many "
                    "random normal pixels (seeded per image)")


def _per_image_ap(ctx: MetricContext) -> Estimate:
    _need_lesion(ctx)
    ap = ctx.cached("per_image_ap", lambda: M.per_image_pixel_ap(ctx.test.maps, ctx.test.lesion))
    return _per_image(ap, f"mean over the {int(torch.isfinite(ap).sum())} slices with a lesion")


def _acc_f1_p75_train(ctx: MetricContext, which: str) -> Estimate:
    """ProxyAno's image ACC/F1 rule (P-Net ``validate_cls``): t = ``sorted(train_scores)[int(0.75 n)]`` over the
    normal training images, abnormal iff score ≥ t, abnormal = positive class of F1."""
    if ctx.train is None or not len(ctx.train):
        raise Undefined("needs the scores of the training normals (the protocol scores them only when asked)")
    t = T.p75_train_normal(ctx.train.scores)
    n = ctx.train.scores.numel()
    return _image_decision(ctx, which, t, strict=False,  # '≥', as the P-Net code decides
                           note=f"score ≥ {t:.4g}: sorted(train)[int(0.75·n)] of {n} training-normal scores (ProxyAno)")


def _score_gap(ctx: MetricContext, key: str) -> Estimate:
    s, y = ctx.test.scores, ctx.test.labels
    if y.min() == y.max():
        raise Undefined("needs normal and abnormal test slices")
    return Estimate(M.mean_score_gap(s, y)[key], lambda i: M.mean_score_gap(s[i], y[i])[key],
                    "the method's own image score, min-max by the normal test scores")


def _reconstruction_error(ctx: MetricContext, kind: str, inside: bool) -> Estimate:
    if ctx.clean is None:
        raise Undefined("needs the healthy original of each slice (synthetic-anomaly protocol)")
    rec = ctx.test.reconstructions
    if rec is None:
        raise Undefined("the method gives no reconstruction")
    if kind == "lpips":
        if ctx.lpips_net is None:
            raise Undefined("LPIPS network unavailable (see methods/blocks/perceptual.py for the weights)")
        v = _quiet(lambda: M.masked_lpips(ctx.lpips_net, rec, ctx.clean, ctx.test.lesion, inside=inside))
    else:
        v = _quiet(lambda: M.masked_mse(rec, ctx.clean, ctx.test.lesion, inside=inside, kind=kind))
    return _per_image(v, "reconstruction vs the clean slice, " + ("inside" if inside else "outside")
                      + " the synthetic mask; per-image mean, then mean over images")


# ----------------------------------------------------------------------------------------------------
# PHANES's official evaluation as coded (``|phanes_code``; ci-ber/PHANES @ c8995ed DownstreamEvaluator.py)
# ----------------------------------------------------------------------------------------------------
_PHANES_SKIP = "lesion_gt1px"  # the id part naming pathology_localization's rule: slices with > 1 lesion pixel


def _nan_only_mean_on(values: np.ndarray) -> Callable[[np.ndarray], float]:
    """``np.nanmean`` as the code logs its per-image lists: NaN dropped, ±inf kept."""
    v = np.asarray(values, dtype=np.float64)

    def on(idx: np.ndarray) -> float:
        x = v[idx]
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else math.nan
    return on


def _code_mean(values: np.ndarray, note: str, keep: np.ndarray | None = None) -> Estimate:
    """Mean over images as the code logs it (``np.nanmean``), over the ``keep`` slices only when given."""
    v = np.asarray(values, np.float64).copy()
    if keep is not None:
        v[~keep] = np.nan  # a skipped slice is never appended to the code's list
    on = _nan_only_mean_on(v)
    value = on(np.arange(len(v)))
    return Estimate(value, on, note)


def _phanes_keep(ctx: MetricContext, skip: bool) -> tuple[np.ndarray, str]:
    """The slices an id pools: all, or (``lesion_gt1px``) those with more than one lesion pixel."""
    if not skip:
        return np.ones(ctx.n, bool), ""
    keep = ctx.cached("phanes_keep", lambda: M.lesion_gt1px(ctx.test.lesion))
    if not keep.any():
        raise Undefined("no slice with more than one lesion pixel (PHANES's pathology_localization scores none)")
    return keep, f"; {int(keep.sum())} of {ctx.n} slices have > 1 lesion pixel (the code skips the others)"


def _phanes_dice_on(inter: np.ndarray, pred: np.ndarray, gt: np.ndarray, keep: np.ndarray
                    ) -> Callable[[np.ndarray], float]:
    """Pooled code Dice of a resample: sums over its kept slices, best over the (fixed) threshold columns."""
    def on(idx: np.ndarray) -> float:
        i = idx[keep[idx]]
        if not len(i):
            return math.nan
        return float(np.max(2.0 * inter[i].sum(0) / (pred[i].sum(0) + gt[i].sum() + M.PHANES_DICE_EPS)))
    return on


def _phanes_dice_oracle(ctx: MetricContext, skip: bool) -> Estimate:
    keep, skip_note = _phanes_keep(ctx, skip)
    sel = torch.from_numpy(keep).to(ctx.test.maps.device)
    maps, lesion = ctx.test.maps[sel], ctx.test.lesion[sel]
    th = M.phanes_code_grid(maps)  # linspace(0, max of the pooled (kept) maps, 1000)
    inter, pred, gt = np.zeros((ctx.n, th.size)), np.zeros((ctx.n, th.size)), np.zeros(ctx.n)
    inter[keep], pred[keep], gt[keep] = M.phanes_code_dice_terms(maps, lesion, th)
    on = _phanes_dice_on(inter, pred, gt, keep)
    d = 2.0 * inter.sum(0) / (pred.sum(0) + gt.sum() + M.PHANES_DICE_EPS)
    k = int(np.argmax(d))
    note = (f"PHANES code: max of compute_dice over linspace(0, max map, 1000) (map > t → 1, values in [1, t] kept "
            f"raw, + 1e-6), oracle threshold {th[k]:.4g} chosen on the test set" + skip_note)
    return Estimate(float(d[k]), on, note)


def _phanes_dice_fpr(ctx: MetricContext) -> Estimate:
    if ctx.val is None or not len(ctx.val):
        raise Undefined("no healthy validation slices for PHANES's threshold search")

    def search() -> tuple[float, bool]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            t = T.phanes_code_threshold(ctx.val.maps, ctx.fpr)
        return t, bool(caught)
    t, fallback = ctx.cached("phanes_code_threshold", search)
    inter, pred, gt = M.phanes_code_dice_terms(ctx.test.maps, ctx.test.lesion, [t])
    on = _phanes_dice_on(inter, pred, gt, np.ones(ctx.n, bool))
    note = (f"threshold {t:.4g}: PHANES code search (grid 0, 0.001, …, 0.999; per-slice count·100 / H ≤ "
            f"{100 * ctx.fpr:g} on average, i.e. ≈ {100 * ctx.fpr / ctx.val.maps.shape[-1]:.3g} % of the pixels) "
            f"on {len(ctx.val)} healthy validation slices"
            + (" -- no grid value qualifies, so 0 as the code's initial value" if fallback else "")
            + "; Dice as compute_dice (values in [1, t] kept raw, + 1e-6)")
    return Estimate(on(np.arange(ctx.n)), on, note)


def _phanes_pooled_ap(ctx: MetricContext) -> Estimate:
    keep, skip_note = _phanes_keep(ctx, True)
    sel = torch.from_numpy(keep).to(ctx.test.maps.device)
    maps, lesion = ctx.test.maps[sel], ctx.test.lesion[sel]
    value = _quiet(lambda: M.pooled_pixel_auroc_ap(maps, lesion))[1]
    pos, neg = (x.cpu() for x in M.per_image_binned_counts(maps, lesion))
    at = np.cumsum(keep) - 1  # row of each kept slice in the binned counts

    def on(idx: np.ndarray) -> float:
        i = at[idx[keep[idx]]]
        return M.auroc_ap_from_counts(pos[i].sum(0), neg[i].sum(0))[1] if len(i) else math.nan
    return Estimate(value, on, "PHANES code: compute_auprc (sklearn AP) on the stacked maps of the scored slices"
                    + skip_note)


def _phanes_per_image_ap(ctx: MetricContext, skip: bool) -> Estimate:
    keep, skip_note = _phanes_keep(ctx, skip)
    ap = ctx.cached("phanes_per_image_ap", lambda: M.per_image_ap_phanes_code(ctx.test.maps, ctx.test.lesion))
    n_empty = int(((ctx.test.lesion.flatten(1) > 0.5).sum(1) == 0).cpu().numpy()[keep].sum())
    extra = f"; {n_empty} slice(s) without lesion count as AP −0.0 (sklearn)" if n_empty else ""
    return _code_mean(ap.numpy(), "PHANES code: np.nanmean of per-image compute_auprc (sklearn AP)" + skip_note
                      + extra, keep)


def _phanes_synthetic(ctx: MetricContext, what: str, inside: bool = True) -> Estimate:
    """Table 1 quantities of ``synthetic_anomaly_detection_with_sprites``: reconstruction vs the clean slice."""
    if ctx.clean is None:
        raise Undefined("needs the healthy original of each slice (synthetic-anomaly protocol)")
    rec = ctx.test.reconstructions
    if rec is None:
        raise Undefined("the method gives no reconstruction")
    where = "inside" if inside else "outside"
    if what == "mse":
        v = M.masked_mse_phanes_code(rec, ctx.clean, ctx.test.lesion, inside=inside)
        note = ("PHANES code: Σ((x_rec − x)·m)² / Σm" if inside else
                "PHANES code 'MSE': Σ((x_rec − x)·(1 − m))² / Σm -- healthy error divided by the ANOMALY area")
    elif what == "ssim":
        v = M.ssim_inside_mask_phanes_code(rec, ctx.clean, ctx.test.lesion)
        note = ("PHANES code: skimage SSIM map (7×7 uniform, data_range 1, float32, unclamped) × mask, exact zeros "
                "dropped, nanmean")
    else:  # lpips
        if ctx.lpips_net is None:
            raise Undefined("LPIPS network unavailable (see methods/blocks/perceptual.py for the weights)")
        v = _quiet(lambda: M.masked_lpips(ctx.lpips_net, rec, ctx.clean, ctx.test.lesion, inside=inside,
                                          zero_as_nan=True)).numpy()
        note = f"PHANES code: AlexNet spatial LPIPS × region ({where} the mask), exact zeros dropped, nanmean"
    return _code_mean(v, note + "; per image, np.nanmean over images")


def _phanes_table2_recon(ctx: MetricContext, what: str) -> Estimate:
    """``pathology_localization``'s logged reconstruction metrics: clamped reconstruction vs the input."""
    keep, skip_note = _phanes_keep(ctx, True)
    rec = ctx.test.reconstructions
    if rec is None:
        raise Undefined("the method gives no reconstruction")
    if what == "l1":
        v = M.l1_clamped_phanes_code(rec, ctx.test.images)
        note = "PHANES code 'MSE': torch L1Loss of clamp(x_rec, 0, 1) vs the input over the slice (float32)"
    else:
        v = M.ssim_ra_code(torch.clamp(rec, 0, 1), ctx.test.images)
        note = "PHANES code: skimage SSIM (7×7 uniform, data_range 1, float32) of clamp(x_rec, 0, 1) vs the input"
    return _code_mean(v, note + "; np.nanmean" + skip_note, keep)


PHANES_CODE_BUILDERS: dict[str, Callable[[MetricContext], Estimate]] = {
    # Table 1 (synthetic protocol): synthetic_anomaly_detection_with_sprites
    "dice|oracle_test|max1000|phanes_code": lambda c: _phanes_dice_oracle(c, False),
    "dice|fpr@5%_healthy_image|phanes_code": _phanes_dice_fpr,
    "ap_pixel|per_image|phanes_code": lambda c: _phanes_per_image_ap(c, False),
    "mse|inside_mask|phanes_code": lambda c: _phanes_synthetic(c, "mse", True),
    "mse|outside_mask|phanes_code": lambda c: _phanes_synthetic(c, "mse", False),
    "ssim|inside_mask|phanes_code": lambda c: _phanes_synthetic(c, "ssim"),
    "lpips|inside_mask|phanes_code": lambda c: _phanes_synthetic(c, "lpips", True),
    "lpips|outside_mask|phanes_code": lambda c: _phanes_synthetic(c, "lpips", False),
    # Table 2 (standard protocol): pathology_localization, slices with > 1 lesion pixel
    f"auprc|pooled|{_PHANES_SKIP}|phanes_code": _phanes_pooled_ap,
    f"ap_pixel|per_image|{_PHANES_SKIP}|phanes_code": lambda c: _phanes_per_image_ap(c, True),
    f"dice|oracle_test|max1000|{_PHANES_SKIP}|phanes_code": lambda c: _phanes_dice_oracle(c, True),
    f"mse|image|l1_clamp01|{_PHANES_SKIP}|phanes_code": lambda c: _phanes_table2_recon(c, "l1"),
    f"ssim|image|clamp01|{_PHANES_SKIP}|phanes_code": lambda c: _phanes_table2_recon(c, "ssim"),
}
PHANES_TABLE1_IDS = tuple(k for k in PHANES_CODE_BUILDERS if _PHANES_SKIP not in k)
PHANES_TABLE2_IDS = tuple(k for k in PHANES_CODE_BUILDERS if _PHANES_SKIP in k)


MetricBuilder = Callable[[MetricContext], Estimate]
METRIC_BUILDERS: dict[str, MetricBuilder] = {
    "auroc|image": lambda c: _image(c, "auroc"),
    "ap|image": lambda c: _image(c, "ap"),
    "auroc|image|map_mean": lambda c: _image(c, "auroc", _map_mean(c)),
    "auroc|image|afsc_max21": lambda c: _image(c, "auroc", _afsc_score(c)),
    "ap|image|afsc_max21": lambda c: _image(c, "ap", _afsc_score(c)),
    "auroc|image|eq13": lambda c: _image(c, "auroc", _latent_score(c)),
    "auroc|image|recon_frobenius": lambda c: _image(c, "auroc", _image_space_score(c)),
    "acc|image|p75_train_normal": lambda c: _acc_f1_p75_train(c, "acc"),
    "f1|image|p75_train_normal": lambda c: _acc_f1_p75_train(c, "f1"),
    "acc|image|fpr@5%_healthy_image": lambda c: _acc_f1(c, "acc"),
    "f1|image|fpr@5%_healthy_image": lambda c: _acc_f1(c, "f1"),
    "mean_score_normal|normal_minmax": lambda c: _score_gap(c, "mean_score_normal"),
    "mean_score_abnormal|normal_minmax": lambda c: _score_gap(c, "mean_score_abnormal"),
    "score_gap|normal_minmax": lambda c: _score_gap(c, "score_gap"),
    "auroc_pixel|pooled": lambda c: _pooled(c, 0),
    "ap_pixel|pooled": lambda c: _pooled(c, 1),
    "auprc|pooled": lambda c: _pooled(c, 1),
    "auprc|pooled|trapezoid": _auprc_trapezoid,
    "auroc_pixel|pooled_brain": lambda c: _pooled_brain(c, 0),
    "ap_pixel|pooled_brain": lambda c: _pooled_brain(c, 1),
    "auroc_pixel|per_volume": lambda c: _per_volume(c, "auroc"),
    "ap_pixel|per_volume": lambda c: _per_volume(c, "ap"),
    "ap_pixel|per_image": _per_image_ap,
    "acc_pixel|pooled|paper_fixed": lambda c: _pixel_acc_f1_fixed(c, "acc"),
    "f1_pixel|pooled|paper_fixed": lambda c: _pixel_acc_f1_fixed(c, "f1"),
    "acc_pixel_bal|pooled|paper_fixed": lambda c: _pixel_acc_f1_balanced(c, "acc"),
    "f1_pixel_bal|pooled|paper_fixed": lambda c: _pixel_acc_f1_balanced(c, "f1"),
    "dice|fpr@5%_healthy_brain": lambda c: _dice_calibrated(c, "brain"),
    "dice|fpr@5%_healthy_image": lambda c: _dice_calibrated(c, "image"),
    "dice|per_image|fpr@5%_healthy_brain": lambda c: _dice_calibrated(c, "brain", per_image=True),
    "sensitivity|pooled|fpr@5%_healthy_brain": lambda c: _rate_calibrated(c, "sensitivity"),
    "precision|pooled|fpr@5%_healthy_brain": lambda c: _rate_calibrated(c, "precision"),
    "dice|oracle_test|max1000": lambda c: _dice_oracle(c, "max1000"),
    "dice|oracle_test|pr_exact": lambda c: _dice_oracle(c, "pr_exact"),
    "dice|oracle_test|unit101": lambda c: _dice_oracle(c, "unit101"),
    "dice|per_image|oracle_image": _dice_oracle_image,
    "dice|per_image|oracle_test|itermask2": lambda c: _itermask2(c, "dice"),
    "sensitivity|per_image|oracle_test|itermask2": lambda c: _itermask2(c, "sensitivity"),
    "precision|per_image|oracle_test|itermask2": lambda c: _itermask2(c, "precision"),
    "dice_small|per_image|oracle_test|itermask2": lambda c: _itermask2(c, "small"),
    "dice_medium|per_image|oracle_test|itermask2": lambda c: _itermask2(c, "medium"),
    "dice_large|per_image|oracle_test|itermask2": lambda c: _itermask2(c, "large"),
    "ssim|normal_brain": lambda c: _ssim(c, "normal_brain"),
    "ssim|itermask2_code": lambda c: _ssim(c, "itermask2"),
    "mse|inside_mask": lambda c: _reconstruction_error(c, "mse", True),
    "mse|outside_mask": lambda c: _reconstruction_error(c, "mse", False),
    "mse|inside_mask|l1_ra_code": lambda c: _reconstruction_error(c, "l1", True),
    "lpips|inside_mask": lambda c: _reconstruction_error(c, "lpips", True),
    "lpips|outside_mask": lambda c: _reconstruction_error(c, "lpips", False),
    **PHANES_CODE_BUILDERS,
}
"""Every metric id a table may list for the slice-scoring protocols (the registry ``protocols.metrics.METRICS``
says what each means). An id not here raises at table definition time, never silently later."""

CORE_METRIC_IDS = ("auroc|image", "ap|image", "auroc_pixel|pooled", "ap_pixel|pooled", "dice|fpr@5%_healthy_brain",
                   "dice|oracle_test|max1000")


def _bootstrap_summary(replicates: np.ndarray) -> tuple[float, float, float]:
    """(se, 2.5 %, 97.5 %) of finite replicates; NaN where fewer than 20 are finite."""
    r = replicates[np.isfinite(replicates)]
    if r.size < 20:
        return math.nan, math.nan, math.nan
    lo, hi = np.quantile(r, [0.025, 0.975])
    return float(r.std(ddof=0)), float(lo), float(hi)


@dataclass
class MetricOutput:
    """Long rows (one per metric id) and per-subject values (one per subject and metric id)."""

    rows: list[dict[str, Any]]
    subject_rows: list[dict[str, Any]]


def estimate_rows(subjects: np.ndarray, estimates: Sequence[tuple[str, str, Estimate]], *, n: int,
                  n_boot: int = 200, seed: int = 2109) -> MetricOutput:
    """Rows for ready ``(metric_id, column_group, Estimate)`` triples over test slices of ``subjects``.

    The bootstrap resamples subjects (all slices of a subject together, ``n_boot`` rounds, thresholds held
    fixed): ``se`` is how far the number could move on another draw of test subjects, and ``phbench check``
    widens its tolerance to 2 se. ``ci_low``/``ci_high`` are its 2.5/97.5 % percentiles. Each subject's own
    value (``on`` of its slices) goes into ``subject_rows`` for paired tests between methods.
    """
    out = MetricOutput([], [])
    groups = {s: np.flatnonzero(subjects == s) for s in dict.fromkeys(subjects)}
    for mid, group, est in estimates:
        se = lo = hi = math.nan
        if est.on is not None and math.isfinite(est.value):
            if n_boot > 0:
                se, lo, hi = _bootstrap_summary(
                    bootstrap_replicates(lambda i: est.on(i), subjects, n_boot=n_boot, seed=seed)[:, 0])
            for s, idx in groups.items():
                out.subject_rows.append({"subject": s, "metric_id": mid, "column_group": group,
                                         "value": float(_quiet(lambda: est.on(idx)))})
        out.rows.append({"metric": M.metric_spec(mid).csv_metric, "metric_id": mid, "value": float(est.value),
                         "se": se, "ci_low": lo, "ci_high": hi, "n": n, "note": est.note, "column_group": group,
                         "scale": est.scale})
    return out


def build_estimate(ctx: MetricContext, metric_id: str) -> Estimate:
    """The estimate of one registered id; an undefined metric is NaN with its reason, never a made-up value."""
    try:
        return METRIC_BUILDERS[metric_id](ctx)
    except Undefined as why:
        return Estimate(math.nan, None, str(why))


def check_metric_ids(metric_ids: Sequence[str], known: Sequence[str] | None = None) -> None:
    known = METRIC_BUILDERS if known is None else known
    unknown = [m for m in metric_ids if m not in known]
    if unknown:
        raise KeyError(f"no computation for metric id(s) {unknown}; known: {sorted(known)}")


def metric_rows(ctx: MetricContext, metric_ids: Sequence[str], *, n_boot: int = 200, column_group: str = "",
                seed: int = 2109) -> MetricOutput:
    """Compute ``metric_ids`` on ``ctx`` (see :func:`estimate_rows` for se, CI and per-subject values)."""
    check_metric_ids(metric_ids)
    est = [(mid, column_group, build_estimate(ctx, mid)) for mid in metric_ids]
    return estimate_rows(ctx.subjects, est, n=ctx.n, n_boot=n_boot, seed=seed)


def standard_rows(test: ScoreSet, healthy_val: ScoreSet | None, *, fpr: float = 0.05, n_boot: int = 200,
                  metric_ids: Sequence[str] = CORE_METRIC_IDS) -> list[dict[str, Any]]:
    """The rows of ``metric_ids`` (default: the core six of ``table1``) for one scored test set."""
    return metric_rows(MetricContext(test, healthy_val, fpr=fpr), metric_ids, n_boot=n_boot).rows
