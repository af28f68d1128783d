"""PHANES's two tables end to end in the smoke profile on the layout-faithful miniature release (IXI + fastMRI+
for training and Table 1, ATLAS v2.0 BIDS for Table 2), guarded by the stored smoke references."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmark.registry import get_table
from protocols.tables import PAPER_TABLES_CSV
from tests.table_runs import assert_smoke_references_guard, run_smoke_tables, table_rows

PHANES_TABLES = ("phanes-table1", "phanes-table2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phanes_runs(tmp_path_factory):
    return run_smoke_tables(tmp_path_factory.mktemp("phanes"), PHANES_TABLES)


def test_every_paper_row_and_column_is_computed(phanes_runs):
    tmp, runs = phanes_runs
    paper = pd.read_csv(PAPER_TABLES_CSV, dtype=str, keep_default_na=False)
    for table_id, res in runs.items():
        assert not res.failures, (table_id, res.failures)
        spec = get_table(table_id)
        want = paper[paper.table_id == table_id]
        rows = table_rows(res)
        assert set(zip(want.method, want.variant)) == set(zip(rows.method, rows.variant)), table_id
        for p in want.itertuples():
            ids = spec.paper_metric_ids[p.metric]
            ids = (ids,) if isinstance(ids, str) else ids
            cell = rows[(rows.method == p.method) & (rows.variant == p.variant) & (rows.column_group == p.column_group)
                        & rows.metric_id.isin(ids)]
            mid = cell.metric_id.iloc[0] if len(cell) else ids
            cell = rows[(rows.method == p.method) & (rows.variant == p.variant) & (rows.column_group == p.column_group)
                        & (rows.metric_id == mid)]
            assert len(cell) == 1, (table_id, p.method, p.variant, p.column_group, mid)
    # one model per method: PHANES inpaints on the ra row's model, and table 2's merged store holds table 1's
    # training slices, so every baseline trains once for both tables
    models = list((tmp / "runs" / "smoke" / "models").iterdir())
    assert len(models) == len({m for t in PHANES_TABLES for m, _ in get_table(t).methods})


def test_table2_scores_atlas_slice_95_only(phanes_runs):
    _, runs = phanes_runs
    rows = runs["phanes-table2"].rows
    assert set(rows["dataset"]) == {"atlas2"} and (rows["n"] > 0).all()


def test_stored_smoke_references_guard_both_tables(phanes_runs):
    assert_smoke_references_guard(phanes_runs[0], PHANES_TABLES)
