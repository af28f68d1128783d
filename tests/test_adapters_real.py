"""Adapters on the real files in ../shared/data (skipped with a reason when the folder is absent)."""

from __future__ import annotations

import collections
import csv

import numpy as np
import pytest

from benchmark.errors import DataError
from benchmark.registry import get_dataset
from datasets.images import sniff_format
from datasets.recipes import axial
from datasets.recipes_paper import get_recipe
from datasets.splits import HERE as SPLITS, ra_fastmri
from tests.layouts import write_fastmri


def test_lgg_layout_counts_and_committed_split(shared_data):
    from datasets.lgg_benchmark import make_lgg_split

    subs = get_dataset("lgg")(shared_data / "lgg-mri-segmentation").subjects()
    assert len(subs) == 110
    n = [len(s.meta["slice_numbers"]) for s in subs]
    assert sum(n) == 1272 and min(n) == 6 and max(n) == 29
    assert all(k % 3 == 0 for s in subs for k in s.meta["slice_numbers"])  # every 3rd slice kept: gaps
    with open(SPLITS / "lgg" / "lgg_patients.csv", newline="") as fh:
        committed = list(csv.DictReader(fh))
    assert committed == make_lgg_split([s.id for s in subs])
    assert collections.Counter(r["split"] for r in committed) == {"train": 70, "test": 30, "val": 10}


def test_lgg_store_patient_level_on_a_subset(shared_data, tmp_path):
    from datasets.lgg_benchmark import lgg_store

    rows = list(csv.DictReader((SPLITS / "lgg" / "lgg_patients.csv").read_text().splitlines()))
    by_split = collections.defaultdict(list)
    for r in rows:
        by_split[r["split"]].append(r["folder"])
    pick = by_split["train"][:3] + by_split["val"][:1] + by_split["test"][:2]
    root = tmp_path / "kaggle_3m"
    root.mkdir()
    for f in pick:
        (root / f).symlink_to(shared_data / "lgg-mri-segmentation" / "kaggle_3m" / f)
    store = lgg_store(tmp_path, cache_dir=tmp_path / "cache")
    m = store.manifest
    assert set(m.split) == {"train", "val", "test"}
    assert (m[m.split != "test"].label == 0).all() and store.lesion[np.flatnonzero(m.split != "test")].sum() == 0
    test = m[m.split == "test"]
    assert (test.label == 1).any() and (test.label == 0).any()
    assert store.lesion[np.flatnonzero(m.label == 1)].reshape((m.label == 1).sum(), -1).sum(1).min() >= 1
    per = m.groupby("subject").split.nunique()
    assert (per == 1).all()  # no patient in two splits
    assert store.images.shape[1:] == (1, 128, 128) and isinstance(store.images, np.memmap)
    assert lgg_store(tmp_path, cache_dir=tmp_path / "cache").path == store.path  # cached
    assert lgg_store(tmp_path, size=64, cache_dir=tmp_path / "cache").images.shape[-1] == 64


def test_brats_2023_cases_labels_alignment_and_releases(shared_data):
    a = get_dataset("brats")(shared_data / "brats")
    subs = {s.id: s for s in a.subjects()}
    assert set(subs) == {"BraTS-GLI-00000-000", "BraTS-GLI-00001-000"}
    s0, s1 = subs["BraTS-GLI-00000-000"], subs["BraTS-GLI-00001-000"]
    assert s0.meta["has_seg"] and not s1.meta["has_seg"]
    v0 = a.load(s0)
    assert s0.meta["labels_present"] == ["NETC", "SNFH", "ET"]
    flair = v0.channel("flair")  # = the t2f file
    brain = flair > 0
    assert flair[v0.lesion > 0].mean() > 1.3 * flair[brain & (v0.lesion == 0)].mean()  # seg lands on the bright tumour
    rec = get_recipe("itermask2_brats_flair")
    test = rec.slices(v0, s0, "test")
    assert len(test) == 1 and 70 <= test[0].slice < 90 and test[0].label == 1
    assert np.isclose(test[0].image.min(), -3.0, atol=1e-3)  # IterMask2 map: background → −3
    # Cyclic-UNet's intermediate modality (T1 for FLAIR) rides along, normalised by the same rule on its own volume
    assert test[0].aux is not None and test[0].aux.shape == (1, *test[0].image.shape[1:])
    assert np.isclose(test[0].aux.min(), -3.0, atol=1e-3) and not np.allclose(test[0].aux, test[0].image)
    with pytest.raises(DataError) as e:
        rec.slices(a.load(s1), s1, "train")
    assert "no lesion mask" in str(e.value) and "BraTS-GLI-00001-000" in str(e.value)
    with pytest.raises(DataError) as e:  # read as a 2021 release, label 3 is not a BraTS 2021 value
        get_dataset("brats2021")(shared_data / "brats").load(s0)
    assert "unknown label value(s) [3]" in str(e.value) and "-seg.nii.gz" in str(e.value)


def test_ixi_sagittal_to_canonical_and_demographics(shared_data):
    a = get_dataset("ixi")(shared_data / "ixi")
    subs = {s.id: s for s in a.subjects()}
    assert len(subs) == 36 and collections.Counter(s.meta["site"] for s in subs.values()) == {"HH": 35, "Guys": 1}
    assert all(s.meta["age"] is not None for s in subs.values())
    assert collections.Counter(s.meta["sex"] for s in subs.values()) == {"m": 23, "f": 13}
    hh = a.load(subs["IXI012"]).channel("t1")
    assert hh.shape == (90, 120, 120)  # stored P-S-R (120, 120, 90) → RAS
    guys = a.load(subs["IXI533"]).channel("t1")
    assert guys.shape == (150, 256, 256)
    # canonical frame: left/right halves of an axial slice mirror each other better than top/bottom
    sl = axial(hh, hh.shape[2] // 2)
    assert np.abs(sl - sl[:, ::-1]).mean() < np.abs(sl - sl[::-1, :]).mean()
    out = get_recipe("ra_mid_t1").slices(a.load(subs["IXI012"]), subs["IXI012"], "train")
    assert len(out) == 1 and out[0].image.shape == (1, 128, 128) and 0 <= out[0].image.min() <= out[0].image.max() <= 1
    with pytest.raises(DataError) as e:
        a.load(subs["IXI012"]).channel("t2")
    assert "missing modality T2" in str(e.value)


def test_kaggle_sets_real(shared_data):
    yes_no = get_dataset("brain_tumor_detection")(shared_data / "brain-mri-images-for-brain-tumor-detection")
    subs = yes_no.subjects()
    assert collections.Counter(s.pathology for s in subs) == {"tumour": 155, "healthy": 98}
    lies = [s for s in subs if s.files["image"].suffix.lower() in (".jpg", ".jpeg")
            and sniff_format(s.files["image"]) == "PNG"]
    assert lies  # some .jpg files hold PNG data
    for s in lies:
        v = yes_no.load(s)
        assert v.channel("grey").ndim == 2
    four = get_dataset("brain_tumor_classification")(shared_data / "brain-tumor-classification-mri").subjects()
    # shared/data/README.md §2b: Training 20/20/395/20, Testing 100/115/105/74 (glioma/meningioma/no/pituitary)
    assert collections.Counter((s.split, s.pathology) for s in four) == {
        ("train", "glioma"): 20, ("train", "meningioma"): 20, ("train", "healthy"): 395, ("train", "pituitary"): 20,
        ("test", "glioma"): 100, ("test", "meningioma"): 115, ("test", "healthy"): 105, ("test", "pituitary"): 74}
    merged = get_dataset("brain_mri_tumor")(shared_data).subjects()
    assert len(merged) == 253 + 849


def test_oct_and_idrid_real(shared_data):
    o = get_dataset("oct2017")(shared_data / "kermany-oct2017")
    subs = o.subjects()
    assert len(subs) == 32 and {s.split for s in subs} == {"test"}
    assert collections.Counter(s.pathology for s in subs)["healthy"] == 8
    assert o.load(subs[0]).channel("grey").shape in ((496, 512), (496, 768))
    d = get_dataset("idrid")(shared_data / "idrid")
    subs = d.subjects()
    assert len(subs) == 20 and {s.split for s in subs} == {"train"}
    assert sum(len(s.meta["mask_types"]) for s in subs) == 87
    assert sum("SE" in s.meta["mask_types"] for s in subs) == 7
    s = subs[0]
    v = d.load(s)
    assert v.lesion.shape == (680, 1024) and v.lesion.any()
    tiles = get_recipe("proxyano_idrid_tiles256").slices(v, s, "test")
    assert len(tiles) == 9 and tiles[0].image.shape == (1, 256, 256)


def test_fastmri_real_annotations_with_written_h5(shared_data, tmp_path):
    ann = shared_data / "fastmri-plus" / "Annotations" / "brain.csv"
    reviewed = set((ann.parent / "brain_file_list.csv").read_text().split())
    for rel in ("ra/fastmri_normal_splits.csv", "ra/global_detection_test.csv", "ra/localization_boxes.csv"):
        for r in csv.DictReader((SPLITS / rel).read_text().splitlines()):
            assert r["file_id"] in reviewed, (rel, r["file_id"])
    write_fastmri(tmp_path, "file_brain_AXT1_202_2020062", n_slices=8, hw=(320, 320))  # RA normal test file
    write_fastmri(tmp_path, "file_brain_AXT1_202_2020585", n_slices=8, hw=(320, 320))  # has boxes on slice 0
    a = get_dataset("fastmri_plus")(tmp_path, annotations=ann)
    subs = {s.id: s for s in a.subjects()}
    assert subs["file_brain_AXT1_202_2020062"].pathology == "healthy"
    boxed = subs["file_brain_AXT1_202_2020585"]
    assert 0 in boxed.meta["boxes"]
    split = ra_fastmri()(list(subs.values()))
    assert split["file_brain_AXT1_202_2020062"] == "test" and split["file_brain_AXT1_202_2020585"] == "test"
    v = a.load(boxed)
    assert axial(v.lesion, 0).any()
