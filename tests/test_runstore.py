import pandas as pd

from benchmark.runstore import ROW_COLUMNS, RunSpec, RunStore


def spec(**kw):
    base = dict(method="ae", variant="", config={"lr": 1e-3}, dataset_fingerprint="abc", protocol="table1@v1", seed=0,
                train_key="t" * 16, score_key="s" * 16)
    base.update(kw)
    return RunSpec(**base)


def test_run_key_is_stable_and_sensitive_to_every_input():
    k = spec().key
    assert k == spec().key and len(k) == 16
    # the model's identity (method, variant, config, seed, code) reaches the run key through the score key
    for change in (dict(score_key="x" * 16), dict(dataset_fingerprint="abd"), dict(protocol="p2"),
                   dict(table_id="t2"), dict(metrics=("auroc|image",)), dict(options={"preset": "ra"})):
        assert spec(**change).key != k, change


def test_results_are_written_atomically_and_never_lost(tmp_path):
    store = RunStore(tmp_path)
    a, b = spec(seed=0, score_key="a" * 16), spec(seed=1, score_key="b" * 16)
    assert not store.is_finished(a)
    store.write_result(a, [{"metric": "auroc", "value": 0.7}], {"note": "first"})
    store.write_result(b, [{"metric": "auroc", "value": 0.8}], {})
    (tmp_path / "deadbeefdeadbeef").mkdir()  # an interrupted run: no rows.csv
    rows = store.all_rows()
    assert store.is_finished(a) and len(rows) == 2
    assert list(rows.columns[: len(ROW_COLUMNS)]) == ROW_COLUMNS
    assert sorted(rows["value"]) == [0.7, 0.8]
    assert set(rows["run_key"]) == {a.key, b.key}
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_rows_copied_from_another_run_are_refused(tmp_path):
    """A run folder holding another run's files (folders copied around by hand) is one line naming rows.csv."""
    import shutil

    import pytest

    from benchmark.errors import StoreError

    store = RunStore(tmp_path)
    a, b = spec(seed=0, score_key="a" * 16), spec(seed=1, score_key="b" * 16)
    for s in (a, b):
        store.write_result(s, [{"metric": "auroc", "value": 0.7}], {})
    for name in ("run.json", "rows.csv", "subjects.csv"):
        shutil.copy(store.run_dir(b) / name, store.run_dir(a) / name)
    with pytest.raises(StoreError, match=f"^{store.run_dir(a) / 'rows.csv'}: holds rows of another run"):
        store.is_finished(a)


def test_empty_store_gives_empty_frame(tmp_path):
    assert isinstance(RunStore(tmp_path).all_rows(), pd.DataFrame)


def test_hex_keys_that_look_like_numbers_read_back_as_text(tmp_path):
    """A run key such as "5e21374501934412" is valid hex and valid float syntax: it must stay text."""
    from benchmark.runstore import _read_rows_csv

    p = tmp_path / "rows.csv"
    pd.DataFrame({"run_key": ["5e21374501934412"], "git_sha": ["1234e567"], "value": [0.5]}).to_csv(p, index=False)
    rows = _read_rows_csv(p)
    assert rows["run_key"].iloc[0] == "5e21374501934412" and rows["git_sha"].iloc[0] == "1234e567"
    assert rows["value"].iloc[0] == 0.5
