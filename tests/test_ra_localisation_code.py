"""RA's official box localisation and threshold search, bit for bit (ci-ber/RA 9b7a2550,
projects/23_ra_midl/DownstreamEvaluator.py: ``thresholding`` l. 247-305, ``object_localization`` l. 307-423).

Hand-made maps: values exactly at float32(0.009) and one float32 step either side, healthy maps whose grid
threshold is counted by hand, soft-edged and empty boxes, float32 sums that floor differently from float64.
"""

import math
import warnings

import numpy as np
import pytest

from protocols import thresholds as T
from protocols.boxes import Box, localise

F9 = np.float32(0.009)  # 0.0089999996...: below the float64 0.009
UP, DOWN = np.nextafter(F9, np.float32(1)), np.nextafter(F9, np.float32(0))


def _map_8x8(vals):
    """8×8 map; the 2×2 box at rows 2-3, cols 2-3 holds ``vals``; healthy tissue = right half (zeros)."""
    m = np.zeros((1, 1, 8, 8), np.float32)
    m[0, 0, 2:4, 2:4] = np.asarray(vals, np.float32).reshape(2, 2)
    box = np.zeros((8, 8), np.float32); box[2:4, 2:4] = 1
    healthy = np.zeros_like(m); healthy[0, 0, :, 4:] = 1
    return m, box, healthy


def test_ra_code_keeps_pixels_equal_to_float32_threshold():
    # box pixels: float32(0.009), one step above, one step below, 0 -> official keeps x >= float32(0.009): 2 fire
    m, box, healthy = _map_8x8([F9, UP, DOWN, 0])
    b = localise(m, [Box(0, box, "x")], healthy, 0.009, variant="ra_code")["per_box"].iloc[0]
    assert b["n_hit"] == 2 and b["n_box"] == 4 and b["detected"] == 1  # 2 > 0.1·4
    assert b["in_box_score"] == pytest.approx(float(F9) + float(UP), rel=1e-7)
    # the suite (float64, '>' 0.009) is unchanged: only the value above 0.009 in float64 fires
    s = localise(m, [Box(0, box, "x")], healthy, 0.009)["per_box"].iloc[0]
    assert s["n_hit"] == 1
    # a float64 map whose value rounds to float32(0.009) is stored as float32 there, so it fires too
    m64 = np.zeros((1, 1, 8, 8)); m64[0, 0, 2, 2] = 0.0089999999  # < 0.009 in float64, == F9 in float32
    assert np.float32(0.0089999999) == F9
    r = localise(m64, [Box(0, box, "x")], healthy, 0.009, variant="ra_code")["per_box"].iloc[0]
    assert r["n_hit"] == 1 and r["detected"] == 1  # 1 > 0.4
    only_below, _, _ = _map_8x8([DOWN, DOWN, DOWN, DOWN])
    r = localise(only_below, [Box(0, box, "x")], healthy, 0.009, variant="ra_code")["per_box"].iloc[0]
    assert r["n_hit"] == 0 and r["detected"] == 0 and r["f1"] == 0.0 and r["precision"] == 0.0


def test_ra_code_fp_uses_float32_sums():
    # 10 healthy pixels at float32(0.7): float32 np.sum = 7.0 exactly, float64 sum = 6.99999988 (floor 6)
    m = np.zeros((1, 1, 16, 16), np.float32)
    healthy = np.zeros_like(m); healthy[0, 0, :, 8:] = 1
    m[0, 0, 0, 8:16] = 0.7; m[0, 0, 1, 8:10] = 0.7
    box = np.zeros((16, 16), np.float32); box[4:6, 2:4] = 1
    m[0, 0, 4, 2] = 1.0  # A = 1.0: 1 of 4 box pixels fires -> detected
    assert np.sum(np.where(healthy[0, 0] > 0, m[0, 0], 0)) == np.float32(7.0)
    b = localise(m, [Box(0, box, "x")], healthy, 0.009, variant="ra_code")["per_box"].iloc[0]
    assert b["fp"] == 7.0  # int(7.0 / max(1.0, 1))
    assert b["precision"] == pytest.approx(1 / 8) and b["f1"] == pytest.approx(2 * (1 / 8) / (1 / 8 + 1 + 1e-8))


def test_ra_code_soft_box_weights_and_counts_edges():
    m = np.zeros((1, 1, 8, 8), np.float32)
    healthy = np.zeros_like(m); healthy[0, 0, :, 5:] = 1
    m[0, 0, 1:5, 1:3] = 0.5  # fires on the core (rows 2-3) and on both soft rows (1 and 4)
    m[0, 0, 0:2, 5:8] = 1.0  # H = 6.0
    box = np.zeros((8, 8)); box[2:4, 1:3] = 1; box[1, 1:3] = 0.25; box[4, 1:3] = 0.25
    b = localise(m, [Box(0, box, "x")], healthy, 0.1, variant="ra_code")["per_box"].iloc[0]
    assert b["n_box"] == 8 and b["n_hit"] == 8  # soft pixels count in both
    assert b["in_box_score"] == pytest.approx(4 * 0.5 + 4 * 0.5 * 0.25)  # A = 2.5 (weighted by the mask)
    assert b["fp"] == 2.0  # int(6.0 / 2.5) = int(2.4)
    assert b["precision"] == pytest.approx(1 / 3)


def test_ra_code_empty_box_and_no_box():
    m, box, healthy = _map_8x8([1, 1, 1, 1])
    m[0, 0, 0, 5] = 3.0  # H = 3
    empty = np.zeros((8, 8))
    b = localise(m, [Box(0, empty, "x")], healthy, 0.009, variant="ra_code")["per_box"].iloc[0]
    # official: 0 > 0.1·0 is false -> a miss; FP = int(3 / max(0, 1)) = 3; P = 0 / max(3, 1) = 0
    assert b["n_box"] == 0 and b["detected"] == 0 and b["fp"] == 3.0 and b["precision"] == 0.0 and b["f1"] == 0.0
    r = localise(m, [], healthy, 0.009, variant="ra_code")
    assert r["n_boxes"] == 0 and math.isnan(r["f1"]) and math.isnan(r["precision"])
    r = localise(m, [Box(0, box, "art", counted=False)], healthy, 0.009, variant="ra_code")
    assert math.isnan(r["precision"]) and math.isnan(r["detection_rate"])


def test_ra_code_precision_aggregate():
    m, box, healthy = _map_8x8([0.5, 0.5, 0.5, 0.5])  # A = 2.0
    m[0, 0, 0, 4:8] = 1.0  # H = 4.0 -> FP 2, P 1/3
    miss = np.zeros((8, 8), np.float32); miss[6:8, 0:2] = 1  # nothing fires: P = 0 / max(0 + int(4/1), 1) = 0
    r = localise(m, [Box(0, box, "a"), Box(0, miss, "b")], healthy, 0.009, variant="ra_code")
    assert list(r["per_box"]["fp"]) == [2.0, 4.0]
    assert r["precision"] == pytest.approx((1 / 3 + 0) / 2)
    assert math.isnan(localise(m, [Box(0, box, "a")], healthy, 0.009)["precision"])  # suite: no precision


def _healthy(pixels, n=2, size=4):
    h = np.zeros((n, 1, size, size), np.float32)
    for (k, r, c), v in pixels.items():
        h[k, 0, r, c] = v
    return h


def test_grid_search_by_hand():
    # 2 slices of 16 px: one pixel is 100/16/2 = 3.125 % of the mean FPR; ≤ 5 % allows 1 pixel above t
    h = _healthy({(0, 0, 0): 0.0125, (0, 1, 1): 0.0205, (1, 2, 2): 0.0155})
    # t < 0.0125: 3 px (9.375 %); t < 0.0155: 2 px (6.25 %); t < 0.0205: 1 px (3.125 %) -> first grid t is 0.016
    t = T.ra_code_threshold(h, 0.05, official=True)
    assert t == np.linspace(0, 1, endpoint=False, num=1000)[16] and t == pytest.approx(0.016)
    assert T.ra_code_threshold(h, 0.05) == pytest.approx(0.016)  # same here in the float64 mode


def test_grid_search_compares_in_float32():
    # two pixels at float32(0.001) = 0.00100000005 > 0.001 in float64, but not > float32(0.001)
    h = _healthy({(0, 0, 0): np.float32(0.001), (1, 0, 0): np.float32(0.001)})
    assert T.ra_code_threshold(h, 0.05, official=True) == pytest.approx(0.001)  # 0 % above float32(0.001)
    assert T.ra_code_threshold(h, 0.05) == pytest.approx(0.002)  # float64: 6.25 % above 0.001


def test_grid_search_ties_and_no_grid_value():
    # one pixel 0.5 -> mean FPR 3.125 % for every t in [0, 0.499]: the smallest, 0.0 (RA's unstable sort may
    # return any of the tied values; ra.md §6 fixes the smallest)
    assert T.ra_code_threshold(_healthy({(0, 0, 0): 0.5}), 0.05, official=True) == 0.0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert T.ra_code_threshold(np.ones((2, 1, 4, 4), np.float32), 0.05, official=True) == 0.0  # best_th = 0
    assert any("returning 0" in str(x.message) for x in w)
    # NaN maps are refused (the suite never ranks NaN), not thresholded
    with pytest.raises(ValueError, match="NaN"):
        T.ra_code_threshold(_healthy({(0, 0, 0): np.nan}), 0.05, official=True)
