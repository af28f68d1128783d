"""protocols.synthetic: seeded, recorded, parameter sets, mask/image consistency."""

import numpy as np
import pytest
import torch

from datasets.synthetic import PRESETS, make_synthetic, resolve_params


def _imgs(n=3, s=128):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, s, s)
    x[:, :, 20:108, 24:104] = 0.3 + 0.5 * torch.rand(n, 1, 88, 80, generator=g)
    return x


def test_sprites_seeded_recorded_and_consistent():
    x = _imgs()
    c1, m1, r1 = make_synthetic(x, x > 0, "sprites", "ra", seed=2109)
    c2, m2, r2 = make_synthetic(x, x > 0, "sprites", "ra", seed=2109)
    assert torch.equal(c1, c2) and torch.equal(m1, m2) and r1 == r2
    c3, _, _ = make_synthetic(x, None, "sprites", "ra", seed=1)
    assert not torch.equal(c1, c3)
    assert isinstance(c1, torch.Tensor) and c1.dtype == x.dtype and set(m1.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(c1[m1 == 0], x[m1 == 0])  # nothing outside the mask changes
    assert r1["params"]["axes_mean_std"] == [8.0, 12.0] and r1["seed"] == 2109
    for im in r1["images"]:
        assert len(im["draws"]) == 3
        for d in im["draws"]:
            assert 32 <= d["centre_xy"][0] < 96 and min(d["axes"]) >= 2 and 0 <= d["angle"] < 360
            assert 0 <= d["value"] <= 1


def test_sprite_intensity_bands():
    x = _imgs(1)
    _, _, r = make_synthetic(x, None, "sprites", {"preset": "ra", "percentiles_on": "original"}, seed=3)
    img = x[0, 0].numpy()
    for d in r["images"][0]["draws"]:
        lo, hi = np.percentile(img, d["band"])
        assert min(abs(lo), abs(hi)) - 1e-9 <= d["value"] <= max(abs(lo), abs(hi)) + 1e-9


def test_copy_paste_paper_vs_code_bounds():
    x = _imgs(8)
    c, m, r = make_synthetic(x.numpy(), None, "copy_paste", "ra", seed=5)
    assert isinstance(c, np.ndarray)
    for i, im in enumerate(r["images"]):
        d = im["draws"]
        sx, sy = d["size_rc"]
        assert 25 <= sx < 50 and 25 <= sy < 50 and min(d["dst_rc"] + d["src_rc"]) >= 25
        assert m[i].sum() == sx * sy
        r0, c0 = d["dst_rc"]; s0, t0 = d["src_rc"]
        assert np.array_equal(c[i, 0, r0:r0 + sx, c0:c0 + sy], x.numpy()[i, 0, s0:s0 + sx, t0:t0 + sy])
    _, _, rc = make_synthetic(x, None, "copy_paste", "ra_code", seed=5)
    assert all(min(im["draws"]["dst_rc"] + im["draws"]["src_rc"]) >= 32 for im in rc["images"])


def test_presets_and_errors():
    assert resolve_params("phanes", "sprites")["axes_mean_std"] == (4.0, 6.0)
    assert PRESETS["ra"]["corner_ratio"] == 5
    with pytest.raises(ValueError):
        resolve_params("phanes", "copy_paste")
    with pytest.raises(ValueError):
        make_synthetic(torch.zeros(2, 3, 8, 8), None, "sprites")
    with pytest.raises(ValueError):
        resolve_params({"bogus": 1}, "sprites")
