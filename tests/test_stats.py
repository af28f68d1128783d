"""protocols.stats: ddof-0 std, seeded subject bootstrap, named paired tests."""

import math

import numpy as np
import pandas as pd
import pytest

from protocols import stats as S


def test_mean_std_ddof0_and_nan():
    r = S.mean_std([1.0, 2.0, 3.0])
    assert r == {"mean": 2.0, "std": pytest.approx(np.std([1, 2, 3])), "n": 3}
    with pytest.warns(RuntimeWarning):
        assert S.mean_std([1.0, float("nan")])["n"] == 1
    assert math.isnan(S.mean_std([])["mean"])


def test_aggregate_seeds():
    rows = pd.DataFrame({"table_id": "t", "method": ["a"] * 3 + ["b"], "variant": "", "dataset": "d",
                         "column_group": "", "metric": "auroc", "metric_id": "auroc|image",
                         "value": [0.5, 0.6, 0.7, 0.9], "seed": [0, 1, 2, 0], "scale": "fraction"})
    agg = S.aggregate_seeds(rows)
    a = agg[agg.method == "a"].iloc[0]
    assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(np.std([0.5, 0.6, 0.7]))
    assert a["n_seeds"] == 3 and a["seeds"] == "0,1,2" and a["scale"] == "fraction"


def test_bootstrap_seeded_and_subjects():
    v = np.arange(20.0)
    r1 = S.bootstrap_ci(v, n_boot=300, seed=1)
    r2 = S.bootstrap_ci(v, n_boot=300, seed=1)
    assert r1 == r2 and r1["lo"] < r1["estimate"] < r1["hi"]
    subj = np.repeat(np.arange(5), 4)
    r3 = S.bootstrap_ci(v, subjects=subj, n_boot=300)
    assert r3["n_subjects"] == 5 and r3["hi"] - r3["lo"] > r1["hi"] - r1["lo"]
    rp = S.bootstrap_pooled(lambda idx: float(v[idx].mean()), subj, n_boot=100)
    assert rp["estimate"] == pytest.approx(v.mean()) and rp["n_valid"] == 100


def test_paired_tests():
    rng = np.random.default_rng(0)
    a = rng.random(30) + 0.3
    b = a - 0.3 + 0.05 * rng.random(30)
    r = S.paired_test(a, b, alternative="greater")
    assert r["test"] == "wilcoxon_signed_rank" and r["p"] < 0.05 and r["significant"] and r["n"] == 30
    with pytest.warns(RuntimeWarning):
        assert math.isnan(S.paired_test(a, a)["p"])
    with pytest.raises(ValueError):
        S.paired_test(a, b[:5])
    rb = S.paired_bootstrap_test(lambda i: float(a[i].mean()), lambda i: float(b[i].mean()), np.arange(30), n_boot=200)
    assert rb["p"] < 0.05 and rb["test"] == "paired_bootstrap_one_sided"


def test_bootstrap_ci_of_one_subject_is_no_interval():
    import warnings as _w

    from protocols.stats import bootstrap_ci
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        r = bootstrap_ci([0.2, 0.4, 0.6], subjects=["a", "a", "a"])
    assert r["estimate"] == pytest.approx(0.4) and math.isnan(r["lo"]) and math.isnan(r["hi"])
    assert r["n_subjects"] == 1 and any("one subject" in str(w.message) for w in caught)
