"""ProxyAno's five tables end to end in the smoke profile on the layout-faithful miniature release (the two Kaggle
brain sets, OCT2017 and IDRiD in their real layouts), every row of the paper, guarded by the stored smoke references.
"""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark.errors import PhbenchError
from benchmark.registry import get_table
from benchmark.runner import selected_parts
from protocols.tables import PAPER_TABLES_CSV
from tests.table_runs import REPO, assert_smoke_references_guard, run_smoke_tables, table_rows as _rows

TABLES = ("proxyano-table1", "proxyano-table2", "proxyano-table3", "proxyano-table4", "proxyano-table5")


def ours(spec, method: str, variant: str) -> tuple[str, str]:
    """Our row for a paper row (the inverse of ``TableSpec.paper_rows``)."""
    back = {paper: mine for mine, paper in spec.paper_rows.items()}
    return back.get((method, variant), (method, variant))


def test_every_paper_row_and_column_is_planned():
    paper = pd.read_csv(PAPER_TABLES_CSV, dtype=str, keep_default_na=False)
    for table_id in TABLES:
        spec = get_table(table_id)
        expected = paper[paper.table_id == table_id]
        assert len(expected), table_id
        planned = {(p.dataset or spec.dataset, p.column_group): p.metrics or spec.metrics for p in spec.all_parts}
        for p in expected.itertuples():
            assert ours(spec, p.method, p.variant) in spec.methods, (table_id, p.method, p.variant)
            ids = planned.get((p.dataset, p.column_group))
            assert ids is not None, (table_id, p.dataset, p.column_group)
            assert p.metric in {i.split("|")[0] for i in ids}, (table_id, p.metric)


def test_parts_are_chosen_by_name():
    t1 = get_table("proxyano-table1")
    assert [p.column_group for p in selected_parts(t1, ["brain"])] == ["Brain MRI [28]"]
    assert len(selected_parts(t1, None)) == 3
    assert [p.dataset for p in selected_parts(t1, ["fundus", "OCT"])] == ["oct2017", "idrid"]  # table order
    with pytest.raises(PhbenchError, match="no part matches 'ct scans'"):
        selected_parts(t1, ["ct scans"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_smoke_tables(tmp_path_factory.mktemp("proxyano"), TABLES)


def test_every_paper_cell_has_a_computed_number_beside_it(runs):
    tmp, by_table = runs
    paper = pd.read_csv(PAPER_TABLES_CSV, dtype=str, keep_default_na=False)
    for table_id, res in by_table.items():
        assert not res.failures, (table_id, res.failures)
        spec, rows = get_table(table_id), _rows(res)
        for p in paper[paper.table_id == table_id].itertuples():
            m, v = ours(spec, p.method, p.variant)
            cell = rows[(rows.method == m) & (rows.variant == v) & (rows.metric == p.metric)
                        & (rows.column_group == p.column_group) & (rows.dataset == p.dataset)]
            assert len(cell) == 1, (table_id, p.method, p.variant, p.dataset, p.metric)
        md = next((tmp / "out").rglob(f"{table_id}.md")).read_text()
        first = paper[paper.table_id == table_id].iloc[0]
        assert f"(paper {float(first['value']):.3f}" in md  # the paper's number sits beside ours


def test_later_tables_reuse_table_one_models(runs):
    """Tables II–V train only what Table I does not: the SI approach (II) and the other proxies (III) and ablation
    modules (IV); Table V re-scores Table I's final model. Scoring-only variants never train."""
    def trained(table_id: str) -> set[str]:
        return {t.split(": ")[-1].removesuffix(" seed 0") for t in runs[1][table_id].trained}

    assert trained("proxyano-table2") == {"proxyano/2xEncDec+SI+lat"}
    assert trained("proxyano-table3") == {f"proxyano/proxy={k}" for k in
                                          ("edge", "smooth", "smooth_patches", "edge+smooth", "edge+smooth_patches")}
    assert trained("proxyano-table4") == {"proxyano/EncDec+mem", "proxyano/2xEncDec+SI+mem",
                                          "proxyano/2xEncDec+SI+rep"}
    assert trained("proxyano-table5") == set()


def test_table_two_scores_every_row_in_latent_space(runs):
    rows = _rows(runs[1]["proxyano-table2"])
    configs = {(r.method, r.variant): r.config for r in rows.drop_duplicates(["method", "variant"]).itertuples()}
    assert '"score_space": "latent"' in configs[("ae-proxy", "")]
    for m in ("f-anogan", "ganomaly", "sparse-gan"):
        assert '"image_score": "latent"' in configs[(m, "")], m
    gap = rows[rows.metric == "score_gap"]
    normal = rows[rows.metric == "mean_score_normal"].set_index(["method", "variant"])["value"]
    abnormal = rows[rows.metric == "mean_score_abnormal"].set_index(["method", "variant"])["value"]
    for r in gap.itertuples():
        assert r.value == pytest.approx(abnormal[(r.method, r.variant)] - normal[(r.method, r.variant)], abs=1e-9)


def test_stored_smoke_references_guard_the_tables(runs):
    assert_smoke_references_guard(runs[0], TABLES)


def test_a_part_run_renders_only_its_paper_columns(tmp_path):
    """A run of the brain column (results/real: the real Kaggle sets) rendered with --parts shows the paper's brain
    numbers and none of the OCT / fundus columns it did not run; without --parts those columns are shown empty."""
    from benchmark.runner import render_from_rows
    from protocols.stats import as_text

    rows = pd.read_csv(REPO / "results" / "real" / "proxyano-table1-brain.csv", keep_default_na=False,
                       dtype={"variant": str, "column_group": str})
    rows["variant"] = as_text(rows["variant"])
    spec = get_table("proxyano-table1")
    chosen = list(spec.methods)
    brain = render_from_rows(spec, rows, pd.DataFrame(), chosen, tmp_path / "brain", "default", ["brain"])
    md = brain["md"].read_text()
    assert "(paper 0.853" in md and "Retinal OCT" not in md and "Fundus" not in md
    full = render_from_rows(spec, rows, pd.DataFrame(), chosen, tmp_path / "all", "default")["md"].read_text()
    assert "Retinal OCT" in full
