"""Render long-format result rows into paper-ready tables: CSV (long, provenance kept), Markdown, LaTeX.

Why: the result store keeps one row per (run, metric) (``benchmark.runstore.ROW_COLUMNS``); a reader
wants one cell per method and metric with mean ± std over seeds, the best and second-best marked, every
metric id / oracle threshold / substitution footnoted, and optionally the paper's printed number and our
difference beside it. Rendering never crashes on gaps: a missing cell prints "–", a method without rows
is listed in a footnote.

Cell layout: rows = (method, variant); columns = (dataset, column_group, metric, metric_id). A table has one
scale for its fraction-like numbers (the paper's when the paper's numbers sit beside ours, else the rows'):
ours and the paper's are converted to it (percent ↔ fraction), ``raw`` numbers never are. Two columns of one
metric get a short suffix from their ids ("dice (fpr 5 %)", "dice (oracle)"). The table files carry short
footnotes; ``<table>.notes.md`` beside them holds the notes and every method's full list of deviations.
Rows whose variant is ``oracle`` or ``GT`` (grey rows, sanity checks) are never ranked.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import pandas as pd
from tabulate import tabulate

from benchmark.io import atomic_write_text
from benchmark.runstore import ROW_COLUMNS, with_row_columns
from protocols.metrics import metric_spec
from protocols.stats import aggregate_seeds, as_text

__all__ = ["render_table", "markdown_table", "latex_table", "notes_markdown", "build_table", "Table", "MISSING",
           "UNRANKED_VARIANTS"]

MISSING = "–"
UNRANKED_VARIANTS = ("oracle", "GT")
_KEYS = ["method", "variant", "dataset", "column_group", "metric", "metric_id"]
_PAPER_KEYS = ["table_id", "method", "variant", "dataset", "column_group", "metric"]
_FRACTIONAL = ("percent", "fraction")  # the scales one table converts between (ties: percent)
ORACLE_MARK = "†"
ORACLE_NOTE = f"{ORACLE_MARK} ORACLE: threshold chosen on the test set, not comparable to calibrated numbers."


@dataclass
class Cell:
    mean: float = math.nan
    std: float = math.nan
    n_seeds: int = 0
    scale: str = ""
    paper: float = math.nan
    paper_std: float = math.nan
    paper_scale: str = ""
    paper_text: str = ""  # as printed (keeps the paper's digits)
    rank: int = 0  # 1 best, 2 second, 0 unranked
    ci_low: float = math.nan  # per-subject bootstrap 95 % CI (shown for single-seed cells)
    ci_high: float = math.nan
    note: str = ""
    mark: str = ""  # "*": significantly better than every other ranked row (paired test over subjects)

    @property
    def empty(self) -> bool:
        return not math.isfinite(self.mean)


@dataclass
class Table:
    table_id: str
    title: str
    columns: list[tuple[str, str, str, str]]  # dataset, column_group, metric, metric_id
    column_labels: list[str]  # one line: the varying dataset / column group, metric (suffix), oracle mark, [letter]
    rows: list[tuple[str, str]]  # method, variant
    row_labels: list[str]
    cells: dict[tuple[int, int], Cell]
    footnotes: list[str] = field(default_factory=list)  # the table's notes after the columns' own (column_notes)
    with_paper: bool = False
    tests: list[dict[str, Any]] = field(default_factory=list)  # every paired test behind a "*"
    column_parts: list[tuple[str, ...]] = field(default_factory=list)  # the varying (dataset, column_group) values
    column_heads: list[tuple[str, str, str, str]] = field(default_factory=list)  # metric, suffix, "†" or "", letter
    deviations: dict[str, list[str]] = field(default_factory=dict)  # method → every deviation (the notes file)
    scale: str = "fraction"
    column_notes: dict[str, str] = field(default_factory=dict)  # letter → "[a] `metric id`: description."

    @property
    def all_notes(self) -> list[str]:
        """Every footnote in print order: the columns' (their ids, the oracle mark), then the table's."""
        oracle = [ORACLE_NOTE] if any(h[2] for h in self.column_heads) else []
        return [*self.column_notes.values(), *oracle, *self.footnotes]


def _s(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def _decimals(scale: str, values: Sequence[float]) -> int:
    """Digits shown (and ranked on): 3 for fractions, 1 for percent (the same resolution), integers bare."""
    if scale == "percent":
        return 1
    if scale == "raw":
        fin = [v for v in values if math.isfinite(v)]
        if fin and all(float(v).is_integer() for v in fin):
            return 0
    return 3


def _fmt(v: float, d: int) -> str:
    if not math.isfinite(v):
        return MISSING
    s = f"{v:.{d}f}"
    return "0" if s in ("-0", "-0.0", "-0.00", "-0.000") and d == 0 else s.replace("-", "−")


def _to_scale(v: float, src: str, dst: str) -> float:
    """Convert between the CSV scales; raw and unknown scales are not converted."""
    if src == dst or not src or not dst:
        return v
    if src == "fraction" and dst == "percent":
        return v * 100.0
    if src == "percent" and dst == "fraction":
        return v / 100.0
    return v


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _table_rows(rows: pd.DataFrame | None, table_id: str) -> pd.DataFrame:
    """The long rows of ``table_id`` (or with no table id), with every ROW_COLUMNS column, in order."""
    df = with_row_columns(rows if rows is not None else pd.DataFrame(columns=ROW_COLUMNS))
    return df[as_text(df["table_id"]).isin([table_id, ""])] if len(df) else df


def build_table(rows: pd.DataFrame, *, table_id: str, title: str = "", footnotes: Sequence[str] = (),
                paper: pd.DataFrame | None = None, expected_methods: Sequence[str] = (),
                subjects: pd.DataFrame | None = None, reference_method: str = "",
                paper_metric_ids: Mapping[str, "str | tuple[str, ...]"] | None = None,
                deviations: Mapping[str, Sequence[str]] | None = None) -> Table:
    """Aggregate rows over seeds, lay them out, rank each column, mark significance and collect footnotes.

    ``subjects`` (per-subject values, ``RunStore.read_subjects``) enables the paired test: in each column
    the reference row (``reference_method``, else the best) gets ``*`` when a one-sided Wilcoxon
    signed-rank test over the common test subjects says it beats every other ranked row at p < 0.05.
    ``deviations`` (method → its deviations from its paper / code) are counted in the footnotes and listed in
    full in the notes file.
    """
    df = _table_rows(rows, table_id)
    for c in _KEYS + ["scale"]:
        df[c] = as_text(df[c])
    df.loc[df["metric_id"] == "", "metric_id"] = df.loc[df["metric_id"] == "", "metric"]
    agg = aggregate_seeds(df, by=_KEYS) if len(df) else pd.DataFrame(columns=_KEYS + ["mean", "std", "n_seeds", "scale"])

    pap = None
    if paper is not None and len(paper):
        pap = paper.copy()
        for c in _PAPER_KEYS + ["scale", "value", "std"]:
            if c not in pap.columns:
                pap[c] = ""
            pap[c] = as_text(pap[c])
        pap = pap[pap["table_id"] == table_id]

    # row and column order: paper order first (as printed), then anything new in order of appearance
    row_keys: list[tuple[str, str]] = []
    col_keys: list[tuple[str, str, str, str]] = []
    if pap is not None:
        for r in pap.itertuples():
            if (r.method, r.variant) not in row_keys:
                row_keys.append((r.method, r.variant))
    for r in agg.itertuples():
        if (r.method, r.variant) not in row_keys:
            row_keys.append((r.method, r.variant))
        if (r.dataset, r.column_group, r.metric, r.metric_id) not in col_keys:
            col_keys.append((r.dataset, r.column_group, r.metric, r.metric_id))
    if pap is not None:  # paper columns we have no id for yet: use the canonical metric as id
        have = {(d, g, m) for d, g, m, _ in col_keys}
        for r in pap.itertuples():
            if (r.dataset, r.column_group, r.metric) not in have:
                col_keys.append((r.dataset, r.column_group, r.metric, r.metric))
                have.add((r.dataset, r.column_group, r.metric))
    for m in expected_methods:
        if not any(k[0] == m for k in row_keys):
            row_keys.append((m, ""))

    cells: dict[tuple[int, int], Cell] = {}
    ri = {k: i for i, k in enumerate(row_keys)}
    ci = {k: j for j, k in enumerate(col_keys)}
    ci_of = _single_seed_ci(df)
    for r in agg.itertuples():
        key = (r.method, r.variant, r.dataset, r.column_group, r.metric, r.metric_id)
        lo, hi = ci_of.get(key, (math.nan, math.nan))
        cells[(ri[(r.method, r.variant)], ci[(r.dataset, r.column_group, r.metric, r.metric_id)])] = Cell(
            mean=_num(r.mean), std=_num(r.std), n_seeds=int(r.n_seeds), scale=getattr(r, "scale", "") or "",
            ci_low=lo, ci_high=hi, note=str(getattr(r, "note", "") or ""))
    paper_note = ""
    if pap is not None:
        # the paper's number sits beside the id the table names as the paper's computation of that metric
        # (TableSpec.paper_metric_ids), else beside the first id of the metric -- said in a footnote when the
        # metric has several ids, so a calibrated number is never silently read against a paper's oracle one
        # a metric may name several ids (one per column group, e.g. PHANES's LPIPS inside / outside the anomaly)
        chosen = {m: (ids,) if isinstance(ids, str) else tuple(ids) for m, ids in (paper_metric_ids or {}).items()}
        paper_col: dict[tuple[str, str, str], int] = {}
        ids_of: dict[tuple[str, str, str], list[str]] = {}
        for j, (d, g, m, mid) in enumerate(col_keys):
            ids_of.setdefault((d, g, m), []).append(mid)
            if mid in chosen.get(m, ()) or (m not in chosen and (d, g, m) not in paper_col):
                paper_col[(d, g, m)] = j
        guessed = sorted({(m, col_keys[j][3]) for (d, g, m), j in paper_col.items()
                          if m not in chosen and len(ids_of[(d, g, m)]) > 1})
        if guessed and pap[pap["metric"].isin([m for m, _ in guessed])].shape[0]:
            paper_note = ("Paper numbers of " + ", ".join(f"`{m}` sit beside `{mid}`" for m, mid in guessed)
                          + ", the first of several ids of that metric (the table names no paper id for it).")
        for r in pap.itertuples():
            j = paper_col.get((r.dataset, r.column_group, r.metric))
            i = ri.get((r.method, r.variant))
            if i is None or j is None:
                continue
            c = cells.setdefault((i, j), Cell())
            c.paper, c.paper_std, c.paper_scale, c.paper_text = _num(r.value), _num(r.std), r.scale, r.value
            if not c.scale:
                c.scale = r.scale
    paper_scales = list(pap["scale"]) if pap is not None else []
    scale = _table_scale(list(agg["scale"]) if len(agg) else [], paper_scales)
    converted = _unify_scale(cells, scale)

    # ranking per column on the displayed (rounded) means
    for j, (_, _, _, mid) in enumerate(col_keys):
        hib = metric_spec(mid).higher_is_better
        cand = []
        for i, (m, v) in enumerate(row_keys):
            c = cells.get((i, j))
            if c is None or c.empty or v in UNRANKED_VARIANTS:
                continue
            d = _decimals(c.scale, [c.mean])
            cand.append((round(c.mean, d), i))
        vals = sorted({v for v, _ in cand}, reverse=hib)
        for v, i in cand:
            if vals and v == vals[0]:
                cells[(i, j)].rank = 1
            elif len(vals) > 1 and v == vals[1]:
                cells[(i, j)].rank = 2

    tests = _paired_marks(cells, row_keys, col_keys, df, subjects, reference_method) if subjects is not None else []

    # column labels: only the parts that vary; namesake metrics told apart by their ids; ids → footnote letters
    varying = [len({k[p] for k in col_keys}) > 1 for p in range(2)]
    col_parts = [tuple(x for x, on in zip((d, g), varying) if on) for d, g, _, _ in col_keys]
    suffixes = _id_suffixes(col_keys, col_parts)
    letters: dict[str, str] = {}
    heads = [(m, sfx, ORACLE_MARK if metric_spec(mid).oracle else "", letters.setdefault(mid, _letter(len(letters))))
             for (_, _, m, mid), sfx in zip(col_keys, suffixes)]
    labels = [" / ".join([x for x in parts if x] + [_head_text(h)]) for parts, h in zip(col_parts, heads)]
    row_labels = [m + (f" ({v})" if v else "") for m, v in row_keys]

    column_notes = {letter: f"[{letter}] `{mid}`: {metric_spec(mid).description}." for mid, letter in letters.items()}
    notes = _scale_note(scale, cells, [_head_text(h) for h in heads], any(s in _FRACTIONAL for s in paper_scales),
                        converted)
    seeds = sorted({c.n_seeds for c in cells.values() if c.n_seeds})
    if seeds:
        notes.append(f"Values: mean ± std over seeds (population std, ddof = 0); seeds per cell: "
                     f"{', '.join(map(str, seeds))}. Bold = best, underlined (Markdown: italic) = second; "
                     f"rows {', '.join(UNRANKED_VARIANTS)} are not ranked.")
    if any(c.n_seeds == 1 and math.isfinite(c.ci_low) for c in cells.values()):
        notes.append("[lo, hi]: 95 % percentile bootstrap CI over test subjects (200 resamples, all slices of a "
                     "subject together, thresholds held fixed); shown where a cell has one seed.")
    if any(c.mark for c in cells.values()):
        ref = f"`{reference_method}`" if reference_method else "the column's best"
        notes.append(f"*: {ref} is better than every other ranked method at p < 0.05 (one-sided Wilcoxon "
                     f"signed-rank test over the common test subjects, each subject's own value of the metric).")
    if pap is not None and any(math.isfinite(c.paper) for c in cells.values()):
        notes.append("Paper: the printed number (same table, method, variant, dataset, column, metric), on the "
                     "table's scale like ours; Δ = ours − paper.")
        if paper_note:
            notes.append(paper_note)
    missing = [row_labels[i] for i in range(len(row_keys))
               if not any((i, j) in cells and not cells[(i, j)].empty for j in range(len(col_keys)))]
    why: dict[str, list[str]] = {}  # a NaN cell keeps the reason its run wrote
    for (i, j), c in sorted(cells.items()):
        if c.empty and c.n_seeds == 0 and c.note and not math.isfinite(c.paper):
            why.setdefault(c.note, []).append(f"{row_labels[i]} / {labels[j]}")
    for reason, where in why.items():
        notes.append(f"{MISSING} ({'; '.join(where)}): {reason}.")
    flagged: dict[str, list[str]] = {}  # a number that is not evidence (constant scores: AUROC 0.5 by ties)
    for (i, j), c in sorted(cells.items()):
        if not c.empty and c.note.startswith("CONSTANT"):
            flagged.setdefault(c.note, []).append(f"{row_labels[i]} / {labels[j]}")
    for reason, where in flagged.items():
        notes.append(f"Warning ({'; '.join(where)}): {reason}.")
    if missing:
        notes.append("No results yet for: " + ", ".join(missing) + ".")
    for t in footnotes:
        if t and t not in notes:
            notes.append(str(t))
    return Table(table_id, title, col_keys, labels, row_keys, row_labels, cells, notes,
                 pap is not None and len(pap) > 0, tests, col_parts, heads,
                 {m: [str(d) for d in lines] for m, lines in (deviations or {}).items() if lines}, scale, column_notes)


def _table_scale(ours: Sequence[str], paper: Sequence[str]) -> str:
    """The one scale of a table's fraction-like numbers: the paper's (its more frequent one) when the paper's
    numbers sit beside ours, so both read alike; else the rows' own; fraction when nothing says."""
    for pool in (paper, ours):
        n = Counter(s for s in pool if s in _FRACTIONAL)
        if n:
            return max(_FRACTIONAL, key=lambda s: n[s])
    return "fraction"


def _unify_scale(cells: dict[tuple[int, int], Cell], scale: str) -> bool:
    """Put every fraction-like number on ``scale``, ours and the paper's (its printed digits shifted with
    it: 0.941 → 94.1); raw numbers stay. True when a paper number was converted."""
    converted = False
    for c in cells.values():
        if c.scale in _FRACTIONAL:
            c.mean, c.std, c.ci_low, c.ci_high = (_to_scale(v, c.scale, scale) for v in (c.mean, c.std, c.ci_low,
                                                                                         c.ci_high))
            c.scale = scale
        if c.paper_scale in _FRACTIONAL and c.paper_scale != scale:
            digits = _digits(c.paper_text) + (2 if scale == "fraction" else -2)
            c.paper, c.paper_std = (_to_scale(v, c.paper_scale, scale) for v in (c.paper, c.paper_std))
            c.paper_text = _fmt(c.paper, max(digits, 0)) if math.isfinite(c.paper) else c.paper_text
            c.paper_scale, converted = scale, True
    return converted


def _scale_note(scale: str, cells: dict[tuple[int, int], Cell], heads: list[str], from_paper: bool,
                converted: bool) -> list[str]:
    """One line naming the table's scale, the columns left raw and whether paper numbers were converted."""
    if not any(c.scale == scale for c in cells.values()):
        return []
    note = "Scale: " + ("percent (fractions × 100)" if scale == "percent" else "fractions (0–1)")
    if from_paper:
        other = "fractions" if scale == "percent" else "percent"
        note += ", the paper's" + (f"; its numbers printed as {other} are converted too" if converted else "")
    raw = list(dict.fromkeys(heads[j] for j in sorted({j for (_, j), c in cells.items() if c.scale == "raw"})))
    if raw:
        note += f"; raw values (not rescaled): {', '.join(raw)}"
    return [note + "."]


def _digits(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def _id_words(part: str, first: bool = False) -> str:
    """An id part as words ('fpr@5%_healthy_brain' → 'fpr 5 % healthy brain'); ``first``: only its first
    word, two when the first is too short to mean anything alone ('per_volume' → 'per volume', 'oracle_test' →
    'oracle')."""
    words = part.split("_")
    if first:
        words = words[:2] if len(words[0]) <= 3 else words[:1]
    return " ".join(words).replace("@", " ").replace("%", " %").strip()


def _id_suffixes(col_keys: list[tuple[str, str, str, str]], col_parts: list[tuple[str, ...]]) -> list[str]:
    """Per column, what tells it apart from columns that would otherwise read alike (same metric, same shown
    dataset / group): the shortest of (1) the first word of its id's first distinguishing part
    ('fpr@5%_healthy_brain' → 'fpr 5 %', 'oracle_test' → 'oracle', see :func:`_id_words`), (2) every
    distinguishing part spelled out, (3) the id after the metric -- bumped column by column until every header
    is unique."""
    groups: dict[tuple, list[int]] = {}
    for j, (parts, key) in enumerate(zip(col_parts, col_keys)):
        groups.setdefault((parts, key[2]), []).append(j)
    out = [""] * len(col_keys)
    for cols in groups.values():
        if len(cols) < 2:
            continue
        ids = [col_keys[j][3].split("|")[1:] for j in cols]
        shared = set.intersection(*(set(i) for i in ids))
        own = [[p for p in i if p not in shared] for i in ids]
        levels = [0] * len(cols)

        def suffix(k: int) -> str:
            if levels[k] == 0:
                return _id_words(own[k][0], first=True) if own[k] else ""
            if levels[k] == 1:
                return ", ".join(_id_words(p) for p in own[k])
            return "|".join(ids[k])
        while True:
            seen = Counter(suffix(k) for k in range(len(cols)))
            clash = [k for k in range(len(cols)) if seen[suffix(k)] > 1 and levels[k] < 2]
            if not clash:
                break
            for k in clash:
                levels[k] += 1
        for k, j in enumerate(cols):
            out[j] = suffix(k)
    return out


def _head_text(head: tuple[str, str, str, str]) -> str:
    metric, suffix, mark, letter = head
    return metric + (f" ({suffix})" if suffix else "") + f"{mark} [{letter}]"


def _head_lines(head: tuple[str, str, str, str]) -> list[str]:
    """A header on narrow lines: the metric, then its suffix one phrase a line, the letter at the end."""
    metric, suffix, mark, letter = head
    if not suffix:
        return [f"{metric}{mark} [{letter}]"]
    phrases = suffix.split(", ")
    return [metric + mark] + [("(" if k == 0 else "") + x + ("," if k < len(phrases) - 1 else f") [{letter}]")
                              for k, x in enumerate(phrases)]


def _single_seed_ci(df: pd.DataFrame) -> dict[tuple[str, ...], tuple[float, float]]:
    out = {}
    if not len(df):
        return out
    for key, g in df.groupby(_KEYS, sort=False):
        if len(g) == 1:
            out[tuple(key)] = (_num(g["ci_low"].iloc[0]), _num(g["ci_high"].iloc[0]))
    return out


def _paired_marks(cells: dict[tuple[int, int], Cell], row_keys: list[tuple[str, str]], col_keys: list[tuple],
                  rows: pd.DataFrame, subjects: pd.DataFrame, reference_method: str) -> list[dict[str, Any]]:
    """Per column: paired one-sided Wilcoxon tests of the reference row against every other ranked row on
    the subjects both have (per-subject values averaged over seeds); ``*`` when all are significant."""
    import warnings

    from protocols.stats import paired_test

    if subjects is None or not len(subjects) or not len(rows):
        return []
    who = rows[["run_key", "method", "variant", "dataset"]].drop_duplicates("run_key")
    sv = subjects.merge(who, on="run_key", how="inner")
    for c in ("column_group", "metric_id", "subject", "method", "variant", "dataset"):
        sv[c] = as_text(sv[c])
    sv["value"] = pd.to_numeric(sv["value"], errors="coerce")
    per = sv.groupby(["method", "variant", "dataset", "column_group", "metric_id", "subject"])["value"].mean()
    tests = []
    for j, (d, g, _, mid) in enumerate(col_keys):
        ranked = [i for i, (m, v) in enumerate(row_keys) if v not in UNRANKED_VARIANTS
                  and (i, j) in cells and not cells[(i, j)].empty]
        if len(ranked) < 2:
            continue
        if reference_method:
            ref = next((i for i in ranked if row_keys[i][0] == reference_method), None)
        else:
            ref = next((i for i in ranked if cells[(i, j)].rank == 1), None)
        if ref is None:
            continue
        hib = metric_spec(mid).higher_is_better

        def values(i: int) -> pd.Series:
            m, v = row_keys[i]
            try:
                return per.loc[(m, v, d, g, mid)]
            except KeyError:
                return pd.Series(dtype=float)
        a = values(ref)
        all_sig = True
        for i in ranked:
            if i == ref:
                continue
            b = values(i)
            common = a.index.intersection(b.index)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = paired_test(a[common].to_numpy(), b[common].to_numpy(),
                                  alternative="greater" if hib else "less") if len(common) else {
                    "p": math.nan, "significant": False, "n": 0}
            tests.append({"column": mid, "dataset": d, "column_group": g, "reference": row_keys[ref][0],
                          "other": row_keys[i][0], "n_subjects": res.get("n", 0), "p": res["p"],
                          "significant": bool(res["significant"])})
            all_sig &= bool(res["significant"])
        if all_sig:
            cells[(ref, j)].mark = "*"
    return tests


def _letter(k: int) -> str:
    s = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        s = chr(97 + r) + s
    return s


def _cell_parts(c: Cell, with_paper: bool) -> tuple[str, str, str]:
    """A cell's three pieces of text: the mean, its spread (``± std`` over seeds or the
    bootstrap ``[lo, hi]`` of a single seed) and the paper's number with our difference; "" when absent."""
    d = _decimals(c.scale, [c.mean, c.std])
    value = _fmt(c.mean, d) if not c.empty else MISSING
    spread = ""
    if not c.empty and math.isfinite(c.std) and c.n_seeds > 1:
        spread = f"± {_fmt(c.std, d)}"
    elif not c.empty and c.n_seeds == 1 and math.isfinite(c.ci_low) and math.isfinite(c.ci_high):
        spread = f"[{_fmt(c.ci_low, d)}, {_fmt(c.ci_high, d)}]"
    paper = ""
    if with_paper and math.isfinite(c.paper):
        paper = f"paper {c.paper_text}"
        diff = _to_scale(c.mean, c.scale, c.paper_scale) - c.paper
        if math.isfinite(diff):
            paper += f", Δ {'+' if diff >= 0 else ''}{_fmt(diff, _digits(c.paper_text))}"
    return value, spread, paper


def _cell_markdown(c: Cell | None, with_paper: bool) -> str:
    """One line: best bold, second italic, e.g. ``**0.710 ± 0.008** (paper 73.7, Δ −2.7)``."""
    if c is None:
        return MISSING
    value, spread, paper = _cell_parts(c, with_paper)
    txt = f"{value} {spread}".strip() + (c.mark if not c.empty else "")
    if not c.empty and c.rank:
        txt = f"**{txt}**" if c.rank == 1 else f"_{txt}_"
    return txt + (f" ({paper})" if paper else "")


def _cell_latex(c: Cell | None, with_paper: bool) -> str:
    r"""The mean on the first line (best ``\textbf``, second ``\underline``), the spread and the paper's
    number in small type below it: columns stay as narrow as one number."""
    if c is None:
        return _tex(MISSING)
    value, spread, paper = _cell_parts(c, with_paper)
    value = _tex(value) + (rf"$^{{{c.mark}}}$" if c.mark and not c.empty else "")
    if not c.empty and c.rank:
        value = rf"\textbf{{{value}}}" if c.rank == 1 else rf"\underline{{{value}}}"
    return _tex_stack([value] + [_tex(x) for x in (spread, paper) if x])


def markdown_table(rows: pd.DataFrame, **options: Any) -> str:
    """The table as GitHub Markdown (tabulate) with its footnotes, for printing or the README; ``options``
    are :func:`build_table`'s."""
    return _markdown(build_table(rows, **options))


def notes_file(table_id: str) -> str:
    return f"{table_id}.notes.md"


def _deviation_counts(t: Table) -> list[str]:
    return [f"{m}: {len(lines)} deviation{'s' if len(lines) > 1 else ''}" for m, lines in t.deviations.items()]


def _markdown(t: Table) -> str:
    body = [[lab] + [_cell_markdown(t.cells.get((i, j)), t.with_paper) for j in range(len(t.columns))]
            for i, lab in enumerate(t.row_labels)]
    head = f"### {t.table_id}" + (f": {t.title}" if t.title else "")
    grid = tabulate(body, headers=["method"] + t.column_labels, tablefmt="github", disable_numparse=True) \
        if body else "(no rows)"
    notes = t.all_notes + [f"{n}, see {notes_file(t.table_id)}." for n in _deviation_counts(t)]
    return "\n\n".join([head, grid, "\n".join(f"- {n}" for n in notes)]).rstrip() + "\n"


def notes_markdown(t: Table) -> str:
    """``<table>.notes.md``: the table's footnotes and, per method, every deviation from its paper or
    official code (the table itself only counts them, so it stays printable)."""
    out = [f"# Notes to {t.table_id}" + (f": {t.title}" if t.title else ""), "", *(f"- {n}" for n in t.all_notes)]
    if t.deviations:
        out += ["", "## Deviations from each method's paper or official code"]
        for m, lines in t.deviations.items():
            out += ["", f"### {m} ({len(lines)})", "", *(f"- {d}" for d in lines)]
    return "\n".join(out) + "\n"


_TEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "`": "", "|": r"\textbar{}",
            "<": r"\textless{}", ">": r"\textgreater{}",
            # punctuation and symbols that appear in footnotes and method deviations
            "−": "-", "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``", "”": "''", "…": r"\ldots{}",
            "§": r"\S{}", "°": r"$^\circ$", "²": r"$^2$", "³": r"$^3$", "·": r"$\cdot$", "×": r"$\times$",
            "±": r"$\pm$", "≤": r"$\leq$", "≥": r"$\geq$", "≈": r"$\approx$", "≠": r"$\neq$", "→": r"$\rightarrow$",
            "←": r"$\leftarrow$", "↔": r"$\leftrightarrow$", "∈": r"$\in$", "∪": r"$\cup$", "∩": r"$\cap$",
            "‖": r"$\|$", "∞": r"$\infty$", "√": r"$\surd$", "∑": r"$\sum$", "Σ": r"$\Sigma$", "Δ": r"$\Delta$",
            "∂": r"$\partial$", "∇": r"$\nabla$", "µ": r"$\mu$", "\u00a0": "~", "\u2009": r"\,", "\u202f": r"\,",
            "½": r"$\frac{1}{2}$", "¼": r"$\frac{1}{4}$", "⌊": r"$\lfloor$", "⌋": r"$\rfloor$", "⌈": r"$\lceil$",
            "⌉": r"$\rceil$", "†": r"\dag{}"}
# Greek letters by name (pdflatex has no Unicode input): α → $\alpha$, Γ → $\Gamma$; capitals that look
# Latin (Α, Β, …) have no macro and are written as the Latin letter.
_GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau " \
         "upsilon phi chi psi omega".split()
for _i, _name in enumerate(_GREEK):
    _lo, _up = chr(0x3B1 + _i + (_i > 16)), chr(0x391 + _i + (_i > 16))  # skips final sigma / the gap at U+03A2
    _TEX_ESC.setdefault(_lo, "$o$" if _name == "omicron" else rf"$\{_name}$")
    _TEX_ESC.setdefault(_up, rf"$\{_name.capitalize()}$" if _name in
                        ("gamma", "delta", "theta", "lambda", "xi", "pi", "sigma", "upsilon", "phi", "psi", "omega")
                        else unicodedata.name(_up).split()[-1][0])
_TEX_ESC["ς"] = r"$\varsigma$"
_TEX_ESC["ᾱ"] = r"$\bar{\alpha}$"  # ᾱ_t of the diffusion schedules
_TEX_ESC.update({chr(0x2080 + d): f"$_{{{d}}}$" for d in range(10)})  # subscript digits: x̂₀ → x̂$_{0}$
# combining marks written after their base letter: x̂ → $\hat{x}$; accented Latin letters → \'{e}
_TEX_COMBINING_MATH = {"\u0302": "hat", "\u0303": "tilde", "\u0304": "bar", "\u0307": "dot", "\u20d7": "vec"}
_TEX_COMBINING_TEXT = {"\u0301": "'", "\u0300": "`", "\u0302": "^", "\u0303": "~", "\u0308": '"', "\u0327": "c",
                       "\u030c": "v", "\u0304": "="}


def _tex(s: str) -> str:
    """Text → pdflatex-safe ASCII LaTeX: specials escaped, symbols and Greek as macros, accents as commands.

    Why: a paper-ready .tex must compile with plain pdflatex, and deviations/footnotes are written in
    Unicode. A character with no mapping becomes ``\\texttt{U+XXXX}`` (visible, compiles) rather than
    breaking the build; ``tests/test_render.py`` checks that no registered text needs that fallback.
    """
    out: list[str] = []
    chars = unicodedata.normalize("NFC", str(s))
    i = 0
    while i < len(chars):
        ch = chars[i]
        nxt = chars[i + 1] if i + 1 < len(chars) else ""
        if nxt in _TEX_COMBINING_MATH and ch.isascii() and ch.isalnum():
            out.append(rf"$\{_TEX_COMBINING_MATH[nxt]}{{{ch}}}$")
            i += 2
            continue
        if ch in _TEX_ESC:
            out.append(_TEX_ESC[ch])
        elif ch.isascii():
            out.append(ch)
        else:
            base, *marks = unicodedata.normalize("NFD", ch)
            if base.isascii() and len(marks) == 1 and marks[0] in _TEX_COMBINING_TEXT:
                out.append(rf"\{_TEX_COMBINING_TEXT[marks[0]]}{{{base}}}")
            else:
                out.append(rf"\texttt{{U+{ord(ch):04X}}}")
        i += 1
    return "".join(out)


# Helpers each .tex defines once (plain LaTeX + graphicx): \phbcell stacks a cell's lines; \phbshrink scales the
# box \phbbox down (never up) to at most a width and a total height.
_TEX_HELPERS = r"""\ifdefined\phbbox\else
\newsavebox\phbbox
\newcommand\phbmaxheight{\dimexpr\textheight-5\baselineskip\relax}
\newcommand\phbcell[1]{\begin{tabular}[t]{@{}c@{}}#1\end{tabular}}
\newcommand\phbshrink[2]{%
\ifdim\wd\phbbox>#1\relax\sbox\phbbox{\resizebox{#1}{!}{\usebox\phbbox}}\fi
\ifdim\dimexpr\ht\phbbox+\dp\phbbox\relax>#2\relax\sbox\phbbox{\resizebox*{!}{#2}{\usebox\phbbox}}\fi}
\fi
"""

_TEMPLATE = r"""% generated by phbench protocols/render.py -- do not edit
% Preamble: \usepackage{booktabs} (rules) and \usepackage{graphicx} (scaling); nothing else.
% ((( variant )))
% Columns beyond the body of a ((( "two" if wide else "one" )))-column article, ((( width ))) pt (up to ((( extra ))) % more:
% scaled down), continue in further floats of the same table number, as do rows beyond a page; each tabular is
% scaled down (never up) to \linewidth, and with its notes to \phbmaxheight (\textheight less five lines for
% the caption), so every float fits one page.
((( helpers )))
((* for f in floats *))
\begin{((( env )))}[((( place )))]
\centering
((* if not loop.first *))
\addtocounter{table}{-1}
((* endif *))
\caption{((( f.caption )))}
((* if loop.first *))
\label{tab:((( label )))}
((* endif *))
\sbox\phbbox{\small\setlength\tabcolsep{4pt}%
\begin{tabular}{l((( "c" * f.ncols )))}
\toprule
((* for row, rules in f.groups *))
((( row ))) \\
((* if rules *))
((( rules )))
((* endif *))
((* endfor *))
method ((* for h in f.heads *))& ((( h ))) ((* endfor *))\\
\midrule
((* for r in f.body *))
((* if f.stacked and not loop.first *))
\addlinespace[3pt]
((* endif *))
((( r[0] ))) ((* for c in r[1:] *))& ((( c ))) ((* endfor *))\\
((* endfor *))
\bottomrule
\end{tabular}}%
\phbshrink{\linewidth}{\maxdimen}%
\sbox\phbbox{\begin{minipage}{\linewidth}\centering\usebox\phbbox\par
((* if f.notes *))
\smallskip\footnotesize\raggedright
((* for n in f.notes *))
((( n )))\par
((* endfor *))
((* endif *))
\end{minipage}}%
\phbshrink{\linewidth}{\phbmaxheight}%
\usebox\phbbox
\end{((( env )))}
((* endfor *))
"""
# Layout budget of one float, in pt: \linewidth of a one-column article (the narrowest common body) or the
# \textwidth of a two-column one (table*), of which a block may need up to 1/_TEX_MIN_SCALE (LaTeX scales
# it down to fit exactly); _TEX_ROWS_PT of rows per float (a 10-pt article page holds 550 pt of text).
_TEX_WIDTH_PT = {False: 345.0, True: 469.0}
_TEX_MIN_SCALE = 0.8
_TEX_ROWS_PT = 400.0


def _tex_stack(lines: Sequence[str]) -> str:
    """Several lines in one cell (already LaTeX), top-aligned with the row; the lines after the first small."""
    if len(lines) == 1:
        return lines[0]
    return r"\phbcell{" + r"\\".join([lines[0]] + [rf"\scriptsize {x}" for x in lines[1:]]) + "}"


def _tex_note(note: str) -> str:
    """A footnote in LaTeX: `ids` in typewriter, Markdown bold dropped, everything else escaped."""
    pieces = note.replace("**", "").split("`")
    return "".join(rf"\texttt{{{_tex(x)}}}" if k % 2 else _tex(x) for k, x in enumerate(pieces) if x)


def _text_pt(text: str, size: float) -> float:
    """Rough printed width of ``text`` at ``size`` pt in Computer Modern: half an em a digit, plus 8 % (bold,
    wide letters), calibrated on the stored tables (LaTeX measured 1.04-1.13 × the plain estimate)."""
    return 1.08 * size * sum(0.8 if ch in "±−Δ†" else 0.3 if not ch.isalnum() else 0.72 if ch.isupper() else 0.5
                             for ch in text)


def _cell_lines(c: Cell | None, with_paper: bool) -> list[str]:
    """The lines of a LaTeX cell as text (for its width and height): mean, spread, paper."""
    if c is None:
        return [MISSING]
    value, spread, paper = _cell_parts(c, with_paper)
    return [value + c.mark] + [x for x in (spread, paper) if x]


def _tex_widths(t: Table, lines: Mapping[tuple[int, int], list[str]]) -> tuple[float, list[float]]:
    """Estimated printed widths (pt) of the row-label column and of every column: its widest header or cell
    line, widened where a dataset / group name over it is wider than its columns."""
    def width(texts: list[str]) -> float:  # the first line at \small (9 pt), the ones below \scriptsize (7 pt)
        return max(_text_pt(x, 9 if k == 0 else 7) for k, x in enumerate(texts))
    col_w = [8 + max([width(_head_lines(t.column_heads[j]))] + [width(lines[(i, j)]) for i in range(len(t.rows))])
             for j in range(len(t.columns))]
    for lev in range(len(t.column_parts[0]) if t.column_parts else 0):
        j = 0
        while j < len(t.columns):
            k = j
            while k + 1 < len(t.columns) and t.column_parts[k + 1][:lev + 1] == t.column_parts[j][:lev + 1]:
                k += 1
            extra = 8 + _text_pt(t.column_parts[j][lev], 9) - sum(col_w[j:k + 1])
            for n in range(j, k + 1):
                col_w[n] += max(extra, 0.0) / (k + 1 - j)
            j = k + 1
    return 8 + max(_text_pt(x, 9) for x in t.row_labels + ["method"]), col_w


def _tex_blocks(t: Table, wide: bool) -> list[tuple[list[int], list[int]]]:
    """(rows, columns) of each float: columns packed left to right into blocks of at most the float's width
    budget, a dataset / column group kept whole where it fits; rows cut where a float's height budget ends."""
    lines = {(i, j): _cell_lines(t.cells.get((i, j)), t.with_paper) for i in range(len(t.rows))
             for j in range(len(t.columns))}
    label_w, col_w = _tex_widths(t, lines)
    groups: list[list[int]] = []
    for j in range(len(t.columns)):
        if groups and t.column_parts[j] == t.column_parts[groups[-1][-1]]:
            groups[-1].append(j)
        else:
            groups.append([j])

    def pack(budget: float) -> list[list[int]]:
        blocks: list[list[int]] = [[]]
        for g in groups:
            if blocks[-1] and sum(col_w[j] for j in blocks[-1] + g) > budget:
                blocks.append([])
            for j in g:
                if blocks[-1] and sum(col_w[k] for k in blocks[-1]) + col_w[j] > budget:
                    blocks.append([])
                blocks[-1].append(j)
        return blocks
    budget = max(_TEX_WIDTH_PT[wide] / _TEX_MIN_SCALE - label_w, 0.0)
    blocks = pack(budget)
    even = sum(col_w) / len(blocks)  # as many blocks, of even widths (no lone last column)
    while even < budget and len(pack(even)) > len(blocks):
        even *= 1.05
    blocks = pack(min(even, budget))
    out = []
    for cols in blocks:
        chunks: list[list[int]] = [[]]
        height = 0.0
        for i in range(len(t.rows)):
            h = 11 + 8 * max([len(lines[(i, j)]) - 1 for j in cols], default=0)
            if chunks[-1] and height + h > _TEX_ROWS_PT:
                chunks.append([])
                height = 0.0
            chunks[-1].append(i)
            height += h
        out += [(rows, cols) for rows in chunks]
    return out


def _tex_groups(t: Table, cols: list[int]) -> list[tuple[str, str]]:
    r"""Header rows above the metric names: one per varying level (dataset, column group), equal neighbours
    merged into one \multicolumn with a \cmidrule under it."""
    out = []
    parts = [t.column_parts[j] for j in cols]
    for lev in range(len(parts[0]) if parts else 0):
        cells, rules, j = [""], [], 0
        while j < len(parts):
            key = parts[j][:lev + 1]
            k = j
            while k + 1 < len(parts) and parts[k + 1][:lev + 1] == key:
                k += 1
            cells.append(rf"\multicolumn{{{k - j + 1}}}{{c}}{{{_tex(key[-1])}}}")
            if key[-1]:
                rules.append(rf"\cmidrule(lr){{{j + 2}-{k + 2}}}")
            j = k + 1
        out.append((" & ".join(cells), " ".join(rules)))
    return out


def _caption_text(title: str) -> str:
    """A title that starts "Table 1 — …" without that prefix: LaTeX numbers the float itself, so the caption would
    read "Table 1: Table 1 — …" (a paper's own table id, "IterMask2 Table 1 — …", stays: it names the source)."""
    return re.sub(r"^Table\s+\S+\s+[—–-]+\s+", "", title)


def latex_table(t: Table, wide: bool = False) -> str:
    """booktabs LaTeX from a built :class:`Table` (jinja2 with LaTeX-safe delimiters): ``table`` floats, or
    with ``wide`` ``table*`` floats spanning both columns of a two-column paper. Datasets / column groups
    become spanning header rows; a table too wide or long for one page continues in further floats of the same
    number (:func:`_tex_blocks`); deviations are counted in one line (their list is in the notes file)."""
    env = jinja2.Environment(block_start_string="((*", block_end_string="*))", variable_start_string="(((",
                             variable_end_string=")))", comment_start_string="((=", comment_end_string="=))",
                             trim_blocks=True, autoescape=False, keep_trailing_newline=True)
    blocks = _tex_blocks(t, wide)
    title = _tex(_caption_text(t.title or t.table_id))
    notes = list(t.footnotes)
    if t.deviations:
        notes.append("Deviations from each method's paper or official code (" + ", ".join(
            f"{m} {len(d)}" for m, d in t.deviations.items()) + f"): listed in `{notes_file(t.table_id)}`.")
    floats, shown = [], set()  # a column's note goes with the first float showing its letter; the rest last
    for k, (rows, cols) in enumerate(blocks):
        new = [h for h in dict.fromkeys(t.column_heads[j][3] for j in cols) if h not in shown]
        oracle = [ORACLE_NOTE] if any(t.column_heads[j][2] for j in cols) and not any(
            h[2] for h in t.column_heads if h[3] in shown) else []
        shown.update(new)
        floats.append(dict(
            caption=title + (f" (part {k + 1} of {len(blocks)})" if len(blocks) > 1 else ""), ncols=len(cols),
            groups=_tex_groups(t, cols), heads=[_tex_stack([_tex(x) for x in _head_lines(t.column_heads[j])])
                                                for j in cols],
            body=(body := [[_tex(t.row_labels[i])] + [_cell_latex(t.cells.get((i, j)), t.with_paper) for j in cols]
                           for i in rows]),
            stacked=any(c.startswith(r"\phbcell") for r in body for c in r[1:]),
            notes=[_tex_note(n) for n in [t.column_notes[h] for h in new] + oracle
                   + (notes if k == len(blocks) - 1 else [])]))
    variant = ("table* floats spanning both columns of a two-column paper (one-column: <id>.tex)" if wide else
               "table floats one column wide (two-column papers: <id>.wide.tex, table*)").replace("<id>", t.table_id)
    return env.from_string(_TEMPLATE).render(
        variant=variant, width=f"{_TEX_WIDTH_PT[wide]:g}", extra=round(100 / _TEX_MIN_SCALE - 100), wide=wide,
        helpers=_TEX_HELPERS.rstrip("\n"),
        env="table*" if wide else "table", place="tp" if wide else "tbp", label=t.table_id.replace("_", "-"),
        floats=floats)


def render_table(rows: pd.DataFrame, *, table_id: str, title: str, out_dir: Path,
                 footnotes: Sequence[str] = (), paper: pd.DataFrame | None = None,
                 expected_methods: Sequence[str] = (), subjects: pd.DataFrame | None = None,
                 reference_method: str = "", paper_metric_ids: Mapping[str, "str | tuple[str, ...]"] | None = None,
                 deviations: Mapping[str, Sequence[str]] | None = None) -> dict[str, Path]:
    """Write ``<table_id>.csv`` (long rows with provenance), ``.md``, ``.tex`` (a ``table``), ``.wide.tex``
    (a ``table*``), ``.notes.md`` (every footnote and deviation in full) and, with ``subjects``,
    ``<table_id>.tests.csv`` (every paired test behind a ``*``) atomically; return the paths.

    ``paper`` (e.g. :func:`load_paper`) adds the printed number and Δ where the table id, method, variant,
    dataset, column group and metric match; its methods for this table count as expected. ``deviations``:
    method → its deviations from its paper / official code (counted in the table, listed in the notes).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = build_table(rows, table_id=table_id, title=title, footnotes=footnotes, paper=paper,
                    expected_methods=expected_methods, subjects=subjects, reference_method=reference_method,
                    paper_metric_ids=paper_metric_ids, deviations=deviations)
    long = _table_rows(rows, table_id)
    paths = {"csv": out_dir / f"{table_id}.csv", "md": out_dir / f"{table_id}.md", "tex": out_dir / f"{table_id}.tex",
             "wide_tex": out_dir / f"{table_id}.wide.tex", "notes": out_dir / notes_file(table_id)}
    atomic_write_text(paths["csv"], long.to_csv(index=False))
    atomic_write_text(paths["md"], _markdown(t))
    atomic_write_text(paths["tex"], latex_table(t))
    atomic_write_text(paths["wide_tex"], latex_table(t, wide=True))
    atomic_write_text(paths["notes"], notes_markdown(t))
    if subjects is not None:
        paths["tests"] = out_dir / f"{table_id}.tests.csv"
        cols = ["column", "dataset", "column_group", "reference", "other", "n_subjects", "p", "significant"]
        atomic_write_text(paths["tests"], pd.DataFrame(t.tests, columns=cols).to_csv(index=False))
    return paths


def load_paper(path: str | Path = "results/paper_tables.csv") -> pd.DataFrame:
    """The paper numbers as strings (empty stays empty, never NaN-guessed)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


__all__.append("load_paper")
