"""``data_info``: counts text + preview PNG, on a written BraTS layout and on real LGG/OCT files."""

from __future__ import annotations

import re

import numpy as np
import pytest

from benchmark.errors import DataError
from datasets.info import data_info
from tests.layouts import write_brats, write_fastmri, write_fastmri_annotations


def _png_ok(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5  # not a blank canvas
    return arr.shape[:2]


def test_info_synthetic_brats_with_bad_case(tmp_path):
    write_brats(tmp_path / "d", "BraTS2021_00001", labels=(1, 2, 4))
    write_brats(tmp_path / "d", "BraTS2021_00002", seg=False, seed=1)
    write_brats(tmp_path / "d", "BraTS2021_00003", labels=(3,), seed=2)  # not a 2021 label
    out = tmp_path / "p.png"
    with pytest.raises(DataError) as e:  # --full without --skip-bad: the first bad subject stops it
        data_info("brats2021", tmp_path / "d", out, recipe="afsc_t2_brain", full=True, cache_dir=tmp_path / "c")
    assert "\n" not in str(e.value) and "BraTS2021_00003_seg.nii.gz: unknown label value(s) [3]" in str(e.value)
    text = data_info("brats2021", tmp_path / "d", out, recipe="afsc_t2_brain", full=True, cache_dir=tmp_path / "c",
                     skip_bad=True)
    assert "subjects: 3" in text and "has_seg: yes 2, no 1" in text
    assert "tumour" in text and "afsc_t2_brain@v1" in text
    assert "skipped:" in text and "unknown label value(s) [3]" in text
    assert "prepared store" in text and "skipped 1 subject(s):" in text
    assert "BraTS2021_00003: " in text.split("skipped 1 subject(s):")[1]
    _png_ok(out)


def test_info_unknown_root_is_one_line(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError) as e:
        data_info("oct2017", tmp_path / "e", tmp_path / "x.png")
    assert "\n" not in str(e.value) and "empty" in str(e.value)


def test_info_real_lgg_and_oct(shared_data, tmp_path):
    import csv

    from datasets.splits import HERE

    text = data_info("lgg", shared_data / "lgg-mri-segmentation", tmp_path / "lgg.png", n_preview=4)
    assert "subjects: 110" in text and "slice files: 1272" in text and "lgg_flair@v2" in text
    assert "anomalous/tumour" in text
    # counted under the committed patient split, named in the output
    assert "split: setup lgg-dev" in text and "datasets/splits/lgg/lgg_patients.csv" in text
    rows = list(csv.DictReader((HERE / "lgg" / "lgg_patients.csv").open()))
    n = {sp: sum(r["split"] == sp for r in rows) for sp in ("train", "val", "test")}
    assert re.search(rf"^\s*tumour\s+{n['train']}\s+{n['val']}\s+{n['test']}\s+110\s*$", text, re.M), text
    h, w = _png_ok(tmp_path / "lgg.png")
    assert w > h  # 4 panels in one row
    text = data_info("oct2017", None, tmp_path / "oct.png", n_preview=4)  # root=None: the shared copy
    assert "subjects: 32" in text and "cnv" in text and "folder_split: val 32" in text
    _png_ok(tmp_path / "oct.png")


def test_info_defaults_and_recipe_names(tmp_path, monkeypatch):
    from datasets.info import resolve_recipe

    assert resolve_recipe("phantom-flair").id == "phantom-flair@v2"
    assert resolve_recipe("itermask2_brats_t2@v1").channels == ("t2",)
    monkeypatch.setenv("PHBENCH_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        data_info("hcp", None, tmp_path / "x.png")
    assert "pass --root" in str(e.value) and "MNINonLinear" in str(e.value)


def test_info_release_split_when_no_suite_setup(tmp_path):
    write_brats(tmp_path / "d", "BraTS-GLI-00002-000", naming="2023", labels=(1, 2, 3))
    text = data_info("brats", tmp_path / "d", tmp_path / "p.png", recipe="afsc_t2_brain", n_preview=1)
    assert "split: none" in text and "no suite setup pairs brats with afsc_t2_brain@v1" in text
    assert re.search(r"^\s*tumour\s+1\s+1\s*$", text, re.M), text


def test_info_ixi_written_counts_under_ra_list(tmp_path):
    from datasets.splits import read_csv
    from tests.layouts import write_ixi

    listed = read_csv("ra/ixi_t1_png_all.csv")[0]["ixi_subject_id"]
    write_ixi(tmp_path, listed, "HH", 1000, ("T1",))
    write_ixi(tmp_path, "IXI999", "HH", 1001, ("T1",))  # no such IXI id: not in RA's 581
    text = data_info("ixi", tmp_path, tmp_path / "p.png", n_preview=1)
    assert "split: setup ra-ixi" in text and "ixi_t1_png_all.csv" in text
    assert re.search(r"^\s*pathology \\ split\s+train\s+unused\s+total\s*$", text, re.M), text
    assert re.search(r"^\s*healthy\s+1\s+1\s+2\s*$", text, re.M), text


def _annotation_rows():
    return [("file_brain_AXT1_201_6002688", 3, "No", 10, 12, 8, 6, "Mass"),
            ("file_brain_AXT1_201_6002688", 4, "No", 11, 12, 8, 6, "Mass"),
            ("file_brain_AXT1_201_6002688", 4, "No", 20, 20, 5, 5, "Edema"),
            ("file_brain_AXFLAIR_200_6002425", None, "Yes", None, None, None, None, "Motion artifact"),
            ("file_brain_AXT1_201_6002700", None, "Yes", None, None, None, None, "Normal for age")]


def test_info_fastmri_annotations_only_written(tmp_path, monkeypatch):
    monkeypatch.delenv("PHBENCH_FASTMRI_PLUS", raising=False)
    reviewed = ["file_brain_AXT1_201_6002688", "file_brain_AXFLAIR_200_6002425", "file_brain_AXT1_201_6002700",
                "file_brain_AXT2_200_6001000"]
    write_fastmri_annotations(tmp_path, _annotation_rows(), reviewed)
    png = tmp_path / "p.png"
    text = data_info("fastmri_plus", tmp_path, png, full=True)
    assert "subjects: 0" in text and "h5 volumes missing" in text and "no preview is drawn" in text
    assert "annotated files: 3 (1 with boxes, 2 with global labels)" in text
    assert "reviewed files (brain_file_list.csv): 4, 1 of them without any annotation row" in text
    assert re.search(r"^\s*Mass\s+2\s+1\s*$", text, re.M) and re.search(r"^\s*Edema\s+1\s+1\s*$", text, re.M)
    assert re.search(r"^\s*Motion artifact\s+1\s*$", text, re.M) and "3 boxes" in text
    assert "split: setup ra-fastmri" in text and not png.exists()
    # with an h5 present it is a normal root again: subjects, preview
    write_fastmri(tmp_path, "file_brain_AXT1_201_6002688", n_slices=8, hw=(64, 64))
    text = data_info("fastmri_plus", tmp_path, png, n_preview=1)
    assert "subjects: 1" in text and "annotated boxes: 3 on 1 volumes" in text and "annotations only" not in text
    _png_ok(png)


def test_cli_fastmri_real_annotations_only(shared_data, tmp_path, capsys, monkeypatch):
    import csv

    from benchmark.cli import main

    monkeypatch.delenv("PHBENCH_FASTMRI_PLUS", raising=False)
    root = shared_data / "fastmri-plus"
    ann = root / "Annotations"
    rows = list(csv.DictReader((ann / "brain.csv").open()))
    reviewed = [ln for ln in (ann / "brain_file_list.csv").read_text().splitlines() if ln.strip()]
    png = tmp_path / "p.png"
    assert main(["data", "info", "fastmri_plus", "--root", str(root), "--preview", str(png)]) == 0
    out = capsys.readouterr().out
    assert "h5 volumes missing" in out and not png.exists()
    assert f"annotated files: {len({r['file'] for r in rows})} " in out
    assert f"reviewed files (brain_file_list.csv): {len(set(reviewed))}," in out
    boxes = [r for r in rows if r["study_level"] == "No"]
    assert f"({len(boxes)} boxes;" in out
    top = max({r["label"] for r in boxes}, key=lambda lab: sum(r["label"] == lab for r in boxes))
    n_top = sum(r["label"] == top for r in boxes)
    n_files = len({r["file"] for r in boxes if r["label"] == top})
    assert re.search(rf"^\s*{re.escape(top)}\s+{n_top}\s+{n_files}\s*$", out, re.M), out
    glob = {(r["file"], r["label"]) for r in rows if r["study_level"] == "Yes"}
    assert f"({len(glob)} file labels;" in out
    # with written h5 files the same annotations give a normal info (as before)
    write_fastmri(tmp_path / "d", reviewed[0], n_slices=6, hw=(64, 64))
    for f in (ann / "brain.csv", ann / "brain_file_list.csv"):
        (tmp_path / "d" / "Annotations").mkdir(exist_ok=True)
        (tmp_path / "d" / "Annotations" / f.name).write_bytes(f.read_bytes())
    assert main(["data", "info", "fastmri_plus", "--root", str(tmp_path / "d"), "--preview", str(png)]) == 0
    out = capsys.readouterr().out
    assert "subjects: 1" in out and "annotations only" not in out
    _png_ok(png)
