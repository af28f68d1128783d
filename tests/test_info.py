"""``data_info``: counts text + preview PNG, on a written BraTS layout and on real LGG/OCT files."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.errors import DataError
from datasets.info import data_info
from tests.layouts import write_brats


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
    text = data_info("brats2021", tmp_path / "d", out, recipe="afsc_t2_brain", full=True, cache_dir=tmp_path / "c")
    assert "subjects: 3" in text and "has_seg: yes 2, no 1" in text
    assert "tumour" in text and "afsc_t2_brain@v1" in text
    assert "skipped:" in text and "unknown label value(s) [3]" in text
    assert "prepared store" in text
    _png_ok(out)


def test_info_unknown_root_is_one_line(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError) as e:
        data_info("oct2017", tmp_path / "e", tmp_path / "x.png")
    assert "\n" not in str(e.value) and "empty" in str(e.value)


def test_info_real_lgg_and_oct(shared_data, tmp_path):
    text = data_info("lgg", shared_data / "lgg-mri-segmentation", tmp_path / "lgg.png", n_preview=4)
    assert "subjects: 110" in text and "slice files: 1272" in text and "lgg_flair@v1" in text
    assert "anomalous/tumour" in text
    h, w = _png_ok(tmp_path / "lgg.png")
    assert w > h  # 4 panels in one row
    text = data_info("oct2017", None, tmp_path / "oct.png", n_preview=4)  # root=None: the shared copy
    assert "subjects: 32" in text and "cnv" in text and "folder_split: val 32" in text
    _png_ok(tmp_path / "oct.png")


def test_info_defaults_and_recipe_names(tmp_path, monkeypatch):
    from datasets.info import resolve_recipe

    assert resolve_recipe("phantom-flair").id == "phantom-flair@v1"
    assert resolve_recipe("itermask2_brats_t2@v1").channels == ("t2",)
    monkeypatch.setenv("PHBENCH_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        data_info("hcp", None, tmp_path / "x.png")
    assert "pass --root" in str(e.value) and "MNINonLinear" in str(e.value)
