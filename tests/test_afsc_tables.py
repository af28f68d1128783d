"""AFSC's two tables end to end in the smoke profile on the layout-faithful miniature release (HCP T2 for training,
BraTS2017 and ISBI 2015 for testing), every row of the paper, guarded by the stored smoke references."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from protocols.tables import AFSC_METRIC_IDS, PAPER_TABLES_CSV
from tests.table_runs import assert_smoke_references_guard, run_smoke_tables, table_rows as _rows

TABLES = ("afsc-table1", "afsc-table2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_smoke_tables(tmp_path_factory.mktemp("afsc"), TABLES)


def test_every_paper_cell_has_a_computed_number_beside_it(runs):
    tmp, by_table = runs
    paper = pd.read_csv(PAPER_TABLES_CSV, dtype=str, keep_default_na=False)
    for table_id, res in by_table.items():
        assert not res.failures, (table_id, res.failures)
        rows = _rows(res)
        expected = paper[paper.table_id == table_id]
        assert len(expected) == 50  # ten rows × five metrics
        for p in expected.itertuples():
            cell = rows[(rows.method == p.method) & (rows.variant == p.variant) & (rows.metric == p.metric)
                        & (rows.column_group == p.column_group)]
            assert len(cell) == 1, (table_id, p.method, p.variant, p.metric)
            assert cell["metric_id"].iloc[0] in AFSC_METRIC_IDS
        md = next((tmp / "out").rglob(f"{table_id}.md")).read_text()
        afsc_auroc = expected[(expected.method == "afsc") & (expected.variant == "") & (expected.metric == "auroc")]
        assert f"{float(afsc_auroc['value'].iloc[0]):.3f}" in md  # the paper's number sits beside ours


def test_both_tables_share_the_hcp_models_and_draem_g_trains_nothing(runs):
    by_table = runs[1]
    first, second = by_table["afsc-table1"], by_table["afsc-table2"]
    trained = list(first.trained)
    assert not [t for t in trained if "draem_g" in t], trained
    assert len([t for t in trained if t.startswith("draem")]) == 2  # DRAEM and DRAEM w/ AFSCm, once each
    # Table 2 tests the same HCP-trained models on MS-SEG2015: nothing is trained again
    assert not second.trained, second.trained
    rows1, rows2 = _rows(first), _rows(second)
    assert rows1["dataset"].eq("brats2017").all() and rows2["dataset"].eq("msseg2015").all()
    store = runs[0] / "runs" / "smoke"

    def train_keys(rows):
        return {json.loads((store / k / "run.json").read_text())["train_key"] for k in set(rows["run_key"])}
    assert train_keys(rows1) == train_keys(rows2)  # the same HCP-trained models score both test sets


def test_stored_smoke_references_guard_both_tables(runs):
    assert_smoke_references_guard(runs[0], TABLES)
