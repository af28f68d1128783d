"""RA's logged SSIM (``ssim|image|ra_code``) as ``DownstreamEvaluator`` computes it.

RA (ci-ber/RA @9b7a2550, projects/23_ra_midl/DownstreamEvaluator.py): ``ssim_ = ssim(x_rec_, x_,
data_range=1.)`` (skimage ``structural_similarity`` defaults otherwise) on ``x[i][0]`` / ``x_rec[i][0]`` as
float32 numpy arrays, per slice (lines 148-153 in ``global_detection``, 392-397 in ``object_localization``),
logged as ``np.nanmean`` per test set (lines 184, 459).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import uniform_filter

from protocols import metrics as M
from protocols.suites import LOCALISATION_METRICS, PROTOCOLS, SSIM_RA_ID, _global_estimates, run_localisation
from protocols.evaluate import ScoreSet
from tests.test_protocols import _Fake, phantom  # noqa: F401  (phantom is a fixture)


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM from the formula (Wang et al. 2004), 7×7 uniform window, sample covariance (N/(N−1)), K1 .01,
    K2 .03, mean of the map with the (7−1)/2 = 3 px border cropped -- float64 throughout."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    w, n = 7, 49
    f = lambda t: uniform_filter(t, size=w)  # noqa: E731
    ux, uy = f(a), f(b)
    cov = n / (n - 1)
    vx, vy, vxy = cov * (f(a * a) - ux * ux), cov * (f(b * b) - uy * uy), cov * (f(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return float(s[3:-3, 3:-3].mean())


def test_id_registered_and_requestable():
    spec = M.METRICS[SSIM_RA_ID]
    assert spec.csv_metric == "ssim" and spec.higher_is_better and not spec.oracle
    assert spec.function == "ssim_ra_code"
    assert SSIM_RA_ID in LOCALISATION_METRICS and SSIM_RA_ID in PROTOCOLS["localisation"].metric_ids


def test_identical_images_give_one():
    x = torch.rand(3, 1, 16, 16)
    assert np.allclose(M.ssim_ra_code(x.clone(), x), 1.0, atol=1e-6)


def test_known_value_against_the_formula_tiny_image():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16))
    r = np.clip(x + 0.1 * rng.standard_normal((16, 16)), 0, 1.2)  # unclamped above 1 is kept as RA keeps it
    ref = _ssim_reference(r.astype(np.float32), x.astype(np.float32))
    got = M.ssim_ra_code(r[None, None], x[None, None])[0]
    # skimage computes in float32 for float32 input (as RA's torch arrays are): agree to float32 precision
    assert got == pytest.approx(ref, abs=1e-5)
    assert 0.2 < got < 0.99
    # the float64 computation of the float32-rounded arrays differs only by float32 arithmetic
    from skimage.metrics import structural_similarity
    assert got == pytest.approx(structural_similarity(r.astype(np.float32).astype(np.float64),
                                                      x.astype(np.float32).astype(np.float64), data_range=1.0),
                                abs=1e-5)
    # channel 0 only
    two = np.stack([r, np.zeros_like(r)])[None], np.stack([x, np.ones_like(x)])[None]
    assert M.ssim_ra_code(*two)[0] == pytest.approx(got, abs=1e-7)


def test_smaller_than_window_is_nan():
    x = torch.rand(2, 1, 6, 6)
    assert np.isnan(M.ssim_ra_code(x, x)).all()


def _score_set(recon: bool = True) -> ScoreSet:
    g = torch.Generator().manual_seed(0)
    n = 6
    x = torch.rand(n, 1, 16, 16, generator=g)
    r = x.clone()
    r[3:] = torch.rand(3, 1, 16, 16, generator=g)  # abnormal slices reconstructed badly
    man = pd.DataFrame({"pathology": ["", "", "", "tumor", "tumor", "edema"], "subject": list("abcdef"),
                        "slice": range(n)})
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    z = torch.zeros(n, 1, 16, 16)
    return ScoreSet(z.clone(), torch.zeros(n), y, z.clone(), torch.ones(n, 1, 16, 16), x, r if recon else None,
                    man, 0.0)


def test_rows_per_group_and_bootstrap_recomputation():
    sc = _score_set()
    est = {(m, g): e for m, g, e in _global_estimates(sc, None, [SSIM_RA_ID])}
    assert set(est) == {(SSIM_RA_ID, g) for g in ("normal", "tumor", "edema", "average")}
    v = M.ssim_ra_code(sc.reconstructions, sc.images)
    assert est[(SSIM_RA_ID, "normal")].value == pytest.approx(1.0, abs=1e-6)
    assert est[(SSIM_RA_ID, "tumor")].value == pytest.approx(np.mean(v[3:5]))
    assert est[(SSIM_RA_ID, "edema")].value == pytest.approx(v[5])
    assert est[(SSIM_RA_ID, "average")].value == pytest.approx((np.mean(v[3:5]) + v[5]) / 2)
    idx = np.array([0, 3, 3, 4, 5])  # slice 3 drawn twice: weighs twice
    assert est[(SSIM_RA_ID, "tumor")].on(idx) == pytest.approx((2 * v[3] + v[4]) / 3)
    assert math.isnan(est[(SSIM_RA_ID, "edema")].on(np.array([0, 3])))


def test_no_reconstruction_is_nan_with_reason():
    (m, g, e), = _global_estimates(_score_set(recon=False), None, [SSIM_RA_ID])
    assert (m, g) == (SSIM_RA_ID, "average") and math.isnan(e.value) and "no reconstruction" in e.note


def test_end_to_end_identity_reconstruction_is_one(phantom):
    test, val = phantom.split("test"), phantom.split("val", label=0)
    ev = run_localisation(_Fake("identity"), test, val, [SSIM_RA_ID], {}, progress=False, n_boot=0)
    rows = pd.DataFrame(ev.rows)
    assert set(rows["metric_id"]) == {SSIM_RA_ID}
    assert {"normal", "average"} <= set(rows["column_group"])
    assert np.allclose(rows["value"].to_numpy(np.float64), 1.0, atol=1e-6)
