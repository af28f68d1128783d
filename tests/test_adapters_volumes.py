"""3-D families with no public sample (BraTS 2017–2021 naming, MS-SEG, HCP, ATLAS, ISLES, fastMRI h5):
tiny files written in the exact published layout, read back through the adapters; bad inputs."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from benchmark.errors import DataError
from benchmark.registry import get_dataset
from datasets.base import prepare
from datasets.recipes_paper import get_recipe
from tests.layouts import (phantom, save_nifti, write_atlas, write_brats, write_fastmri, write_fastmri_annotations,
                           write_hcp, write_isles, write_ixi, write_msseg)


def one_line(err: Exception, *needles: str) -> str:
    text = str(err)
    assert "\n" not in text, text
    for n in needles:
        assert n in text, text
    return text


# --- BraTS -----------------------------------------------------------------------------------------


def test_brats2021_layout_labels_and_lazy_modalities(tmp_path):
    write_brats(tmp_path, "BraTS2021_00001", labels=(1, 2, 4))
    write_brats(tmp_path, "BraTS2021_00002", labels=(2,), seed=1)
    a = get_dataset("brats2021")(tmp_path)
    subs = a.subjects()
    assert [s.id for s in subs] == ["BraTS2021_00001", "BraTS2021_00002"]
    assert set(subs[0].files) == {"flair", "t1", "t1ce", "t2", "seg"}
    vol = a.load(subs[0])
    assert vol.lesion is not None and set(np.unique(vol.lesion)) == {0, 1}
    assert dict.__getitem__(vol.channels, "t2") is None  # nothing read until a recipe asks
    assert vol.channel("t2").shape == (32, 32, 24) and "t1ce" in vol.channels
    assert subs[0].meta["labels_present"] == ["NCR", "ED", "ET"]
    assert vol.spacing == (1.0, 1.0, 1.0)


def test_brats2017_hgg_lgg_folders_and_2023_aliases(tmp_path):
    write_brats(tmp_path / "HGG", "Brats17_2013_10_1")
    write_brats(tmp_path / "LGG", "Brats17_TCIA_101_1")
    write_brats(tmp_path / "x", "BraTS-GLI-00007-000", naming="2023", labels=(1, 2, 3))
    subs = {s.id: s for s in get_dataset("brats")(tmp_path).subjects()}
    assert subs["Brats17_2013_10_1"].meta["grade"] == "HGG" and subs["Brats17_TCIA_101_1"].meta["grade"] == "LGG"
    new = subs["BraTS-GLI-00007-000"]
    assert set(new.files) == {"flair", "t1", "t1ce", "t2", "seg"}
    vol = get_dataset("brats")(tmp_path).load(new)
    assert vol.channel("t2f").shape == vol.channel("flair").shape  # native 2023 name works as an alias
    assert new.meta["labels_present"] == ["NETC", "SNFH", "ET"]


@pytest.mark.parametrize("dataset,labels,bad", [("brats2021", (1, 3), 3), ("brats2023", (1, 4), 4), ("brats", (5,), 5)])
def test_brats_unknown_label_value_per_release(tmp_path, dataset, labels, bad):
    naming = "2023" if dataset != "brats2021" else "2021"
    case = "BraTS2021_00003" if naming == "2021" else "BraTS-GLI-00003-000"
    write_brats(tmp_path, case, naming=naming, labels=labels)
    a = get_dataset(dataset)(tmp_path)
    with pytest.raises(DataError) as e:
        a.load(a.subjects()[0])
    one_line(e.value, "seg.nii.gz", f"unknown label value(s) [{bad}]")


def test_brats2020_naming_and_case_355_seg_quirk(tmp_path):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    write_brats(root, "BraTS20_Training_001", ext=".nii")  # 2020 ships uncompressed .nii
    write_brats(root, "BraTS20_Training_355", ext=".nii", seg_name="W39_1998.09.19_Segm.nii", seed=3)
    write_brats(root, "BraTS20_Training_356", ext=".nii", seg=False, seed=4)
    (root / "name_mapping.csv").write_text("Grade,BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
                                           "HGG,x,BraTS20_Training_001\n")
    (root / "survival_info.csv").write_text("Brats20ID,Age,Survival_days,Extent_of_Resection\n")
    a = get_dataset("brats2020")(tmp_path)
    subs = {s.id: s for s in a.subjects()}
    assert list(subs) == ["BraTS20_Training_001", "BraTS20_Training_355", "BraTS20_Training_356"]
    assert subs["BraTS20_Training_001"].files["seg"].name == "BraTS20_Training_001_seg.nii"
    assert subs["BraTS20_Training_355"].files["seg"].name == "W39_1998.09.19_Segm.nii"
    assert [subs[k].meta["has_seg"] for k in subs] == [True, True, False]
    assert {s.meta["release"] for s in get_dataset("brats")(tmp_path).subjects()} == {"2020"}  # from the name
    vol = a.load(subs["BraTS20_Training_355"])
    assert vol.lesion.sum() > 0 and subs["BraTS20_Training_355"].meta["labels_present"] == ["NCR", "ED", "ET"]
    assert vol.channel("t1ce").shape == (32, 32, 24)
    store = prepare(a, get_recipe("afsc_t2_brain"), cache_dir=tmp_path / "c")
    lab = store.manifest.groupby("subject")["label"].sum()
    assert lab["BraTS20_Training_001"] > 0 and lab["BraTS20_Training_355"] > 0


def test_brats2024_resection_cavity_is_known_and_selectable(tmp_path):
    write_brats(tmp_path, "BraTS-GLI-00009-100", naming="2023", labels=(2, 4))
    a = get_dataset("brats2024")(tmp_path, lesion_classes=("NETC", "SNFH", "ET"))
    s = a.subjects()[0]
    all_cls = get_dataset("brats2024")(tmp_path).load(s).lesion
    tumour_only = a.load(s).lesion
    assert 0 < tumour_only.sum() < all_cls.sum()  # RC voxels excluded on request


def test_brats_bad_inputs_one_line_each(tmp_path):
    write_brats(tmp_path, "BraTS2021_00010", modalities=("flair", "t1", "t1ce"))  # no t2
    c = write_brats(tmp_path, "BraTS2021_00011")
    raw = (c / "BraTS2021_00011_t2.nii.gz").read_bytes()
    (c / "BraTS2021_00011_t2.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated download
    c = write_brats(tmp_path, "BraTS2021_00012")
    save_nifti(c / "BraTS2021_00012_seg.nii.gz", np.zeros((32, 32, 20), np.int16))  # mask on another grid
    c = write_brats(tmp_path, "BraTS2021_00013")
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[0, 3] = 7.0
    save_nifti(c / "BraTS2021_00013_seg.nii.gz", np.zeros((32, 32, 24), np.int16), affine=aff)
    c = write_brats(tmp_path, "BraTS2021_00014")
    img, _ = phantom()
    img[3, 3, 3] = np.nan
    save_nifti(c / "BraTS2021_00014_t2.nii.gz", img)
    c = write_brats(tmp_path, "BraTS2021_00015")
    save_nifti(c / "BraTS2021_00015_t2.nii.gz", np.zeros((32, 32, 24), np.int16))
    write_brats(tmp_path, "BraTS2021_00016")  # the one good case

    a = get_dataset("brats2021")(tmp_path)
    rec = get_recipe("afsc_t2_brain")
    subs = {s.id: s for s in a.subjects()}
    expect = {
        "BraTS2021_00010": ("BraTS2021_00010_t2.nii.gz", "missing modality t2"),
        "BraTS2021_00011": ("BraTS2021_00011_t2.nii.gz", "truncated"),
        "BraTS2021_00012": ("BraTS2021_00012_seg.nii.gz", "shape (32, 32, 20) differs"),
        "BraTS2021_00013": ("BraTS2021_00013_seg.nii.gz", "affine differs"),
        "BraTS2021_00014": ("BraTS2021_00014_t2.nii.gz", "NaN"),
        "BraTS2021_00015": ("BraTS2021_00015_t2.nii.gz", "all-zero"),
    }
    for sid, needles in expect.items():
        with pytest.raises(DataError) as e:
            rec.slices(a.load(subs[sid]), subs[sid], "test")
        one_line(e.value, *needles)
    with pytest.raises(DataError):
        prepare(a, rec, cache_dir=tmp_path / "cache")
    store = prepare(a, rec, cache_dir=tmp_path / "cache", skip_bad=True)
    assert set(store.manifest["subject"]) == {"BraTS2021_00016"}
    skipped = store.meta["skipped"]
    assert len(skipped) == 6 and all("\n" not in s for s in skipped)
    assert any("BraTS2021_00010_t2.nii.gz" in s for s in skipped)


def test_empty_and_missing_root(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("brats", "msseg2015", "hcp", "atlas2", "isles2015", "ixi"):
        with pytest.raises(DataError) as e:
            get_dataset(name)(tmp_path / "empty").subjects()
        one_line(e.value, "empty", "expected layout")
        with pytest.raises(DataError) as e:
            get_dataset(name)(tmp_path / "nope").subjects()
        one_line(e.value, "does not exist")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as e:
        prepare(get_dataset("brats")(tmp_path / "other"), get_recipe("afsc_t2"), cache_dir=tmp_path / "c")
    one_line(e.value, "no brats subjects found")


# --- MS-SEG, HCP, ATLAS, ISLES ---------------------------------------------------------------------


def test_msseg_raters_and_layout(tmp_path):
    write_msseg(tmp_path, 1, 1)
    write_msseg(tmp_path, 1, 2)
    write_msseg(tmp_path, 2, 1, raters=(1,))
    a = get_dataset("msseg2015")(tmp_path)
    subs = a.subjects()
    assert [s.id for s in subs] == ["training01_01", "training01_02", "training02_01"]
    assert subs[0].meta == {"patient": "training01", "timepoint": 1, "folder": str(tmp_path / "training" / "training01")}
    r1 = a.load(subs[0]).lesion
    union = get_dataset("msseg2015")(tmp_path, rater="union").load(subs[0]).lesion
    inter = get_dataset("msseg2015")(tmp_path, rater="intersection").load(subs[0]).lesion
    assert inter.sum() < r1.sum() < union.sum()
    assert a.load(subs[0]).channel("mprage").shape == (24, 28, 20)
    with pytest.raises(DataError) as e:
        get_dataset("msseg2015")(tmp_path, rater=2).load(subs[2])
    one_line(e.value, "training02_01_mask2.nii", "rater mask mask2 missing")
    store = prepare(a, get_recipe("afsc_t2_brain"), cache_dir=tmp_path / "c")
    assert store.images.shape[1:] == (1, 128, 128) and store.manifest["label"].sum() > 0


def test_hcp_resampled_to_1mm(tmp_path):
    write_hcp(tmp_path, "100307")
    write_hcp(tmp_path, "100408")
    a = get_dataset("hcp")(tmp_path)
    subs = a.subjects()
    assert [s.id for s in subs] == ["100307", "100408"] and subs[0].pathology == "healthy"
    vol = a.load(subs[0])
    assert np.allclose(vol.spacing, 0.7, atol=1e-4)
    sl = get_recipe("afsc_t2").slices(vol, subs[0], "train")
    assert len(sl) == round(26 * 0.7)  # all axial slices after 0.7 → 1 mm
    assert all(s.label == 0 for s in sl) and max(float(s.image.max()) for s in sl) <= 1.0


def test_hcp_acpc_space_and_unzipped_package_layout(tmp_path):
    write_hcp(tmp_path, "100307", space="acpc")
    write_hcp(tmp_path, "100408", space="acpc", package=True)  # <id>_3T_Structural_preproc/<id>/T1w/...
    write_hcp(tmp_path, "101915", package=True)  # MNINonLinear only
    acpc = get_dataset("hcp")(tmp_path, space="acpc")
    subs = acpc.subjects()
    assert [s.id for s in subs] == ["100307", "100408"]
    assert subs[1].files["t2"] == tmp_path / "100408_3T_Structural_preproc" / "100408" / "T1w" / \
        "T2w_acpc_dc_restore_brain.nii.gz"
    assert subs[0].meta["space"] == "acpc"
    vol = acpc.load(subs[1])
    assert vol.channel("t2").shape == (26, 31, 26) and np.allclose(vol.spacing, 0.7, atol=1e-4)
    assert float(vol.channel("t2").max()) > float(vol.channel("t1").max())  # T2w read, not T1w
    assert [s.id for s in get_dataset("hcp")(tmp_path).subjects()] == ["101915"]  # mni: the nested package too
    with pytest.raises(ValueError, match="space must be one of"):
        get_dataset("hcp")(tmp_path, space="native")


def test_ixi_t2_and_pd_naming(tmp_path, tmp_path_factory):
    write_ixi(tmp_path, "IXI002", "Guys", 828)  # IXI-T1/, IXI-T2/, IXI-PD/ as the tars unpack
    write_ixi(tmp_path, "IXI013", "IOP", 1212, ("T2", "PD"), folders=False)  # flat, no T1
    a = get_dataset("ixi")(tmp_path)
    subs = {s.id: s for s in a.subjects()}
    assert set(subs) == {"IXI002", "IXI013"}
    assert set(subs["IXI002"].files) == {"t1", "t2", "pd"} and set(subs["IXI013"].files) == {"t2", "pd"}
    assert subs["IXI002"].files["pd"].name == "IXI002-Guys-0828-PD.nii.gz"
    assert subs["IXI013"].meta["site"] == "IOP" and subs["IXI013"].meta["scan"] == "IXI013-IOP-1212"
    v = a.load(subs["IXI002"])
    assert v.channel("t1").shape == (16, 20, 24)  # sagittal on disk → RAS+ (x = the stored 3rd axis)
    assert v.channel("t2").shape == v.channel("pd").shape == (24, 24, 14)
    assert not np.array_equal(v.channel("t2"), v.channel("pd"))
    v2 = a.load(subs["IXI013"])
    assert np.allclose(v2.spacing, (0.9, 0.9, 1.2), atol=1e-4)
    with pytest.raises(DataError) as e:
        v2.channel("t1")
    one_line(e.value, "IXI013-IOP-1212-T1.nii.gz", "missing modality T1 (subject has PD, T2)")
    assert str(tmp_path / "IXI013-IOP-1212-T1.nii.gz") in str(e.value)  # flat release: the same folder
    import dataclasses

    t2_mid = dataclasses.replace(get_recipe("ra_mid_t1"), name="ra_mid_t2_test", channels=("t2",))
    store = prepare(a, t2_mid, cache_dir=tmp_path / "c")
    assert list(store.manifest["subject"]) == ["IXI002", "IXI013"] and store.images.shape[1:] == (1, 128, 128)
    t1only = tmp_path_factory.mktemp("ixi_t1only")
    write_ixi(t1only, "IXI020", "HH", 1300, ("T1",))  # per-modality folders, T1 only
    v3 = get_dataset("ixi")(t1only).load(get_dataset("ixi")(t1only).subjects()[0])
    with pytest.raises(DataError) as e:
        v3.channel("t2")
    assert str(t1only / "IXI-T2" / "IXI020-HH-1300-T2.nii.gz") in str(e.value)  # where its tar unpacks


def test_atlas_bids_training_testing_and_brainmask(tmp_path):
    write_atlas(tmp_path, "R001", "sub-r001s001")
    write_atlas(tmp_path, "R001", "sub-r001s002")
    write_atlas(tmp_path, "R002", "sub-r002s001", part="Testing", mask=False)
    a = get_dataset("atlas2")(tmp_path)
    subs = {s.id: s for s in a.subjects()}
    assert subs["sub-r001s001"].meta["part"] == "Training" and subs["sub-r001s001"].meta["site"] == "R001"
    assert subs["sub-r002s001"].meta["has_seg"] is False
    assert subs["sub-r001s001"].meta["skull_stripped"] is False
    vol = a.load(subs["sub-r001s001"])
    assert vol.lesion.sum() > 0 and vol.brain is None
    rec = get_recipe("itermask2_atlas_t1")
    test = rec.slices(vol, subs["sub-r001s001"], "test")
    assert len(test) == 1 and test[0].label == 1
    train = rec.slices(vol, subs["sub-r001s001"], "train")
    assert train and all(s.label == 0 for s in train) and len(train) < 20
    # a user-made brain mask beside the T1w is picked up
    anat = tmp_path / "Training" / "R001" / "sub-r001s002" / "ses-1" / "anat"
    img, _ = phantom((30, 34, 28), lesion_value=None)
    save_nifti(anat / "sub-r001s002_ses-1_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz", (img > 0).astype(np.uint8),
               affine=np.eye(4))
    s2 = {s.id: s for s in a.subjects()}["sub-r001s002"]
    assert s2.meta["skull_stripped"] is True and a.load(s2).brain is not None


def test_isles_siss_layout(tmp_path):
    for c in (1, 2, 10):
        write_isles(tmp_path, c)
    a = get_dataset("isles2015")(tmp_path)
    subs = a.subjects()
    assert [s.id for s in subs] == ["training01", "training02", "training10"]
    assert set(subs[0].files) == {"flair", "t1", "t2", "dwi", "seg"}
    vol = a.load(subs[0])
    sl = get_recipe("itermask2_isles_flair").slices(vol, subs[0], "test")
    assert len(sl) == 1 and sl[0].lesion.sum() > 0
    # background pads/normalises to the z-score background value (the minimum)
    assert np.isclose(sl[0].image[0, 0, 0], sl[0].image.min())


# --- fastMRI+ --------------------------------------------------------------------------------------


def test_fastmri_flip_boxes_and_global_labels(tmp_path):
    write_fastmri(tmp_path, "file_brain_AXT1_202_2020001")
    write_fastmri(tmp_path, "file_brain_AXT1_202_2020002")
    write_fastmri(tmp_path, "file_brain_AXT1_202_2020003", folder="multicoil_val")
    write_fastmri(tmp_path, "file_brain_AXT2_200_9999999")  # not reviewed by fastMRI+: left out
    write_fastmri_annotations(tmp_path, [
        ("file_brain_AXT1_202_2020001", 3, "No", 5, 6, 8, 4, "Mass"),
        ("file_brain_AXT1_202_2020001", 3, "No", 20, 20, 3, 3, "Normal variant"),
        ("file_brain_AXT1_202_2020002", 0, "Yes", None, None, None, None, "Normal for age"),
        ("file_brain_AXT1_202_2020003", 0, "Yes", None, None, None, None,
         "Global label: Small vessel chronic white matter ischemic change"),
    ], reviewed=["file_brain_AXT1_202_2020001", "file_brain_AXT1_202_2020002", "file_brain_AXT1_202_2020003"])
    a = get_dataset("fastmri_plus")(tmp_path)
    subs = {s.id: s for s in a.subjects()}
    assert set(subs) == {"file_brain_AXT1_202_2020001", "file_brain_AXT1_202_2020002", "file_brain_AXT1_202_2020003"}
    assert subs["file_brain_AXT1_202_2020001"].pathology == "local"
    assert subs["file_brain_AXT1_202_2020002"].pathology == "healthy"
    assert subs["file_brain_AXT1_202_2020003"].pathology == "small vessel chronic white matter ischemic change"

    s = subs["file_brain_AXT1_202_2020001"]
    vol = a.load(s)
    from datasets.recipes import axial
    z3 = axial(vol.channel("t1"), 3)
    assert z3[20:].mean() > 1.5 * z3[:20].mean()  # h5 top half is bright; the fastMRI+ frame shows it at the bottom
    les = axial(vol.lesion, 3)
    assert les[6:10, 5:13].all() and les.sum() == 32  # Mass box only (normal-variant box excluded)

    rec = get_recipe("ra_mid_t1")
    sl = rec.slices(vol, s, "test")[0]
    assert sl.slice == 3 and sl.label == 1 and sl.pathology == "mass"
    assert sl.boxes == [{"xyxy": [16, 19, 42, 32], "label": "mass", "index": 0, "source_xywh": [5, 6, 8, 4],
                         "source_hw": [40, 40]}]  # (5,6,8,4) in 40 px → 128 px, outward rounded
    g = rec.slices(a.load(subs["file_brain_AXT1_202_2020003"]), subs["file_brain_AXT1_202_2020003"], "test")[0]
    assert g.label == 1 and g.boxes == [] and "ischemic" in g.pathology
    n = rec.slices(a.load(subs["file_brain_AXT1_202_2020002"]), subs["file_brain_AXT1_202_2020002"], "val")[0]
    assert n.label == 0 and n.pathology == "healthy"
    assert 0.0 <= n.image.min() and n.image.max() <= 1.0


def test_fastmri_bad_files(tmp_path):
    p = write_fastmri(tmp_path, "file_brain_AXT1_202_2020001")
    p.write_bytes(p.read_bytes()[:300])
    q = write_fastmri(tmp_path, "file_brain_AXT1_202_2020002")
    import h5py
    with h5py.File(q, "a") as f:
        del f["reconstruction_rss"]
    with pytest.raises(DataError) as e:
        get_dataset("fastmri_plus")(tmp_path).subjects()
    one_line(e.value, "annotations not found")
    write_fastmri_annotations(tmp_path, [], reviewed=["file_brain_AXT1_202_2020001", "file_brain_AXT1_202_2020002"])
    a = get_dataset("fastmri_plus")(tmp_path)
    s1, s2 = a.subjects()
    with pytest.raises(DataError) as e:
        a.load(s1)
    one_line(e.value, "file_brain_AXT1_202_2020001.h5", "unreadable HDF5")
    with pytest.raises(DataError) as e:
        a.load(s2)
    one_line(e.value, "file_brain_AXT1_202_2020002.h5", "no reconstruction_rss")


def test_gzip_magic_but_garbage_is_one_line(tmp_path):
    c = write_brats(tmp_path, "BraTS2021_00020")
    (c / "BraTS2021_00020_flair.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 10))
    a = get_dataset("brats2021")(tmp_path)
    with pytest.raises(DataError) as e:
        a.load(a.subjects()[0])
    one_line(e.value, "BraTS2021_00020_flair.nii.gz")


def test_head_mask_hole_filling_matches_scipy():
    from scipy import ndimage

    from datasets.adapters._common import fill_holes_inplane, head_mask

    st = np.zeros((3, 3, 3), bool)
    st[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(0)
    for _ in range(100):
        fg = rng.random(tuple(rng.integers(1, 12, 3))) < rng.uniform(0.2, 0.9)
        assert np.array_equal(fill_holes_inplane(fg, st), ndimage.binary_fill_holes(fg, structure=st))
    img, _ = phantom((30, 30, 12), lesion_value=0.0)  # a dark "lesion" hole inside the head
    m = head_mask(img + 1.0 * (img > 0))
    assert m.sum() > (img > 0).sum()  # the hole is filled


def test_adapter_options_are_part_of_the_store_key(tmp_path):
    """Another rater gives other masks, so it must never be served the first rater's cached store."""
    write_msseg(tmp_path, 1, 1)
    rec = get_recipe("afsc_t2_brain")
    r1 = prepare(get_dataset("msseg2015")(tmp_path), rec, cache_dir=tmp_path / "c")
    union = prepare(get_dataset("msseg2015")(tmp_path, rater="union"), rec, cache_dir=tmp_path / "c")
    assert r1.path != union.path
    assert union.lesion[:].sum() > r1.lesion[:].sum()
    again = prepare(get_dataset("msseg2015")(tmp_path), rec, cache_dir=tmp_path / "c")
    assert again.path == r1.path  # same options: the cached store is reused


def test_fastmri_annotations_that_are_not_text_are_one_line(tmp_path):
    write_fastmri(tmp_path, "file_brain_AXT1_202_2020001")
    ann = write_fastmri_annotations(tmp_path, [], reviewed=["file_brain_AXT1_202_2020001"])
    ann.write_bytes(b"file,slice,study_level,x,y,width,height,label\n\xff\xfe\xfa broken\n")
    with pytest.raises(DataError) as e:
        get_dataset("fastmri_plus")(tmp_path).subjects()
    one_line(e.value, "brain.csv", "cannot read annotations")
