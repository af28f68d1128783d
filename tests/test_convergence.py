"""Issue 21's convergence read-out: train.json keeps the per-epoch history, AFSC and IterMask2 have a validation
curve that changes nothing they train, and scripts/convergence.py reads a table's curves from a run store."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from benchmark.contract import DataSpec, Trainable
from benchmark.profiles import configure, get_profile
from benchmark.registry import get_method
from benchmark.runner import run_table
from benchmark.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("convergence", REPO / "scripts" / "convergence.py")
convergence = sys.modules.setdefault("convergence", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(convergence)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> Path:
    """table1 smoke with a trained method (ae) and one with nothing to train (intensity): the run store."""
    tmp = tmp_path_factory.mktemp("conv")
    run_table("table1", profile="smoke", store=tmp / "runs", out=tmp / "out", methods=["ae", "intensity"],
              progress=False, render=False)
    return tmp / "runs"


def _fits(runs: Path) -> list[dict]:
    return [json.loads(p.read_text())["fit"] for p in sorted((runs / "smoke" / "models").glob("*/train.json"))]


def test_train_json_keeps_one_history_row_per_epoch(smoke_runs):
    trained = [f for f in _fits(smoke_runs) if f.get("epochs_run")]
    assert trained, "table1 smoke trained no model by epochs"
    for fit in trained:
        history = fit["history"]
        assert len(history) == fit["epochs_run"] == sum(s["epochs_run"] for s in fit["stages"].values())
        assert [r["epoch"] for r in history if r["stage"] == history[0]["stage"]] == list(
            range(fit["stages"][history[0]["stage"]]["epochs_run"]))
        for row in history:
            losses = {k: v for k, v in row.items() if k not in ("stage", "epoch")}
            assert losses and all(isinstance(v, float) for v in losses.values())
        assert any("val_loss" in row for row in history)  # ae validates


def test_script_reports_curves_and_models_without_history(smoke_runs, tmp_path, capsys):
    out_csv = tmp_path / "curves.csv"
    assert convergence.main(["--store", str(smoke_runs), "--table", "table1", "--profile", "smoke",
                             "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "ae" in text and "val_loss over" in text and "->" in text
    assert "intensity" in text and "no training history" in text
    rows = list(csv.DictReader(out_csv.open()))
    ae_epochs = sum(len(f["history"]) for f in _fits(smoke_runs) if f.get("history"))
    assert len(rows) == ae_epochs and {r["method"] for r in rows} == {"ae"}
    assert {r["loss"] for r in rows} == {"val_loss"}


def test_a_train_json_without_history_is_reported_not_fatal(smoke_runs, tmp_path, capsys):
    import shutil

    old = tmp_path / "runs"
    shutil.copytree(smoke_runs, old)
    for p in (old / "smoke" / "models").glob("*/train.json"):
        info = json.loads(p.read_text())
        info["fit"].pop("history", None)
        p.write_text(json.dumps(info))
    assert convergence.main(["--store", str(old), "--table", "table1", "--profile", "smoke"]) == 0
    text = capsys.readouterr().out
    assert "ae" in text and "no training history" in text and "val_loss" not in text


@pytest.mark.parametrize("values, expected", [
    ([4.0, 3.0, 2.0, 1.0], "still falling"),
    ([1.0, 1.0, 1.0, 1.001, 1.0, 1.0, 1.0, 1.001], "flat"),
    ([1.0, 1.0, 2.0, 3.0], "rising"),
    ([1.0], "too short to tell"),
])
def test_verdict_of_the_last_quarter(values, expected):
    assert convergence.verdict(convergence.relative_change(values)) == expected


@pytest.mark.parametrize("values, expected", [
    ([10.0, 5.0, 2.0, 1.05, 1.0, 1.2], 4),  # 1.05 <= 1.2 × 1.0 < 2.0: the fourth epoch
    ([0.044, 0.094, 0.0147, 0.0341, 0.00937, 0.00993], 5),  # table1's RA curve: noisy, flat from epoch 5
    ([-1.0, -1.5, -2.0], 3),  # a negative lowest: within 20 % of |−2| means ≤ −1.6, so −1.5 is not
    ([float("nan"), 3.0, 3.0], 2),
    ([float("nan")], None),
])
def test_flattens_at_the_first_epoch_within_ten_percent_of_the_lowest(values, expected):
    assert convergence.flattens_at(values) == expected


def test_flattens_at_on_table1s_20_epoch_ae_curve():
    ae = [2415, 1572, 1020, 839, 681, 584, 536, 489, 504, 443, 429, 444, 413, 422, 399, 393, 385, 399, 372, 396]
    assert convergence.flattens_at(ae) == 10  # 443 <= 1.2 × 372 < 504
    assert convergence.flattens_at(ae, within=0.10) == 15  # 399 <= 1.1 × 372 < 413


def test_longer_trains_the_tables_model_for_that_many_epochs(tmp_path, capsys):
    assert convergence.main(["--store", str(tmp_path), "--table", "table1", "--profile", "smoke",
                             "--longer", "ae:3"]) == 0
    out = capsys.readouterr().out
    assert "ae/3 epochs" in out and "val_loss over 3 epochs" in out and "first epoch within 20 % of the lowest" in out
    assert convergence.main(["--store", str(tmp_path), "--table", "table1", "--profile", "smoke",
                             "--longer", "ae:0"]) == 1
    assert "--longer takes METHOD:EPOCHS" in capsys.readouterr().err


def test_curve_falls_back_to_the_training_loss():
    c = convergence.curve_from_history("m", "", "k", [{"stage": "train", "epoch": i, "loss": 1.0 / (i + 1)}
                                                       for i in range(3)])
    assert c.loss == "train:loss" and [v for _, _, v in c.rows] == [1.0, 0.5, 1.0 / 3]


def _smoke(name: str, store):
    cls = get_method(name)
    torch.manual_seed(0)
    method = cls.build(configure(cls, get_profile("smoke")), device="cpu", data=DataSpec.of(store))
    method.config = method.config.replace(epochs=3, batch_size=2, max_steps=None)
    return method


@pytest.mark.parametrize("name", ["afsc", "itermask2"])
def test_validation_monitor_changes_no_trained_weight(name, toy_store, monkeypatch):
    """The validation loss only monitors: the weights equal those trained without it, bit for bit."""
    train, val = toy_store.split("train").take(4), toy_store.split("val")
    watched = _smoke(name, toy_store)
    assert not any(s.select_best for s in watched.stages())  # the last epoch's weights are kept, as before
    report = Trainer(seed=0, progress=False, max_steps_per_epoch=2).fit(watched, train, val)
    assert len(report["history"]) == report["epochs_run"] == 3
    assert all(isinstance(r.get("val_loss"), float) for r in report["history"])
    monkeypatch.setattr(type(watched), "validation_loss", Trainable.validation_loss)
    plain = _smoke(name, toy_store)
    report = Trainer(seed=0, progress=False, max_steps_per_epoch=2).fit(plain, train, val)
    assert not any("val_loss" in r for r in report["history"])
    a, b = watched.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["afsc", "itermask2"])
def test_validation_loss_does_not_depend_on_the_batch(name, toy_store):
    method = _smoke(name, toy_store)
    method.train_mode(False)
    val = toy_store.split("val")
    whole = [b for b in val.batches(len(val))][0]
    parts = [(method.validation_loss(b), len(b)) for b in val.batches(1)]
    assert method.validation_loss(whole) == pytest.approx(sum(v * n for v, n in parts) / len(val), rel=1e-5)
    assert method.validation_loss(whole) == method.validation_loss(whole)


def test_a_resumed_fit_reports_the_history_of_every_segment(toy_store, tmp_path, monkeypatch):
    from methods.ae import AE

    train, val, ckpt = toy_store.split("train").take(4), toy_store.split("val").take(2), tmp_path / "ckpt.pt"
    method = AE(AE.Config(epochs=3, batch_size=4, early_stop_patience=None))
    original = AE.on_epoch_end

    def stop_after_epoch_1(self, step):  # the process dies in epoch 2, before its checkpoint
        original(self, step)
        if step.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(AE, "on_epoch_end", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(seed=0, checkpoint=ckpt, progress=False).fit(method, train, val)
    monkeypatch.setattr(AE, "on_epoch_end", original)
    report = Trainer(seed=0, checkpoint=ckpt, progress=False).fit(method, train, val)
    assert [s["epochs_run"] for s in report["segments"]] == [2, 1]
    assert [(r["stage"], r["epoch"]) for r in report["history"]] == [("train", 0), ("train", 1), ("train", 2)]
    assert all("val_loss" in r and "l1" in r for r in report["history"])
