"""protocols.metrics / protocols.stats against independent reference implementations.

Each test recomputes a metric with the library its description names (scikit-learn, scikit-image, scipy,
lpips) or with a direct numpy transcription of its documented rule, on random data with ties and on the
degenerate inputs where the module promises NaN + warning.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as sps
from skimage.metrics import structural_similarity
from sklearn.metrics import (accuracy_score, auc, average_precision_score, f1_score, precision_recall_curve,
                             precision_score, recall_score, roc_auc_score)

from protocols import metrics as M
from protocols import stats as S


def _sk_auprc_trapezoid(y, s):
    p, r, _ = precision_recall_curve(y, s)
    return auc(r, p)


def _maps(seed, shape=(6, 1, 16, 16), levels=None, p=0.1):
    """Random maps (optionally quantised to ``levels`` values, i.e. many ties) and lesion masks."""
    rng = np.random.default_rng(seed)
    m = rng.random(shape)
    if levels:
        m = np.round(m * levels) / levels
    g = rng.random(shape) < p
    m = m + 0.15 * g  # lesions score a bit higher, so the curves are not pure chance
    if levels:
        m = np.round(m * levels) / levels
    return m, g


# ----------------------------------------------------------------------------------------------------
# trapezoid AUPRC
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [None, 1, 3, 20])
@pytest.mark.parametrize("seed", range(4))
def test_auprc_trapezoid_equals_sklearn_auc_of_pr_curve(levels, seed):
    m, g = _maps(seed, levels=levels, p=0.05 + 0.1 * seed)
    got = M.pooled_pixel_auprc_trapezoid(m, g)
    assert got == pytest.approx(_sk_auprc_trapezoid(g.ravel(), m.ravel()), abs=1e-12)
    brain = np.zeros(m.shape); brain[..., 3:13, 2:14] = 0.8  # soft brain, binarised at > 0.5
    v = (brain > 0.5).ravel()
    got = M.pooled_pixel_auprc_trapezoid(torch.tensor(m, dtype=torch.float32), torch.tensor(g), valid=brain)
    ref = _sk_auprc_trapezoid(g.ravel()[v], m.astype(np.float32).ravel()[v])
    assert got == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("s, y", [
    ([0.9, 0.5], [0, 1]),                     # a negative above every positive: top segment from precision 1 to 0
    ([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0]),     # tie between classes at the top
    ([3, 3, 2, 2, 1, 1], [1, 1, 0, 1, 0, 0]),
    ([1.0, 2.0], [1, 0]),
])
def test_auprc_trapezoid_small_cases(s, y):
    assert M.pooled_pixel_auprc_trapezoid(s, y) == pytest.approx(_sk_auprc_trapezoid(y, s), abs=1e-12)


def test_auprc_trapezoid_is_not_average_precision():
    """The id exists because the two integrals differ, in either direction: ties between classes are
    interpolated upwards; a negative above every positive starts the first segment at precision 0."""
    m, g = _maps(0, shape=(2, 1, 8, 8), levels=4)
    up = M.pooled_pixel_auprc_trapezoid(m, g)
    assert up > average_precision_score(g.ravel(), m.ravel()) + 0.01
    s, y = [0.9, 0.5, 0.4, 0.1], [0, 1, 1, 0]
    down = M.pooled_pixel_auprc_trapezoid(s, y)
    assert down == pytest.approx(_sk_auprc_trapezoid(y, s)) and down < average_precision_score(y, s) - 0.01


def test_auprc_trapezoid_one_class():
    s = np.linspace(0, 1, 10)
    with pytest.warns(RuntimeWarning, match="positive"):
        assert math.isnan(M.pooled_pixel_auprc_trapezoid(s, np.zeros(10)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-lesion input is defined (precision 1 everywhere): no warning
        assert M.pooled_pixel_auprc_trapezoid(s, np.ones(10)) == _sk_auprc_trapezoid(np.ones(10), s) == 1.0


def test_auprc_trapezoid_torch_path_equals_numpy_path():
    m, g = _maps(7, levels=30, p=0.1)
    s, y = m.ravel(), g.ravel()
    a = M._auprc_trapezoid_from(M._rank_torch(torch.tensor(s), torch.tensor(y)))
    assert a == pytest.approx(M._auprc_trapezoid_from(M._rank_numpy(s, y)), abs=1e-15)


def test_auprc_trapezoid_registered():
    spec = M.METRICS["auprc|pooled|trapezoid"]
    assert spec.function == "pooled_pixel_auprc_trapezoid" and spec.csv_metric == "auprc"
    assert "average_precision_score" in spec.description and not spec.oracle and spec.higher_is_better
    assert callable(getattr(M, spec.function)) and spec.function in M.__all__


# ----------------------------------------------------------------------------------------------------
# ACC / F1
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_pixel_acc_f1_equals_sklearn(seed):
    m, g = _maps(seed, levels=10, p=0.2)
    for t in (0.3, 0.5, 0.7):  # quantised maps: values equal to t exist, so >= vs > matters
        r = M.pixel_acc_f1(m, g, t)
        pred = m.ravel() >= t
        assert r["acc"] == pytest.approx(accuracy_score(g.ravel(), pred), abs=1e-12)
        assert r["f1"] == pytest.approx(f1_score(g.ravel(), pred), abs=1e-12)
        assert r["n"] == m.size
    brain = np.zeros(m.shape); brain[..., 4:12, 4:12] = 1
    v = brain.ravel() > 0.5
    r = M.pixel_acc_f1(m, g, 0.5, valid=brain)
    assert r["acc"] == pytest.approx(accuracy_score(g.ravel()[v], m.ravel()[v] >= 0.5), abs=1e-12)
    assert r["f1"] == pytest.approx(f1_score(g.ravel()[v], m.ravel()[v] >= 0.5), abs=1e-12)


def test_pixel_acc_f1_one_class():
    m, _ = _maps(3, levels=10)
    none, full = np.zeros(m.shape, bool), np.ones(m.shape, bool)
    for g in (none, full):  # maps hit both sides of 0.5: F1 defined (0 without lesions)
        r = M.pixel_acc_f1(m, g, 0.5)
        pred = m.ravel() >= 0.5
        assert r["acc"] == pytest.approx(accuracy_score(g.ravel(), pred))
        assert r["f1"] == pytest.approx(f1_score(g.ravel(), pred, zero_division=np.nan))
    with pytest.warns(RuntimeWarning, match="F1"):  # no lesion and nothing predicted: 0/0
        r = M.pixel_acc_f1(m * 0.1, none, 0.5)
    assert r["acc"] == 1.0 and math.isnan(r["f1"])
    assert math.isnan(f1_score(none.ravel(), np.zeros(none.size, bool), zero_division=np.nan))


def test_balanced_pixel_counts_by_hand():
    """ProxyAno's balanced fundus variant on a 2-image case small enough to count by hand."""
    maps = np.zeros((3, 1, 2, 3))
    gt = np.zeros((3, 1, 2, 3), bool)
    maps[0, 0] = [[2.0, 4.0, 0.0], [1.0, 3.0, 4.0]]  # min-max → [[.5, 1, 0], [.25, .75, 1]]
    gt[0, 0] = [[True, True, False], [False, False, False]]  # lesion: .5 (TP, ≥ 0.5), 1 (TP)
    maps[1, 0] = 7.0  # constant map → 0 everywhere: nothing predicted
    gt[1, 0, 0, 0] = True  # 1 lesion pixel (FN) + 1 of 5 normal pixels (TN)
    maps[2, 0] = [[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # no lesion: contributes nothing
    c = M.balanced_pixel_counts(maps, gt, 0.5, seed=0).numpy()
    assert c.shape == (3, 4) and c[2].sum() == 0
    np.testing.assert_array_equal(c[1], [0, 0, 1, 1])
    assert c[0, 0] == 2 and c[0, 2] == 0 and c[0, 1] + c[0, 3] == 2  # both lesion pixels found, 2 normal drawn
    normal0 = np.array([0.0, 0.25, 0.75, 1.0])  # image 0's normal pixels (scaled): two of them are ≥ 0.5
    draws = [M.balanced_pixel_counts(maps, gt, 0.5, seed=s).numpy()[0, 1] for s in range(40)]
    assert set(draws) == {0, 1, 2}  # the draw is random over the normal pixels ...
    assert draws == [M.balanced_pixel_counts(maps, gt, 0.5, seed=s).numpy()[0, 1] for s in range(40)]  # ... seeded
    assert abs(np.mean(draws) - 2 * (normal0 >= 0.5).mean()) < 0.35
    full = np.ones((1, 1, 2, 2), bool)  # fewer normal pixels than lesion ones: every normal pixel (here none)
    np.testing.assert_array_equal(M.balanced_pixel_counts(np.arange(4.0).reshape(1, 1, 2, 2), full).numpy(),
                                  [[2, 0, 2, 0]])


@pytest.mark.parametrize("seed", range(3))
def test_image_acc_f1_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.random(60) * 8) / 8
    y = rng.random(60) < 0.4
    for t in np.unique(s)[::2]:
        pred = s >= t
        r = M.image_acc_f1(s, y, t)
        assert r["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert r["f1"] == pytest.approx(f1_score(y, pred), abs=1e-12)
        assert (r["tp"], r["fp"], r["fn"]) == (int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum()))
        r0 = M.image_acc_f1(s, y, t, positive=0)  # normal as the positive class of F1
        assert r0["acc"] == r["acc"]
        assert r0["f1"] == pytest.approx(f1_score(y, pred, pos_label=0, zero_division=np.nan), abs=1e-12, nan_ok=True)


def test_image_acc_f1_one_class():
    s = np.array([0.1, 0.4, 0.6, 0.9])
    allnorm, allab = np.zeros(4, bool), np.ones(4, bool)
    for y in (allnorm, allab):
        r = M.image_acc_f1(s, y, 0.5)
        assert r["acc"] == accuracy_score(y, s >= 0.5)
        assert r["f1"] == pytest.approx(f1_score(y, s >= 0.5, zero_division=np.nan))
    with pytest.warns(RuntimeWarning, match="F1"):
        r = M.image_acc_f1(s, allnorm, 1.0)  # no abnormal image, none predicted
    assert r["acc"] == 1.0 and math.isnan(r["f1"])


# ----------------------------------------------------------------------------------------------------
# ProxyAno score gap
# ----------------------------------------------------------------------------------------------------
def test_mean_score_gap_rule():
    rng = np.random.default_rng(0)
    s = rng.normal(3.0, 1.0, 40)
    y = rng.random(40) < 0.5
    lo, hi = s[~y].min(), s[~y].max()
    z = (s - lo) / (hi - lo)
    r = M.mean_score_gap(s, y)
    assert r["mean_score_normal"] == pytest.approx(z[~y].mean()) and r["mean_score_abnormal"] == pytest.approx(z[y].mean())
    assert r["score_gap"] == pytest.approx(z[y].mean() - z[~y].mean())
    assert r["ratio"] == pytest.approx(s[y].mean() / s[~y].mean())
    raw = M.mean_score_gap(s, y, norm="raw")
    assert raw["score_gap"] == pytest.approx(s[y].mean() - s[~y].mean()) and raw["ratio"] == r["ratio"]
    with pytest.raises(ValueError, match="norm"):
        M.mean_score_gap(s, y, norm="zscore")


def test_mean_score_gap_undefined_cases():
    s = np.array([1.0, 2.0, 3.0, 4.0])
    for y in (np.zeros(4), np.ones(4)):  # one class: every entry NaN
        with pytest.warns(RuntimeWarning, match="normal and abnormal"):
            r = M.mean_score_gap(s, y)
        assert all(math.isnan(v) for v in r.values())
    y = np.array([0, 0, 1, 1])
    eq = np.array([2.0, 2.0, 3.0, 5.0])  # normal scores equal: min-max has no scale
    with pytest.warns(RuntimeWarning, match="normal scores equal"):
        r = M.mean_score_gap(eq, y)
    assert math.isnan(r["mean_score_normal"]) and math.isnan(r["mean_score_abnormal"]) and math.isnan(r["score_gap"])
    assert r["ratio"] == pytest.approx(4.0 / 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal normal scores are fine without scaling
        raw = M.mean_score_gap(eq, y, norm="raw")
    assert raw["score_gap"] == pytest.approx(2.0)
    with pytest.warns(RuntimeWarning, match="ratio"):
        r = M.mean_score_gap(np.array([-1.0, 1.0, 2.0, 3.0]), y)  # mean normal score 0
    assert math.isnan(r["ratio"]) and r["score_gap"] == pytest.approx(np.mean([1.5, 2.0]) - 0.5)


# ----------------------------------------------------------------------------------------------------
# per-image overlap metrics
# ----------------------------------------------------------------------------------------------------
def test_sensitivity_precision_per_image_equals_sklearn():
    rng = np.random.default_rng(1)
    gt = rng.random((6, 1, 12, 12)) < 0.2
    pred = np.where(rng.random(gt.shape) < 0.3, rng.choice([0.2, 0.7, 1.0], gt.shape), 0.0)  # soft: != 0 counts
    gt[4] = False                 # no lesion: sensitivity undefined
    pred[5] = 0.0                 # nothing predicted: precision 0 by IterMask2's rule
    sens, prec = M.sensitivity_precision_per_image(pred, gt)
    assert sens.dtype == torch.float64 and sens.shape == (6,)
    for i in range(6):
        yt, yp = gt[i].ravel(), pred[i].ravel() != 0
        assert float(sens[i]) == pytest.approx(recall_score(yt, yp, zero_division=np.nan), nan_ok=True)
        assert float(prec[i]) == pytest.approx(precision_score(yt, yp, zero_division=0.0))
    assert math.isnan(float(sens[4])) and float(prec[5]) == 0.0


def test_dice_equals_sklearn_f1():
    rng = np.random.default_rng(2)
    gt = rng.random((5, 1, 10, 10)) < 0.15
    pred = rng.random(gt.shape) < 0.2
    pred[3] = gt[3] = False       # both empty: Dice undefined
    pred[4] = False               # prediction empty, lesion present: 0
    assert M.dice(pred, gt) == pytest.approx(f1_score(gt.ravel(), pred.ravel()), abs=1e-12)
    with pytest.warns(RuntimeWarning, match="1 image"):
        d = M.dice_per_image(torch.tensor(pred), torch.tensor(gt))
    for i in range(5):
        ref = f1_score(gt[i].ravel(), pred[i].ravel(), zero_division=np.nan)
        assert float(d[i]) == pytest.approx(ref, abs=1e-12, nan_ok=True)
    assert math.isnan(float(d[3])) and float(d[4]) == 0.0
    with pytest.warns(RuntimeWarning, match="empty"):
        assert math.isnan(M.dice(pred[3], gt[3]))


def test_per_volume_pixel_auroc_ap_equals_sklearn_with_ties():
    m, g = _maps(4, shape=(7, 1, 10, 10), levels=6, p=0.15)
    g[6] = False                                     # subject "e" has no lesion: skipped
    ids = ["a", "b", "a", "c", "b", "a", "e"]        # slices of one subject are not contiguous
    r = M.per_volume_pixel_auroc_ap(m, g, ids)
    assert r["n"] == 3 and r["n_skipped"] == 1 and set(r["per_subject"]) == {"a", "b", "c"}
    ref = {}
    for sid in ("a", "b", "c"):
        idx = [i for i, x in enumerate(ids) if x == sid]
        yy, ss = g[idx].ravel(), m[idx].ravel()
        ref[sid] = (roc_auc_score(yy, ss), average_precision_score(yy, ss))
        assert r["per_subject"][sid] == pytest.approx(ref[sid], abs=1e-12)
    assert r["auroc"] == pytest.approx(np.mean([v[0] for v in ref.values()]), abs=1e-12)
    assert r["ap"] == pytest.approx(np.mean([v[1] for v in ref.values()]), abs=1e-12)
    brain = np.zeros(m.shape); brain[..., 2:9, 1:8] = 1
    rv = M.per_volume_pixel_auroc_ap(m, g, ids, valid=brain)
    idx = [0, 2, 5]
    v = brain[idx].ravel() > 0.5
    assert rv["per_subject"]["a"] == pytest.approx(
        (roc_auc_score(g[idx].ravel()[v], m[idx].ravel()[v]), average_precision_score(g[idx].ravel()[v], m[idx].ravel()[v])),
        abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# size-stratified Dice: bin edges
# ----------------------------------------------------------------------------------------------------
def test_size_bins_edges():
    areas = [199, 200, 799, 800, 1]
    gt = np.zeros((len(areas), 1, 40, 40), bool)
    for i, a in enumerate(areas):
        gt[i].reshape(-1)[:a] = True
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    r = M.size_stratified_dice(d, gt)
    assert (r["n_small"], r["n_medium"], r["n_large"]) == (2, 2, 1)  # < 200 | 200-799 | >= 800
    assert r["dice_small"] == pytest.approx(np.mean([0.1, 0.5]))
    assert r["dice_medium"] == pytest.approx(np.mean([0.2, 0.3]))
    assert r["dice_large"] == pytest.approx(0.4)
    with pytest.warns(RuntimeWarning, match="large"):
        r = M.size_stratified_dice(d[:3], gt[:3])
    assert r["n_large"] == 0 and math.isnan(r["dice_large"])


# ----------------------------------------------------------------------------------------------------
# reconstruction quality
# ----------------------------------------------------------------------------------------------------
def _recon_set(seed=0, n=3, c=1, size=32):
    rng = np.random.default_rng(seed)
    x = rng.random((n, c, size, size))
    r = np.clip(x + 0.15 * rng.normal(size=x.shape), 0, 1)
    brain = np.zeros((n, 1, size, size)); brain[..., 4:28, 6:26] = 1.0; brain[..., 4, 6:26] = 0.4  # soft rim
    les = np.zeros((n, 1, size, size), bool); les[:, :, 10:16, 12:20] = True
    return r, x, brain, les


@pytest.mark.parametrize("c", [1, 2])
def test_ssim_normal_equals_skimage(c):
    r, x, brain, les = _recon_set(c=c)
    les[2] = False
    brain[1] = 0.0  # no normal brain pixel: image skipped
    r = 0.7 * r + 0.1  # so that the default data range (0.8 here) is not 1

    def ref(dr):
        vals = []
        for i in range(r.shape[0]):
            keep = (brain[i, 0] > 0.5) & ~les[i, 0]  # normal brain pixels
            if not keep.any():
                continue
            for ch in range(c):
                _, smap = structural_similarity(r[i, ch], x[i, ch], gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, full=True, data_range=dr)
                vals.append(smap[keep].mean())
        return np.mean(vals), len(vals)

    res = M.ssim_normal(r, x, brain, les)
    dr = float((r * brain).max() - (r * brain).min())  # the documented default: max(R·B) − min(R·B) over the set
    expected, n = ref(dr)
    assert res["n"] == n == 2 * c and res["data_range"] == pytest.approx(dr) and abs(dr - 1.0) > 0.1
    assert res["ssim"] == pytest.approx(expected, abs=1e-12)
    fixed = M.ssim_normal(r, x, brain, les, data_range=1.0)
    assert fixed["ssim"] == pytest.approx(ref(1.0)[0], abs=1e-12) and fixed["data_range"] == 1.0
    assert abs(fixed["ssim"] - res["ssim"]) > 1e-4


def test_ssim_itermask2_variant_equals_skimage():
    r, x, brain, les = _recon_set(seed=3)
    res = M.ssim_normal(r, x, brain, les, variant="itermask2", data_range=1.0)
    vals = []
    for i in range(r.shape[0]):
        w = brain[i, 0] * (~les[i, 0])
        # skimage's mean SSIM is the mean of the full map with the (win_size-1)/2 = 5 px border cropped
        vals.append(structural_similarity(r[i, 0] * w, x[i, 0] * w, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0))
        _, smap = structural_similarity(r[i, 0] * w, x[i, 0] * w, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True, data_range=1.0)
        assert vals[-1] == pytest.approx(smap[5:-5, 5:-5].mean(), abs=1e-12)
    assert res["ssim"] == pytest.approx(np.mean(vals), abs=1e-12)


@pytest.mark.parametrize("kind", ["mse", "l1"])
@pytest.mark.parametrize("inside", [True, False])
def test_masked_mse_equals_numpy(kind, inside):
    rng = np.random.default_rng(5)
    x, y = rng.random((4, 3, 9, 9)), rng.random((4, 3, 9, 9))
    mask = rng.random((4, 1, 9, 9)) < 0.3
    mask[3] = not inside  # region empty for image 3: NaN
    e = (x - y) ** 2 if kind == "mse" else np.abs(x - y)
    e = e.mean(1)  # channels first
    region = mask[:, 0] if inside else ~mask[:, 0]
    ref = [e[i][region[i]].mean() if region[i].any() else np.nan for i in range(4)]
    got = M.masked_mse(x, y, mask, inside=inside, kind=kind)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, equal_nan=True)
    got3 = M.masked_mse(torch.tensor(x), torch.tensor(y), mask[:, 0], inside=inside, kind=kind)  # [N,H,W] mask
    np.testing.assert_allclose(got3.numpy(), ref, rtol=1e-12, equal_nan=True)


@pytest.fixture(scope="module")
def lpips_alex_random():
    """LPIPS-Alex with a seeded random trunk (pnet_rand: nothing downloaded; the linear heads ship in the
    wheel), built as methods.blocks.perceptual.load_lpips does."""
    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", pnet_rand=True, spatial=True, verbose=False)
    return net.eval()


@pytest.mark.parametrize("inside", [True, False])
def test_masked_lpips_equals_lpips_spatial_mean(lpips_alex_random, inside):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(1)
        x = torch.rand(3, 1, 64, 64, generator=g)
        y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        mask = torch.zeros(3, 1, 64, 64, dtype=torch.bool); mask[:, :, 20:40, 10:50] = True
        mask[2] = not inside  # empty region: NaN
        got = M.masked_lpips(lpips_alex_random, x, y, mask, inside=inside, batch_size=2)
        with torch.no_grad():
            d = lpips_alex_random(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1), normalize=True)
        assert d.shape == (3, 1, 64, 64)
        d = d[:, 0].double().numpy()
        region = mask[:, 0].numpy() if inside else ~mask[:, 0].numpy()
        ref = [d[i][region[i]].mean() if region[i].any() else np.nan for i in range(3)]
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, equal_nan=True)
        assert np.isfinite(ref[0]) and ref[0] > 0
    finally:
        torch.set_num_threads(threads)


def test_masked_lpips_zero_as_nan():
    """PHANES's code drops region pixels whose LPIPS is exactly 0: mean over the non-zero ones."""
    def net(a, b, normalize=True):
        return (a - b).abs().mean(1, keepdim=True)

    x = torch.zeros(2, 1, 6, 6)
    y = torch.zeros(2, 1, 6, 6); y[0, 0, :2, :3] = 0.5; y[0, 0, 5, 5] = 0.25
    mask = torch.ones(2, 1, 6, 6)
    got = M.masked_lpips(net, x, y, mask, zero_as_nan=True)
    d = (y - x).abs()[:, 0].numpy()
    assert float(got[0]) == pytest.approx(d[0][d[0] != 0].mean())
    assert math.isnan(float(got[1]))  # every pixel 0: nothing left
    assert float(M.masked_lpips(net, x, y, mask)[0]) == pytest.approx(d[0].mean())


# ----------------------------------------------------------------------------------------------------
# bootstrap CI
# ----------------------------------------------------------------------------------------------------
def _mc_tol(boot_std, n_boot, q=0.025):
    """Monte-Carlo tolerance for comparing two percentile-bootstrap endpoints drawn with different RNGs.

    An empirical q-quantile of B replicates has standard error ~ sqrt(q(1-q)/B) / f(x_q), with f the density
    of the bootstrap distribution (close to normal with sd = boot_std): f(x_q) = phi(z_q) / boot_std. The
    difference of two independent estimates has sqrt(2) times that; allow 5 of those standard errors, so a
    correct implementation fails with probability ~1e-6 while a wrong quantile (e.g. 5 % instead of 2.5 %,
    ~0.3 boot_std away) or a resampling bug (wrong width) is caught.
    """
    z = sps.norm.ppf(q)
    se = math.sqrt(q * (1 - q) / n_boot) / sps.norm.pdf(z) * boot_std
    return 5 * math.sqrt(2) * se


def test_bootstrap_ci_equals_scipy_percentile():
    rng = np.random.default_rng(11)
    v = rng.gamma(2.0, 1.5, 40)  # skewed: the percentile interval is asymmetric
    b = 20000
    ours = S.bootstrap_ci(v, n_boot=b, seed=3)
    ref = sps.bootstrap((v,), np.mean, n_resamples=b, method="percentile", confidence_level=0.95,
                        rng=np.random.default_rng(4))
    tol = _mc_tol(ours["boot_std"], b)
    assert ours["estimate"] == pytest.approx(v.mean())
    assert ours["lo"] == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert ours["hi"] == pytest.approx(ref.confidence_interval.high, abs=tol)
    assert ours["boot_std"] == pytest.approx(ref.standard_error, rel=0.05)  # SE of an sd estimate ~ 1/sqrt(2B)
    assert tol < 0.2 * ours["boot_std"]  # the check is sharp enough to matter


def test_bootstrap_ci_over_subjects_equals_scipy_on_subject_means():
    """With equal slices per subject, the mean over resampled subjects' slices is the mean of resampled
    subject means, so scipy's bootstrap of the subject means is the reference."""
    rng = np.random.default_rng(12)
    n_sub, per = 25, 4
    subj_effect = rng.normal(0, 1.0, n_sub)
    v = (subj_effect[:, None] + 0.3 * rng.normal(size=(n_sub, per))).ravel()
    subjects = np.repeat([f"s{k:02d}" for k in range(n_sub)], per)
    b = 20000
    ours = S.bootstrap_ci(v, subjects=subjects, n_boot=b, seed=5, ci=0.9)
    ref = sps.bootstrap((v.reshape(n_sub, per).mean(1),), np.mean, n_resamples=b, method="percentile",
                        confidence_level=0.9, rng=np.random.default_rng(6))
    tol = _mc_tol(ours["boot_std"], b, q=0.05)
    assert ours["n_subjects"] == n_sub
    assert ours["lo"] == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert ours["hi"] == pytest.approx(ref.confidence_interval.high, abs=tol)
    naive = sps.bootstrap((v,), np.mean, n_resamples=b, method="percentile", confidence_level=0.9,
                          rng=np.random.default_rng(7))  # slices as independent: far too narrow
    assert (ours["hi"] - ours["lo"]) > 1.5 * (naive.confidence_interval.high - naive.confidence_interval.low)
