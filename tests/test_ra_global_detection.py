"""RA global detection: FPR at 95 % / 99 % TPR as ``DownstreamEvaluator.global_detection`` prints it.

RA (ci-ber/RA @9b7a2550, projects/23_ra_midl/DownstreamEvaluator.py): score = ``np.mean`` of the float32
residual map, ``fpr, tpr, ths = roc_curve(labels, predictions)`` then the first index with ``tpr >= 0.95``
(``0.99``), its fpr and threshold; no interpolation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from protocols import metrics as M
from protocols.suites import GLOBAL_FPR_METRICS, LOCALISATION_METRICS, PROTOCOLS, run_localisation
from tests.test_protocols import _Fake, phantom  # noqa: F401  (phantom is a fixture)

IDS = ("fpr_at_tpr95|image|map_mean|ra_code", "fpr_at_tpr99|image|map_mean|ra_code")


def _reference(scores, labels, target):
    """Independent reference: what RA's code does, written with sklearn directly."""
    fpr, tpr, ths = roc_curve(np.asarray(labels), np.asarray(scores))
    k = np.squeeze(np.argwhere(tpr >= target)[0])
    return float(fpr[k]), float(ths[k])


def _case(normal, abnormal, dtype=np.float64):
    s = np.asarray(list(normal) + list(abnormal), dtype=dtype)
    y = np.r_[np.zeros(len(normal), int), np.ones(len(abnormal), int)]
    return s, y


def test_ids_registered_and_requestable():
    for mid in IDS:
        spec = M.METRICS[mid]
        assert spec.csv_metric == mid.split("|")[0] and not spec.higher_is_better and not spec.oracle
        assert spec.function == "fpr_at_tpr_ra_code"
        assert mid in LOCALISATION_METRICS and mid in PROTOCOLS["localisation"].metric_ids
    assert set(GLOBAL_FPR_METRICS) == set(IDS)


def test_hand_computed_four_by_four():
    # descending: .7P .6P .5P .4N .3N .25P .2N .1N -> kept ROC points (fpr, tpr):
    # (0,0) (0,.25)@.7 (0,.75)@.5 (.5,.75)@.3 (.5,1)@.25 (1,1)@.1 -- first tpr >= .95 is (.5, 1) at .25
    s, y = _case([0.1, 0.2, 0.3, 0.4], [0.25, 0.5, 0.6, 0.7])
    for t in (0.95, 0.99):
        r = M.fpr_at_tpr_ra_code(s, y, t)
        assert r["fpr"] == 0.5 and r["threshold"] == 0.25 and (r["n_pos"], r["n_neg"]) == (4, 4)
    perfect = M.fpr_at_tpr_ra_code(*_case([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]), 0.95)
    assert perfect["fpr"] == 0.0 and perfect["threshold"] == 0.5
    inverted = M.fpr_at_tpr_ra_code(*_case([0.5, 0.6, 0.7, 0.8], [0.1, 0.2, 0.3, 0.4]), 0.95)
    assert inverted["fpr"] == 1.0 and inverted["threshold"] == 0.1


def test_tie_between_classes_takes_the_whole_tied_step_no_interpolation():
    # 10 normal, 10 abnormal: 9 abnormal at 0.9..0.98, one abnormal and two normals tied at 0.5, 8 normals low.
    # ROC: (0,0) (0,.9) (.2,1) (1,1). TPR .95 lies inside the diagonal step (.0,.9)->(.2,1): interpolation would
    # give .1, RA's first point with tpr >= .95 gives .2.
    abnormal = [0.9 + 0.01 * k for k in range(9)] + [0.5]
    normal = [0.5, 0.5] + [0.1 + 0.01 * k for k in range(8)]
    s, y = _case(normal, abnormal)
    fpr, tpr, _ = roc_curve(y, s)
    assert np.interp(0.95, tpr, fpr) == pytest.approx(0.1)  # what an interpolating implementation reports
    for t in (0.95, 0.99):
        r = M.fpr_at_tpr_ra_code(s, y, t)
        assert r["fpr"] == pytest.approx(0.2, abs=0) and r["threshold"] == 0.5
        assert (r["fpr"], r["threshold"]) == _reference(s, y, t)


def test_constant_scores_give_fpr_one():
    s, y = _case([0.3] * 4, [0.3] * 4)
    r = M.fpr_at_tpr_ra_code(s, y, 0.95)
    assert r["fpr"] == 1.0 and r["threshold"] == 0.3


def test_sklearn_dropped_collinear_point_moves_the_answer():
    # 20 + 20: 18 abnormal high, then two tied pairs (1 abnormal + 1 normal at 0.5, again at 0.4), 18 normal low.
    # Full curve: (0,.9) (.05,.95) (.1,1): the first point with tpr >= .95 would be (.05, .95), but
    # roc_curve(drop_intermediate=True) drops it (collinear), so RA's code prints fpr .1 at threshold .4.
    abnormal = [0.9 + 0.001 * k for k in range(18)] + [0.5, 0.4]
    normal = [0.5, 0.4] + [0.1 + 0.001 * k for k in range(18)]
    s, y = _case(normal, abnormal)
    r = M.fpr_at_tpr_ra_code(s, y, 0.95)
    assert r["fpr"] == 0.1 and r["threshold"] == 0.4
    assert (r["fpr"], r["threshold"]) == _reference(s, y, 0.95)
    full_fpr, full_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert full_fpr[np.argmax(full_tpr >= 0.95)] == 0.05  # the kept-everything curve would say .05


def test_exact_tpr_boundary_counts_as_reached():
    # 19/20 == 0.95 in float64: the point with 19 of 20 positives above qualifies for TPR 95 %
    abnormal = [0.9 + 0.001 * k for k in range(19)] + [0.05]
    normal = [0.5] + [0.1 + 0.001 * k for k in range(19)]
    s, y = _case(normal, abnormal)
    r95, r99 = M.fpr_at_tpr_ra_code(s, y, 0.95), M.fpr_at_tpr_ra_code(s, y, 0.99)
    assert r95["fpr"] == 0.0 and r95["threshold"] == pytest.approx(0.9)
    assert r99["fpr"] == 1.0 and r99["threshold"] == 0.05
    assert (r95["fpr"], r95["threshold"]) == _reference(s, y, 0.95)


def test_float32_ties_are_ties():
    # 0.3 and 0.3 + 1e-9 differ in float64 but are one float32 value: RA's float32 map means tie there
    normal = [0.1, 0.2, 0.3, 0.05]
    abnormal = [0.3 + 1e-9, 0.6, 0.7, 0.8]
    s64, y = _case(normal, abnormal)
    s32, _ = _case(normal, abnormal, np.float32)
    assert M.fpr_at_tpr_ra_code(s64, y, 0.95)["fpr"] == 0.0
    r32 = M.fpr_at_tpr_ra_code(s32, y, 0.95)
    assert r32["fpr"] == 0.25 and r32["threshold"] == float(np.float32(0.3))
    assert (r32["fpr"], r32["threshold"]) == _reference(s32, y, 0.95)


@pytest.mark.parametrize("seed", range(40))
def test_matches_sklearn_reference_on_random_tied_scores(seed):
    rng = np.random.default_rng(seed)
    n_neg, n_pos = rng.integers(1, 40, 2)
    y = rng.permutation(np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)])
    s = (rng.integers(0, 12, y.size) + 3 * y * rng.random()).astype(np.float32) / 7  # many ties
    for t in (0.95, 0.99, 0.5):
        r = M.fpr_at_tpr_ra_code(s, y, t)
        assert (r["fpr"], r["threshold"]) == _reference(s, y, t)


def test_undefined_without_both_classes_is_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="both classes"):
        r = M.fpr_at_tpr_ra_code(np.array([0.1, 0.2]), np.array([1, 1]), 0.95)
    assert math.isnan(r["fpr"]) and math.isnan(r["threshold"])
    with pytest.warns(RuntimeWarning, match="both classes"):
        assert math.isnan(M.fpr_at_tpr_ra_code(np.array([0.1, 0.2]), np.array([0, 0]), 0.99)["fpr"])
    with pytest.raises(ValueError):
        M.fpr_at_tpr_ra_code(np.array([0.1, 0.2]), np.array([0, 1]), 0.0)
    with pytest.raises(ValueError):
        M.fpr_at_tpr_ra_code(np.array([0.1, np.nan]), np.array([0, 1]), 0.95)


def _mean_maps(method, test):
    from protocols.suites import collect

    scored = collect(method, test, progress=False)
    m = scored.maps.cpu().float().numpy()
    return scored, np.array([np.mean(m[k, 0]) for k in range(len(m))], dtype=np.float32)


@pytest.mark.parametrize("mode", ["identity", "oracle"])
def test_run_localisation_fills_the_new_ids_per_group_and_average(phantom, mode):  # noqa: F811
    test, val = phantom.split("test"), phantom.split("val", label=0)
    ids = ("auroc|image|map_mean",) + IDS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ev = run_localisation(_Fake(mode), test, val, ids, {}, progress=False, n_boot=20)
    rows = pd.DataFrame(ev.rows)
    assert set(rows.metric_id) == set(ids)
    scored, s32 = _mean_maps(_Fake(mode), test)
    y = scored.labels.cpu().numpy().astype(int)
    path = scored.manifest["pathology"].astype(str).to_numpy()
    groups = sorted(set(path[y == 1]))
    assert groups and (y == 0).any()
    for mid, target in zip(IDS, (0.95, 0.99)):
        got = rows[rows.metric_id == mid].set_index("column_group")
        assert set(got.index) == set(groups) | {"average"}
        per = []
        for g in groups:
            keep = (y == 0) | (path == g)
            want, th = _reference(s32[keep], y[keep], target)
            assert got.loc[g, "value"] == want
            assert f"{th:.6g}" in got.loc[g, "note"]
            per.append(want)
        assert got.loc["average", "value"] == pytest.approx(np.mean(per), abs=1e-15)
        if mode == "oracle":
            assert (got["value"] == 0.0).all()  # the lesion mask as map separates perfectly
        fin = got[np.isfinite(got["ci_low"])]
        assert ((fin["ci_low"] <= fin["value"] + 1e-12) & (fin["value"] <= fin["ci_high"] + 1e-12)).all()
    auroc = rows[rows.metric_id == "auroc|image|map_mean"].set_index("column_group")
    assert set(auroc.index) == set(groups) | {"average"}


def test_run_localisation_asks_only_for_what_it_gets(phantom):  # noqa: F811
    test, val = phantom.split("test"), phantom.split("val", label=0)
    ev = run_localisation(_Fake("oracle"), test, val, IDS[:1], {}, progress=False, n_boot=0)
    assert {r["metric_id"] for r in ev.rows} == {IDS[0]}


def test_without_normal_slices_the_new_ids_are_nan_with_a_reason(phantom):  # noqa: F811
    test = phantom.split("test", label=1)
    ev = run_localisation(_Fake("oracle"), test, None, IDS, {}, progress=False, n_boot=0)
    assert {r["metric_id"] for r in ev.rows} == set(IDS)
    for r in ev.rows:
        assert r["column_group"] == "average" and math.isnan(r["value"]) and "normal and abnormal" in r["note"]
