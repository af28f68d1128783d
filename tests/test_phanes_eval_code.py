"""PHANES's official evaluation as coded (``|phanes_code`` ids) and its sprite generator, bit for bit
(ci-ber/PHANES @ c8995ed: projects/phanes/DownstreamEvaluator.py ``thresholding``,
``synthetic_anomaly_detection_with_sprites``, ``pathology_localization``; optim/metrics/{dice,auprc}.py;
transforms/synthetic.py ``SyntheticSprites``).

The references below are this suite's own transcriptions of the official call sequences (numpy's legacy global
generator, OpenCV on the [H,W,1] view, in-place binarisation), run on small hand-made inputs: float32 values that
sit exactly on a float32 threshold, maps with values ≥ 1, empty masks.
"""

import copy
import math
import warnings

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from datasets import synthetic as S
from datasets.synthetic import make_synthetic
from protocols import metrics as M
from protocols import suites
from protocols import thresholds as T
from protocols.evaluate import (METRIC_BUILDERS, PHANES_CODE_BUILDERS, PHANES_TABLE1_IDS, PHANES_TABLE2_IDS,
                                MetricContext, ScoreSet, metric_rows)

F03 = np.float32(0.3)  # 0.30000001192...: above the float64 0.3, equal to float32(0.3)


# ----------------------------------------------------------------------------------------------------
# generator
# ----------------------------------------------------------------------------------------------------
def _official_sprites(x4, axes=(4, 6)):
    """The official ``SyntheticSprites.__call__`` call sequence on a [1,1,H,W] float32 array (global np.random)."""
    img = x4[0][0][:, :, np.newaxis]
    mask = np.zeros(img.shape)
    for lo, hi in ((1, 5), (30, 70), (95, 99)):
        c = np.random.randint(32, 96, 2)
        centre = (int(c[0]), int(c[1]))
        a = np.abs(np.random.normal(axes[0], axes[1], 2))
        ax = (int(max(a[0], 2)), int(max(a[1], 2)))
        angle = np.random.randint(0, 360)
        p_lo, p_hi = np.percentile(img, lo), np.percentile(img, hi)
        colour = np.minimum(1, np.abs(np.random.uniform(p_lo, p_hi)))
        img = cv2.ellipse(img, centre, ax, angle, 0, 360, colour, -1)
        mask = cv2.ellipse(mask, centre, ax, angle, 0, 360, 1, -1)
    return np.transpose(img, (2, 0, 1))[np.newaxis], np.transpose(mask, (2, 0, 1))[np.newaxis]


def _slices(n=5, seed=0):
    rs = np.random.RandomState(seed)
    x = np.zeros((n, 1, 128, 128), np.float32)  # > 5 % zero background, like a brain slice
    x[:, :, 16:112, 20:108] = rs.rand(n, 1, 96, 88).astype(np.float32) * 0.8 + 0.1
    return x


def test_random_state_is_the_legacy_global_generator():
    rs = np.random.RandomState(2109)
    np.random.seed(2109)
    for _ in range(20):
        assert rs.randint(32, 96, 2).tolist() == np.random.randint(32, 96, 2).tolist()
        assert rs.normal(4, 6, 2).tolist() == np.random.normal(4, 6, 2).tolist()
        assert rs.randint(0, 360) == np.random.randint(0, 360)
        lo, hi = np.float32(0.1), np.float32(0.7)
        assert rs.uniform(lo, hi) == np.random.uniform(lo, hi)


@pytest.mark.parametrize("preset,axes", [("phanes", (4, 6)), ("ra", (8, 12)), ("ra_code", (4, 6))])
def test_sprites_equal_the_official_generator_bit_for_bit(preset, axes):
    x = _slices()
    corrupted, masks, record = make_synthetic(x, None, "sprites", preset, seed=2109)
    assert corrupted.dtype == np.float32
    np.random.seed(2109)  # the official framework seeds the global generator, then draws image after image
    for i in range(len(x)):
        ref_img, ref_mask = _official_sprites(copy.deepcopy(x[i:i + 1]), axes)
        np.testing.assert_array_equal(corrupted[i], ref_img[0])
        np.testing.assert_array_equal(masks[i], ref_mask[0].astype(np.float32))
    assert record["generator"] == S.GENERATOR_ID and record["opencv"] == cv2.__version__


def test_draw_order_centre_axes_angle_then_value():
    x = _slices(1)
    _, _, r = make_synthetic(x, None, "sprites", "phanes", seed=7)
    rs = np.random.RandomState(7)
    d = r["images"][0]["draws"][0]
    assert d["centre_xy"] == rs.randint(32, 96, 2).tolist()  # the first draw is the centre, not the colour
    a = np.abs(rs.normal(4, 6, 2))
    assert d["axes"] == [int(max(a[0], 2)), int(max(a[1], 2))]
    assert d["angle"] == rs.randint(0, 360)
    # the percentiles of the current image (here still clean: ≥ 5 % zeros) → band (1, 5) is [0, 0]: value 0
    assert d["percentiles"] == [0.0, 0.0] and d["value"] == 0.0


def test_non_square_and_float64_images():
    x = np.zeros((2, 1, 64, 96))  # float64 stays float64; rows and columns get their own centre ranges
    x[:, :, 8:56, 8:88] = 0.5
    c, m, r = make_synthetic(x, None, "sprites", "phanes", seed=1)
    assert c.dtype == np.float64 and m.shape == x.shape
    for im in r["images"]:
        for d in im["draws"]:
            assert 24 <= d["centre_xy"][0] < 72 and 16 <= d["centre_xy"][1] < 48
    assert np.array_equal(c[m == 0], x[m == 0])


def test_opencv_fill_geometry():
    # centre (x = column 4, y = row 4), semi-axes 3 along x and 1 along y, angle 0: a horizontal ellipse
    m = S.ellipse_mask(9, 9, 4, 4, 3, 1, 0)
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 5, 1, 7)
    assert m.sum() > 9  # the analytic pixel-centre rule fills 9 of these pixels; OpenCV fills more
    circle = S.ellipse_mask(9, 9, 4, 4, 2, 2, 0)
    assert circle.sum() == 13 and circle[4, 2] and circle[2, 4] and not circle[2, 2]


def test_cache_key_names_the_generator_version(monkeypatch, tmp_path):
    from datasets.phantom import phantom_store

    test = phantom_store("smoke", modality="flair").split("test")
    suites.synthetic_set(test, "sprites", "phanes", 2109, tmp_path)
    monkeypatch.setattr(S, "GENERATOR_ID", "older generator")
    suites.synthetic_set(test, "sprites", "phanes", 2109, tmp_path)
    assert len(list(tmp_path.glob("synthetic-sprites-phanes-*.npz"))) == 2  # an old set is never reused
    assert suites.PROTOCOLS["synthetic"].version == 3


# ----------------------------------------------------------------------------------------------------
# thresholding: count / H instead of / (H·W), float32 comparison, 0 when nothing qualifies
# ----------------------------------------------------------------------------------------------------
def test_phanes_threshold_divides_by_the_height_and_compares_in_float32():
    h = np.zeros((2, 1, 8, 8), np.float32)
    h[0, 0, 0, 0] = F03  # slice 0: 1 pixel → 100·1/8 = 12.5 %, mean over 2 slices 6.25 % > 5 % below t = 0.3
    assert T.phanes_code_threshold(h, 0.05) == pytest.approx(0.3, abs=1e-15)  # float32(0.3) > float32(0.3) false
    assert T.fit_threshold("fpr@5%_healthy_image|phanes_code", healthy=h) == T.phanes_code_threshold(h, 0.05)
    # in float64 the pixel would fire at the grid value 0.3 and the search would stop one step later
    assert float(F03) > 0.3
    # divided by H·W the same pixel is 1.56 % of slice 0 (mean 0.78 %): every grid value qualifies
    assert T.ra_code_threshold(h, 0.05, official=True) == 0.0
    with pytest.warns(RuntimeWarning, match="returning 0"):
        assert T.phanes_code_threshold(np.full((1, 1, 8, 8), 2.0, np.float32), 0.05) == 0.0
    # ≤ 5 % per 128 rows allows 6 pixels of a 128² slice (0.037 %) but not 7
    m = np.zeros((1, 1, 128, 128), np.float32)
    m[0, 0, 0, :7] = 0.5
    assert T.phanes_code_threshold(m, 0.05) == pytest.approx(0.5)
    m[0, 0, 0, 6] = 0
    assert T.phanes_code_threshold(m, 0.05) == 0.0


# ----------------------------------------------------------------------------------------------------
# compute_dice: raw values in [1, t] kept, + 1e-6, float32 comparison
# ----------------------------------------------------------------------------------------------------
def _official_dice(pred, gt, th):
    """optim/metrics/dice.py ``compute_dice`` as its numpy calls run (in place on a copy)."""
    p = copy.deepcopy(np.asarray(pred))
    p[p > th] = 1
    p[p < 1] = 0
    inputs, targets = p.flatten(), np.asarray(gt).flatten()
    return (2.0 * (inputs * targets).sum()) / (inputs.sum() + targets.sum() + 1e-6)


def test_compute_dice_by_hand():
    maps = np.array([[[[0.2, 0.6], [1.5, 3.0]]]], np.float32)
    gt = np.array([[[[0, 1], [1, 0]]]], np.float64)
    # t = 2: 3.0 → 1, 1.5 keeps its raw value (1 ≤ 1.5 ≤ 2), 0.2 and 0.6 → 0: I = 1.5, Σ inputs = 2.5, |G| = 2
    assert M.phanes_code_dice(maps, gt, 2.0) == 3.0 / (4.5 + 1e-6)
    # t = 0.5: 0.6, 1.5, 3.0 → 1: I = 2, Σ inputs = 3
    assert M.phanes_code_dice(maps, gt, 0.5) == 4.0 / (5.0 + 1e-6)
    assert M.phanes_code_dice(maps, gt, 2.0) == pytest.approx(_official_dice(maps, gt, np.float64(2.0)), abs=0)
    # empty prediction and empty GT: 0 (the eps), never NaN
    assert M.phanes_code_dice(np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 4, 4)), 0.5) == 0.0


def test_compute_dice_compares_in_the_maps_float32():
    maps = np.zeros((1, 1, 2, 2), np.float32)
    maps[0, 0, 0, 0] = F03
    gt = np.zeros((1, 1, 2, 2))
    gt[0, 0, 0, 0] = 1
    # float32(0.3) > float32(0.3) is false: nothing predicted at t = 0.3, Dice 0 (in float64 it would be 1)
    assert M.phanes_code_dice(maps, gt, 0.3) == 0.0 == _official_dice(maps, gt, np.float32(0.3))
    assert M.phanes_code_dice(maps.astype(np.float64), gt, 0.3) == pytest.approx(2 / (2 + 1e-6))


def test_best_dice_equals_the_official_loop():
    rng = np.random.default_rng(3)
    maps = (rng.random((4, 1, 12, 12)) * 2.5).astype(np.float32)  # values above 1: the raw-value quirk matters
    gt = (rng.random((4, 1, 12, 12)) > 0.7).astype(np.float64)
    maps[gt > 0] += np.float32(0.4)
    grid = np.linspace(0, np.max(maps), 1000)
    # numpy 1.24 (PHANES's pin) compares the float32 maps with float32(th): emulate it explicitly under numpy 2
    ref = [_official_dice(maps, gt, np.float32(t)) for t in grid]
    best, th = M.phanes_code_best_dice(maps, gt)
    # the code sums the float32 inputs in float32: raw values ≥ 1 round there (≈ 1e-7 relative), exact here
    assert best == pytest.approx(max(ref), rel=1e-6) and th == grid[int(np.argmax(ref))]
    inter, pred, g = M.phanes_code_dice_terms(maps, gt, grid)
    d = 2 * inter.sum(0) / (pred.sum(0) + g.sum() + 1e-6)
    np.testing.assert_allclose(d, ref, rtol=1e-6, atol=0)
    below1 = grid < 1  # 0/1 inputs only: float32 sums of ones are exact, so the code's value is reproduced exactly
    np.testing.assert_allclose(d[below1], np.asarray(ref)[below1], rtol=1e-15, atol=0)
    assert best != pytest.approx(M.best_dice(maps, gt > 0)[0])  # the suite's pooled Dice differs here


# ----------------------------------------------------------------------------------------------------
# per-image AP, MSE, SSIM, L1, slice rule
# ----------------------------------------------------------------------------------------------------
def test_per_image_ap_and_empty_mask_minus_zero():
    from sklearn.metrics import average_precision_score

    maps = np.array([[[[0.9, 0.1, 0.8, 0.3]]], [[[0.5, 0.4, 0.3, 0.2]]]], np.float32)
    gt = np.array([[[[1, 0, 0, 1]]], [[[0, 0, 0, 0]]]], np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = M.per_image_ap_phanes_code(maps, gt)
        sk_empty = average_precision_score(gt[1].ravel().astype(int), maps[1].ravel())
    assert float(ap[0]) == pytest.approx(1 / 2 + (2 / 3) / 2, abs=1e-15)  # 0.9 (P), 0.8 (N), 0.3 (P)
    assert float(ap[0]) == pytest.approx(average_precision_score([1, 0, 0, 1], maps[0].ravel()), abs=1e-15)
    assert float(ap[1]) == 0.0 and math.copysign(1, float(ap[1])) == -1.0 and sk_empty == 0.0  # −0.0, not NaN


def test_masked_mse_phanes_code_divides_healthy_error_by_the_anomaly_area():
    clean = np.zeros((1, 1, 4, 4), np.float32)
    rec = np.full((1, 1, 4, 4), 0.5, np.float32)
    mask = np.zeros((1, 1, 4, 4))
    mask[0, 0, 0, :2] = 1
    assert M.masked_mse_phanes_code(rec, clean, mask, inside=True)[0] == 0.25  # 2 · 0.25 / 2
    assert M.masked_mse_phanes_code(rec, clean, mask, inside=False)[0] == 1.75  # 14 · 0.25 / 2, not / 14
    assert float(M.masked_mse(rec, clean, mask, inside=False)[0]) == 0.25  # the suite's corrected id
    # the difference is taken in float32, as the code's numpy arrays are
    a, b = np.float32(0.1), np.float32(0.3)
    rec[:], clean[:] = a, b
    want = np.float64(a - b) ** 2 * 2 / 2
    assert M.masked_mse_phanes_code(rec, clean, mask)[0] == want
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's 0/0 is the code's value, quietly
        assert math.isnan(M.masked_mse_phanes_code(rec, clean, np.zeros_like(mask))[0])


def test_ssim_inside_mask_as_coded():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    clean = rng.random((2, 1, 16, 16)).astype(np.float32)
    rec = (clean + 0.2 * rng.standard_normal(clean.shape)).astype(np.float32)  # unclamped, as the code
    mask = np.zeros((2, 1, 16, 16))
    mask[:, 0, 4:9, 5:12] = 1
    got = M.ssim_inside_mask_phanes_code(rec, clean, mask)
    for i in range(2):
        _, smap = structural_similarity(rec[i, 0], clean[i, 0], data_range=1.0, full=True)
        assert smap.dtype == np.float32
        smap *= mask[i, 0]
        smap[smap == 0] = np.nan
        assert got[i] == float(np.nanmean(smap))
    assert M.ssim_inside_mask_phanes_code(clean, clean, mask)[0] == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(M.ssim_inside_mask_phanes_code(rec, clean, np.zeros_like(mask))[0])


def test_l1_clamped_and_slice_rule():
    rec = torch.tensor([-0.5, 1.5, 0.5, 0.2]).reshape(1, 1, 2, 2)
    x = torch.tensor([0.0, 1.0, 0.5, 0.4]).reshape(1, 1, 2, 2)
    assert M.l1_clamped_phanes_code(rec, x)[0] == pytest.approx(0.2 / 4, abs=1e-8)  # clamp → 0, 1: only 0.2 off
    masks = torch.zeros(3, 1, 4, 4)
    masks[1, 0, 0, 0] = 1
    masks[2, 0, 0, :2] = 1
    assert M.lesion_gt1px(masks).tolist() == [False, False, True]


# ----------------------------------------------------------------------------------------------------
# ids: registered, buildable by their protocol, values through the builders
# ----------------------------------------------------------------------------------------------------
def test_ids_registered_and_listed_by_their_protocol():
    assert set(PHANES_CODE_BUILDERS) == set(PHANES_TABLE1_IDS) | set(PHANES_TABLE2_IDS)
    for mid in PHANES_CODE_BUILDERS:
        assert mid.endswith("|phanes_code") and M.METRICS[mid].description and mid in METRIC_BUILDERS
        fn = M.METRICS[mid].function
        assert callable(getattr(M, fn)), mid
    for mid in PHANES_TABLE1_IDS:
        assert mid in suites.SYNTHETIC_METRICS and mid in suites.PROTOCOLS["synthetic"].metric_ids
    for mid in PHANES_TABLE2_IDS:
        assert mid in suites.PROTOCOLS["standard"].metric_ids
    assert M.METRICS["dice|oracle_test|max1000|phanes_code"].oracle
    assert not M.METRICS["mse|outside_mask|phanes_code"].higher_is_better


def _atlas_like():
    """Three 4×4 slices: no lesion, a 1-pixel lesion, a 4-pixel lesion (only the last is scored as coded)."""
    maps = torch.zeros(3, 1, 4, 4)
    lesion = torch.zeros(3, 1, 4, 4)
    lesion[1, 0, 0, 0] = 1
    lesion[2, 0, 1:3, 1:3] = 1
    maps[:, 0] = torch.linspace(0, 1.5, 16).reshape(4, 4)  # values above 1 on every slice
    maps[2, 0, 1:3, 1:3] += 0.05
    images = torch.full((3, 1, 4, 4), 0.5)
    recon = images + torch.tensor([-1.0, 0.0, 0.7]).reshape(3, 1, 1, 1)  # slice 2: 1.2 → clamped 1.0
    manifest = pd.DataFrame({"subject": ["a", "b", "c"], "slice": [0, 0, 0], "label": [0, 1, 1],
                             "pathology": ["healthy", "stroke", "stroke"]})
    return ScoreSet(maps, maps.flatten(1).amax(1), torch.tensor([0, 1, 1]), lesion, torch.ones_like(maps), images,
                    recon, manifest, 0.0)


def test_table2_ids_score_only_slices_with_more_than_one_lesion_pixel():
    s = _atlas_like()
    by = {r["metric_id"]: r for r in metric_rows(MetricContext(s, None), list(PHANES_TABLE2_IDS)
                                                 + ["ap_pixel|per_image|phanes_code", "auprc|pooled"],
                                                 n_boot=0).rows}
    ap2 = M.average_precision(s.maps[2], s.lesion[2])
    assert by["auprc|pooled|lesion_gt1px|phanes_code"]["value"] == pytest.approx(ap2, abs=1e-15)
    assert by["ap_pixel|per_image|lesion_gt1px|phanes_code"]["value"] == pytest.approx(ap2, abs=1e-15)
    assert by["auprc|pooled"]["value"] != pytest.approx(ap2)  # the suite pools every slice
    # without the rule: the empty slice counts −0.0, the 1-pixel slice its AP
    ap1 = M.average_precision(s.maps[1], s.lesion[1])
    assert by["ap_pixel|per_image|phanes_code"]["value"] == pytest.approx((0.0 + ap1 + ap2) / 3, abs=1e-15)
    assert by["dice|oracle_test|max1000|lesion_gt1px|phanes_code"]["value"] == pytest.approx(
        M.phanes_code_best_dice(s.maps[2:], s.lesion[2:])[0], abs=1e-15)
    assert by["mse|image|l1_clamp01|lesion_gt1px|phanes_code"]["value"] == pytest.approx(0.5, abs=1e-7)
    assert by["ssim|image|clamp01|lesion_gt1px|phanes_code"]["value"] == pytest.approx(
        M.ssim_ra_code(torch.clamp(s.reconstructions[2:], 0, 1), s.images[2:])[0], nan_ok=True)
    assert "1 of 3 slices" in by["auprc|pooled|lesion_gt1px|phanes_code"]["note"]
    none = _atlas_like()
    none.lesion[2] = 0
    r = metric_rows(MetricContext(none, None), ["auprc|pooled|lesion_gt1px|phanes_code"], n_boot=0).rows[0]
    assert math.isnan(r["value"]) and "more than one lesion pixel" in r["note"]


def test_table1_ids_through_the_builders():
    s = _atlas_like()
    clean = s.images.clone()
    s.lesion[0, 0, 3, 3] = 1  # every synthetic slice has an anomaly
    healthy = _atlas_like()
    healthy.maps[:] = 0
    healthy.maps[0, 0, 0, 0] = 0.3  # 100·1/4 = 25 % of slice 0 → mean 8.3 % > 5 % below 0.3: threshold 0.3
    ctx = MetricContext(s, healthy, clean=clean)
    by = {r["metric_id"]: r for r in metric_rows(ctx, list(PHANES_TABLE1_IDS), n_boot=20).rows}
    assert by["dice|fpr@5%_healthy_image|phanes_code"]["value"] == pytest.approx(
        M.phanes_code_dice(s.maps, s.lesion, T.phanes_code_threshold(healthy.maps)), abs=1e-15)
    assert T.phanes_code_threshold(healthy.maps) == pytest.approx(0.3)
    assert by["dice|oracle_test|max1000|phanes_code"]["value"] == pytest.approx(
        M.phanes_code_best_dice(s.maps, s.lesion)[0], abs=1e-15)
    area = s.lesion.flatten(1).sum(1).numpy()
    err = (s.reconstructions - clean)[:, 0].numpy().astype(np.float64) ** 2
    want_out = np.mean([(e * (1 - m[0].numpy())).sum() / a for e, m, a in zip(err, s.lesion, area)])
    assert by["mse|outside_mask|phanes_code"]["value"] == pytest.approx(want_out, rel=1e-12)
    assert by["mse|inside_mask|phanes_code"]["value"] == pytest.approx(
        np.mean([(e * m[0].numpy()).sum() / a for e, m, a in zip(err, s.lesion, area)]), rel=1e-12)
    assert math.isnan(by["lpips|inside_mask|phanes_code"]["value"]) and "LPIPS" in by["lpips|inside_mask|phanes_code"]["note"]
    assert by["dice|oracle_test|max1000|phanes_code"]["se"] >= 0  # resamples recompute it


def test_lpips_phanes_code_drops_exact_zeros():
    x = torch.zeros(1, 1, 4, 4)
    y = torch.zeros(1, 1, 4, 4)
    y[0, 0, 0, 0] = 1.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, :2] = 1

    def fake_lpips(a, b, normalize):
        return (a - b).abs().mean(1, keepdim=True)
    ctx = MetricContext(ScoreSet(torch.zeros(1, 1, 4, 4), torch.zeros(1), torch.ones(1, dtype=torch.long), mask,
                                 torch.ones(1, 1, 4, 4), y, y, pd.DataFrame({"subject": ["a"]}), 0.0),
                        None, clean=x, lpips_net=fake_lpips)
    by = {r["metric_id"]: r["value"] for r in metric_rows(
        ctx, ["lpips|inside_mask|phanes_code", "lpips|inside_mask"], n_boot=0).rows}
    assert by["lpips|inside_mask|phanes_code"] == 1.0  # the 0 pixel inside the mask is dropped, as coded
    assert by["lpips|inside_mask"] == 0.5


def test_synthetic_protocol_fills_every_phanes_table1_id(tmp_path):
    from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput
    from datasets.phantom import phantom_store

    class Identity(Method):
        name = "identity"
        Config = MethodConfig
        info = MethodInfo(paper="test", summary="test double: reconstruction = input, map = input")

        def __init__(self):
            super().__init__(MethodConfig(), device="cpu")

        def networks(self):
            return {}

        def fit(self, train, val=None, *, trainer=None):
            return {}

        def _score(self, batch):
            return ScoreOutput(anomaly_map=batch.image.clone(), image_score=batch.image.flatten(1).mean(1),
                               reconstruction=batch.image.clone())

    store = phantom_store("smoke", modality="flair")
    test, val = store.split("test"), store.split("val", label=0)
    ev = suites.run_synthetic(Identity(), test, val, suites.PROTOCOLS["synthetic"].metric_ids,
                              {"preset": "phanes", "cache_dir": tmp_path}, progress=False, n_boot=0)
    by = {r["metric_id"]: r for r in ev.rows}
    for mid in PHANES_TABLE1_IDS:
        assert math.isfinite(by[mid]["value"]) or by[mid]["note"], mid
    # identity reconstruction of the corrupted slice: healthy tissue is untouched, the anomaly error is the corruption
    assert by["mse|outside_mask|phanes_code"]["value"] == 0.0
    assert by["mse|inside_mask|phanes_code"]["value"] == pytest.approx(by["mse|inside_mask"]["value"], rel=1e-5)
    assert 0 <= by["dice|oracle_test|max1000|phanes_code"]["value"] <= 1
