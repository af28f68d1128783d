"""The rendered LaTeX compiles with plain pdflatex and fits the page: no error, no overfull box, no float too
large, in a one-column article (``<table>.tex``) and a two-column one (``<table>.wide.tex``).

Realistic tables: the stored default table1 rows (results/default/table1.csv) and IterMask2 Table 1's smoke rows
with the paper's numbers beside ours (results/smoke/itermask2-table1.csv), rendered like the runner does. Needs
TeX Live (``apt-get install texlive-latex-base texlive-latex-recommended``); skips without it.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from benchmark.registry import get_method, get_table
from benchmark.runstore import TEXT_COLUMNS
from protocols import render as R
from protocols.tables import PAPER_TABLES_CSV
from tests.test_render import _every_registered_text, _wide_and_long

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (apt-get install "
                                "--no-install-recommends texlive-latex-base texlive-latex-recommended)")


def _render(csv: str, out: Path) -> dict[str, Path]:
    """A stored table's rows rendered as the runner renders them: its notes, the paper, every deviation."""
    rows = pd.read_csv(REPO / csv, keep_default_na=False, na_values=[""], dtype={c: str for c in TEXT_COLUMNS})
    spec = get_table(rows["table_id"].iloc[0])
    methods = list(dict.fromkeys(m for m, _ in spec.methods))
    return R.render_table(rows, table_id=spec.table_id, title=spec.title, out_dir=out, footnotes=spec.footnotes,
                          paper=R.load_paper(PAPER_TABLES_CSV), expected_methods=methods,
                          reference_method=spec.reference_method, paper_metric_ids=spec.paper_metric_ids,
                          deviations={m: get_method(m).info.deviations for m in methods})


def _compile(folder: Path, name: str, tables: list[Path], options: str = "") -> str:
    """pdflatex on a minimal article inputting ``tables``; the log, after asserting it is clean."""
    doc = folder / f"{name}.tex"
    doc.write_text(f"\\documentclass[{options}]{{article}}\n\\usepackage{{booktabs}}\n\\usepackage{{graphicx}}\n"
                   "\\begin{document}\nSome text.\n" + "".join(f"\\input{{{p}}}\n" for p in tables)
                   + "\\end{document}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    log = (folder / f"{name}.log").read_text(errors="replace")
    assert res.returncode == 0, log[-3000:]
    for bad in ("Overfull", "Float too large"):
        assert bad not in log, log[log.index(bad) - 200:log.index(bad) + 800]
    return log


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> tuple[Path, list[dict[str, Path]]]:
    out = tmp_path_factory.mktemp("tables")
    return out, [_render("results/default/table1.csv", out), _render("results/smoke/itermask2-table1.csv", out)]


def test_one_column_article(realistic):
    out, paths = realistic
    assert "paper 33.4" in paths[1]["tex"].read_text()  # the paper's numbers do sit beside ours
    _compile(out, "onecolumn", [p["tex"] for p in paths])


def test_two_column_article_with_table_star(realistic):
    out, paths = realistic
    _compile(out, "twocolumn", [p["wide_tex"] for p in paths], "twocolumn")


def test_a_long_table_fits_pages(tmp_path):
    paths = R.render_table(_wide_and_long(70, groups=1), table_id="t", title="Long", out_dir=tmp_path)
    floats = paths["tex"].read_text().count(r"\begin{table}")
    log = _compile(tmp_path, "long", [paths["tex"]])
    pages = int(re.search(r"Output written on long\.pdf \((\d+) pages?", log).group(1))
    assert floats >= 3 and pages <= floats + 1  # the text's page, then a page at most for each float


def test_every_registered_text_compiles(tmp_path):
    """A table footnoted with every registered text (metric descriptions, deviations, table notes)."""
    rows = pd.DataFrame([dict(table_id="t", method="ra", metric="auprc", metric_id=i, value=0.7, scale="fraction",
                              seed=0) for i in ("auprc|pooled", "dice|oracle_test|max1000")])
    paths = R.render_table(rows, table_id="t", title="Synthetic — σ° 100% & more", out_dir=tmp_path,
                           footnotes=_every_registered_text())
    _compile(tmp_path, "texts", [paths["tex"]])
