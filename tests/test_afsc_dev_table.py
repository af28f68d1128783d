"""The phantom T2 development table: every AFSC-table row on the phantom's T2 contrast, end to end (smoke)."""

from __future__ import annotations

from benchmark.runner import run_table
from protocols.stats import as_text
from protocols.tables import AFSC_METRIC_IDS, AFSC_ROWS


def test_phantom_t2_development_table_lists_every_afsc_row(tmp_path):
    res = run_table("afsc-dev", profile="smoke", store=tmp_path / "runs", out=tmp_path / "out", progress=False)
    assert not res.failures, res.failures
    rows = res.rows.assign(variant=as_text(res.rows["variant"]))
    assert set(zip(rows.method, rows.variant)) == set(AFSC_ROWS)
    assert set(rows.metric_id) == set(AFSC_METRIC_IDS)
