"""protocols.render and protocols.figures: layout, ranking, paper comparison, gaps, files."""

import re

import pandas as pd
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
    # the paper prints percent, so the whole table is in percent: ours 0.71 -> 71.0 beside the paper's 73.7
    assert "**71.0 ± 0.8**" in md  # ra best (oracle row not ranked)
    assert "_56.0 ± 0.8_" in md
    assert "99.0" in md and "**99.0" not in md
    assert "paper 73.7, Δ −2.7" in md and "0.710" not in md
    assert "No results yet for: si-vae" in md and "– (paper 27.6)" in md
    assert "auprc|pooled" in md and "| x " not in md


def test_lower_is_better_and_empty_frame():
    rows = pd.DataFrame([dict(table_id="t", method=m, metric="lpips", metric_id="lpips|inside_mask", value=v,
                              scale="percent", seed=0) for m, v in [("a", 5.0), ("b", 3.0), ("c", 4.0)]])
    md = R.markdown_table(rows, table_id="t")
    assert "**3.0**" in md and "_4.0_" in md  # percent: one decimal, the resolution of a fraction's three
    md = R.markdown_table(pd.DataFrame(columns=ROW_COLUMNS), table_id="t", expected_methods=["ra"])
    assert "No results yet for: ra" in md


def test_render_files(tmp_path):
    paths = R.render_table(_rows(), table_id="ra-table1b", title="Synthetic 100% & more", out_dir=tmp_path,
                           footnotes=["LPIPS: AlexNet instead of SqueezeNet"], paper=_paper())
    assert set(paths) == {"csv", "md", "tex", "wide_tex", "notes"} and all(p.exists() for p in paths.values())
    tex = paths["tex"].read_text()
    assert r"\toprule" in tex and r"\phbcell{\textbf{71.0}\\\scriptsize $\pm$ 0.8" in tex and r"\underline{" in tex
    assert r"\begin{table}[" in tex and r"\begin{table*}[" in paths["wide_tex"].read_text()
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


def _itermask2_like(with_paper: bool):
    """Our fractions beside a paper that prints Dice in percent and SSIM as a fraction (IterMask2 Table 1)."""
    rows = pd.DataFrame([dict(table_id="t", method=m, dataset="brats", column_group="FLAIR", metric=metric,
                              metric_id=mid, value=v, scale="fraction", seed=0)
                         for m, dice, ssim in [("ae", 0.2437, 0.578), ("dae", 0.222, 0.548)]
                         for metric, mid, v in [("dice", "dice|per_image|oracle_test|itermask2", dice),
                                                ("ssim", "ssim|itermask2_code", ssim)]])
    paper = pd.DataFrame([dict(table_id="t", method="ae", variant="", dataset="brats", column_group="FLAIR",
                               metric=metric, value=v, std="", scale=scale)
                          for metric, v, scale in [("dice", "33.4", "percent"), ("ssim", "0.941", "fraction")]])
    return rows, paper if with_paper else None


def test_one_scale_per_table_the_papers_when_it_sits_beside_ours():
    rows, paper = _itermask2_like(with_paper=True)
    md = R.markdown_table(rows, table_id="t", paper=paper)
    assert "**24.4** (paper 33.4, Δ −9.0)" in md  # not 0.244 beside 33.4
    assert "**57.8** (paper 94.1, Δ −36.3)" in md  # the paper's own fraction column converted with it
    assert "0.941" not in md and "0.244" not in md
    assert "Scale: percent (fractions × 100), the paper's; its numbers printed as fractions are converted too." in md
    md = R.markdown_table(rows, table_id="t")  # no paper: the rows' own scale
    assert "0.244" in md and "24.4" not in md and "Scale: fractions (0–1)." in md


def test_namesake_columns_get_a_short_suffix_from_their_ids():
    def labels(ids):
        rows = pd.DataFrame([dict(table_id="t", method="a", metric=i.split("|")[0], metric_id=i, value=0.5,
                                  scale="fraction", seed=0) for i in ids])
        return R.build_table(rows, table_id="t").column_labels
    assert labels(["dice|fpr@5%_healthy_brain", "dice|oracle_test|max1000"]) == [
        "dice (fpr 5 %) [a]", "dice (oracle)† [b]"]
    assert labels(["auprc|pooled", "auprc|pooled|trapezoid"]) == ["auprc [a]", "auprc (trapezoid) [b]"]
    assert labels(["auroc_pixel|pooled_brain", "auroc_pixel|per_volume"]) == [
        "auroc_pixel (pooled) [a]", "auroc_pixel (per volume) [b]"]  # a short first word keeps the next
    detail = ["dice|fpr@5%_healthy_image", "dice|per_image|fpr@5%_healthy_brain", "dice|oracle_test|pr_exact",
              "dice|per_image|oracle_image", "dice|per_image|oracle_test|itermask2", "dice|oracle_test|unit101"]
    got = labels(detail)
    assert len(set(got)) == len(detail) and got[0] == "dice (fpr 5 %) [a]"  # unique; short where it can be


def test_deviations_are_counted_in_the_table_and_listed_in_the_notes_file(tmp_path):
    devs = {"ra": ["AlexNet LPIPS trunk", "CLAHE by scikit-image"], "vae": ["one deviation only"], "dae": []}
    paths = R.render_table(_rows(), table_id="ra-table1b", title="T", out_dir=tmp_path, paper=_paper(),
                           deviations=devs)
    md, notes, tex = (paths[k].read_text() for k in ("md", "notes", "tex"))
    assert "- ra: 2 deviations, see ra-table1b.notes.md." in md and "- vae: 1 deviation, see" in md
    assert "dae:" not in md and "AlexNet" not in md and "AlexNet" not in tex
    assert "### ra (2)\n\n- AlexNet LPIPS trunk\n- CLAHE by scikit-image" in notes and "### vae (1)" in notes
    assert "`auprc|pooled`" in notes  # the notes file repeats the table's footnotes in full
    assert r"(ra 2, vae 1): listed in \texttt{ra-table1b.notes.md}" in tex  # one line in LaTeX


def _wide_and_long(n_methods: int, groups: int):
    ids = ["auroc|image", "ap|image", "dice|fpr@5%_healthy_brain", "dice|oracle_test|max1000"]
    return pd.DataFrame([dict(table_id="t", method=f"method{k:02d}", dataset="d", column_group=f"G{g}",
                              metric=i.split("|")[0], metric_id=i, value=0.5 + 0.001 * k, ci_low=0.4, ci_high=0.6,
                              scale="fraction", seed=0)
                         for k in range(n_methods) for g in range(groups) for i in ids])


def test_a_wide_table_continues_in_floats_of_the_same_number_each_group_whole():
    t = R.build_table(_wide_and_long(8, groups=4), table_id="t", title="Wide",
                      footnotes=["A table note."])
    tex = R.latex_table(t)
    floats = tex.split(r"\begin{table}")[1:]
    assert 2 <= len(floats) <= 4 and tex.count(r"\label{tab:t}") == 1
    assert tex.count(r"\addtocounter{table}{-1}") == len(floats) - 1
    assert f"(part {len(floats)} of {len(floats)})" in tex
    groups = [re.findall(r"\\multicolumn\{(\d+)\}\{c\}\{G\d\}", f) for f in floats]
    assert all(n == "4" for g in groups for n in g) and sum(map(len, groups)) == 4  # no group cut in two
    assert "[a]" in floats[0].split(r"\midrule")[1] and "[a]" not in floats[1].split(r"\midrule")[1]
    assert "A table note." in floats[-1] and "A table note." not in floats[0]
    wide = R.latex_table(t, wide=True)
    assert r"\begin{table*}[tp]" in wide and wide.count(r"\begin{table*}") <= len(floats)


def test_a_long_table_continues_in_floats_of_the_same_number():
    t = R.build_table(_wide_and_long(80, groups=1), table_id="t")
    floats = R.latex_table(t).split(r"\begin{table}")[1:]
    rows = [len(re.findall(r"^method\d\d ", f, flags=re.M)) for f in floats]
    assert len(floats) >= 3 and sum(rows) == 80  # 80 two-line rows are three pages' worth
    assert "Values: mean" in floats[-1] and "Values: mean" not in floats[0]


def test_a_latex_caption_does_not_repeat_the_float_number():
    data = _wide_and_long(2, groups=1)
    own = R.latex_table(R.build_table(data, table_id="t", title="Table 1 — MNI phantom: lesions"))
    assert r"\caption{MNI phantom: lesions}" in own  # LaTeX writes "Table 1:" itself
    paper = R.latex_table(R.build_table(data, table_id="t", title="IterMask2 Table 1 — BraTS2021"))
    assert r"\caption{IterMask2 Table 1 --- BraTS2021}" in paper  # a paper's table id names the source: kept
