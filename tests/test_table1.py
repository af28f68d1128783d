"""table1 end to end on the smoke profile: phantom → train → score → run store → rendered table → check."""

from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.registry import get_table
from benchmark.runner import run_table
from protocols.check import check

REPO = Path(__file__).resolve().parent.parent
STORED = REPO / "results" / "smoke" / "table1.csv"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table1")
    res = run_table("table1", profile="smoke", store=tmp / "runs", out=tmp / "out", progress=False)
    return tmp, res


def test_every_method_produces_every_metric(smoke_run):
    _, res = smoke_run
    assert not res.failures, res.failures
    rows = res.rows
    assert set(rows["method"]) == {m for m, _ in get_table("table1").methods} >= {"ae", "ra", "itermask2", "intensity"}
    ids = set(rows["metric_id"])
    assert {"auroc|image", "auroc_pixel|pooled", "ap_pixel|pooled", "dice|fpr@5%_healthy_brain",
            "dice|oracle_test|max1000"} <= ids
    assert rows["value"].notna().all()
    for col in ("git_sha", "device", "dataset_fingerprint", "config", "train_wall_s"):
        assert rows[col].astype(str).str.len().gt(0).all(), col


def test_tables_are_rendered(smoke_run):
    _, res = smoke_run
    md = Path(res.outputs["md"]).read_text()
    tex = Path(res.outputs["tex"]).read_text()
    assert "| ae" in md and "oracle" in md.lower()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert len(pd.read_csv(res.outputs["csv"])) == len(res.rows)
    # each method's deviations are counted in the table and listed in full in the notes file beside it
    from benchmark.registry import get_method

    notes = (Path(res.outputs["md"]).parent / "table1.notes.md").read_text()
    for m, _ in get_table("table1").methods:
        n = len(get_method(m).info.deviations)
        assert f"- {m}: {n} deviation{'s' if n != 1 else ''}, see table1.notes.md" in md, m
        assert all(d in notes for d in get_method(m).info.deviations), m


def test_rerun_skips_finished_runs(smoke_run):
    tmp, first = smoke_run
    again = run_table("table1", profile="smoke", store=tmp / "runs", out=tmp / "out2", progress=False)
    assert again.ran == [] and len(again.skipped) == len(get_table("table1").methods)
    pd.testing.assert_frame_equal(again.rows.sort_values(["method", "metric_id"]).reset_index(drop=True),
                                  first.rows.sort_values(["method", "metric_id"]).reset_index(drop=True))


def test_no_regression_against_stored_smoke_results(smoke_run):
    """The CI regression check, through the CLI exactly as a user runs it: `phbench check --profile smoke`
    re-runs table1 and its detail, synthetic and localisation tables (which reuse table1's trained models) and
    compares them with results/smoke/<table>.csv cell by cell (RA's tables: tests/test_ra_tables.py)."""
    tmp, _ = smoke_run
    stored = sorted(p.stem for p in (REPO / "results" / "smoke").glob("table1*.csv"))
    assert "table1" in stored, f"{STORED} missing: create it with `phbench check --update`"
    assert main(["check", *stored, "--profile", "smoke", "--store", str(tmp / "runs"),
                 "--out", str(tmp / "out-check")]) == 0


def test_companion_tables_reuse_table1_models_and_scores(smoke_run):
    """table1-detail evaluates the weights table1 trained (no model is trained a second time) on the maps
    table1 computed: the score cache serves every slice set, so no network pass runs."""
    import json

    tmp, _ = smoke_run
    res = run_table("table1-detail", profile="smoke", store=tmp / "runs", out=tmp / "out-detail", progress=False)
    assert not res.failures, res.failures
    assert res.trained == [] and len(res.ran) + len(res.skipped) == len(get_table("table1-detail").methods)
    assert len(list((tmp / "runs" / "smoke" / "models").iterdir())) == len(get_table("table1").methods)
    keys = set(res.rows["run_key"])
    passes = {k: json.loads((tmp / "runs" / "smoke" / k / "run.json").read_text())["network_passes"] for k in keys}
    assert len(passes) == len(get_table("table1-detail").methods) and set(passes.values()) == {0}, passes


def test_check_detects_a_regression(smoke_run):
    _, res = smoke_run
    worse = res.rows.copy()
    sel = (worse["method"] == "ae") & (worse["metric_id"] == "auroc_pixel|pooled")
    worse.loc[sel, "value"] -= 0.2
    problems = check(worse, res.rows, {"default": 0.05})
    assert len(problems) == 1 and "method=ae" in problems[0] and "auroc_pixel|pooled" in problems[0]


def test_cli_check_exit_codes(smoke_run, tmp_path):
    tmp, res = smoke_run
    stored = tmp_path / "stored.csv"
    res.rows.to_csv(stored, index=False)
    args = ["check", "--profile", "smoke", "--store", str(tmp / "runs"), "--out", str(tmp / "out3"),
            "--stored", str(stored)]
    assert main(args) == 0
    bad = res.rows.copy()
    bad.loc[bad["metric_id"] == "ap_pixel|pooled", "value"] += 0.5  # stored better than fresh → regression
    bad.to_csv(stored, index=False)
    assert main(args) == 1


def test_finished_runs_load_back_and_reproduce_their_rows(smoke_run):
    """plan_run + load_trained (what diagnostics use) rebuild a finished run: same key, same numbers."""
    from benchmark.device import pick_device
    from benchmark.profiles import get_profile
    from benchmark.registry import get_table
    from benchmark.runner import load_trained, plan_run
    from benchmark.runstore import RunStore
    from protocols.evaluate import collect, standard_rows

    tmp, res = smoke_run
    spec, profile = get_table("table1"), get_profile("smoke")
    plan = plan_run(spec, "ae", "", 0, profile, spec.store("smoke"))
    store = RunStore(tmp / "runs" / "smoke")
    assert store.is_finished(plan.spec)
    method = load_trained(plan, store, pick_device("cpu"))
    fresh = {r["metric_id"]: r["value"] for r in standard_rows(collect(method, plan.test, progress=False), None,
                                                               n_boot=0)}
    stored = res.rows[res.rows["method"] == "ae"].set_index("metric_id")["value"]
    for mid in ("auroc|image", "auroc_pixel|pooled", "ap_pixel|pooled"):
        assert abs(fresh[mid] - stored[mid]) < 1e-6, mid


def test_pathology_companion_splits_the_test_set_by_lesion_class(smoke_run):
    """table1-pathology: the 'all' group is table1's own numbers; each pathology group holds the healthy test
    subjects' slices plus that pathology's, and its image AUROC is computed on exactly those slices."""
    from sklearn.metrics import roc_auc_score

    from benchmark.registry import get_table as table
    from datasets.phantom import phantom_store

    tmp, first = smoke_run
    res = run_table("table1-pathology", profile="smoke", store=tmp / "runs", out=tmp / "out-path", progress=False,
                    methods=["intensity"])
    assert not res.failures and res.trained == [], (res.failures, res.trained)
    rows = res.rows.set_index(["column_group", "metric_id"])
    test = phantom_store("smoke", modality="flair").split("test")
    pathologies = set(test.manifest["pathology"]) - {"healthy"}
    assert set(res.rows["column_group"]) == {"all"} | pathologies and len(pathologies) >= 2
    ours = first.rows[first.rows["method"] == "intensity"].set_index("metric_id")["value"]
    for mid in table("table1-pathology").metrics:
        assert rows.loc[("all", mid), "value"] == pytest.approx(ours[mid], nan_ok=True), mid
    from benchmark.contract import DataSpec
    from benchmark.registry import get_method
    from protocols.evaluate import collect

    scored = collect(get_method("intensity").build(device="cpu", data=DataSpec.of(test)), test, progress=False)
    path = test.manifest["pathology"].to_numpy()
    for p in pathologies:
        keep = (path == "healthy") | (path == p)
        assert rows.loc[(p, "auroc|image"), "n"] == keep.sum()
        expected = roc_auc_score(scored.labels.numpy()[keep], scored.scores.numpy()[keep])
        assert rows.loc[(p, "auroc|image"), "value"] == pytest.approx(expected, abs=1e-9), p
