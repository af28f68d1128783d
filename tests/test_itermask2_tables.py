"""IterMask2's three tables end to end in the smoke profile on the layout-faithful miniature release (BraTS2021
for Tables 1 and 3, ISLES 2015 in 4-fold cross-validation and ATLAS v2.0 for Table 2), every row of the paper,
guarded by the stored smoke references."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmark.registry import get_table
from benchmark.runstore import RunStore
from protocols.tables import PAPER_TABLES_CSV
from tests.table_runs import assert_smoke_references_guard, run_smoke_tables, table_rows as _rows

TABLES = ("itermask2-table1", "itermask2-table2", "itermask2-table3")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_smoke_tables(tmp_path_factory.mktemp("itermask2"), TABLES)


def test_every_paper_cell_has_a_computed_number(runs):
    _, by_table = runs
    paper = pd.read_csv(PAPER_TABLES_CSV, dtype=str, keep_default_na=False)
    for table_id, res in by_table.items():
        assert not res.failures, (table_id, res.failures)
        spec = get_table(table_id)
        ours = {paper_row: row for row, paper_row in spec.paper_rows.items()}
        rows = _rows(res)
        for p in paper[paper.table_id == table_id].itertuples():
            method, variant = ours.get((p.method, p.variant), (p.method, p.variant))
            cell = rows[(rows.method == method) & (rows.variant == variant) & (rows.column_group == p.column_group)
                        & (rows.metric == p.metric)]
            if method == "cyclic-unet" and p.column_group == "ATLAS T1":
                assert cell.empty  # the paper's "–": ATLAS has no second modality
                continue
            assert len(cell) == 1, (table_id, method, variant, p.column_group, p.metric)
            assert cell["metric_id"].iloc[0].endswith(("|itermask2", "itermask2_code"))


def test_isles_pools_the_four_folds_and_autoddpm_reuses_ddpm(runs):
    tmp, by_table = runs
    rows = _rows(by_table["itermask2-table2"])
    isles = rows[rows.column_group == "ISLES FLAIR"]
    assert (isles["n"] == 28).all()  # every ISLES case is tested once, in its fold, and pooled
    store = RunStore(tmp / "runs" / "smoke")
    key = isles[(isles.method == "autoddpm")]["run_key"].iloc[0]
    info = json.loads((store.root / key / "run.json").read_text())
    assert len(info["training"]["folds"]) == 4 and len(info["calibration"]) == 4
    # AutoDDPM trains nothing: in every column its upstream is the model the ddpm row trained before it
    for res in by_table.values():
        assert not [t for t in res.trained if "autoddpm" in t], res.trained


def test_grey_rows_are_labelled_and_each_image_gets_its_own_best(runs):
    _, by_table = runs
    rows = _rows(by_table["itermask2-table1"])
    for method in ("dae", "itermask2"):
        grey = rows[(rows.method == method) & (rows.variant == "oracle") & (rows.metric == "dice")]
        assert len(grey) == 4 and grey["note"].str.contains("grey row").all()
    white = rows[(rows.method == "dae") & (rows.variant == "noise[0,+inf]") & (rows.metric == "dice")]
    grey = rows[(rows.method == "dae") & (rows.variant == "oracle") & (rows.metric == "dice")]
    for g in ("FLAIR", "T1CE", "T2", "T1"):
        assert float(grey[grey.column_group == g]["value"].iloc[0]) >= float(white[white.column_group == g]["value"].iloc[0])


def test_stored_smoke_references_guard_all_three_tables(runs):
    assert_smoke_references_guard(runs[0], TABLES)
