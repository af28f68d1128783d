"""Regression check: compare freshly computed result rows with stored ones, cell by cell.

Why: ``phbench check`` (the lead's CLI) must fail loudly when a code change moves a number. Cells are
aggregated over seeds (mean) on both sides and compared on the row's own scale; a cell regresses when
the fresh mean is *worse* than the stored one by more than its tolerance (direction from the metric
registry), turns NaN, or disappears. With ``two_sided=True`` improvements beyond tolerance are reported
too (useful when a result is supposed to be bit-identical).

Tolerance lookup, first hit wins: ``"<table_id>:<metric_id>"``, ``metric_id``, ``metric``, ``table_id``,
``"default"`` (0.0 when absent). Tolerances are absolute, on the rows' scale; ``None`` leaves the cell
unchecked (LPIPS: its ImageNet trunk is an optional offline asset, so a machine without it gets NaN cells).

Statistical floor: when the stored rows carry ``se`` (the bootstrap standard error over test subjects that
``protocols.evaluate.standard_rows`` writes), a cell's tolerance is ``max(tolerance, se_factor × se)``. A
move smaller than the test set's own sampling noise is not evidence of a code change: e.g. image AUROC on
the 36 smoke slices has se ≈ 0.05–0.1, and two CPUs with different SIMD kernels train slightly different
smoke models that land anywhere in that band.
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

from protocols.metrics import metric_spec
from protocols.stats import aggregate_seeds, as_text

__all__ = ["check", "CELL_KEYS", "tolerance_for"]

CELL_KEYS = ["table_id", "method", "variant", "dataset", "column_group", "metric", "metric_id"]


def tolerance_for(tolerances: Mapping[str, float | None], table_id: str, metric: str, metric_id: str
                  ) -> float | None:
    """The first matching tolerance; ``None`` (JSON null) means the cell is not checked."""
    for key in (f"{table_id}:{metric_id}", metric_id, metric, table_id, "default"):
        if key in tolerances:
            v = tolerances[key]
            return None if v is None else float(v)
    return 0.0


def _cells(df: pd.DataFrame, column: str = "mean") -> dict[tuple[str, ...], float]:
    """Cell key → mean over seeds of ``value`` (``column="mean"``) or of ``se`` (``column="se"``)."""
    if df is None or not len(df):
        return {}
    d = df.copy()
    for c in CELL_KEYS:
        if c not in d.columns:
            d[c] = ""
        d[c] = as_text(d[c])
    d.loc[d["metric_id"] == "", "metric_id"] = d.loc[d["metric_id"] == "", "metric"]
    if column == "se":
        d["value"] = pd.to_numeric(d["se"], errors="coerce") if "se" in d.columns else math.nan
    agg = aggregate_seeds(d, by=CELL_KEYS)
    return {tuple(r[c] for c in CELL_KEYS): float(r["mean"]) for _, r in agg.iterrows()}


def check(fresh: pd.DataFrame, stored: pd.DataFrame, tolerances: Mapping[str, float], *,
          two_sided: bool = False, se_factor: float = 2.0) -> list[str]:
    """One line per regressed cell (table, method, variant, dataset, group, metric id, stored, fresh,
    tolerance); empty list = no regression. Cells only in ``fresh`` are new, not regressions.
    ``se_factor=0`` ignores the stored standard errors (plain absolute tolerances)."""
    new, old, old_se = _cells(fresh), _cells(stored), _cells(stored, "se")
    out: list[str] = []
    for key, s in old.items():
        table, method, variant, dataset, group, metric, mid = key
        tol = tolerance_for(tolerances, table, metric, mid)
        if tol is None:
            continue  # unchecked by design (e.g. a metric that needs optional offline weights)
        se = old_se.get(key, math.nan)
        if se_factor > 0 and math.isfinite(se) and se_factor * se > tol:
            tol = se_factor * se
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
