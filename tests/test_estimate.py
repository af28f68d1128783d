"""``phbench estimate``: a table's plan × measured seconds per slice, on a fake throughput JSON.

The hours are checked against a hand computation from the store's split sizes and the smoke configs; a model or a
scored set that two rows or two tables share is counted once; a method without a figure is named with the remedy;
a table on a release that is not here is planned on the published split sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import PhbenchError
from benchmark.estimate import PUBLISHED, Throughput, estimate, published_setups, report
from benchmark.profiles import configure, get_profile
from benchmark.registry import all_methods, get_method, get_table

TRAIN_SPS, SCORE_SPS, CAL_S, CAL_N = 40.0, 160.0, 3.0, 12  # the fake figures (any positive numbers do)


def fake(tmp_path: Path, methods: tuple[str, ...], size: int = 128, name: str = "tp.json") -> Path:
    rows = [{"method": m, "device": "cpu", "device_name": "Fake CPU", "dtype": "fp32", "size": size,
             "train_sps": TRAIN_SPS, "score_sps": SCORE_SPS, "calibrate_s": CAL_S, "calibrate_slices": CAL_N,
             "train_steps": 5, "score_passes": None, "load_avg": 0.5} for m in methods]
    rows.append({"method": "draem", "device": "cpu", "error": "RuntimeError: out of memory"})  # never used
    path = tmp_path / name
    path.write_text(json.dumps({"header": {"threads": 1, "load_avg_before": 0.5, "load_avg_after": 0.7},
                                "rows": rows}))
    return path


def smoke_counts(table_id: str) -> tuple[int, int, int]:
    """Train / val / test slices one smoke run of the table plans (the profile caps the store's splits)."""
    prof = get_profile("smoke")
    store = get_table(table_id).store("smoke")
    n = [len(store.split("train", label=0)), len(store.split("val", label=0)), len(store.split("test"))]
    return min(n[0], prof.max_train_slices), n[1], min(n[2], prof.max_test_slices)


def test_hours_match_a_hand_computation(tmp_path):
    tp = Throughput.load(fake(tmp_path, ("ae",)))
    est = estimate(["table1"], tp, profile="smoke", methods=["ae"])
    n_train, n_val, n_test = smoke_counts("table1")
    cfg = configure(get_method("ae"), get_profile("smoke"))
    slices = cfg.epochs * (n_train // cfg.batch_size) * cfg.batch_size  # one stage; ae's smoke budget has no cap
    line = est.tables[0].lines["ae"]
    assert line.models == 1 and line.train_slices == slices and line.scored_slices == n_test + n_val
    assert line.train_h == pytest.approx(slices / TRAIN_SPS / 3600)
    assert line.score_h == pytest.approx(((n_test + n_val) / SCORE_SPS + n_val * CAL_S / CAL_N) / 3600)
    text = report(est)
    assert "Fake CPU" in text and "5 timed training steps" in text and "prepared store" in text


def test_shared_models_and_scores_count_once(tmp_path):
    """PHANES trains on RA: table1's ra row and phanes's upstream are one model; table1-detail re-evaluates table1's
    models on the same test slices, so it adds nothing."""
    tp = Throughput.load(fake(tmp_path, ("ra", "phanes")))
    one = estimate(["table1"], tp, profile="smoke", methods=["ra", "phanes"])
    ra = one.tables[0].lines["ra"]
    assert (ra.models, ra.shared) == (1, 1)
    both = estimate(["table1", "table1-detail"], tp, profile="smoke", methods=["ra", "phanes"])
    detail = both.tables[1].lines
    assert all(x.models == 0 and x.scored_slices == 0 for x in detail.values())
    assert sum(x.shared for x in detail.values()) == 3  # ra, phanes's ra, phanes
    assert both.total_h == pytest.approx(one.total_h)


def test_missing_figure_says_so(tmp_path):
    path = fake(tmp_path, ("ra",))
    est = estimate(["table1"], Throughput.load(path), profile="smoke", methods=["ra", "phanes"])
    assert est.tables[0].lines["phanes"].total_h is None
    assert "no figure for phanes" in est.missing["phanes"] and "--methods phanes" in est.missing["phanes"]
    text = report(est)
    assert "no figure" in text and "1 rows without a figure" in text
    assert est.tables[0].total_h == pytest.approx(est.tables[0].lines["ra"].total_h)


def test_size_and_passes_scale_the_figure(tmp_path):
    at128 = estimate(["table1"], Throughput.load(fake(tmp_path, ("ae",))), profile="smoke", methods=["ae"])
    at64 = estimate(["table1"], Throughput.load(fake(tmp_path, ("ae",), size=64, name="64.json")), profile="smoke",
                    methods=["ae"])
    assert at64.total_h == pytest.approx(4 * at128.total_h)  # 128-px slices measured at 64 px: 4× the pixels
    assert any("scaled by the pixel count" in n for n in at64.notes)
    chains = {"ddpm", "anoddpm", "autoddpm", "anogan"}  # the methods whose scoring length is a config field
    for name, cls in all_methods().items():  # the benchmark times fewer passes than the paper's chains
        cfg = configure(cls, get_profile("paper"))
        if name not in chains:
            assert cls.score_passes(cfg) is None and cls.score_passes_capped(cfg, 4) == {}
            continue
        assert cls.score_passes(cfg.replace(**cls.score_passes_capped(cfg, 4))) < cls.score_passes(cfg)


def test_published_sizes_stand_in_for_an_absent_release(tmp_path):
    """itermask2-table1 without --root: the BraTS lists × the recipe's 20-slice band, one model per modality."""
    from datasets.recipes_paper import SETUPS
    from datasets.splits import read_csv

    before = dict(SETUPS)
    est = estimate(["itermask2-table1"], Throughput.load(fake(tmp_path, ("itermask2",))), profile="default",
                   methods=["itermask2"])
    assert SETUPS == before  # the real setups are back
    n_train = len(read_csv("itermask2/brats2021_train.csv")) * 20
    cfg = configure(get_method("itermask2"), get_profile("default"))
    line = est.tables[0].lines["itermask2"]
    assert line.models == 4 and line.train_slices == 4 * cfg.epochs * (n_train // cfg.batch_size) * cfg.batch_size
    assert "itermask2-brats2021-flair" in report(est) and "an upper bound" in report(est)
    with published_setups():
        for sid in PUBLISHED:  # every published entry resolves (lists present, recipe known) to some slices
            store = SETUPS[sid].prepare(None)
            assert sum(store.counts.values()) > 0 and store.source and store.images.shape[-1] in (128, 256)


def test_bad_throughput_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PhbenchError, match="bad.json: not a throughput JSON"):
        Throughput.load(bad)
    with pytest.raises(PhbenchError, match="no figures measured on 'cuda'"):
        Throughput.load(fake(tmp_path, ("ae",)), "cuda")
    assert main(["estimate", "table1", "--profile", "smoke", "--throughput", str(tmp_path / "absent.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.json: no throughput figures" in err[0]
    assert main(["estimate", "table1", "--profile", "smoke", "--methods", "ae", "--throughput",
                 str(fake(tmp_path, ("ae",)))]) == 0
    assert "### table1" in capsys.readouterr().out


def test_rows_of_the_runs_own_profile_are_preferred_and_others_are_flagged(tmp_path):
    """A figure measured with another profile's networks prices a run only when no row of its own profile exists,
    and the report says so (the gpu profile trains default's networks)."""
    path = fake(tmp_path, ("ae",))
    doc = json.loads(path.read_text())
    doc["rows"][0]["profile"] = "paper"
    path.write_text(json.dumps(doc))
    flagged = report(estimate(["table1"], Throughput.load(path), profile="smoke", methods=["ae"]))
    assert "measured with the paper profile's networks, not the smoke profile's" in flagged
    own = dict(doc["rows"][0], profile="smoke", train_sps=TRAIN_SPS / 2)
    doc["rows"].append(own)
    path.write_text(json.dumps(doc))
    est = estimate(["table1"], Throughput.load(path), profile="smoke", methods=["ae"])
    slices = est.tables[0].lines["ae"].train_slices
    assert est.tables[0].lines["ae"].train_h == pytest.approx(slices / (TRAIN_SPS / 2) / 3600)
    assert "networks, not the" not in report(est)
