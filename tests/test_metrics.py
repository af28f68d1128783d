"""protocols.metrics: exact agreement with scikit-learn, degenerate inputs, protocol-specific rules."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from protocols import metrics as M


def _rand(seed, n, quant=None, p=0.3):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    if quant:
        s = np.round(rng.random(n) * quant) / quant
    y = rng.random(n) < p
    y[0], y[1] = True, False
    return s, y


@pytest.mark.parametrize("quant", [None, 2, 5, 50])
@pytest.mark.parametrize("n", [2, 7, 100, 3000])
def test_auroc_ap_equal_sklearn(quant, n):
    for seed in range(3):
        s, y = _rand(seed + n, n, quant)
        assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_accepts_torch_float32_int_labels_and_2d():
    s, y = _rand(1, 400, 20)
    st, yt = torch.tensor(s, dtype=torch.float32).reshape(20, 20), torch.tensor(y, dtype=torch.int64).reshape(20, 20)
    assert M.auroc(st, yt) == pytest.approx(roc_auc_score(y, s.astype(np.float32)), abs=1e-12)
    assert isinstance(M.auroc(st, yt), float)
    r = M.image_auroc_ap(s, y)
    assert r["n"] == 400 and r["n_pos"] == int(y.sum())
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_half_precision_and_integer_scores():
    s = np.array([1, 2, 2, 3, 3, 3]); y = np.array([0, 0, 1, 0, 1, 1])
    assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert M.auroc(torch.tensor(s, dtype=torch.float16), y) == pytest.approx(roc_auc_score(y, s))


def test_all_one_class_nan_with_warning():
    s = np.arange(5.0)
    with pytest.warns(RuntimeWarning, match="both classes"):
        assert math.isnan(M.auroc(s, np.ones(5)))
    with pytest.warns(RuntimeWarning, match="positive"):
        assert math.isnan(M.average_precision(s, np.zeros(5)))
    with pytest.warns(RuntimeWarning):
        a, p = M.pooled_pixel_auroc_ap(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 4)))
    assert math.isnan(a) and math.isnan(p)


def test_constant_scores_auroc_half_with_warning():
    """The exact AUROC of constant scores is 0.5, but the issue forbids a *silent* 0.5."""
    y = np.array([0, 1, 0, 1, 1])
    const = np.full(5, 0.3)
    with pytest.warns(RuntimeWarning, match="constant"):
        assert M.auroc(const, y) == 0.5 == roc_auc_score(y, const)
    with pytest.warns(RuntimeWarning, match="constant"):
        r = M.image_auroc_ap(const, y)
    assert r["auroc"] == 0.5 and r["ap"] == pytest.approx(average_precision_score(y, const))
    maps = torch.full((2, 1, 4, 4), 7.0)
    masks = torch.zeros(2, 1, 4, 4); masks[0, 0, 0, :2] = 1
    with pytest.warns(RuntimeWarning, match="constant"):
        a, _ = M.pooled_pixel_auroc_ap(maps, masks)
    assert a == 0.5
    with pytest.warns(RuntimeWarning, match="constant"):  # torch (CUDA) ranking path warns the same
        assert M._auroc_from(M._rank_torch(torch.tensor(const), torch.tensor(y, dtype=torch.bool))) == 0.5
    varied = maps.clone(); varied[1, 0, 3, 3] = 9.0  # constant only inside the valid region
    valid = torch.ones_like(maps); valid[1, 0, 3, 3] = 0
    with pytest.warns(RuntimeWarning, match="constant"):
        assert M.pooled_pixel_auroc_ap(varied, masks, valid=valid)[0] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not constant: no warning, even with heavy ties
        assert M.pooled_pixel_auroc_ap(varied, masks)[0] == pytest.approx(
            roc_auc_score(masks.numpy().ravel(), varied.numpy().ravel()))
        assert M.auroc([0.3, 0.3, 0.3, 0.4], [0, 1, 0, 1]) == pytest.approx(0.75)
        assert M.auroc([1.0, 1.0, 2.0, 2.0], [0, 0, 1, 1]) == 1.0  # each class constant, not all equal
    with pytest.warns(RuntimeWarning) as rec:  # one class: the NaN warning, not the constant one
        assert math.isnan(M.auroc(np.ones(3), np.ones(3)))
    assert [("both classes" in str(w.message), "constant" in str(w.message)) for w in rec] == [(True, False)]


@pytest.mark.parametrize("bad, err", [
    ((np.array([0.1, np.nan]), np.array([0, 1])), "NaN"),
    ((np.array([0.1, np.inf]), np.array([0, 1])), "NaN"),
    ((np.array([0.1, 0.2]), np.array([0, 2])), "binary"),
    ((np.array([0.1, 0.2]), np.array([0.0, 0.5])), "binary"),
    ((np.array([0.1, 0.2, 0.3]), np.array([0, 1])), "shape"),
    ((np.array([]), np.array([])), "no element"),
])
def test_malformed_raises(bad, err):
    with pytest.raises(ValueError, match=err):
        M.auroc(*bad)


def test_pooled_equals_sklearn_with_ties_and_valid():
    rng = np.random.default_rng(3)
    maps = np.round(rng.random((12, 1, 32, 32)) * 30) / 30
    masks = rng.random(maps.shape) < 0.05
    maps[masks] += 0.2
    a, p = M.pooled_pixel_auroc_ap(torch.tensor(maps, dtype=torch.float32), torch.tensor(masks))
    f = maps.astype(np.float32).ravel()
    assert a == pytest.approx(roc_auc_score(masks.ravel(), f), abs=1e-12)
    assert p == pytest.approx(average_precision_score(masks.ravel(), f), abs=1e-12)
    brain = np.zeros_like(maps); brain[..., 4:28, 4:28] = 0.7  # soft brain, binarised at > 0.5
    a, p = M.pooled_pixel_auroc_ap(maps, masks, valid=brain)
    v = brain.ravel() > 0.5
    assert a == pytest.approx(roc_auc_score(masks.ravel()[v], maps.ravel()[v]), abs=1e-12)
    assert p == pytest.approx(average_precision_score(masks.ravel()[v], maps.ravel()[v]), abs=1e-12)


def test_dice_rules():
    g = np.zeros((2, 1, 4, 4), bool); g[0, 0, :2, :2] = True
    p = np.zeros_like(g); p[0, 0, :2, :1] = True
    assert M.dice(p, g) == pytest.approx(2 * 2 / (2 + 4))
    with pytest.warns(RuntimeWarning, match="empty"):
        assert math.isnan(M.dice(np.zeros(4), np.zeros(4)))
    with pytest.warns(RuntimeWarning):
        d = M.dice_per_image(p, g)
    assert d[0] == pytest.approx(2 / 3) and math.isnan(float(d[1]))
    with pytest.raises(ValueError, match="binary"):
        M.dice(np.array([0.3, 1.0]), np.array([0, 1]))


@pytest.mark.parametrize("seed", range(4))
def test_best_dice_pr_exact_is_max_f1(seed):
    s, y = _rand(seed, 500, 25, p=0.2)
    d, t = M.best_dice(s, y, grid="pr_exact")
    brute = max(f1_score(y, s >= u) for u in np.unique(s))
    assert d == pytest.approx(brute, abs=1e-12)
    assert f1_score(y, s > t) == pytest.approx(d, abs=1e-12)


def test_best_dice_max1000_matches_bruteforce():
    s, y = _rand(5, 800, None, p=0.2)
    s = np.abs(s)
    d, t = M.best_dice(s, y, grid="max1000")
    grid = np.linspace(0, s.max(), 1000)
    vals = [2 * np.sum((s > g) & y) / (np.sum(s > g) + y.sum()) for g in grid]
    assert d == pytest.approx(max(vals), abs=1e-12)
    assert t == pytest.approx(grid[int(np.argmax(vals))])
    with pytest.warns(RuntimeWarning):
        assert math.isnan(M.best_dice(s, np.zeros_like(y))[0])
    with pytest.raises(ValueError, match="grid"):
        M.best_dice(s, y, grid="nope")


def test_threshold_at_fpr_order_statistic():
    x = np.arange(100.0)
    t = M.threshold_at_fpr(x, 0.05)
    assert t == 94.0 and np.mean(x > t) <= 0.05 and np.mean(x > t - 1e-9) > 0.05
    ties = np.array([0, 1, 1, 1, 1, 2.0])
    t = M.threshold_at_fpr(ties, 0.5)  # 3 allowed FP; >1 has 1, >0 has 5
    assert t == 1.0
    valid = np.zeros(100); valid[:50] = 1
    assert M.threshold_at_fpr(x, 0.1, valid=valid) == 44.0
    with pytest.raises(ValueError):
        M.threshold_at_fpr(x, 1.5)


def test_per_volume_and_per_image():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 1, 8, 8)); masks = rng.random(maps.shape) < 0.2
    masks[5] = False
    ids = ["a", "a", "b", "b", "c", "d"]
    r = M.per_volume_pixel_auroc_ap(maps, masks, ids)
    assert r["n"] == 3 and r["n_skipped"] == 1
    exp = roc_auc_score(masks[:2].ravel(), maps[:2].ravel())
    assert r["per_subject"]["a"][0] == pytest.approx(exp)
    ap = M.per_image_pixel_ap(maps, masks)
    assert math.isnan(float(ap[5])) and float(ap[0]) == pytest.approx(average_precision_score(masks[0].ravel(), maps[0].ravel()))
    with pytest.warns(RuntimeWarning, match="without lesion"):
        d, t = M.best_dice_per_image(maps, masks)
    assert math.isnan(float(d[5])) and float(d[0]) == pytest.approx(M.best_dice(maps[0], masks[0], grid="pr_exact")[0])


def test_itermask2_global_dice_bruteforce():
    rng = np.random.default_rng(1)
    n = 5
    maps = rng.random((n, 1, 16, 16)) * 0.01 + 3.0  # normalisation must remove the offset
    gt = np.zeros(maps.shape, bool); gt[:, :, 4:10, 4:10] = True
    maps[gt] += 0.003
    brain = np.ones_like(maps); brain[..., 0, :] = 0.4
    dm, th = M.itermask2_global_dice(maps, gt, brain)
    an = (maps - maps.min()) / (maps.max() - maps.min()) * brain
    best = -1
    for t in np.arange(100) * 1e-4:
        p = ((an > t) * brain) > 0.5
        d = np.mean([2 * (p[i] & gt[i]).sum() / (p[i].sum() + gt[i].sum()) for i in range(n)])
        if d > best:
            best, bt = d, t
    assert dm == pytest.approx(best, abs=1e-12) and th == pytest.approx(bt)
    with pytest.warns(RuntimeWarning, match="empty"):
        s = M.itermask2_scores(an, gt, brain, th)
    assert s["dice"] == pytest.approx(dm, abs=1e-12)
    assert s["n_medium"] == 0 and math.isnan(s["dice_medium"]) and s["n_small"] == n


def test_sens_prec_and_size_bins():
    gt = np.zeros((3, 1, 40, 40), bool)
    gt[0, 0, :10, :10] = True       # 100 px -> small
    gt[1, 0, :20, :20] = True       # 400 -> medium
    gt[2, 0, :30, :30] = True       # 900 -> large
    pred = np.zeros(gt.shape); pred[0, 0, :5, :10] = 0.3  # soft counts (!= 0)
    sens, prec = M.sensitivity_precision_per_image(pred, gt)
    assert float(sens[0]) == 0.5 and float(prec[0]) == 1.0 and float(prec[1]) == 0.0
    r = M.size_stratified_dice(torch.tensor([0.1, 0.2, 0.3]), gt)
    assert (r["dice_small"], r["dice_medium"], r["dice_large"]) == pytest.approx((0.1, 0.2, 0.3))


def test_ssim_normal():
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 32, 32)); brain = np.ones_like(x); les = np.zeros(x.shape, bool); les[0, 0, 10:15, 10:15] = True
    r = M.ssim_normal(x, x, brain, les)
    assert r["ssim"] == pytest.approx(1.0) and r["n"] == 2
    r2 = M.ssim_normal(x + 0.1 * rng.random(x.shape), x, brain, les, variant="itermask2")
    assert 0 < r2["ssim"] < 1


def test_acc_f1_gap_mse_lpips():
    s = np.array([0.1, 0.2, 0.3, 0.4]); y = np.array([0, 1, 0, 1])
    r = M.image_acc_f1(s, y, 0.3)
    assert r["acc"] == 0.5 and r["f1"] == pytest.approx(f1_score(y, s >= 0.3))
    g = M.mean_score_gap(s, y)
    assert g["mean_score_normal"] == pytest.approx(0.5) and g["score_gap"] == pytest.approx(g["mean_score_abnormal"] - 0.5)
    x = torch.zeros(2, 1, 4, 4); z = torch.ones(2, 1, 4, 4); m = torch.zeros(2, 1, 4, 4); m[0, 0, 0, 0] = 1
    e = M.masked_mse(x, z * 2, m)
    assert float(e[0]) == 4.0 and math.isnan(float(e[1]))
    assert float(M.masked_mse(x, z * 2, m, kind="l1")[0]) == 2.0

    def fake_lpips(a, b, normalize=True):  # spatial map = |a-b| mean over channels
        assert a.shape[1] == 3 and normalize
        return (a - b).abs().mean(1, keepdim=True)

    lp = M.masked_lpips(fake_lpips, x, z * 0.5, m, inside=False)
    assert float(lp[0]) == pytest.approx(0.5)


def test_registry():
    assert {"auroc_pixel|pooled", "dice|fpr@5%_healthy_brain", "dice|oracle_test|max1000"} <= set(M.METRICS)
    assert M.METRICS["dice|oracle_test|pr_exact"].oracle and not M.METRICS["lpips|inside_mask"].higher_is_better
    for spec in M.METRICS.values():  # every registered function exists (module functions by bare name)
        if "." not in spec.function:
            assert callable(getattr(M, spec.function)), spec.id
    assert M.metric_spec("dice|oracle_test|new").oracle


def test_pooled_speed_smoke():
    """Scaled-down timing guard (the full 10.7 M check is scripts/bench_metrics.py)."""
    import time
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(64, 1, 128, 128, generator=g)
    masks = torch.rand(64, 1, 128, 128, generator=g) < 0.02
    t = time.perf_counter()
    M.pooled_pixel_auroc_ap(maps, masks)
    assert time.perf_counter() - t < 1.0


def test_torch_device_path_equals_numpy_path():
    """The CUDA code path (pure torch) gives the same ranking statistics as the CPU numpy path."""
    s, y = _rand(11, 5000, 40, p=0.1)
    st, yt = torch.tensor(s), torch.tensor(y)
    a, b = M._rank_torch(st, yt), M._rank_numpy(s, y)
    assert M._auroc_from(a) == M._auroc_from(b) and M._ap_from(a) == M._ap_from(b)
    for f in ("pos", "neg", "u", "c", "pos_ge", "neg_lt", "neg_le"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    s, y = _rand(12, 20000, 100)
    a = M.pooled_pixel_auroc_ap(torch.tensor(s).cuda(), torch.tensor(y).cuda())
    assert a == pytest.approx(M.pooled_pixel_auroc_ap(s, y), abs=1e-12)
    assert M.best_dice(torch.tensor(s).cuda(), torch.tensor(y).cuda())[0] == pytest.approx(M.best_dice(s, y)[0])


def test_size_bins_leave_lesion_free_images_out():
    import math as _math
    import warnings as _w

    from protocols.metrics import size_stratified_dice
    gt = torch.zeros(4, 1, 40, 40)
    gt[0, :, :5, :5] = 1  # 25 px: small
    with _w.catch_warnings():
        _w.simplefilter("ignore", RuntimeWarning)
        r = size_stratified_dice(torch.tensor([0.5, 0.0, 0.0, 0.0]), gt)
    assert r["n_small"] == 1 and r["dice_small"] == 0.5 and _math.isnan(r["dice_large"])
