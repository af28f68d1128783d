"""protocols.evaluate.standard_rows: values and their bootstrap standard errors over subjects."""

import math

import numpy as np
import pandas as pd
import torch

from protocols.evaluate import ScoreSet, standard_rows


def _score_set(n_subjects=24, per_subject=1, separation=1.0, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    n = n_subjects
    labels = (torch.arange(n) % 2).long()
    scores = torch.randn(n, generator=g) + separation * labels
    lesion = torch.zeros(n, 1, size, size)
    lesion[labels == 1, :, 4:8, 4:8] = 1.0
    maps = torch.rand(n, 1, size, size, generator=g) + 0.5 * separation * lesion  # overlapping classes
    rep = lambda t: t.repeat_interleave(per_subject, 0)  # noqa: E731 -- copies of a slice share a subject
    subjects = np.repeat([f"s{i}" for i in range(n)], per_subject)
    return ScoreSet(rep(maps), rep(scores), rep(labels), rep(lesion), torch.ones_like(rep(lesion)), rep(maps), None,
                    pd.DataFrame({"subject": subjects}), 0.0)


def _by_id(rows):
    return {r["metric_id"]: r for r in rows}


def test_every_row_has_a_finite_positive_standard_error():
    test, val = _score_set(), _score_set(seed=1)
    val = ScoreSet(val.maps * (1 - val.lesion), val.scores, val.labels * 0, val.lesion * 0, val.brain, val.images,
                   None, val.manifest, 0.0)
    rows = _by_id(standard_rows(test, val))
    assert len(rows) == 6
    for mid, r in rows.items():
        assert math.isfinite(r["value"]) and math.isfinite(r["se"]) and 0 < r["se"] < 0.5, (mid, r)


def test_image_auroc_se_matches_hanley_mcneil():
    test = _score_set(n_subjects=200, separation=1.0)
    r = _by_id(standard_rows(test, None, n_boot=400))["auroc|image"]
    a, n1, n0 = r["value"], 100, 100
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hanley = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    assert 0.75 * hanley < r["se"] < 1.33 * hanley


def test_slices_of_one_subject_are_resampled_together():
    """Three copies of each slice under one subject carry no more evidence than one slice."""
    one = _by_id(standard_rows(_score_set(per_subject=1), None, n_boot=100))
    three = _by_id(standard_rows(_score_set(per_subject=3), None, n_boot=100))
    for mid in ("auroc|image", "auroc_pixel|pooled", "dice|oracle_test|max1000"):
        assert three[mid]["value"] == one[mid]["value"]
        assert abs(three[mid]["se"] - one[mid]["se"]) < 1e-9 + 0.02 * one[mid]["se"], mid


def test_perfect_separation_has_zero_se_and_n_boot_zero_skips():
    rows = _by_id(standard_rows(_score_set(separation=100.0), None))
    assert rows["auroc|image"]["value"] == 1.0 and rows["auroc|image"]["se"] == 0.0
    assert all(math.isnan(r["se"]) for r in standard_rows(_score_set(), None, n_boot=0))


def test_binned_counts_reproduce_pooled_auroc_ap_on_any_subset():
    """The bootstrap's shortcut: summed per-image bin counts ≈ the exact pooled metrics of that subset."""
    from protocols import metrics as M

    s = _score_set(n_subjects=40, size=32)
    pos, neg = M.per_image_binned_counts(s.maps, s.lesion)
    for idx in (torch.arange(40), torch.tensor([0, 1, 1, 5, 7, 7, 7, 12, 30])):
        exact = M.pooled_pixel_auroc_ap(s.maps[idx], s.lesion[idx])
        binned = M.auroc_ap_from_counts(pos[idx].sum(0), neg[idx].sum(0))
        assert abs(binned[0] - exact[0]) < 2e-3 and abs(binned[1] - exact[1]) < 5e-3, (exact, binned)
    assert all(math.isnan(v) for v in M.auroc_ap_from_counts(neg[0] * 0, neg[0]))
