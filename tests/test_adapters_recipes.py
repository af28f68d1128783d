"""Per-paper recipes, committed split lists and setups (dataset × recipe × split)."""

from __future__ import annotations

import collections
import csv
import os
from pathlib import Path

import numpy as np
import pytest

from benchmark.registry import get_dataset
from datasets import splits as sp
from datasets.recipes_paper import (RECIPES, SETUPS, get_recipe, itermask2_intensity, rule_band, with_size)
from tests.layouts import phantom, write_brats

SPECS = Path(os.environ.get("PHBENCH_SHARED_SPECS", Path(__file__).resolve().parents[2] / "shared" / "specs"))


def test_recipe_ids_and_lookup():
    assert all(r.id == f"{name}@v{r.version}" for name, r in RECIPES.items())
    assert get_recipe("ra_mid_t1@v2") is get_recipe("ra_mid_t1")
    with pytest.raises(KeyError):
        get_recipe("ra_mid_t1@v9")
    with pytest.raises(KeyError):
        get_recipe("nope")
    r = with_size(get_recipe("lgg_flair"), 64)
    assert r.id == "lgg_flair_s64@v2" and r.size == 64 and with_size(r, 64) is r


def test_itermask2_intensity_map():
    img, _ = phantom((40, 40, 30), lesion_value=None)
    out = itermask2_intensity(img)
    assert np.allclose(out[img == 0], -3.0)
    assert abs(np.percentile(out[img > 0], 90) - 3.0) < 0.1  # the brain's ~90th percentile → +3


def test_itermask2_brats_slice_rule_per_split(tmp_path):
    write_brats(tmp_path, "BraTS2021_00001", shape=(24, 24, 100), lesion_z=-0.4, lesion_r2=0.03)  # lesion near z ≈ 30
    write_brats(tmp_path, "BraTS2021_00002", shape=(24, 24, 100), lesion_z=0.6, seed=1, lesion_r2=0.03)  # lesion near z ≈ 80
    a = get_dataset("brats2021")(tmp_path)
    s1, s2 = a.subjects()
    rec = get_recipe("itermask2_brats_flair")
    v2 = a.load(s2)
    train = rec.slices(v2, s2, "train")
    les_z = set(np.flatnonzero(v2.lesion.reshape(-1, 100).any(0)))
    assert train and all(70 <= t.slice < 90 and t.slice not in les_z and t.label == 0 for t in train)
    assert len(train) == 20 - len(les_z & set(range(70, 90)))
    test = rec.slices(v2, s2, "test")
    areas = v2.lesion.reshape(-1, 100).sum(0)
    assert len(test) == 1 and test[0].slice == 70 + int(np.argmax(areas[70:90]))
    assert rec.slices(a.load(s1), s1, "test") == []  # no tumour in z 70–89: skipped, as IterMask2 does
    assert len(rec.slices(a.load(s1), s1, "train")) == 20


def test_afsc_literal_all_slices_and_brain_only(tmp_path):
    write_brats(tmp_path, "Brats17_2013_10_1", shape=(24, 24, 30))
    a = get_dataset("brats2017")(tmp_path)
    s = a.subjects()[0]
    v = a.load(s)
    assert len(get_recipe("afsc_t2").slices(v, s, "test")) == 30
    brain_only = get_recipe("afsc_t2_brain").slices(v, s, "test")
    assert 0 < len(brain_only) < 30 and max(float(x.image.max()) for x in brain_only) <= 1.0


def test_rule_band_centres_on_brain():
    brain = np.zeros((4, 4, 100))
    brain[..., 30:71] = 1
    assert rule_band(20)(None, brain) == list(range(40, 60))


def test_committed_official_lists_match_specs():
    if not SPECS.is_dir():
        pytest.skip(f"specs folder {SPECS} absent")
    for folder in ("ra", "phanes", "itermask2"):
        for src in sorted((SPECS / "splits" / folder).glob("*")):
            assert (sp.HERE / folder / src.name).read_bytes() == src.read_bytes(), src.name


def test_official_list_counts():
    ids = {x: [r["subject_id"] for r in sp.read_csv(f"itermask2/brats2021_{x}.csv")] for x in ("train", "val", "test")}
    assert {k: len(v) for k, v in ids.items()} == {"train": 990, "val": 128, "test": 133}
    assert len(set().union(*ids.values())) == 1251
    fake = [type("S", (), {"id": i, "meta": {}})() for i in ids["val"][:3] + ["BraTS2021_99999"]]
    assert list(sp.itermask2_brats2021()(fake).values()) == ["val", "val", "val", None]
    fm = sp.ra_fastmri()
    rows = sp.read_csv("ra/fastmri_normal_splits.csv")
    fake = [type("S", (), {"id": r["file_id"], "meta": {}})() for r in rows]
    assert collections.Counter(fm(fake).values()) == {"train": 131, "val": 15, "test": 30}
    assert collections.Counter(sp.ra_fastmri("official")(fake).values()) == {"train": 130, "val": 15, "test": 30, None: 1}
    assert len(sp.atlas_ids()) == 655 and len(set(sp.atlas_ids())) == 655


def test_suite_splits_are_reproducible():
    def read(rel):
        with open(sp.HERE / rel, newline="") as fh:
            return list(csv.DictReader(fh))
    atlas = read("itermask2/atlas2_suite_split.csv")
    assert atlas == sp.make_itermask2_atlas2()
    assert collections.Counter(r["split"] for r in atlas) == {"train": 518, "val": 67, "test": 70}
    isles = read("itermask2/isles2015_cv4.csv")
    assert isles == sp.make_itermask2_isles2015()
    tested = collections.Counter(r["subject_id"] for r in isles if r["split"] == "test")
    assert len(tested) == 28 and set(tested.values()) == {1}  # every case tested exactly once
    ixi = read("ra/ixi_dev_split.csv")
    assert ixi == sp.make_ra_ixi_dev([r["ixi_subject_id"] for r in ixi])
    assert collections.Counter(r["split"] for r in ixi) == {"train": 24, "val": 4, "test": 8}


def test_holdout_is_seeded_and_grouped():
    S = type("S", (), {})
    subs = []
    for p in range(20):
        for t in range(2):
            s = S()
            s.id, s.meta = f"p{p}_t{t}", {"patient": f"p{p}"}
            subs.append(s)
    a = sp.holdout(0.1, 0, group="patient")(subs)
    assert a == sp.holdout(0.1, 0, group="patient")(subs)
    held = {k for k, v in a.items() if v == "val"}
    assert len(held) == 4 and all(f"{h[:-1]}{1 - int(h[-1])}" in held for h in held)  # patients stay whole


def test_setup_prepares_official_split(tmp_path):
    train_id = sp.read_csv("itermask2/brats2021_train.csv")[0]["subject_id"]
    test_id = sp.read_csv("itermask2/brats2021_test.csv")[0]["subject_id"]
    write_brats(tmp_path, train_id, shape=(24, 24, 100), lesion_z=0.6, lesion_r2=0.03)
    write_brats(tmp_path, test_id, shape=(24, 24, 100), lesion_z=0.6, seed=2, lesion_r2=0.03)
    write_brats(tmp_path, "BraTS2021_99999", shape=(24, 24, 100))  # in no list: left out
    store = SETUPS["itermask2-brats2021-flair"].prepare(tmp_path, cache_dir=tmp_path / "c", subset=True)
    m = store.manifest
    assert set(m.subject) == {train_id, test_id}
    assert (m[m.split == "train"].label == 0).all() and (m.split == "test").sum() == 1
    assert store.meta["recipe"] == "itermask2_brats_flair@v1"


def test_lgg_store_without_data_names_what_to_pass(tmp_path, monkeypatch):
    from benchmark.errors import DataError
    from datasets.lgg_benchmark import lgg_store

    monkeypatch.setenv("PHBENCH_SHARED_DATA", str(tmp_path / "none"))
    with pytest.raises(DataError) as e:
        lgg_store(None, cache_dir=tmp_path)
    assert "pass root=" in str(e.value) and "\n" not in str(e.value)


def test_median_normalise_maps_the_brain_median_to_half_and_ignores_a_small_bright_lesion():
    from datasets.recipes import median_normalise, percentile_normalise

    brain = np.ones((10, 10), np.float32)
    healthy = np.full((10, 10), 2.0, np.float32)
    healthy[:5] = 1.0  # median of the 100 brain voxels: 1.5 (50 at 1.0, 50 at 2.0)
    out = median_normalise(healthy, brain)
    assert np.allclose(out[:5], 1.0 / 3.0) and np.allclose(out[5:], 2.0 / 3.0)
    lesioned = healthy.copy()
    lesioned[9, :3] = 9.0  # 3 % of the brain, very bright: clipped at 1, the healthy voxels keep their values
    out = median_normalise(lesioned, brain)
    assert np.allclose(out[:5], 1.0 / 3.0) and out[9, 0] == 1.0 and np.allclose(out[9, 3:], 2.0 / 3.0)
    # the 98th percentile moves with it: the defect the median avoids
    assert percentile_normalise(lesioned, 98.0, brain)[5, 0] < percentile_normalise(healthy, 98.0, brain)[5, 0]
    assert not median_normalise(healthy, np.zeros_like(brain)).any()  # no brain voxel: all zero, no division
