"""protocols.render and protocols.figures: layout, ranking, paper comparison, gaps, files."""

import pandas as pd
import pytest
import torch

from benchmark.runstore import ROW_COLUMNS
from protocols import render as R


def _rows():
    out = []
    for m, v in [("ra", 0.70), ("vae", 0.20), ("dae", 0.55)]:
        for s in range(3):
            out.append(dict(table_id="ra-table1b", method=m, variant="", dataset="fastmri_plus",
                            column_group="intensity anomaly", metric="auprc", metric_id="auprc|pooled",
                            value=v + 0.01 * s, scale="fraction", seed=s, run_key=f"k{m}{s}"))
    out.append(dict(table_id="ra-table1b", method="ra", variant="oracle", dataset="fastmri_plus",
                    column_group="intensity anomaly", metric="auprc", metric_id="auprc|pooled", value=0.99,
                    scale="fraction", seed=0))
    out.append(dict(table_id="other", method="x", metric="auroc", value=1.0))
    return pd.DataFrame(out)


def _paper():
    return pd.DataFrame([dict(table_id="ra-table1b", method="ra", variant="", dataset="fastmri_plus",
                              column_group="intensity anomaly", metric="auprc", value="73.7", std="", scale="percent"),
                         dict(table_id="ra-table1b", method="si-vae", variant="", dataset="fastmri_plus",
                              column_group="intensity anomaly", metric="auprc", value="27.6", std="", scale="percent")])


def test_markdown_ranking_paper_and_missing():
    md = R.markdown_table(_rows(), table_id="ra-table1b", title="T", paper=_paper())
    assert "**0.710 ± 0.008**" in md  # ra best (oracle row not ranked)
    assert "_0.560 ± 0.008_" in md
    assert "0.990" in md and "**0.990" not in md
    assert "paper 73.7, Δ −2.7" in md  # ours 0.71 -> 71.0 % vs 73.7
    assert "No results yet for: si-vae" in md and "– (paper 27.6)" in md
    assert "auprc|pooled" in md and "| x " not in md


def test_lower_is_better_and_empty_frame():
    rows = pd.DataFrame([dict(table_id="t", method=m, metric="lpips", metric_id="lpips|inside_mask", value=v,
                              scale="percent", seed=0) for m, v in [("a", 5.0), ("b", 3.0), ("c", 4.0)]])
    md = R.markdown_table(rows, table_id="t")
    assert "**3.00**" in md and "_4.00_" in md
    md = R.markdown_table(pd.DataFrame(columns=ROW_COLUMNS), table_id="t", expected_methods=["ra"])
    assert "No results yet for: ra" in md


def test_render_files(tmp_path):
    paths = R.render_table(_rows(), table_id="ra-table1b", title="Synthetic 100% & more", out_dir=tmp_path,
                           footnotes=["LPIPS: AlexNet instead of SqueezeNet"], paper=_paper())
    assert set(paths) == {"csv", "md", "tex"} and all(p.exists() for p in paths.values())
    tex = paths["tex"].read_text()
    assert r"\toprule" in tex and r"\textbf{0.710 $\pm$ 0.008}" in tex and r"\underline{" in tex
    assert r"100\% \& more" in tex and "AlexNet" in tex and "ORACLE" not in tex
    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns[:len(ROW_COLUMNS)]) == ROW_COLUMNS and len(csv) == 10 and "run_key" in csv


def test_oracle_footnote_and_real_paper_file():
    rows = pd.DataFrame([dict(table_id="phanes-table2", method="phanes", dataset="atlas", metric="dice",
                              metric_id="dice|oracle_test|max1000", value=0.3, scale="fraction", seed=0)])
    paper = R.load_paper("results/paper_tables.csv")
    md = R.markdown_table(rows, table_id="phanes-table2", paper=paper)
    assert "ORACLE" in md and "phanes" in md


def test_figure(tmp_path):
    from protocols.figures import qualitative_figure

    x = torch.rand(2, 1, 16, 16); g = torch.zeros(2, 1, 16, 16); g[:, :, 4:8, 4:8] = 1
    out = {"ae": {"reconstruction": x * 0.9, "anomaly_map": (x - x * 0.9).abs()},
           "patchcore": {"reconstruction": None, "anomaly_map": torch.rand(2, 1, 16, 16)}}
    paths = qualitative_figure(x, g, out, tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)


def _two_methods(gap: float, n_subjects: int = 10, seed: int = 0):
    """One seed each; per-subject Dice of 'good' = 'weak' + gap + noise (the paired test's input)."""
    rng = torch.Generator().manual_seed(seed)
    weak = torch.rand(n_subjects, generator=rng) * 0.5
    good = weak + gap + 0.02 * torch.randn(n_subjects, generator=rng)
    rows, subj = [], []
    for m, vals in (("good", good), ("weak", weak)):
        rows.append(dict(table_id="t", method=m, variant="", dataset="d", metric="dice", metric_id="dice|x",
                         value=float(vals.mean()), ci_low=float(vals.min()), ci_high=float(vals.max()),
                         scale="fraction", seed=0, run_key=f"k-{m}"))
        subj += [dict(subject=f"s{i}", metric_id="dice|x", column_group="", value=float(v), run_key=f"k-{m}")
                 for i, v in enumerate(vals)]
    return pd.DataFrame(rows), pd.DataFrame(subj)


def test_paired_test_marks_only_a_significant_best():
    rows, subj = _two_methods(gap=0.2)
    t = R.build_table(rows, table_id="t", subjects=subj)
    assert t.cells[(0, 0)].mark == "*" and t.cells[(1, 0)].mark == ""
    assert t.tests[0]["p"] < 0.05 and t.tests[0]["n_subjects"] == 10
    assert any("Wilcoxon" in n for n in t.footnotes)
    rows, subj = _two_methods(gap=0.0)
    t = R.build_table(rows, table_id="t", subjects=subj)
    assert all(c.mark == "" for c in t.cells.values()) and not any("Wilcoxon" in n for n in t.footnotes)


def test_single_seed_cells_show_their_bootstrap_ci_and_nan_cells_their_reason():
    rows, _ = _two_methods(gap=0.2)
    rows.loc[1, ["value", "ci_low", "ci_high"]] = float("nan")
    rows.loc[1, "note"] = "no lesion pixels in the test set"
    md = R.markdown_table(rows, table_id="t")
    lo, hi = rows.loc[0, "ci_low"], rows.loc[0, "ci_high"]
    assert f"[{lo:.3f}, {hi:.3f}]" in md
    assert "weak / dice [a]): no lesion pixels in the test set" in md


def test_render_table_writes_the_tests_csv(tmp_path):
    rows, subj = _two_methods(gap=0.2)
    paths = R.render_table(rows, table_id="t", title="T", out_dir=tmp_path, subjects=subj)
    tests = pd.read_csv(paths["tests"])
    assert list(tests["other"]) == ["weak"] and bool(tests["significant"].iloc[0])


def _every_registered_text() -> list[str]:
    """Everything a rendered table may print: metric descriptions, method metadata, table titles/footnotes."""
    from benchmark.registry import all_methods, all_tables
    from protocols.metrics import METRICS

    texts = [getattr(spec, "description", "") for spec in METRICS.values()] + list(METRICS)
    for cls in all_methods().values():
        texts += [cls.info.paper, cls.info.summary, *cls.info.deviations, *cls.variants]
    for spec in all_tables().values():
        texts += [spec.title, *spec.footnotes]
    return [t for t in texts if t]


def test_latex_escaping_is_ascii_for_every_registered_text():
    bad = {t: R._tex(t) for t in _every_registered_text() if not R._tex(t).isascii() or r"\texttt{U+" in R._tex(t)}
    assert not bad, f"characters without a LaTeX mapping: {bad}"
    assert R._tex("σ = 2, 10° → x̂, ‖I − Î‖, é") == r"$\sigma$ = 2, 10$^\circ$ $\rightarrow$ $\hat{x}$, $\|$I - \^{I}$\|$, \'{e}"
    assert R._tex("a☃b") == r"a\texttt{U+2603}b"  # unmapped: visible and compilable, never raw Unicode


def test_rendered_latex_compiles_with_pdflatex(tmp_path):
    """The .tex of a table carrying every registered footnote compiles with plain pdflatex (needs TeX Live)."""
    import shutil
    import subprocess

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    rows = _rows()
    second = rows[rows.table_id == "ra-table1b"].assign(metric="dice", metric_id="dice|oracle_test|max1000")
    rows = pd.concat([rows, second], ignore_index=True)  # two footnoted columns: "[a] …\\ [b] …"
    paths = R.render_table(rows, table_id="ra-table1b", title="Synthetic — σ° 100% & more", out_dir=tmp_path,
                           footnotes=_every_registered_text(), paper=_paper())
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + paths["tex"].read_text() + "\n\\end{document}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_constant_score_cells_are_flagged_in_a_footnote():
    rows = pd.DataFrame([dict(table_id="t", method=m, metric="auroc", metric_id="auroc|image", value=v,
                              scale="fraction", seed=0, note=n) for m, v, n in
                         [("a", 0.5, "CONSTANT image scores (all 0): AUROC 0.5 / AP = prevalence by ties"),
                          ("b", 0.7, "")]])
    md = R.markdown_table(rows, table_id="t")
    assert "Warning (a / " in md and "CONSTANT image scores" in md and "(b / " not in md


def test_paper_number_sits_beside_the_id_the_table_names():
    rows = pd.DataFrame([dict(table_id="ra-table1b", method="ra", variant="", dataset="fastmri_plus",
                              column_group="intensity anomaly", metric="auprc", metric_id=mid, value=v,
                              scale="fraction", seed=0) for mid, v in [("auprc|pooled", 0.70),
                                                                       ("auprc|pooled|trapezoid", 0.60)]])
    guessed = R.build_table(rows, table_id="ra-table1b", paper=_paper())
    j = {c[3]: k for k, c in enumerate(guessed.columns)}
    assert guessed.cells[(0, j["auprc|pooled"])].paper_text == "73.7"
    assert any("`auprc` sit beside `auprc|pooled`" in n for n in guessed.footnotes)  # the guess is said
    named = R.build_table(rows, table_id="ra-table1b", paper=_paper(),
                          paper_metric_ids={"auprc": "auprc|pooled|trapezoid"})
    assert named.cells[(0, j["auprc|pooled|trapezoid"])].paper_text == "73.7"
    assert named.cells[(0, j["auprc|pooled"])].paper_text == ""
    assert not any("sit beside" in n for n in named.footnotes)
