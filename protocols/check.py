"""Regression check: compare freshly computed result rows with stored ones, cell by cell.

Why: ``phbench check`` (the lead's CLI) must fail loudly when a code change moves a number. Cells are
aggregated over seeds (mean) on both sides and compared on the row's own scale; a cell regresses when
the fresh mean is *worse* than the stored one by more than its tolerance (direction from the metric
registry), turns NaN, or disappears. With ``two_sided=True`` improvements beyond tolerance are reported
too (useful when a result is supposed to be bit-identical).

Tolerance lookup, first hit wins: ``"<table_id>:<metric_id>"``, ``metric_id``, ``metric``, ``table_id``,
``"default"`` (0.0 when absent). Tolerances are absolute, on the rows' scale.
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

from protocols.metrics import metric_spec
from protocols.stats import aggregate_seeds

__all__ = ["check", "CELL_KEYS", "tolerance_for"]

CELL_KEYS = ["table_id", "method", "variant", "dataset", "column_group", "metric", "metric_id"]


def tolerance_for(tolerances: Mapping[str, float], table_id: str, metric: str, metric_id: str) -> float:
    for key in (f"{table_id}:{metric_id}", metric_id, metric, table_id, "default"):
        if key in tolerances:
            return float(tolerances[key])
    return 0.0


def _cells(df: pd.DataFrame) -> dict[tuple[str, ...], float]:
    if df is None or not len(df):
        return {}
    d = df.copy()
    for c in CELL_KEYS:
        if c not in d.columns:
            d[c] = ""
        d[c] = d[c].fillna("").astype(str)
    d.loc[d["metric_id"] == "", "metric_id"] = d.loc[d["metric_id"] == "", "metric"]
    agg = aggregate_seeds(d, by=CELL_KEYS)
    return {tuple(r[c] for c in CELL_KEYS): float(r["mean"]) for _, r in agg.iterrows()}


def check(fresh: pd.DataFrame, stored: pd.DataFrame, tolerances: Mapping[str, float], *,
          two_sided: bool = False) -> list[str]:
    """One line per regressed cell (table, method, variant, dataset, group, metric id, stored, fresh,
    tolerance); empty list = no regression. Cells only in ``fresh`` are new, not regressions."""
    new, old = _cells(fresh), _cells(stored)
    out: list[str] = []
    for key, s in old.items():
        table, method, variant, dataset, group, metric, mid = key
        tol = tolerance_for(tolerances, table, metric, mid)
        where = (f"table={table} method={method} variant={variant!r} dataset={dataset} column_group={group!r} "
                 f"metric={mid}")
        if key not in new:
            out.append(f"MISSING {where}: stored={s:.6g}, no fresh value (tolerance={tol:g})")
            continue
        f = new[key]
        if math.isnan(s) and math.isnan(f):
            continue
        if math.isnan(f):
            out.append(f"REGRESSED {where}: stored={s:.6g} fresh=nan (tolerance={tol:g})")
            continue
        if math.isnan(s):
            continue  # a number where there was none is not a regression
        worse = (s - f) if metric_spec(mid).higher_is_better else (f - s)
        if worse > tol + 1e-12:
            out.append(f"REGRESSED {where}: stored={s:.6g} fresh={f:.6g} worse by {worse:.6g} (tolerance={tol:g})")
        elif two_sided and -worse > tol + 1e-12:
            out.append(f"CHANGED {where}: stored={s:.6g} fresh={f:.6g} better by {-worse:.6g} (tolerance={tol:g})")
    return out
