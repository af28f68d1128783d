"""``--subjects FILE``: a table on the user's own split of a release's subjects instead of the paper's lists. Runs
on tiny BraTS2021-layout cases (ids of the official lists, reassigned to other splits by the file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import DataError, PhbenchError
from datasets.recipes_paper import SETUPS
from datasets.splits import SubjectsFile, subjects_for
from tests.layouts import write_brats

SPLITS = Path(__file__).resolve().parent.parent / "datasets" / "splits" / "itermask2"
SETUP = "itermask2-brats2021-flair"


def _ids(split: str, n: int) -> list[str]:
    return pd.read_csv(SPLITS / f"brats2021_{split}.csv")["subject_id"].head(n).tolist()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats2021")
    for k, case in enumerate(_ids("train", 3) + _ids("val", 1) + _ids("test", 2)):
        write_brats(root, case, shape=(32, 32, 100), seed=k, lesion_z=0.62, lesion_r2=0.012)
    return root


@pytest.fixture(scope="module")
def own() -> dict[str, str]:
    """A split that is not the paper's: an official test case trains, an official validation case tests."""
    (t0, t1, t2), (v0,), (s0, s1) = _ids("train", 3), _ids("val", 1), _ids("test", 2)
    return {s0: "train", t0: "train", t1: "train", t2: "val", v0: "test", s1: "test"}


def write_list(path: Path, rows: dict[str, str], header: str = "subject,split") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *(f"{s},{sp}" for s, sp in rows.items())]) + "\n")
    return path


def test_a_table_runs_on_the_given_list_and_says_so(root, own, tmp_path):
    listed = write_list(tmp_path / "my_split.csv", own)
    assert main(["table", "itermask2-table1", "--profile", "smoke", "--root", str(root), "--subjects", str(listed),
                 "--parts", "FLAIR", "--methods", "ae", "--quiet", "--store", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "out")]) == 0
    store = SETUPS[SETUP].prepare(root, subset=SubjectsFile.read(listed))  # the table's store, reopened
    per_subject = store.manifest.groupby("subject")["split"].unique()
    assert {s: list(v) for s, v in per_subject.items()} == {s: [sp] for s, sp in own.items()}
    md = (tmp_path / "out" / "smoke" / "itermask2-table1.md").read_text()
    assert "my_split.csv (train 3, val 1, test 2 subjects)" in md and "not the paper's lists" in md


def test_the_key_follows_the_content_not_the_path(root, own, tmp_path):
    cache = tmp_path / "stores"
    first = SETUPS[SETUP].prepare(root, cache_dir=cache, subset=SubjectsFile.read(write_list(tmp_path / "a.csv", own)))
    moved = write_list(tmp_path / "elsewhere" / "b.csv", own)
    again = SETUPS[SETUP].prepare(root, cache_dir=cache, subset=SubjectsFile.read(moved))
    assert again.fingerprint == first.fingerprint and again.path == first.path  # reused, not rebuilt
    swapped = dict(own)
    val, test = next(s for s, sp in own.items() if sp == "val"), next(s for s, sp in own.items() if sp == "test")
    swapped[val], swapped[test] = "test", "val"
    other = SETUPS[SETUP].prepare(root, cache_dir=cache, subset=SubjectsFile.read(write_list(tmp_path / "c.csv",
                                                                                             swapped)))
    assert other.fingerprint != first.fingerprint and other.path != first.path
    paper = SETUPS[SETUP].prepare(root, cache_dir=cache, subset=True)
    assert paper.fingerprint not in (first.fingerprint, other.fingerprint)


def test_unknown_subjects_name_the_file_and_count(root, own, tmp_path):
    listed = write_list(tmp_path / "typo.csv", {**own, "BraTS2021_99998": "train", "BraTS2021_99999": "test"})
    with pytest.raises(DataError, match=r"typo\.csv: 2 of its 8 subjects are not under .*BraTS2021_99998"):
        SETUPS[SETUP].prepare(root, cache_dir=tmp_path / "stores", subset=SubjectsFile.read(listed))


@pytest.mark.parametrize("text, where", [
    ("subject,fold\nBraTS2021_00000,train\n", r"line 1: the header must be 'subject,split'"),
    ("subject,split\nBraTS2021_00000,train\nBraTS2021_00002,testing\n", r"line 3: split 'testing' is not one of"),
    ("subject,split\nBraTS2021_00000,train,x\n", r"line 2: 3 fields"),
    ("subject,split\nBraTS2021_00000,train\nBraTS2021_00000,test\n", r"line 3: subject BraTS2021_00000 is listed "
                                                                      r"again \(first on line 2\)"),
    ("subject,split\n", r"no subjects"),
])
def test_a_bad_file_gets_one_line_naming_it(tmp_path, text, where):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{path}: {where}"):
        SubjectsFile.read(path)


def test_cli_refuses_subset_with_subjects_and_tables_without_a_root(root, own, tmp_path, capsys):
    listed = write_list(tmp_path / "mine.csv", own)
    common = ["--profile", "smoke", "--store", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(["table", "itermask2-table1", "--root", str(root), "--subjects", str(listed), "--subset",
                 *common]) == 2
    assert main(["table", "table1", "--subjects", str(listed), "--methods", "ae", *common]) == 2
    assert main(["table", "itermask2-table1", "--root", str(root), "--subjects", str(tmp_path / "absent.csv"),
                 *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert "cannot be combined" in err[0] and "--subset" in err[0]
    assert "table1: --subjects" in err[1] and "reads no --root" in err[1]
    assert str(tmp_path / "absent.csv") in err[2]


def test_the_lists_message_points_at_both_options(root, tmp_path):
    with pytest.raises(PhbenchError, match=r"add --subset, or give your own split with --subjects FILE"):
        SETUPS[SETUP].prepare(root, cache_dir=tmp_path / "stores")


def test_data_prepare_uses_the_file(root, own, tmp_path, capsys):
    copy = tmp_path / "split.csv"
    shutil.copy(write_list(tmp_path / "orig.csv", own), copy)
    assert main(["data", "prepare", "brats2021", "--root", str(root), "--recipe", "itermask2_brats_flair",
                 "--store", str(tmp_path / "stores"), "--subjects", str(copy), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "split: split.csv (train 3, val 1, test 2 subjects) (--subjects)" in out


def test_each_release_of_a_multi_release_table_gets_the_rows_of_its_splits(tmp_path):
    f = tmp_path / "split.csv"
    f.write_text("subject,split\nhcp1,train\nhcp2,val\nbrats1,test\n")
    own = SubjectsFile.read(f)
    assert subjects_for(own, "train", "val").rows == (("hcp1", "train"), ("hcp2", "val"))
    assert subjects_for(own, "test").rows == (("brats1", "test"),)
    assert subjects_for(True, "test") is True and subjects_for(False, "train") is False  # --subset passes as is
