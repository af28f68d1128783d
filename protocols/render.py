"""Render long-format result rows into paper-ready tables: CSV (long, provenance kept), Markdown, LaTeX.

Why: the result store keeps one row per (run, metric) (``benchmark.runstore.ROW_COLUMNS``); a reader
wants one cell per method and metric with mean ± std over seeds, the best and second-best marked, every
metric id / oracle threshold / substitution footnoted, and optionally the paper's printed number and our
difference beside it. Rendering never crashes on gaps: a missing cell prints "–", a method without rows
is listed in a footnote.

Cell layout: rows = (method, variant); columns = (dataset, column_group, metric, metric_id). Values are
shown on the row's own ``scale``; the paper comparison converts ours to the paper's CSV ``scale``
(percent ↔ fraction) before taking the difference. Rows whose variant is ``oracle`` or ``GT`` (grey rows,
sanity checks) are never ranked.
"""

from __future__ import annotations

import math
import unicodedata
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

__all__ = ["render_table", "markdown_table", "latex_table", "build_table", "Table", "MISSING", "UNRANKED_VARIANTS"]

MISSING = "–"
UNRANKED_VARIANTS = ("oracle", "GT")
_KEYS = ["method", "variant", "dataset", "column_group", "metric", "metric_id"]
_PAPER_KEYS = ["table_id", "method", "variant", "dataset", "column_group", "metric"]


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
    column_labels: list[str]
    rows: list[tuple[str, str]]  # method, variant
    row_labels: list[str]
    cells: dict[tuple[int, int], Cell]
    footnotes: list[str] = field(default_factory=list)
    with_paper: bool = False
    tests: list[dict[str, Any]] = field(default_factory=list)  # every paired test behind a "*"


def _s(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def _decimals(scale: str, values: Sequence[float]) -> int:
    if scale == "percent":
        return 2
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
                paper_metric_ids: Mapping[str, "str | tuple[str, ...]"] | None = None) -> Table:
    """Aggregate rows over seeds, lay them out, rank each column, mark significance and collect footnotes.

    ``subjects`` (per-subject values, ``RunStore.read_subjects``) enables the paired test: in each column
    the reference row (``reference_method``, else the best) gets ``*`` when a one-sided Wilcoxon
    signed-rank test over the common test subjects says it beats every other ranked row at p < 0.05.
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

    # column labels: only the parts that vary; metric ids become footnote letters
    varying = [len({k[p] for k in col_keys}) > 1 for p in range(3)]
    letters: dict[str, str] = {}
    labels = []
    for d, g, m, mid in col_keys:
        parts = [x for x, on in zip((d, g), varying[:2]) if on and x]
        letter = letters.setdefault(mid, _letter(len(letters)))
        labels.append(" / ".join(parts + [m]) + f" [{letter}]")
    row_labels = [m + (f" ({v})" if v else "") for m, v in row_keys]

    notes: list[str] = []
    for mid, letter in letters.items():
        spec = metric_spec(mid)
        tag = " — ORACLE: threshold chosen on the test set, not comparable to calibrated numbers" if spec.oracle else ""
        notes.append(f"[{letter}] `{mid}`: {spec.description}{tag}.")
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
        notes.append("Paper: the printed number (same table, method, variant, dataset, column, metric), our "
                     "mean converted to the paper's scale; Δ = ours − paper.")
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
                 pap is not None and len(pap) > 0, tests)


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


def _cell_text(c: Cell | None, with_paper: bool, latex: bool = False) -> str:
    if c is None:
        return "--" if latex else MISSING
    d = _decimals(c.scale, [c.mean, c.std])
    pm = r"$\pm$" if latex else "±"
    txt = _fmt(c.mean, d) if not (latex and c.empty) else "--"
    if not c.empty and math.isfinite(c.std) and c.n_seeds > 1:
        txt += f" {pm} {_fmt(c.std, d)}"
    elif not c.empty and c.n_seeds == 1 and math.isfinite(c.ci_low) and math.isfinite(c.ci_high):
        txt += f" [{_fmt(c.ci_low, d)}, {_fmt(c.ci_high, d)}]"
    if c.mark and not c.empty:
        txt += c.mark if not latex else rf"$^{{{c.mark}}}$"
    if latex and not c.empty:
        txt = txt.replace("−", "-")
        if c.rank == 1:
            txt = rf"\textbf{{{txt}}}"
        elif c.rank == 2:
            txt = rf"\underline{{{txt}}}"
    elif not c.empty:
        txt = f"**{txt}**" if c.rank == 1 else f"_{txt}_" if c.rank == 2 else txt
    if with_paper:
        dp = len(c.paper_text.split(".")[1]) if "." in c.paper_text else 0
        if math.isfinite(c.paper):
            ours = _to_scale(c.mean, c.scale, c.paper_scale)
            diff = ours - c.paper
            extra = f"paper {c.paper_text}"
            if math.isfinite(diff):
                extra += f", Δ {'+' if diff >= 0 else ''}{_fmt(diff, dp)}"
            if latex:
                extra = extra.replace("−", "-").replace("Δ", r"$\Delta$")
                txt += rf" {{\scriptsize({extra})}}"
            else:
                txt += f" ({extra})"
    return txt


def markdown_table(rows: pd.DataFrame, *, table_id: str, title: str = "", footnotes: Sequence[str] = (),
                   paper: pd.DataFrame | None = None, expected_methods: Sequence[str] = (),
                   subjects: pd.DataFrame | None = None, reference_method: str = "",
                   paper_metric_ids: Mapping[str, "str | tuple[str, ...]"] | None = None) -> str:
    """The table as GitHub Markdown (tabulate) with its footnotes, for printing or the README."""
    t = build_table(rows, table_id=table_id, title=title, footnotes=footnotes, paper=paper,
                    expected_methods=expected_methods, subjects=subjects, reference_method=reference_method,
                    paper_metric_ids=paper_metric_ids)
    return _markdown(t)


def _markdown(t: Table) -> str:
    body = [[lab] + [_cell_text(t.cells.get((i, j)), t.with_paper) for j in range(len(t.columns))]
            for i, lab in enumerate(t.row_labels)]
    head = f"### {t.table_id}" + (f": {t.title}" if t.title else "")
    grid = tabulate(body, headers=["method"] + t.column_labels, tablefmt="github", disable_numparse=True) \
        if body else "(no rows)"
    return "\n\n".join([head, grid, "\n".join(f"- {n}" for n in t.footnotes)]).rstrip() + "\n"


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
            "⌉": r"$\rceil$"}
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


_TEMPLATE = r"""% generated by phbench protocols/render.py -- do not edit
\begin{table}[t]
\centering
\caption{((( title )))}
\label{tab:((( label )))}
\small
\begin{tabular}{l((( "c" * ncols )))}
\toprule
method ((* for h in headers *))& ((( h ))) ((* endfor *))\\
\midrule
((* for r in body *))((( r[0] ))) ((* for c in r[1:] *))& ((( c ))) ((* endfor *))\\
((* endfor *))\bottomrule
\end{tabular}
((* if notes *))
\par\smallskip\footnotesize\raggedright
((* for n in notes *)){}((( n )))\\
((* endfor *))((* endif *))
\end{table}
"""


def latex_table(t: Table) -> str:
    """booktabs LaTeX from a built :class:`Table` (jinja2 with LaTeX-safe delimiters)."""
    env = jinja2.Environment(block_start_string="((*", block_end_string="*))", variable_start_string="(((",
                             variable_end_string=")))", comment_start_string="((=", comment_end_string="=))",
                             trim_blocks=True, autoescape=False, keep_trailing_newline=True)
    body = [[_tex(lab)] + [_cell_text(t.cells.get((i, j)), t.with_paper, latex=True) for j in range(len(t.columns))]
            for i, lab in enumerate(t.row_labels)]
    headers = [_tex(h).replace(r"\[", "[") for h in t.column_labels]
    notes = [_tex(n.replace("**", "")) for n in t.footnotes]
    return env.from_string(_TEMPLATE).render(
        title=_tex(t.title or t.table_id), label=t.table_id.replace("_", "-"), ncols=len(t.columns),
        headers=headers, body=body, notes=notes)


def render_table(rows: pd.DataFrame, *, table_id: str, title: str, out_dir: Path,
                 footnotes: Sequence[str] = (), paper: pd.DataFrame | None = None,
                 expected_methods: Sequence[str] = (), subjects: pd.DataFrame | None = None,
                 reference_method: str = "", paper_metric_ids: Mapping[str, "str | tuple[str, ...]"] | None = None
                 ) -> dict[str, Path]:
    """Write ``<table_id>.csv`` (long rows with provenance), ``.md``, ``.tex`` and, with ``subjects``,
    ``<table_id>.tests.csv`` (every paired test behind a ``*``) atomically; return the paths.

    ``paper`` (e.g. :func:`load_paper`) adds the printed number and Δ where the table id, method, variant,
    dataset, column group and metric match; its methods for this table count as expected.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = build_table(rows, table_id=table_id, title=title, footnotes=footnotes, paper=paper,
                    expected_methods=expected_methods, subjects=subjects, reference_method=reference_method,
                    paper_metric_ids=paper_metric_ids)
    long = _table_rows(rows, table_id)
    paths = {"csv": out_dir / f"{table_id}.csv", "md": out_dir / f"{table_id}.md", "tex": out_dir / f"{table_id}.tex"}
    atomic_write_text(paths["csv"], long.to_csv(index=False))
    atomic_write_text(paths["md"], _markdown(t))
    atomic_write_text(paths["tex"], latex_table(t))
    if subjects is not None:
        paths["tests"] = out_dir / f"{table_id}.tests.csv"
        cols = ["column", "dataset", "column_group", "reference", "other", "n_subjects", "p", "significant"]
        atomic_write_text(paths["tests"], pd.DataFrame(t.tests, columns=cols).to_csv(index=False))
    return paths


def load_paper(path: str | Path = "results/paper_tables.csv") -> pd.DataFrame:
    """The paper numbers as strings (empty stays empty, never NaN-guessed)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


__all__.append("load_paper")
