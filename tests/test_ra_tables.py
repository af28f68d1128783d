"""RA's six tables end to end in the smoke profile on the layout-faithful miniature release (IXI NIfTI + fastMRI
h5 + fastMRI+ annotations under RA's real file ids, read by the real adapters), guarded by the stored smoke
references; and the release's bad inputs, each one line naming the file and the cause."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import DataError
from benchmark.registry import get_table
from datasets.miniature import miniature_root
from datasets.recipes_paper import SETUPS
from protocols.stats import as_text
from protocols.tables import PAPER_TABLES_CSV
from tests.table_runs import assert_smoke_references_guard, run_smoke_tables

RA_TABLES = ("ra-table1a", "ra-table1b", "ra-table2a", "ra-table2b", "ra-table3a", "ra-table3b")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ra_runs(tmp_path_factory):
    return run_smoke_tables(tmp_path_factory.mktemp("ra"), RA_TABLES)


def test_every_paper_row_and_column_is_computed(ra_runs):
    """Each table runs every (method, variant) row the paper prints, fills each of the paper's column groups
    and metrics with the id the table names as the paper's computation, and renders the paper number beside
    it; models are shared across the tables (trained once per method and training config)."""
    tmp, runs = ra_runs
    paper = pd.read_csv(PAPER_TABLES_CSV, dtype=str, keep_default_na=False)
    for table_id, res in runs.items():
        assert not res.failures, (table_id, res.failures)
        spec = get_table(table_id)
        want = paper[paper.table_id == table_id]
        rows = res.rows.assign(variant=as_text(res.rows["variant"]))
        assert set(zip(want.method, want.variant)) == set(zip(rows.method, rows.variant)), table_id
        for p in want.itertuples():
            mid = spec.paper_metric_ids[p.metric]
            cell = rows[(rows.method == p.method) & (rows.variant == p.variant) & (rows.column_group == p.column_group)
                        & (rows.metric_id == mid)]
            assert len(cell) == 1, (table_id, p.method, p.variant, p.column_group, mid)
        md = Path(res.outputs["md"]).read_text()
        assert md.count("(paper ") >= len(want) - want.metric.eq("lpips").sum(), table_id
    # ae-s, vae, dae, si-vae, ra and mkd (Table 2) and RA w/o reverse loss (Table 3): seven trainings in all
    assert len(list((tmp / "runs" / "smoke" / "models").iterdir())) == 7


def test_box_table_uses_ra_lists_and_its_threshold_search(ra_runs):
    _, runs = ra_runs
    rows = runs["ra-table2b"].rows
    ra = rows[(rows.method == "ra") & (rows.metric_id == "f1|per_box|fpr@5%_healthy_image|ra_code")].iloc[0]
    assert ra.column_group == "local pathology"
    assert "normal test slices" in ra.note and "of the 171 listed boxes found" in ra.note
    glob = runs["ra-table2a"].rows
    assert set(glob.column_group) == {"global pathology", "global artefacts", "average", "normal"}


def test_stored_smoke_references_guard_the_six_tables(ra_runs):
    """The CI regression check as a user runs it, on the finished runs of the fixture."""
    assert_smoke_references_guard(ra_runs[0], RA_TABLES)


# ---------------------------------------------------------------------------------------------------
# bad input in the release layout


@pytest.fixture()
def release(tmp_path) -> Path:
    root = tmp_path / "release"
    shutil.copytree(miniature_root("ra"), root)
    return root


def _first(root: Path, role: str) -> str:
    import json

    return json.loads((root / "miniature.json").read_text())["fastmri"][role][0]


def _prepare(root: Path, tmp: Path, skip_bad: bool = False):
    return SETUPS["ra-ixi-fastmri"].prepare(root, cache_dir=tmp / "stores", skip_bad=skip_bad)


def _expect(root: Path, tmp: Path, *words: str):
    with pytest.raises(DataError) as err:
        _prepare(root, tmp)
    line = str(err.value)
    assert "\n" not in line and all(w in line for w in words), line
    store = _prepare(root, tmp, skip_bad=True)  # the others still run
    assert len(store.meta["skipped"]) == 1 and all(w in store.meta["skipped"][0] for w in words)
    assert len(store.split("train")) > 0 and len(store.split("test")) > 0
    return store


def test_h5_without_reconstruction_rss(release, tmp_path):
    fid = _first(release, "test_normal")
    path = release / "multicoil_train" / f"{fid}.h5"
    with h5py.File(path, "a") as f:
        del f["reconstruction_rss"]
    store = _expect(release, tmp_path, f"{fid}.h5", "no reconstruction_rss")
    assert fid not in set(store.manifest["subject"])


def test_box_outside_the_image(release, tmp_path):
    ann = release / "Annotations" / "brain.csv"
    lines = ann.read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ",No," in ln)
    parts = lines[k].split(",")
    parts[3], parts[5] = "300", "40"  # x = 300, width 40: past the 320-px edge
    lines[k] = ",".join(parts)
    ann.write_text("\n".join(lines) + "\n")
    _expect(release, tmp_path, "brain.csv", parts[0], "outside the 320×320 image")


def test_annotation_naming_a_missing_file(release, tmp_path):
    fid = _first(release, "global_pathology")
    (release / "multicoil_train" / f"{fid}.h5").unlink()
    _expect(release, tmp_path, "brain.csv", f"names {fid}", f"no {fid}.h5")


def test_cli_skip_bad_runs_the_others(release, tmp_path, capsys):
    fid = _first(release, "test_normal")
    (release / "multicoil_train" / f"{fid}.h5").write_bytes(b"not an hdf5 file")
    args = ["table", "ra-table2a", "--profile", "smoke", "--root", str(release), "--store", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--methods", "ae-s", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{fid}.h5" in err[0] and "unreadable HDF5" in err[0]
    assert main(args + ["--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert f"skipped (bad input): {release}" in err and f"{fid}.h5" in err


def test_ixi_development_setup_on_the_shared_volumes(shared_data, tmp_path):
    """ra-ixi-dev: the 36 shared IXI T1 volumes, subject split 24 / 4 / 8, 11 slices each, all healthy."""
    store = SETUPS["ra-ixi-dev"].prepare(shared_data / "ixi", cache_dir=tmp_path)
    m = store.manifest
    per = m.groupby("split")["subject"].agg(["size", "nunique"])
    assert per.to_dict("index") == {"train": {"size": 264, "nunique": 24}, "val": {"size": 44, "nunique": 4},
                                    "test": {"size": 88, "nunique": 8}}
    assert (m["label"] == 0).all() and float(store.images.min()) >= 0.0 and float(store.images.max()) <= 1.0
    assert get_table("ra-ixi-dev").protocol == "synthetic"
