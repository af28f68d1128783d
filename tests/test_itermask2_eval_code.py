"""IterMask2's evaluation as its code computes it (ZiyunLiang/IterMask2 @1eca1d6, ``test.py`` ``main`` with
``best_threshold=False`` and ``utils/metrics.py``), checked three ways:

- a literal numpy transcription of the code's steps (loops, ``+=`` order, int casts, ZeroDivisionError handlers
  under numpy 1.x) on random soft-brain inputs with lesion-free slices, compared for *exact* equality;
- small cases computed by hand (brain rim < 1, an empty lesion mask, the first-NaN argmax, θ = k/10000);
- the metric ids of the ``standard`` protocol against the function.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from protocols import metrics as M
from protocols.evaluate import MetricContext, ScoreSet, metric_rows

IDS = ("dice|per_image|oracle_test|itermask2", "sensitivity|per_image|oracle_test|itermask2",
       "precision|per_image|oracle_test|itermask2", "dice_small|per_image|oracle_test|itermask2",
       "dice_medium|per_image|oracle_test|itermask2", "dice_large|per_image|oracle_test|itermask2")


# ----------------------------------------------------------------------------------------------------
# a literal transcription of the code's arithmetic (numpy, float64, Python loops)
# ----------------------------------------------------------------------------------------------------
def _code_dice(seg, pred):
    p = (seg > 0.5).astype(int)  # the code's dice_score(pred=seg, targs=prediction)
    t = pred.astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2.0 * (p * t).sum() / (p + t).sum()


def _code_ratio(result, reference, other):
    r, ref = np.atleast_1d(result.astype(bool)), np.atleast_1d(reference.astype(bool))
    tp = int(np.count_nonzero(r & ref))
    den = tp + int(np.count_nonzero(other(r, ref)))
    try:
        return tp / float(den)
    except ZeroDivisionError:  # numpy 1.x: count_nonzero gives a Python int
        return 0.0


def _transcribed(x, rec, brain, seg):
    err = (x.astype(np.float64) - rec.astype(np.float64)) ** 2
    brain = brain.astype(np.float64)
    seg = seg.astype(np.float64)
    error_map = (err - err.min()) / (err.max() - err.min()) * brain
    n = x.shape[0]
    dice = np.zeros(100)
    for thres in range(100):
        mask = np.where(thres / 10000 < error_map, 1.0, 0.0) * brain
        for i in range(n):
            dice[thres] += _code_dice(seg[i, 0], mask[i, 0])
    dice = dice / n
    k = int(np.argmax(dice))
    mask = np.where(k / 10000 < error_map, 1.0, 0.0) * brain
    sens = prec = 0.0
    bins = {"small": [0, 0.0], "medium": [0, 0.0], "large": [0, 0.0]}
    size = seg.sum(axis=(1, 2, 3))
    for i in range(n):
        sens += _code_ratio(mask[i, 0], seg[i, 0], lambda r, ref: ~r & ref)
        prec += _code_ratio(mask[i, 0], seg[i, 0], lambda r, ref: r & ~ref)
        b = "small" if size[i] < 200 else "medium" if size[i] < 800 else "large"
        bins[b][0] += 1
        bins[b][1] += _code_dice(seg[i, 0], mask[i, 0])
    out = {"dice": dice[k], "theta": k / 10000, "sensitivity": sens / n, "precision": prec / n}
    for b, (cnt, tot) in bins.items():
        out[f"dice_{b}"] = tot / cnt if cnt else math.nan  # the code raises ZeroDivisionError here
    return out


def _soft_brain(n, size):
    """A disc whose rim is fractional, like a binary mask area-resized from 240 to 128 px."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    return np.repeat(np.clip(size * 0.42 - r, 0.0, 1.0)[None, None], n, 0)


def _case(seed, n=7, size=40, empty=(2,), big=True):
    rng = np.random.default_rng(seed)
    brain = _soft_brain(n, size).astype(np.float32)
    seg = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        if i in empty:
            continue
        side = int(rng.integers(4, 34 if big else 12))
        y0, x0 = rng.integers(3, size - side - 2, size=2)
        seg[i, 0, y0:y0 + side, x0:x0 + side] = 1.0
    x = (rng.random(seg.shape) * brain + 0.8 * seg).astype(np.float32)
    rec = (x * (1 - seg) + rng.normal(0, 0.05, seg.shape) * brain).astype(np.float32)
    return x, rec, brain, seg


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_function_equals_a_transcription_of_the_code(seed):
    x, rec, brain, seg = _case(seed, empty=(2,) if seed % 2 else ())
    want = _transcribed(x, rec, brain, seg)
    err = (x.astype(np.float64) - rec.astype(np.float64)) ** 2
    got = M.itermask2_code_metrics(err, seg, brain)
    for k, v in want.items():
        if math.isnan(v):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == v, (k, got[k], v)  # exact: same float64 arithmetic in the same order


def test_hand_computed_rim_empty_mask_and_first_nan():
    # 2 images of 1×4 pixels; brain 1 except a rim pixel at 0.6; image 1 has no lesion
    brain = np.array([[[[1.0, 1.0, 0.6, 0.0]]], [[[1.0, 1.0, 0.6, 0.0]]]])
    seg = np.array([[[[1, 0, 1, 0]]], [[[0, 0, 0, 0]]]], np.float64)
    err = np.array([[[[1.0, 0.0, 1.0, 0.0]]], [[[0.0, 0.0, 0.0, 0.0]]]])
    r = M.itermask2_code_metrics(err, seg, brain)
    # normalised map × B: image 0 = [1, 0, 0.6, 0]; image 1 all 0. At θ = 0: image 0 predicts pixels 0 and 2, but
    # the int cast drops the rim pixel (0.6): Dice 2·1/(2 + 1) = 2/3; image 1 predicts nothing and has no lesion:
    # 0/0 = NaN, so every θ's mean is NaN and numpy's argmax takes the first: θ = 0, Dice NaN.
    assert r["theta"] == 0.0 and r["theta_index"] == 0 and math.isnan(r["dice"])
    assert float(r["dice_per_image"][0]) == pytest.approx(2 / 3)
    # sensitivity counts the rim (prediction != 0): image 0 = 2/2; image 1 (no lesion) = 0.0, kept in the mean
    assert r["sensitivity"] == 0.5 and r["precision"] == 0.5
    # both in the 'small' bin (area 2 and 0 < 200); NaN Dice of image 1 makes the bin NaN; the others are empty
    assert r["n_small"] == 2 and math.isnan(r["dice_small"]) and r["n_medium"] == r["n_large"] == 0
    assert math.isnan(r["dice_large"])


def test_threshold_grid_is_k_over_10000_exactly():
    g = M.threshold_grid("itermask2", 1.0)
    assert [float(t) for t in g] == [k / 10000 for k in range(100)]
    assert float(g[3]) != 3 * 1e-4  # 0.00030000000000000003: a map value of exactly 0.0003 would flip


def test_dice_casts_the_prediction_to_int():
    pred = torch.tensor([[[[1.0, 0.999, 0.5, 1.0]]]])
    gt = torch.tensor([[[[1, 1, 1, 0]]]])
    # only the 1.0 pixels count: TP 1, |P| 2, |G| 3
    assert float(M.itermask2_dice_code(pred, gt)[0]) == pytest.approx(2 * 1 / (2 + 3))


def _score_set(x, rec, brain, seg, maps=None):
    n = x.shape[0]
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    lesion = t(seg)
    labels = (lesion.flatten(1).amax(1) > 0).long()
    m = t(maps) if maps is not None else t((x - rec) ** 2)
    manifest = pd.DataFrame({"subject": [f"s{i}" for i in range(n)], "slice": np.zeros(n, int),
                             "label": labels.numpy(), "pathology": "tumour"})
    return ScoreSet(m, m.flatten(1).mean(1), labels, lesion, t(brain), t(x), t(rec), manifest, 0.0)


def test_metric_ids_are_the_function_on_x_minus_r_squared():
    x, rec, brain, seg = _case(5, empty=())
    other_maps = np.abs(x - rec) * 7.0  # the ids ignore the method's own map when it has a reconstruction
    rows = metric_rows(MetricContext(_score_set(x, rec, brain, seg, other_maps), None), IDS, n_boot=0).rows
    by = {r["metric_id"]: r["value"] for r in rows}
    err = (x.astype(np.float64) - rec.astype(np.float64)) ** 2
    ref = M.itermask2_code_metrics(err, seg, brain)
    assert by[IDS[0]] == ref["dice"] and by[IDS[1]] == ref["sensitivity"] and by[IDS[2]] == ref["precision"]
    for b in ("small", "medium", "large"):
        v = by[f"dice_{b}|per_image|oracle_test|itermask2"]
        assert (math.isnan(v) and math.isnan(ref[f"dice_{b}"])) or v == pytest.approx(ref[f"dice_{b}"], abs=1e-15)


def test_grey_rows_take_each_images_best_threshold():
    x, rec, brain, seg = _case(6, empty=())
    white = {r["metric_id"]: r["value"] for r in metric_rows(
        MetricContext(_score_set(x, rec, brain, seg), None), IDS[:3], n_boot=0).rows}
    grey_rows = metric_rows(MetricContext(_score_set(x, rec, brain, seg), None, per_image_oracle=True), IDS[:3],
                            n_boot=0).rows
    grey = {r["metric_id"]: r["value"] for r in grey_rows}
    assert grey[IDS[0]] >= white[IDS[0]]  # a per-image best can only match or beat one global θ
    err = (x.astype(np.float64) - rec.astype(np.float64)) ** 2
    d = M.mean_dice_at(M.itermask2_normalise(err, brain), seg, brain)
    assert grey[IDS[0]] == pytest.approx(float(torch.nan_to_num(d, nan=-1).amax(1).mean()), abs=1e-12)
    assert "own best" in grey_rows[0]["note"]


def test_grey_rows_use_the_methods_own_mask_search_when_given():
    x, rec, brain, seg = _case(7, empty=())
    s = _score_set(x, rec, brain, seg)
    s.extras["oracle_dice"] = torch.full((len(s),), 0.5)
    s.extras["oracle_mask"] = torch.as_tensor(seg)  # a perfect mask: sensitivity and precision 1
    by = {r["metric_id"]: r["value"] for r in metric_rows(MetricContext(s, None, per_image_oracle=True), IDS[:3],
                                                          n_boot=0).rows}
    assert by[IDS[0]] == 0.5 and by[IDS[1]] == 1.0 and by[IDS[2]] == 1.0
