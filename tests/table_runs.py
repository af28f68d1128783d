"""Shared by the paper-table tests: run tables once per module in the smoke profile, read their rows, and run the
CI regression check on the finished runs (so every paper's test file does it the same way)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.cli import main
from benchmark.runner import run_table
from protocols.stats import as_text

REPO = Path(__file__).resolve().parents[1]


def run_smoke_tables(tmp: Path, tables: tuple[str, ...]) -> tuple[Path, dict]:
    """(tmp, {table id: TableResult}) with one run store for all, so models shared by tables train once."""
    return tmp, {t: run_table(t, profile="smoke", store=tmp / "runs", out=tmp / "out", progress=False)
                 for t in tables}


def table_rows(res) -> pd.DataFrame:
    """A table result's rows with variant and column group as text ('' for none)."""
    return res.rows.assign(variant=as_text(res.rows["variant"]), column_group=as_text(res.rows["column_group"]))


def assert_smoke_references_guard(tmp: Path, tables: tuple[str, ...]) -> None:
    """The stored smoke references exist and `phbench check` on the finished runs finds no regression."""
    for t in tables:
        assert (REPO / "results" / "smoke" / f"{t}.csv").is_file(), f"create it with `phbench check {t} --update`"
    assert main(["check", *tables, "--profile", "smoke", "--store", str(tmp / "runs"),
                 "--out", str(tmp / "out-check")]) == 0
