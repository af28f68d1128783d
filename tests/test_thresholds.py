"""protocols.thresholds: rule ids, leakage guard, RA/PHANES code searches, ProxyAno percentile."""

import numpy as np
import pytest

from protocols import thresholds as T


def test_parse_and_unknown():
    assert T.parse_rule("fpr@5%_healthy_brain") == {"kind": "fpr", "fpr": 0.05, "region": "brain",
                                                   "variant": "exact", "oracle": False}
    assert T.parse_rule("fpr@1%_healthy_image|ra_code")["variant"] == "ra_code"
    assert T.parse_rule("oracle_test|max1000")["oracle"]
    with pytest.raises(ValueError):
        T.parse_rule("fpr@5%_somewhere")
    with pytest.raises(ValueError):
        T.parse_rule("oracle_test|nope")


def test_fpr_rules():
    rng = np.random.default_rng(0)
    h = rng.random((4, 1, 16, 16))
    brain = np.zeros_like(h); brain[..., 4:12, 4:12] = 1
    t = T.fit_threshold("fpr@5%_healthy_brain", healthy=h, healthy_brain=brain)
    assert np.mean(h[brain > 0.5] > t) <= 0.05
    t2 = T.fit_threshold("fpr@5%_healthy_image", healthy=h)
    assert np.mean(h > t2) <= 0.05 and np.mean(h >= t2) > 0.05
    with pytest.raises(ValueError, match="healthy_brain"):
        T.fit_threshold("fpr@5%_healthy_brain", healthy=h)
    with pytest.raises(ValueError, match="test labels"):
        T.fit_threshold("fpr@5%_healthy_image", healthy=h, test_masks=h > 0.5)
    # image scores work the same way (95th order statistic of healthy scores)
    assert T.fit_threshold("fpr@10%_healthy_image", healthy=np.arange(10.0)) == 8.0


def test_ra_code_grid_and_phanes_denominator():
    h = np.zeros((2, 1, 10, 10)); h[0, 0, 0, :10] = 0.5  # 10 % of slice 0 at 0.5 -> mean FPR 5 % at t < 0.5
    assert T.fit_threshold("fpr@5%_healthy_image|ra_code", healthy=h) == 0.0
    assert T.fit_threshold("fpr@4%_healthy_image|ra_code", healthy=h) == 0.5
    # PHANES divides by the width (10): 10 px / 10 = 100 %, so it needs t >= 0.5
    assert T.fit_threshold("fpr@5%_healthy_image|phanes_code", healthy=h) == 0.5


def test_oracle_fixed_p75():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 1, 8, 8)); masks = maps > 0.8
    assert T.fit_threshold("oracle_test|pr_exact", test_maps=maps, test_masks=masks) < 0.8 + 1e-9
    with pytest.raises(ValueError):
        T.fit_threshold("oracle_test|max1000", test_maps=maps)
    assert T.fit_threshold("paper_fixed", fixed="ra:box_threshold") == 0.009
    assert T.fit_threshold("paper_fixed|proxyano:pixel") == 0.5
    assert T.fit_threshold("paper_fixed", fixed=0.2) == 0.2
    assert T.fit_threshold("p75_train_normal", train_scores=np.arange(8.0)[::-1]) == 6.0
    brain = np.ones_like(maps)
    assert 0 <= T.fit_threshold("oracle_test|itermask2", test_maps=maps, test_masks=masks, test_brain=brain) < 0.01
