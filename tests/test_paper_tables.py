"""Paper tables on a user-provided release: --root, one part (modality) per column group, paper numbers
beside ours. Runs on tiny files written in BraTS2021's published layout with IDs from the official split."""

from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import DataError, PhbenchError
from benchmark.runner import run_table
from tests.layouts import write_brats

SPLITS = Path(__file__).resolve().parent.parent / "datasets" / "splits" / "itermask2"


def _ids(split: str, n: int) -> list[str]:
    return pd.read_csv(SPLITS / f"brats2021_{split}.csv")["subject_id"].head(n).tolist()


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats2021")
    for k, case in enumerate(_ids("train", 3) + _ids("val", 1) + _ids("test", 2)):
        # IterMask2 reads axial slices 70-89: a lesion ball around z 80 leaves tumour-free slices on both sides
        write_brats(root, case, shape=(32, 32, 100), seed=k, lesion_z=0.62, lesion_r2=0.012)
    return root


def test_paper_table_needs_a_root(tmp_path):
    # the smoke profile falls back on the miniature release; every other profile needs the user's copy
    with pytest.raises(PhbenchError, match="--root"):
        run_table("itermask2-table1", profile="default", store=tmp_path / "runs", out=tmp_path / "out",
                  methods=["ae"], progress=False)


def test_a_root_with_part_of_the_official_lists_says_how_many_and_what_to_do(brats_root, tmp_path, capsys):
    with pytest.raises(DataError, match=r"6 of the 1251 subjects of IterMask2's official BraTS2021 lists .*"
                                        r"train 3/990, val 1/128, test 2/133; 0 subject\(s\) outside .*--subset"):
        run_table("itermask2-table1", profile="smoke", store=tmp_path / "runs", out=tmp_path / "out",
                  methods=["ae"], progress=False, root=brats_root)
    assert main(["table", "itermask2-table1", "--profile", "smoke", "--store", str(tmp_path / "runs"),
                 "--root", str(brats_root), "--methods", "ae"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"phbench: {brats_root}: 6 of the 1251 subjects")


def test_itermask2_table1_runs_per_modality_with_paper_numbers(brats_root, tmp_path):
    res = run_table("itermask2-table1", profile="smoke", store=tmp_path / "runs", out=tmp_path / "out",
                    methods=["ae"], progress=False, root=brats_root, subset=True)
    assert not res.failures, res.failures
    rows = res.rows
    assert set(rows["column_group"]) == {"FLAIR", "T1CE", "T2", "T1"}
    assert len(res.trained) == 4  # one model per modality
    assert set(rows["metric"]) == {"dice", "sensitivity", "precision", "ssim"}
    md = Path(res.outputs["md"]).read_text()
    paper = pd.read_csv(Path(__file__).resolve().parent.parent / "results" / "paper_tables.csv")
    ae_flair_dice = paper[(paper.table_id == "itermask2-table1") & (paper.method == "ae") & paper.variant.isna()
                          & (paper.column_group == "FLAIR") & (paper.metric == "dice")]["value"].item()
    assert f"paper {ae_flair_dice:g}" in md and "Δ" in md
    # methods the suite does not implement keep their printed numbers, flagged as missing here
    assert "ddpm" in md and "No results yet" in md
    # the CLI re-renders from the finished runs without training anything
    assert main(["render", "itermask2-table1", "--profile", "smoke", "--store", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "out2"), "--root", str(brats_root), "--methods", "ae", "--subset"]) == 0


def test_itermask2_table3_ablations_share_the_flair_store(brats_root, tmp_path):
    res = run_table("itermask2-table3", profile="smoke", store=tmp_path / "runs", out=tmp_path / "out",
                    progress=False, root=brats_root, subset=True)
    assert not res.failures, res.failures
    assert set(res.rows["variant"].fillna("")) == {"-freq", "-spat", "", "noise[0,+inf]", "oracle"}
    assert {"dice_small", "dice_medium", "dice_large"} <= set(res.rows["metric"])
    assert set(res.rows["column_group"]) == {"BraTS FLAIR"}


def test_a_root_with_none_of_the_listed_subjects_says_so_even_with_subset(tmp_path):
    """A folder whose subject ids are not the release's: one line naming the lists and a few ids found, instead of
    'no slices to write' with a cache path."""
    root = tmp_path / "mine"
    write_brats(root, "BraTS2021_my_case", shape=(32, 32, 100), seed=0, lesion_z=0.62, lesion_r2=0.012)
    for subset in (False, True):
        with pytest.raises(DataError, match=r"none of the 1251 subjects of .* is here \(1 subject\(s\) outside the "
                                            r"lists, e\.g\. BraTS2021_my_case\)"):
            run_table("itermask2-table1", profile="smoke", store=tmp_path / "runs", out=tmp_path / "out",
                      methods=["ae"], progress=False, root=root, subset=subset)
