"""protocols.check: direction-aware regressions, tolerances, missing cells."""

from pathlib import Path

import pandas as pd

from protocols.check import check, tolerance_for


def _f(vals, metric="auroc", mid="auroc|image"):
    return pd.DataFrame([dict(table_id="t1", method=m, variant="", dataset="d", column_group="", metric=metric,
                              metric_id=mid, value=v, seed=0) for m, v in vals.items()])


def test_regressions_and_tolerance():
    stored = _f({"a": 0.80, "b": 0.70, "c": 0.60})
    fresh = _f({"a": 0.79, "b": 0.75})
    out = check(fresh, stored, {"auroc|image": 0.02})
    assert len(out) == 1 and out[0].startswith("MISSING") and "method=c" in out[0]
    out = check(fresh, stored, {"default": 0.005})
    assert any("REGRESSED" in o and "method=a" in o and "stored=0.8" in o and "fresh=0.79" in o for o in out)
    assert not any("method=b" in o for o in out)
    assert any("method=b" in o for o in check(fresh, stored, {"default": 0.005}, two_sided=True))


def test_lower_is_better_and_nan():
    stored = _f({"a": 3.0, "b": 3.0}, "lpips", "lpips|inside_mask")
    fresh = _f({"a": 2.0, "b": float("nan")}, "lpips", "lpips|inside_mask")
    out = check(fresh, stored, {})
    assert len(out) == 1 and "method=b" in out[0] and "fresh=nan" in out[0]
    assert check(stored, stored, {}) == []


def test_tolerance_lookup_order():
    tol = {"t1:auroc|image": 1.0, "auroc|image": 2.0, "auroc": 3.0, "t1": 4.0, "default": 5.0}
    assert tolerance_for(tol, "t1", "auroc", "auroc|image") == 1.0
    assert tolerance_for(tol, "t2", "auroc", "auroc|image") == 2.0
    assert tolerance_for({"default": 5.0}, "t2", "ap", "ap|image") == 5.0


def test_stored_standard_error_widens_the_tolerance():
    stored = _f({"a": 0.80, "b": 0.80}).assign(se=[0.05, float("nan")])
    fresh = _f({"a": 0.72, "b": 0.72})
    out = check(fresh, stored, {"default": 0.02})
    assert len(out) == 1 and "method=b" in out[0]  # a: 0.08 worse < 2 se = 0.10; b: no se → plain 0.02
    assert len(check(fresh, stored, {"default": 0.02}, se_factor=0)) == 2
    assert len(check(_f({"a": 0.65, "b": 0.80}), stored, {"default": 0.02})) == 1  # 0.15 > 2 se still fails


def test_null_tolerance_leaves_a_cell_unchecked():
    stored = pd.DataFrame([dict(table_id="t", method="m", metric="lpips", metric_id="lpips|inside_mask", value=0.3),
                           dict(table_id="t", method="m", metric="mse", metric_id="mse|inside_mask", value=0.1)])
    fresh = stored.copy()
    fresh["value"] = [float("nan"), 0.5]
    problems = check(fresh, stored, {"default": 0.05, "lpips": None})
    assert len(problems) == 1 and "mse|inside_mask" in problems[0]
    assert tolerance_for({"lpips": None, "default": 0.1}, "t", "lpips", "lpips|inside_mask") is None


def _stored_rows(tmp_path):
    rows = pd.DataFrame([dict(table_id="table1", method=m, variant="", dataset="phantom-flair", column_group="",
                              metric="auroc_pixel", metric_id="auroc_pixel|pooled", value=v, se=0.001,
                              scale="fraction", seed=0) for m, v in [("ae", 0.9), ("ra", 0.8)]])
    path = tmp_path / "stored.csv"
    rows.to_csv(path, index=False)
    return rows, path


def test_cli_check_recomputes_in_a_fresh_store_and_keeps_checking_after_a_failure(tmp_path, monkeypatch, capsys):
    """`phbench check` without --store never reuses runs/ (a finished run would hide a metric-code change),
    and a method that fails does not stop the comparison of the others: its cells are reported MISSING."""
    import benchmark.runner as runner
    from benchmark.cli import REPO, main

    rows, stored = _stored_rows(tmp_path)
    seen = []

    def fake_run_table(table_id, *, store, **kw):
        seen.append(Path(store))
        return runner.TableRun(table_id, rows[rows.method == "ae"].copy(), failures=["ra seed 0: boom"])
    monkeypatch.setattr(runner, "run_table", fake_run_table)
    assert main(["check", "table1", "--stored", str(stored), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "FAILED table1: ra seed 0: boom" in err and "MISSING" in err and "method=ra" in err
    assert "method=ae" not in err  # the method that ran was compared and is fine
    assert seen and seen[0] != REPO / "runs" and "phbench-check-" in seen[0].name and not seen[0].exists()
    main(["check", "table1", "--stored", str(stored), "--store", str(tmp_path / "mine"), "--out", str(tmp_path / "o")])
    assert seen[-1] == tmp_path / "mine"  # --store reuses the named store on purpose
