"""Evaluation protocols: what a table does with a trained method to get its rows.

Why a protocol is separate from a table: the same trained model answers several questions (``table1``
pixel metrics, synthetic anomalies on its healthy slices, box localisation), and a protocol is the one
place that says which slices are scored, what counts as ground truth and which metric ids it can fill.
Each protocol returns an :class:`Evaluation`: long rows, per-subject values for paired tests, and the
scoring wall time. A table lists its protocol and metric ids (``protocols.tables``).

- ``standard``: score test and healthy validation slices; any id of ``METRIC_BUILDERS``.
- ``synthetic``: corrupt the healthy test slices (RA / PHANES generators, seeded, cached on disk with
  their draw record), score them; metrics per generator kind (``column_group``): reconstruction error
  and LPIPS inside / outside the anomaly, pooled AUPRC, oracle Dice (RA Table 1, PHANES Table 1).
- ``localisation``: RA's box localisation at the ≤ 5 % healthy-FPR threshold (detected boxes, per-box F1,
  FP ratio, per pathology) plus RA's global detection (AUROC of the map mean, normal vs each pathology,
  and their average).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from benchmark.contract import Method, SliceBatch
from benchmark.scoring import Scorer, as_scorer
from benchmark.io import atomic_path, atomic_write_text
from datasets.store import BoxRecord, parse_boxes
from datasets.synthetic import DEFAULT_SEED, PRESETS, make_synthetic
from protocols import metrics as M
from protocols import thresholds as T
from protocols.boxes import Box, localise
from protocols.evaluate import (METRIC_BUILDERS, Estimate, MetricContext, ScoreSet, build_estimate,
                                check_metric_ids, collect, estimate_rows)

log = logging.getLogger(__name__)

__all__ = ["Evaluation", "Protocol", "PROTOCOLS", "get_protocol", "TensorSlices"]


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    subject_rows: list[dict[str, Any]]
    eval_wall_s: float
    n_test: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Protocol:
    """``run(method, test, val, metric_ids, options)`` → Evaluation; ``metric_ids`` are what it can fill."""

    name: str
    version: int
    run: Callable[..., Evaluation]
    metric_ids: tuple[str, ...]
    description: str

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"


class TensorSlices:
    """Slices held as tensors (e.g. synthetic corruptions) with the SliceSet interface ``collect`` needs.

    ``cache_key``: what determines these pixels (e.g. a hash of the corrupted set), so their scores are cached
    like a store's slices; None: never cached. ``aux``: the auxiliary modality [N, A, H, W] carried into every
    batch as ``SliceBatch.aux`` (None: the slices have none)."""

    def __init__(self, image: torch.Tensor, brain: torch.Tensor, lesion: torch.Tensor, label: torch.Tensor,
                 manifest: pd.DataFrame, cache_key: str | None = None, aux: torch.Tensor | None = None):
        self.image, self.brain, self.lesion, self.label = image, brain, lesion, label
        self.manifest = manifest.reset_index(drop=True)
        self.cache_key = cache_key
        self.aux = aux

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def materialize(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        idx = torch.arange(len(self))
        return tuple(t.to(device) for t in (self.image, self.brain, self.lesion, self.label, idx))

    def batches(self, batch_size: int, *, device: torch.device | str = "cpu"):
        for s in range(0, len(self), batch_size):
            sl = slice(s, s + batch_size)
            idx = torch.arange(s, min(s + batch_size, len(self)))
            aux = None if self.aux is None else self.aux[sl]
            yield SliceBatch(self.image[sl], self.brain[sl], self.lesion[sl], self.label[sl], idx, aux).to(device)


FPR = 0.05  # the 5 % that every ``fpr@5%_…`` id names; another rate needs ids of its own, not an option


def _score_val(method: Scorer | Method, val, progress: bool) -> ScoreSet | None:
    return collect(method, val, progress=progress) if val is not None and len(val) else None


# ----------------------------------------------------------------------------------------------------
# standard
# ----------------------------------------------------------------------------------------------------
def run_standard(method: Scorer | Method, test, val, metric_ids: Sequence[str], options: dict[str, Any], *,
                 progress: bool = True, n_boot: int = 200) -> Evaluation:
    method = as_scorer(method, progress=progress)  # one scorer: test, val and train sets each scored once
    scored = collect(method, test, progress=progress)
    train = options.get("train")  # scored only for ids whose threshold comes from the training normals
    needs_train = any("train_normal" in m for m in metric_ids)
    scored_train = collect(method, train, progress=progress) if needs_train and train is not None else None
    val_scores: list[ScoreSet | None] = []

    def healthy_val() -> ScoreSet | None:  # scored once, shared by every pathology group's context
        if not val_scores:
            val_scores.append(_score_val(method, val, progress))
        return val_scores[0]

    rows, subject_rows = [], []
    for group, subset in _pathology_groups(scored, bool(options.get("by_pathology"))):
        ctx = MetricContext(subset, healthy_val, fpr=FPR, train=scored_train,
                            per_image_oracle=options.get("variant", {}).get("threshold") == "per_image_best")
        est = [(mid, group, build_estimate(ctx, mid)) for mid in metric_ids]
        out = estimate_rows(ctx.subjects, est, n=ctx.n, n_boot=n_boot)
        rows += out.rows
        subject_rows += out.subject_rows
    return Evaluation(rows, subject_rows, scored.wall_s, len(scored),
                      {"test_slices_per_s": len(scored) / scored.wall_s if scored.wall_s else None})


def _pathology_groups(scored: ScoreSet, by_pathology: bool) -> list[tuple[str, ScoreSet]]:
    """The whole test set (column group "all" when split), then, with ``by_pathology``, one group per pathology of
    the test subjects: the healthy subjects' slices with that pathology's subjects' slices (so each group's image
    AUROC is healthy vs that pathology, and its pixel metrics see that pathology's lesions only)."""
    if not by_pathology:
        return [("", scored)]
    path = scored.manifest["pathology"].fillna("").astype(str).to_numpy()
    healthy = path == "healthy"
    if not healthy.any():
        raise ValueError("by_pathology needs test subjects whose pathology is 'healthy' (the normal reference)")
    return [("all", scored)] + [(p, scored.where(healthy | (path == p))) for p in dict.fromkeys(path[~healthy])]


# ----------------------------------------------------------------------------------------------------
# synthetic anomalies
# ----------------------------------------------------------------------------------------------------
SYNTHETIC_METRICS = ("mse|inside_mask", "mse|outside_mask", "mse|inside_mask|l1_ra_code", "lpips|inside_mask",
                     "lpips|outside_mask", "auprc|pooled", "ap_pixel|pooled", "auroc_pixel|pooled",
                     "dice|oracle_test|max1000", "dice|fpr@5%_healthy_brain",
                     # PHANES's synthetic_anomaly_detection_with_sprites as coded (evaluate.PHANES_TABLE1_IDS; its
                     # "Total AUPRC" / "Total AUROC" are auprc|pooled / auroc_pixel|pooled exactly). Its Table 2
                     # ids (evaluate.PHANES_TABLE2_IDS) are standard-protocol ids.
                     "dice|oracle_test|max1000|phanes_code", "dice|fpr@5%_healthy_image|phanes_code",
                     "ap_pixel|per_image|phanes_code", "mse|inside_mask|phanes_code", "mse|outside_mask|phanes_code",
                     "ssim|inside_mask|phanes_code", "lpips|inside_mask|phanes_code",
                     "lpips|outside_mask|phanes_code")
# synthetic v3 (the version in PROTOCOLS): sprites drawn by generator v2 (PHANES SyntheticSprites draw order, OpenCV
# fill; every preset's sprite sets change, cached v1 sets are not reused) and the ``|phanes_code`` ids.


def synthetic_set(test, kind: str, preset: str, seed: int, cache_dir: Path | None) -> tuple[np.ndarray, ...]:
    """Corrupted healthy test slices, generated once per (store, slices, kind, preset, seed, generator
    version) and cached with their draw record, so every method is scored on the very same anomalies."""
    healthy = test.subset(np.flatnonzero(test.manifest["label"].to_numpy() == 0))
    images = np.ascontiguousarray(healthy.store.images[healthy.rows])
    if images.shape[1] != 1:
        raise ValueError(f"synthetic anomalies need single-channel slices, got {images.shape[1]} channels")
    from datasets import synthetic

    # the generator's id is part of the key: a set drawn by an older generator version is never reused
    key = hashlib.sha256(json.dumps([healthy.fingerprint, healthy.rows.tolist(), kind, preset, seed,
                                     synthetic.GENERATOR_ID]).encode()).hexdigest()[:16]
    path = None if cache_dir is None else Path(cache_dir) / f"synthetic-{kind}-{preset}-{key}.npz"
    if path is not None and path.is_file():
        with np.load(path) as z:
            return healthy, z["images"], z["masks"]
    corrupted, masks, record = make_synthetic(images, kind=kind, params=preset, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=corrupted, masks=masks)
        atomic_write_text(path.with_suffix(".json"), json.dumps(record, default=str))
    return healthy, corrupted, masks


def _lpips_net(device: torch.device) -> tuple[Any, str]:
    from methods.blocks.perceptual import LPIPSWeightsMissing, load_lpips

    try:
        return load_lpips("alex", device=device, spatial=True), ""
    except LPIPSWeightsMissing as err:
        return None, str(err).splitlines()[0]


def run_synthetic(method: Scorer | Method, test, val, metric_ids: Sequence[str], options: dict[str, Any], *,
                  progress: bool = True, n_boot: int = 200) -> Evaluation:
    preset = options.get("preset", "ra")
    seed = int(options.get("seed", DEFAULT_SEED))
    kinds = options.get("kinds") or PRESETS[preset]["kinds"]
    group_names = dict(options.get("group_names") or {})  # kind → column group (RA: sprites → intensity anomaly)
    method = as_scorer(method, progress=progress)
    healthy_val = _score_val(method, val, progress)
    net, why = (None, "") if not any(m.startswith("lpips") for m in metric_ids) else _lpips_net(method.device)
    rows, subject_rows, wall, n = [], [], 0.0, 0
    for kind in kinds:
        healthy, corrupted, masks = synthetic_set(test, kind, preset, seed, options.get("cache_dir"))
        if not len(healthy):
            raise ValueError("synthetic protocol: the test split has no healthy slices to corrupt")
        clean, brain, _, _, _ = healthy.materialize(method.device)
        dev = method.device
        key = hashlib.sha256(b"synthetic:" + healthy.fingerprint.encode() + np.ascontiguousarray(corrupted).data
                             + np.ascontiguousarray(masks).data + np.asarray(healthy.rows).tobytes()).hexdigest()[:20]
        slices = TensorSlices(torch.from_numpy(corrupted).to(dev), brain, torch.from_numpy(masks).to(dev),
                              torch.ones(len(healthy), dtype=torch.long, device=dev), healthy.manifest, key)
        scored = collect(method, slices, progress=progress)
        ctx = MetricContext(scored, healthy_val, clean=clean, lpips_net=net)
        est = []
        for mid in metric_ids:
            e = build_estimate(ctx, mid)
            if mid.startswith("lpips") and net is None:
                e = Estimate(math.nan, None, f"LPIPS unavailable: {why}")
            est.append((mid, group_names.get(kind, kind), e))
        out = estimate_rows(ctx.subjects, est, n=ctx.n, n_boot=n_boot)
        rows += out.rows
        subject_rows += out.subject_rows
        wall += scored.wall_s
        n += len(scored)
    return Evaluation(rows, subject_rows, wall, n, {"synthetic": {"preset": preset, "seed": seed,
                                                                  "kinds": list(kinds)}})


# ----------------------------------------------------------------------------------------------------
# box localisation + global detection (RA)
# ----------------------------------------------------------------------------------------------------
BOX_METRICS = ("detected_boxes|fpr@5%_healthy_image", "detection_rate|per_box|fpr@5%_healthy_image",
               "f1|per_box|fpr@5%_healthy_image", "fp_ratio|per_box|fpr@5%_healthy_image",
               "f1|per_box|fpr@5%_healthy_image|ra_code", "detected_boxes|fpr@5%_healthy_image|ra_code",
               "detection_rate|per_box|fpr@5%_healthy_image|ra_code", "detected_boxes|paper_fixed|ra_code",
               "f1|per_box|paper_fixed|ra_code", "precision|per_box|fpr@5%_healthy_image|ra_code")
# RA's global detection: the AUROC it reports, and the FPR at 95 % / 99 % TPR its code prints beside it
GLOBAL_FPR_METRICS = {"fpr_at_tpr95|image|map_mean|ra_code": 0.95, "fpr_at_tpr99|image|map_mean|ra_code": 0.99}
# and the SSIM of reconstruction vs input it logs per slice (np.nanmean per test set)
SSIM_RA_ID = "ssim|image|ra_code"
GLOBAL_METRICS = ("auroc|image|map_mean",) + tuple(GLOBAL_FPR_METRICS) + (SSIM_RA_ID,)
LOCALISATION_METRICS = BOX_METRICS + GLOBAL_METRICS


def _box_rule(metric_id: str) -> tuple[str, str]:
    """(threshold rule, box computation) a box id names: ``fpr@5%_healthy_image`` or ``paper_fixed``, and
    ``suite`` or ``ra_code`` (RA's own computation: soft boxes, floored FP)."""
    parts = metric_id.split("|")
    rule = next(p for p in parts if p in ("fpr@5%_healthy_image", "paper_fixed"))
    return rule, "ra_code" if parts[-1] == "ra_code" else "suite"


def _rect(hw: Sequence[int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    m = np.zeros(tuple(int(v) for v in hw), np.float32)
    m[int(y0):int(y1), int(x0):int(x1)] = 1.0
    return m


def _ra_soft_mask(rec: BoxRecord, shape: tuple[int, int]) -> np.ndarray:
    """RA's positive mask of an annotation box: the filled rectangle in the source frame (rows y…y+h, columns
    x…x+w, exclusive ends -- the masks are not released, so this is the suite's reading), resized to the map
    size with torchvision's tensor ``Resize`` of RA's time (bilinear, no antialias), never binarised."""
    x, y, bw, bh = rec.source_xywh
    m = torch.from_numpy(_rect(rec.source_hw, x, y, x + bw, y + bh))[None, None]
    return F.interpolate(m, size=shape, mode="bilinear", align_corners=False, antialias=False)[0, 0].numpy()


def manifest_boxes(manifest: pd.DataFrame, shape: tuple[int, int], *, soft: bool = False,
                   box_list: Sequence[Sequence[Any]] | None = None) -> tuple[list[Box], np.ndarray, str]:
    """Boxes of the manifest as :class:`Box` masks, per slice the union of all its annotated boxes (so
    'healthy tissue' of a slice excludes every annotated box, evaluated or not), and a note.

    ``soft``: annotation boxes as RA's code builds them (:func:`_ra_soft_mask`); the union is then the soft
    union, which the caller binarises at 0.5 as RA does with its negative mask. ``box_list``: the boxes a
    paper evaluates, as ``[subject, label, index, group, counted]`` (RA's ``localization_boxes.csv``); only
    these are scored, grouped by ``group``, and listed boxes absent from the slices are counted in the note.
    Without it every box is scored, grouped by its slice's pathology.
    """
    h, w = shape
    wanted = None if box_list is None else {(str(b[0]), str(b[1]), int(b[2])): (str(b[3]), bool(b[4]))
                                            for b in box_list}
    boxes: list[Box] = []
    union = np.zeros((len(manifest), 1, h, w), np.float32)
    matched: set[tuple[str, str, int]] = set()
    for i, (raw, path, subject, sl) in enumerate(zip(manifest["boxes"], manifest["pathology"],
                                                     manifest["subject"].astype(str), manifest["slice"])):
        for k, rec in enumerate(parse_boxes(raw)):
            use_soft = soft and rec.source_xywh is not None and rec.source_hw is not None
            m = _ra_soft_mask(rec, shape) if use_soft else _rect(shape, *rec.xyxy)
            union[i, 0] = np.maximum(union[i, 0], m)
            group, counted = str(path), True
            if wanted is not None:
                key = (subject, rec.label, rec.index)
                if key not in wanted:
                    continue
                group, counted = wanted[key]
                matched.add(key)
            boxes.append(Box(i, m, group, counted, f"{subject}:{sl}:{rec.label or k}:{rec.index}"))
    note = ""
    if wanted is not None:
        missing = [k for k, (_, c) in wanted.items() if c and k not in matched]
        n_listed = sum(1 for _, c in wanted.values() if c)
        note = (f"{n_listed - len(missing)} of the {n_listed} listed boxes found on the kept slices"
                + (f" ({len(missing)} listed boxes are not on them, e.g. {missing[0][0]} {missing[0][1]} "
                   f"#{missing[0][2]})" if missing else ""))
    return boxes, union, note


def _box_estimates(per_box: pd.DataFrame, n_slices: int, note: str, rule: str = "fpr@5%_healthy_image",
                   variant: str = "suite", by_pathology: bool = True) -> list[tuple[str, str, Estimate]]:
    """Box aggregates, overall and per pathology, under the ids of ``rule`` × ``variant`` (the caller keeps
    the registered ones it was asked for); ``on(idx)`` weights each box by how often its slice is drawn, so
    the bootstrap over subjects carries the boxes of each drawn slice."""
    suffix = "|ra_code" if variant == "ra_code" else ""
    pb = per_box[per_box["counted"]]
    img = pb["image_index"].to_numpy()
    det, f1, fp, prec = (pb[c].to_numpy(np.float64) for c in ("detected", "f1", "fp", "precision"))

    def weighted(values: np.ndarray, sel: np.ndarray, kind: str) -> Callable[[np.ndarray], float]:
        def on(idx: np.ndarray) -> float:
            wt = np.bincount(idx, minlength=n_slices)[img] * sel
            ok = wt > 0
            if kind == "sum":
                return float((values * wt).sum())
            fin = ok & np.isfinite(values)
            return float((values[fin] * wt[fin]).sum() / wt[fin].sum()) if fin.any() else math.nan
        return on

    out = []
    groups = [("", np.ones(len(pb), bool))] + [(p, (pb["pathology"] == p).to_numpy()) for p in
                                                 dict.fromkeys(pb["pathology"]) if by_pathology]
    for group, sel in groups:
        all_idx = np.arange(n_slices)
        det_on = weighted(det, sel, "sum")
        e_det = Estimate(det_on(all_idx), det_on, f"{int(det[sel].sum())}/{int(sel.sum())} boxes; {note}", "raw")
        rate_on = weighted(det, sel, "mean")
        f1_on = weighted(f1, sel, "mean")
        fp_on = weighted(fp, sel, "mean")
        out += [(f"detected_boxes|{rule}{suffix}", group, e_det),
                (f"detection_rate|per_box|{rule}{suffix}", group, Estimate(rate_on(all_idx), rate_on, note)),
                (f"f1|per_box|{rule}{suffix}", group, Estimate(f1_on(all_idx), f1_on, note)),
                (f"fp_ratio|per_box|{rule}{suffix}", group,
                 Estimate(fp_on(all_idx), fp_on, note + "; boxes with no firing pixel but healthy FP left out",
                          "raw"))]
        if variant == "ra_code":  # per-box TP / max(TP + FP, 1), mean over boxes (RA logs its nanmean)
            prec_on = weighted(prec, sel, "mean")
            out.append((f"precision|per_box|{rule}{suffix}", group, Estimate(prec_on(all_idx), prec_on, note)))
    return out


def _mean_over_groups(ons: dict[str, Callable[[np.ndarray], float]]) -> Callable[[np.ndarray], float]:
    """The "average" row of a per-group metric: the mean of the groups' finite values on the same resample."""
    def avg(idx: np.ndarray) -> float:
        v = np.array([f(idx) for f in ons.values()])
        return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan
    return avg


def _global_estimates(scored: ScoreSet, groups_of: dict[str, Sequence[str]] | None = None,
                      wanted: Sequence[str] = ("auroc|image|map_mean",), *,
                      sets: dict[str, Sequence[str]] | None = None) -> list[tuple[str, str, Estimate]]:
    """RA's global detection: AUROC of the map mean, normal slices vs each group, and the average over groups;
    with ``wanted`` also the FPR at 95 % / 99 % TPR that RA's code prints (``GLOBAL_FPR_METRICS``).

    ``groups_of`` maps a group name to its pathologies; default: each pathology of the abnormal test slices is
    its own group. ``sets`` instead names the subjects of "normal" and of each group (RA's
    ``normal_test.csv`` and its global pathology / artefact lists): only those slices take part.

    The FPR ids follow RA's ``DownstreamEvaluator.global_detection``: score = ``np.mean`` of the slice's
    float32 map (channel 0, numpy's float32 sum, so ties are float32 ties), ``roc_curve`` and the first point
    with TPR ≥ target (:func:`metrics.fpr_at_tpr_ra_code`). RA prints no average of them; "average" here is
    the mean over groups, like the AUROC's.
    """
    wanted = [m for m in GLOBAL_METRICS if m in wanted]
    s = scored.maps.flatten(1).mean(1)
    y = scored.labels
    path = scored.manifest["pathology"].astype(str).to_numpy()
    normal = _normal_test(scored, sets)
    if sets:
        subj = scored.manifest["subject"].astype(str).to_numpy()
        member = {str(sid): g for g, ids in sets.items() if g != "normal" for sid in ids}
        path = np.array([member.get(x, "") for x in subj])
        y = torch.from_numpy(~normal).long().to(scored.labels.device)  # the lists are the labels (RA: 0 = normal CSV, 1 = the group's CSV)
    elif groups_of:
        path = np.array([next((g for g, members in groups_of.items() if p in members), "") for p in path])
    groups = [p for p in dict.fromkeys(path[~normal]) if p]
    if not normal.any() or not groups:
        return [(m, "average", Estimate(math.nan, None, "needs normal and abnormal slices")) for m in wanted]
    full = np.arange(len(s))
    y_np = y.cpu().numpy()
    note = "score = mean of the anomaly map over the slice; normal test slices vs each group"
    out: list[tuple[str, str, Estimate]] = []

    def per_group(mid: str, value: Callable[[np.ndarray], float], note: str, notes=None) -> None:
        ons = {}
        for g in groups:
            keep = normal | (path == g)

            def on(idx: np.ndarray, keep=keep) -> float:
                i = idx[keep[idx]]
                n_pos = int(np.count_nonzero(y_np[i]))
                return value(i) if 0 < n_pos < len(i) else math.nan
            ons[g] = on

        avg = _mean_over_groups(ons)
        out.extend((mid, g, Estimate(f(full), f, note + (notes[g] if notes else ""))) for g, f in ons.items())
        out.append((mid, "average", Estimate(avg(full), avg, f"mean over {len(ons)} groups")))

    if "auroc|image|map_mean" in wanted:
        per_group("auroc|image|map_mean", lambda i: M.image_auroc_ap(s[i], y[i])["auroc"], note)
    fpr_ids = [m for m in wanted if m in GLOBAL_FPR_METRICS]
    if fpr_ids:
        m32 = scored.maps.detach().cpu().float().numpy()
        s32 = np.array([np.mean(m32[k, 0]) for k in range(len(m32))], dtype=np.float32)  # RA: np.mean(x_res_i)
        for mid in fpr_ids:
            target = GLOBAL_FPR_METRICS[mid]
            fpr_note = (f"RA code: score = float32 np.mean of the map (channel 0); first sklearn roc_curve point "
                        f"with TPR ≥ {target:g}, no interpolation; normal test slices vs each group")
            ths = {}
            for g in groups:
                i = full[normal | (path == g)]
                th = M.fpr_at_tpr_ra_code(s32[i], y_np[i], target)["threshold"]
                ths[g] = f"; threshold (score ≥) {th:.6g}"
            per_group(mid, lambda i, t=target: M.fpr_at_tpr_ra_code(s32[i], y_np[i], t)["fpr"], fpr_note, ths)
    if SSIM_RA_ID in wanted:
        out.extend(_ssim_ra_estimates(scored, normal, path, groups))
    return out


def _ssim_ra_estimates(scored: ScoreSet, normal: np.ndarray, path: np.ndarray,
                       groups: Sequence[str]) -> list[tuple[str, str, Estimate]]:
    """``ssim|image|ra_code``: RA's ``global_detection`` / ``object_localization`` log ``np.nanmean`` of
    ``ssim(x_rec_, x_, data_range=1.)`` over the slices of each test set (:func:`metrics.ssim_ra_code`).
    Rows: ``normal`` (the normal test slices), each group, and ``average`` = mean over the abnormal groups
    (RA prints no average)."""
    mid = SSIM_RA_ID
    if scored.reconstructions is None:
        return [(mid, "average", Estimate(math.nan, None, "the method gives no reconstruction"))]
    v = M.ssim_ra_code(scored.reconstructions, scored.images)
    note = ("RA code: skimage structural_similarity defaults (7×7 uniform window), data_range 1, channel 0 "
            "float32 unclamped; np.nanmean over the group's slices")

    def mean_of(sel: np.ndarray) -> Callable[[np.ndarray], float]:
        def on(idx: np.ndarray) -> float:
            vals = v[idx[sel[idx]]]
            vals = vals[np.isfinite(vals)]
            return float(vals.mean()) if len(vals) else math.nan
        return on

    full = np.arange(len(v))
    ons = {g: mean_of(path == g) for g in groups}
    n_nan = int(np.count_nonzero(~np.isfinite(v)))
    extra = f"; {n_nan} slice(s) without an SSIM (smaller than 7 px or not finite) left out" if n_nan else ""
    out = [(mid, "normal", Estimate(mean_of(normal)(full), mean_of(normal), note + extra))]
    out += [(mid, g, Estimate(f(full), f, note + extra)) for g, f in ons.items()]
    avg = _mean_over_groups(ons)
    out.append((mid, "average", Estimate(avg(full), avg, f"mean over {len(ons)} abnormal groups (RA prints none)")))
    return out


def _normal_test(scored: ScoreSet, sets: dict[str, Sequence[str]] | None) -> np.ndarray:
    """Which test slices are the normal ones: the subjects of ``sets['normal']`` when the table names them
    (RA's normal test list), else the slices labelled healthy."""
    if sets and "normal" in sets:
        return scored.manifest["subject"].astype(str).isin(set(map(str, sets["normal"]))).to_numpy().copy()
    return (scored.labels == 0).cpu().numpy()


def run_localisation(method: Scorer | Method, test, val, metric_ids: Sequence[str], options: dict[str, Any], *,
                     progress: bool = True, n_boot: int = 200) -> Evaluation:
    """Options (all in the run key): ``global_sets`` {"normal": subjects, group: subjects, …} defines global
    detection by subject lists (RA's CSVs) instead of slice labels; ``box_list`` the evaluated boxes
    (:func:`manifest_boxes`); ``box_group`` the column group of the all-box aggregates (RA: "local pathology");
    ``box_by_pathology`` (default True) adds the box aggregates of each pathology group (RA Fig. 4a);
    ``ra_threshold_on`` = ``test_normal`` runs the ``|ra_code`` grid search on the normal test slices, as RA's
    code does (default ``val``: the healthy validation slices)."""
    method = as_scorer(method, progress=progress)
    scored = collect(method, test, progress=progress)
    healthy_val = _score_val(method, val, progress)
    sets = options.get("global_sets")
    info: dict[str, Any] = {}
    est: list[tuple[str, str, Estimate]] = []
    box_ids = [m for m in metric_ids if m in BOX_METRICS]
    if box_ids:
        brain = (scored.brain.cpu() > 0.5).float()
        for rule, variant in dict.fromkeys(_box_rule(m) for m in box_ids):
            wanted = [m for m in box_ids if _box_rule(m) == (rule, variant)]
            boxes, union, list_note = manifest_boxes(scored.manifest, tuple(scored.maps.shape[-2:]),
                                                     soft=variant == "ra_code", box_list=options.get("box_list"))
            # healthy tissue: brain minus every annotated box (RA binarises its soft negative mask at 0.5)
            healthy = brain * torch.from_numpy((union < 0.5) if variant == "ra_code" else (union == 0)).float()
            t: float | None = None  # stays None when this rule cannot be evaluated; note says why
            if not boxes:
                note = "no annotated box in the test set"
            elif rule == "paper_fixed":
                # RA's hard-coded box threshold (PAPER_FIXED, protocols/ra.md §6) unless the table overrides it
                t = T.fit_threshold(rule, fixed=options.get("paper_threshold", "ra:box_threshold"))
                note = f"fixed threshold {t:g} (RA code; tuned on SqueezeNet-LPIPS maps, not on this method's)"
            elif variant == "ra_code":
                # RA's own search (DownstreamEvaluator.thresholding): grid i·0.001, float32 '>' per pixel, mean
                # per-slice FPR over all pixels, smallest grid value with mean ≤ 5 %, on its normal test slices
                # (ra_threshold_on="test_normal"); by default the suite's healthy validation slices
                on_test = options.get("ra_threshold_on", "val") == "test_normal"
                normal = _normal_test(scored, sets)
                search = scored.maps[torch.from_numpy(normal).to(scored.maps.device)] if on_test else (
                    None if healthy_val is None else healthy_val.maps)
                where = "normal test" if on_test else "healthy validation"
                if search is None or not len(search):
                    note = f"no {where} slices to run RA's threshold search on"
                else:
                    t = T.ra_code_threshold(search, FPR, official=True)
                    grid, curve = T.ra_code_grid_fpr(search)
                    info["ra_threshold_search"] = {"on": where, "n_slices": int(len(search)), "threshold": t,
                                                   "grid_step": float(grid[1] - grid[0]),
                                                   "mean_fpr_percent": [round(float(v), 6) for v in curve]}
                    note = (f"threshold {t:.4g}: RA code grid search (0, 0.001, …, 0.999; mean per-slice FPR over "
                            f"all pixels ≤ {FPR:.0%}) on the {len(search)} {where} slices; a box counts as "
                            f"detected when > 10 % of its pixels fire")
            elif healthy_val is None:
                note = "no healthy validation slices to calibrate the threshold"
            else:
                t = T.fit_threshold(rule, healthy=healthy_val.maps)  # the id's 5 %: FPR, exact order statistic
                note = (f"threshold {t:.4g}: ≤ {FPR:.0%} of healthy validation pixels above; a box counts as "
                        f"detected when > 10 % of its pixels fire")
            note += f"; {list_note}" if list_note else ""
            if t is None:
                est += [(m, "", Estimate(math.nan, None, note)) for m in wanted]
                continue
            res = localise(scored.maps, boxes, healthy, t, variant=variant)
            note += ("; RA code computation (float32 map ≥ float32(t), soft boxes, floored FP)"
                     if variant == "ra_code" else "")
            est += [(m, g or options.get("box_group", ""), e)
                    for m, g, e in _box_estimates(res["per_box"], len(scored), note, rule, variant,
                                                  options.get("box_by_pathology", True)) if m in wanted]
    if any(m in GLOBAL_METRICS for m in metric_ids):
        est += _global_estimates(scored, options.get("global_groups"), metric_ids, sets=sets)
    subjects = scored.manifest["subject"].astype(str).to_numpy()
    out = estimate_rows(subjects, est, n=len(scored), n_boot=n_boot)
    return Evaluation(out.rows, out.subject_rows, scored.wall_s, len(scored), info)


# A version is part of every run key: bump it when a computation changes, so finished runs made by the old
# code are never reused as if they were new. standard v3: calibrated healthy-brain thresholds predict inside
# the brain, per-image calibrated Dice over lesion slices, image ACC/F1 at an FPR threshold use '>'.
# localisation v2: box ids name their computation (suite / ra_code, fpr@5% / paper_fixed).
# synthetic v2: ``group_names`` option (kind → column group).
# localisation v4: ``|ra_code`` box ids use soft boxes rebuilt from the annotation's source-frame rectangle and a
# healthy mask binarised at 0.5 after subtracting the soft union; table options name the evaluated boxes, the
# global-detection subject lists and where RA's grid search runs; the search's mean-FPR curve is recorded.
# localisation v3: the ``|ra_code`` box ids compare the map in float32 against float32(t) (float32 sums, float32
# FP division) as RA's code does, ``fpr@5%_healthy_image|ra_code`` takes its threshold from RA's 1000-value grid
# search instead of the exact order statistic, and ``precision|per_box|fpr@5%_healthy_image|ra_code`` is new.
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("standard", 3, run_standard, tuple(METRIC_BUILDERS),
             "score the test and healthy validation slices; image- and pixel-level metrics by id"),
    Protocol("synthetic", 3, run_synthetic, SYNTHETIC_METRICS,
             "seeded synthetic anomalies on the healthy test slices (RA / PHANES Table 1)"),
    Protocol("localisation", 4, run_localisation, LOCALISATION_METRICS,
             "RA box localisation at the ≤ 5 % healthy-FPR threshold and global detection by map mean"),
]}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def validate(protocol: Protocol, metric_ids: Sequence[str]) -> None:
    """A table asking for an id its protocol cannot fill fails when it is defined, not after training."""
    check_metric_ids(metric_ids, protocol.metric_ids)
