"""Statistics over runs and subjects: mean ± std over seeds, bootstrap CIs, paired tests.

Why: the papers print ± without saying over what (``specs/evaluation.md`` "Statistics"). The suite
reports mean ± std over seeds (population std, ddof = 0), a per-subject bootstrap 95 % CI, and names the
paired test behind any significance mark (Wilcoxon signed-rank, or a paired bootstrap for pooled metrics).
Every function is seeded and returns plain dicts so the numbers can go into result rows.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

__all__ = ["mean_std", "aggregate_seeds", "bootstrap_ci", "bootstrap_pooled", "bootstrap_replicates",
           "paired_test", "paired_bootstrap_test", "as_text", "DEFAULT_SEED", "GROUP_KEYS"]

DEFAULT_SEED = 2109
GROUP_KEYS = ["table_id", "method", "variant", "dataset", "column_group", "metric", "metric_id"]


def _finite(values: Any, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(v)
    if bad.any():
        warnings.warn(f"{name}: dropping {int(bad.sum())} non-finite value(s)", RuntimeWarning, stacklevel=3)
        v = v[~bad]
    return v


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and population std (ddof = 0) of finite values, with their count; NaN (and n = 0) if none."""
    v = _finite(values, "mean_std")
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "n": int(v.size)}


def as_text(col: pd.Series) -> pd.Series:
    """A key column as strings with missing cells as "" (an all-empty column reads back from CSV as float NaN)."""
    return col.astype(object).where(col.notna(), "").astype(str)


def aggregate_seeds(rows: pd.DataFrame, by: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """Long rows (one per seed) → one row per cell with ``mean``, ``std`` (ddof 0), ``n_seeds``, ``seeds``.

    Missing grouping columns are treated as empty strings so partial frames still aggregate.
    """
    df = rows.copy()
    for c in by:
        if c not in df.columns:
            df[c] = ""
        df[c] = as_text(df[c])
    df["value"] = pd.to_numeric(df.get("value"), errors="coerce")
    if "seed" not in df.columns:
        df["seed"] = ""
    out = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        ms = mean_std(g["value"].dropna().to_numpy()) if g["value"].notna().any() else \
            {"mean": math.nan, "std": math.nan, "n": 0}
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        rec.update(mean=ms["mean"], std=ms["std"], n_seeds=ms["n"],
                   seeds=",".join(sorted({str(s) for s in g["seed"] if str(s) not in ("", "nan")})))
        for extra in ("scale", "note"):
            if extra in g.columns:
                vals = [str(x) for x in g[extra].dropna().unique() if str(x) not in ("", "nan")]
                rec[extra] = "; ".join(vals)
        out.append(rec)
    return pd.DataFrame(out)


def bootstrap_ci(values: Sequence[float], *, subjects: Sequence[Any] | None = None, n_boot: int = 2000,
                 seed: int = DEFAULT_SEED, ci: float = 0.95,
                 statistic: Callable[[np.ndarray], float] = np.mean) -> dict[str, float]:
    """Percentile bootstrap CI of ``statistic`` of per-item values, resampling *subjects* (all slices of a
    subject travel together, so slices of one brain do not count as independent evidence).

    ``subjects`` None = every value is its own subject. NaN values are dropped (with a warning).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    sub = np.arange(v.size) if subjects is None else np.asarray(list(subjects), dtype=object)
    if sub.size != v.size:
        raise ValueError(f"{sub.size} subject ids for {v.size} values")
    keep = np.isfinite(v)
    if not keep.all():
        warnings.warn(f"bootstrap_ci: dropping {int((~keep).sum())} non-finite value(s)", RuntimeWarning, stacklevel=2)
    v, sub = v[keep], sub[keep]
    if v.size == 0:
        return {"estimate": math.nan, "lo": math.nan, "hi": math.nan, "boot_std": math.nan, "n_boot": n_boot,
                "n_subjects": 0, "method": "percentile bootstrap over subjects"}
    n_subjects = len(_subject_groups(sub))
    if n_subjects < 2:  # resampling one subject only ever redraws it: a zero-width interval would be a lie
        warnings.warn("bootstrap_ci: one subject only, no interval over subjects", RuntimeWarning, stacklevel=2)
        return {"estimate": float(statistic(v)), "lo": math.nan, "hi": math.nan, "boot_std": math.nan,
                "n_boot": n_boot, "n_subjects": n_subjects, "method": "percentile bootstrap over subjects"}
    stats = bootstrap_replicates(lambda idx: statistic(v[idx]), sub, n_boot=n_boot, seed=seed, quiet=False)[:, 0]
    a = (1.0 - ci) / 2.0
    return {"estimate": float(statistic(v)), "lo": float(np.quantile(stats, a)), "hi": float(np.quantile(stats, 1 - a)),
            "boot_std": float(stats.std(ddof=0)), "n_boot": int(n_boot), "n_subjects": n_subjects,
            "method": "percentile bootstrap over subjects"}


def _subject_groups(subjects: Sequence[Any]) -> list[np.ndarray]:
    sub = np.asarray(list(subjects), dtype=object)
    _, inv = np.unique(sub.astype(str), return_inverse=True)
    return [np.flatnonzero(inv == k) for k in range(inv.max() + 1)] if sub.size else []


def bootstrap_replicates(metric: Callable[[np.ndarray], Any], subjects: Sequence[Any], *, n_boot: int = 1000,
                         seed: int = DEFAULT_SEED, quiet: bool = True) -> np.ndarray:
    """``metric(indices)`` on ``n_boot`` resamples of the subjects (each drawn with all its items):
    an array [n_boot, k] for a metric returning k numbers (one float → k = 1). ``quiet``: RuntimeWarnings of
    single resamples (a resample without lesions) are silenced; such replicates come back NaN."""
    groups = _subject_groups(subjects)
    rng = np.random.default_rng(seed)
    reps = []
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_boot):
            pick = rng.integers(0, len(groups), len(groups))
            reps.append(np.atleast_1d(np.asarray(metric(np.concatenate([groups[k] for k in pick])), np.float64)))
    return np.stack(reps) if reps else np.empty((0, 1))


def bootstrap_pooled(metric: Callable[[np.ndarray], float], subjects: Sequence[Any], *, n_boot: int = 1000,
                     seed: int = DEFAULT_SEED, ci: float = 0.95) -> dict[str, float]:
    """Bootstrap of a *pooled* metric (pooled AUPRC, ⌈Dice⌉): ``metric(indices)`` recomputes it on the
    given item (slice) indices; subjects are resampled with all their slices. Cost: n_boot metric calls."""
    s = bootstrap_replicates(metric, subjects, n_boot=n_boot, seed=seed)[:, 0]
    s = s[np.isfinite(s)]
    a = (1.0 - ci) / 2.0
    return {"estimate": float(metric(np.arange(len(subjects)))),
            "lo": float(np.quantile(s, a)) if s.size else math.nan,
            "hi": float(np.quantile(s, 1 - a)) if s.size else math.nan,
            "boot_std": float(s.std(ddof=0)) if s.size else math.nan, "n_boot": int(n_boot),
            "n_valid": int(s.size), "n_subjects": len(_subject_groups(subjects)),
            "method": "percentile bootstrap over subjects (pooled)"}


def paired_test(a: Sequence[float], b: Sequence[float], *, alternative: str = "two-sided",
                alpha: float = 0.05) -> dict[str, Any]:
    """Wilcoxon signed-rank test of a − b on the same subjects/slices (scipy.stats.wilcoxon, zero
    differences dropped by its default 'wilcox' rule). Pairs with a NaN on either side are dropped.
    ``alternative='greater'`` tests a > b. All-zero differences give p = NaN with a warning."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired_test needs equal lengths, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    d = x - y
    out: dict[str, Any] = {"test": "wilcoxon_signed_rank", "alternative": alternative, "n": int(d.size),
                           "n_dropped_nan": int((~keep).sum()), "mean_diff": float(d.mean()) if d.size else math.nan,
                           "median_diff": float(np.median(d)) if d.size else math.nan}
    if d.size == 0 or not np.any(d != 0):
        warnings.warn("paired_test: no non-zero paired difference, p undefined", RuntimeWarning, stacklevel=2)
        out.update(statistic=math.nan, p=math.nan, significant=False)
        return out
    res = wilcoxon(x, y, alternative=alternative)
    out.update(statistic=float(res.statistic), p=float(res.pvalue), significant=bool(res.pvalue < alpha))
    return out


def paired_bootstrap_test(metric_a: Callable[[np.ndarray], float], metric_b: Callable[[np.ndarray], float],
                          subjects: Sequence[Any], *, n_boot: int = 10000, seed: int = DEFAULT_SEED,
                          alpha: float = 0.05) -> dict[str, Any]:
    """One-sided paired bootstrap for pooled metrics (PHANES ``*``): resample subjects once per round, apply
    both methods' metric to the same indices; p = fraction of rounds with metric_a − metric_b ≤ 0."""
    sub = np.asarray(list(subjects), dtype=object)
    diffs = bootstrap_replicates(lambda idx: metric_a(idx) - metric_b(idx), sub, n_boot=n_boot, seed=seed)[:, 0]
    diffs = diffs[np.isfinite(diffs)]
    p = float((np.sum(diffs <= 0) + 1) / (diffs.size + 1)) if diffs.size else math.nan
    full = np.arange(sub.size)
    return {"test": "paired_bootstrap_one_sided", "n_boot": int(n_boot), "n_valid": int(diffs.size),
            "diff": float(metric_a(full) - metric_b(full)), "p": p, "significant": bool(p < alpha)}
