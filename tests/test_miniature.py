"""The RA and PHANES miniature releases: byte-stable, built once, read by the real adapters, split lists and
recipes."""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from datasets import miniature as M
from datasets.splits import read_csv

LOCAL_IDS = list(M.RA_LOCAL)
NORMAL_IDS = [f for ids in M.RA_NORMALS.values() for f in ids]
ALL_FASTMRI = set(NORMAL_IDS) | set(M.RA_GLOBAL_PATHOLOGY) | set(M.RA_GLOBAL_ARTEFACT) | set(LOCAL_IDS)
ATLAS_IDS = list(M.PHANES_ATLAS)
ONE_PIXEL, EMPTY = "sub-r042s018", "sub-r014s002"  # slice 95 shows 1 lesion pixel / none


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def box_id(label: str) -> str:
    return "_".join(label.lower().split())


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def root(cache) -> Path:
    return M.miniature_root("ra", cache_dir=cache)


def test_root_is_cached_and_bytes_are_stable(root, cache, tmp_path, monkeypatch):
    assert root == cache / "miniature" / f"ra-v{M.MINIATURE_VERSION}"
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".ra-") and p.is_dir()]  # no temp folder left
    before = digest(root)
    monkeypatch.setitem(M.RELEASES, "ra", lambda path: pytest.fail("rebuilt an existing release"))
    assert M.miniature_root("ra", cache_dir=cache) == root
    M.write_ra_release(tmp_path / "again")
    assert digest(tmp_path / "again") == before
    summary = json.loads((root / "miniature.json").read_text())
    assert summary["counts"] == {"ixi": 8, "fastmri_files": 28, "fastmri_train": 6, "fastmri_val": 3,
                                 "fastmri_test": 19, "boxes": 15}


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    calls = []

    def slow(path: Path) -> dict:
        calls.append(path)
        time.sleep(0.3)
        (path / "done").write_text("x")
        return {}

    monkeypatch.setitem(M.RELEASES, "ra", slow)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(M.miniature_root("ra", tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(got)) == 1 and (got[0] / "done").is_file()
    with pytest.raises(KeyError):
        M.miniature_root("nope", tmp_path)


def test_ids_and_rows_agree_with_the_split_lists():
    normal = {r["file_id"]: r["split"] for r in read_csv("ra/fastmri_normal_splits.csv")}
    glob = {r["file_id"]: (r["group"], r["finding"]) for r in read_csv("ra/global_detection_test.csv")}
    for split, ids in M.RA_NORMALS.items():
        assert all(normal[f] == split for f in ids)
    assert all(glob[f][0] == "normal" for f in M.RA_NORMALS["test"])
    for group, table in (("global_pathology", M.RA_GLOBAL_PATHOLOGY), ("global_artefact", M.RA_GLOBAL_ARTEFACT)):
        for f, label in table.items():
            assert glob[f][0] == group
            if label is not None:
                assert label.lower().removeprefix("global label:").strip() == glob[f][1]
    listed: dict[str, list[dict]] = {}
    for r in read_csv("ra/localization_boxes.csv"):
        listed.setdefault(r["file_id"], []).append(r)
    assert len({r["config_dataset_key"] for f in LOCAL_IDS for r in listed[f]}) >= 4
    assert any(r["counted_in_171"] == "0" for f in LOCAL_IDS for r in listed[f])
    # only the artefact-box study doubles as a global artefact, as every such study does in the real lists
    assert set(LOCAL_IDS) & (set(glob) - set(M.RA_GLOBAL_ARTEFACT)) == set()
    assert set(LOCAL_IDS) & set(M.RA_GLOBAL_ARTEFACT) == {"file_brain_AXT1_202_2020264"}
    assert set(LOCAL_IDS).isdisjoint(NORMAL_IDS)
    extra = 0
    for f in LOCAL_IDS:
        z, boxes = M.RA_LOCAL[f]
        assert str(z) in listed[f][0]["fastmri_plus_slices_consistent"].split(";")
        ranked = sorted(boxes, key=lambda b: box_id(b.label))  # the official index: the slice's boxes by label
        for r in listed[f]:
            assert box_id(ranked[int(r["box_index"])].label) == r["box_label"]
        extra += len(boxes) - len(listed[f])
        for b in boxes:
            assert 20 <= b.width <= 60 and 20 <= b.height <= 60
    assert extra == 1


def test_annotation_files(root):
    with open(root / "Annotations" / "brain.csv", newline="") as fh:
        text = fh.read()
    assert text.startswith("file,slice,study_level,x,y,width,height,label\n")
    rows = list(csv.DictReader(text.splitlines()))
    assert "file_brain_AXT1_202_6000312,0,Yes,,,,,Normal for age" in text.splitlines()
    assert {r["file"] for r in rows} == ALL_FASTMRI
    listing = (root / "Annotations" / "brain_file_list.csv").read_text().splitlines()
    assert set(listing) == ALL_FASTMRI == {p.stem for p in (root / "multicoil_train").glob("*.h5")}


def test_ixi_adapter(root):
    from benchmark.registry import get_dataset

    adapter = get_dataset("ixi")(root)
    subjects = adapter.subjects()
    assert [s.id for s in subjects] == list(M.RA_IXI)
    vol = adapter.load(subjects[0])
    t1 = np.asarray(vol.channel("t1"))
    assert t1.ndim == 3 and t1.shape[2] == 9 and vol.spacing == (2.0, 2.0, 2.0)
    mid = t1[:, :, 4]
    # the middle axial slice is through the head centre: head pixels around the centre, background at the corners
    cx, cy = (np.array(mid.shape) // 2)
    assert mid[cx - 5:cx + 5, cy - 5:cy + 5].min() > 0 and mid[:3, :3].max() == 0


def test_fastmri_adapter(root):
    import h5py

    from benchmark.registry import get_dataset

    adapter = get_dataset("fastmri_plus")(root, series=("AXT1",))
    subjects = {s.id: s for s in adapter.subjects()}
    assert set(subjects) == ALL_FASTMRI
    for f in NORMAL_IDS:
        assert subjects[f].pathology == "healthy" and subjects[f].meta["global"] == ["normal for age"]
    for f, label in M.RA_GLOBAL_PATHOLOGY.items():
        assert subjects[f].meta["global_findings"] == [label.lower().removeprefix("global label:").strip()]
    assert subjects["file_brain_AXT1_202_2020414"].meta["global_findings"] == ["motion artifact"]
    for f, (z, boxes) in M.RA_LOCAL.items():
        meta = subjects[f].meta
        assert meta["boxes"] == {z: [(b.label, b.x, b.y, b.width, b.height) for b in boxes]}
        assert meta["global_findings"] == []
    assert "possible artifact" in subjects["file_brain_AXT1_202_2020264"].meta["local_findings"]
    with h5py.File(root / "multicoil_train" / "file_brain_AXT1_202_6000434.h5", "r") as fh:
        rss = fh["reconstruction_rss"]
        assert rss.shape == (5, 320, 320) and rss.dtype == np.float32 and "kspace" in fh
        assert 1e-4 < float(np.max(rss)) < 2e-3
    vol = adapter.load(subjects["file_brain_AXT1_202_6000434"])
    assert np.asarray(vol.channel("t1")).shape == (320, 320, 5)
    assert vol.lesion[:, :, 2].sum() == sum(b.width * b.height for b in M.RA_LOCAL["file_brain_AXT1_202_6000434"][1])


def stored_box(b: M.MiniBox, size: int = 128) -> tuple[slice, slice, slice, slice]:
    """(rows, cols) of the central half of the box in the prepared image, and of the box grown by 4 px."""
    s = size / M.FRAME
    x0, y0, x1, y1 = b.x * s, b.y * s, (b.x + b.width) * s, (b.y + b.height) * s
    qx, qy = (x1 - x0) / 4, (y1 - y0) / 4
    inner = (slice(int(np.ceil(y0 + qy)), int(y1 - qy)), slice(int(np.ceil(x0 + qx)), int(x1 - qx)))
    outer = (slice(int(y0) - 4, int(np.ceil(y1)) + 4), slice(int(x0) - 4, int(np.ceil(x1)) + 4))
    return (*inner, *outer)


def test_ra_setups_prepare(root, tmp_path):
    from datasets.recipes_paper import SETUPS

    fast = SETUPS["ra-fastmri"].prepare(root, cache_dir=tmp_path)
    m = fast.manifest
    assert m["split"].value_counts().to_dict() == {"test": 19, "train": 6, "val": 3}
    ixi = SETUPS["ra-ixi"].prepare(root, cache_dir=tmp_path)
    assert ixi.manifest["split"].value_counts().to_dict() == {"train": 8}

    row = {s: i for i, s in enumerate(m["subject"])}
    for f in NORMAL_IDS:
        assert m["label"][row[f]] == 0 and json.loads(m["boxes"][row[f]]) == []
    for f in list(M.RA_GLOBAL_PATHOLOGY) + list(M.RA_GLOBAL_ARTEFACT):
        assert m["label"][row[f]] == 1
    for f, (z, boxes) in M.RA_LOCAL.items():
        i = row[f]
        assert m["slice"][i] == z and m["label"][i] == 1 and len(json.loads(m["boxes"][i])) == len(boxes)
        img = np.asarray(fast.images[i, 0])
        for b in boxes:
            ry, rx, oy, ox = stored_box(b)
            ring = np.zeros(img.shape, bool)  # a 4 px band around the box, head pixels only
            ring[oy, ox] = True
            ring[oy.start + 4:oy.stop - 4, ox.start + 4:ox.stop - 4] = False
            inside, around = float(img[ry, rx].mean()), float(img[ring & (img > 0.05)].mean())
            if b.bright:  # p98 normalisation clips a bright lesion to 1, white matter sits just below
                assert inside > 0.95 and inside - around > 0.15, (f, b, inside, around)
            else:
                assert inside < 0.25 and around - inside > 0.3, (f, b, inside, around)


# ---------------------------------------------------------------------------------------------------
# PHANES: RA's files + ATLAS R2.0


@pytest.fixture(scope="module")
def phanes(cache) -> Path:
    return M.miniature_root("phanes", cache_dir=cache)


def atlas_summary(phanes: Path) -> dict:
    return json.loads((phanes / "miniature.json").read_text())["atlas"]


def test_phanes_root_is_ra_plus_atlas_and_bytes_are_stable(phanes, root, cache, tmp_path):
    assert phanes == cache / "miniature" / f"phanes-v{M.MINIATURE_VERSION}.{M.ATLAS_VERSION}"
    assert root.name == f"ra-v{M.MINIATURE_VERSION}" and M.release_version("ra") == str(M.MINIATURE_VERSION)
    ra, ph = digest(root), digest(phanes)
    # RA's files byte for byte (their own stability is test_root_is_cached_and_bytes_are_stable's), plus ATLAS
    assert {k: ph[k] for k in ra if k != "miniature.json"} == {k: v for k, v in ra.items() if k != "miniature.json"}
    assert set(ph) - set(ra) == {p for sub in ATLAS_IDS for p in M.atlas_paths(sub)}
    summary = json.loads((phanes / "miniature.json").read_text())
    ra_summary = json.loads((root / "miniature.json").read_text())
    assert summary["release"] == "phanes" and summary["version"] == f"{M.MINIATURE_VERSION}.{M.ATLAS_VERSION}"
    assert summary["counts"] == {**ra_summary["counts"], "atlas": 6}
    assert {k: summary[k] for k in ("ixi", "fastmri", "slices", "boxes")} == \
        {k: ra_summary[k] for k in ("ixi", "fastmri", "slices", "boxes")}
    atlas = summary["atlas"]
    assert atlas["sites"] == {"R042": ATLAS_IDS[:4], "R014": ATLAS_IDS[4:]}
    assert atlas["lesion_pixels_on_slice"] == {"sub-r042s010": 318, "sub-r042s013": 135, "sub-r042s011": 94,
                                               "sub-r042s018": 1, "sub-r014s010": 228, "sub-r014s002": 0}
    assert atlas["one_pixel"] == [ONE_PIXEL] and atlas["empty_on_slice"] == [EMPTY]
    # the ATLAS part rebuilt: the same bytes and summary (RA's part is checked against the ra release above)
    again = M.write_atlas_release(tmp_path / "again")
    assert digest(tmp_path / "again") == {k: v for k, v in ph.items() if k.startswith("ATLAS_2/")}
    assert again == atlas


def test_atlas_ids_and_paths_agree_with_the_split_lists():
    from datasets.splits import atlas_ids

    listed = atlas_ids()
    second = next(M.atlas_site(i) for i in listed if M.atlas_site(i) != M.atlas_site(listed[0]))
    assert ATLAS_IDS == listed[:4] + [i for i in listed if M.atlas_site(i) == second][:2]
    images = {r["filename"] for r in read_csv("phanes/atlas_train.csv")}
    masks = {r["filename"] for r in read_csv("phanes/atlas_train_mask.csv")}
    for sub in ATLAS_IDS:
        t1, mask = M.atlas_paths(sub)
        assert f"./data/{t1}" in images and f"./data/{mask}" in masks


def test_atlas_adapter(phanes):
    import nibabel as nib

    from benchmark.registry import get_dataset

    adapter = get_dataset("atlas2")(phanes)
    subjects = {s.id: s for s in adapter.subjects()}
    assert set(subjects) == set(ATLAS_IDS)
    summary = atlas_summary(phanes)
    for sub in ATLAS_IDS:
        s = subjects[sub]
        assert s.meta["part"] == "Training" and s.meta["site"] == M.atlas_site(sub) and s.meta["has_seg"]
        assert s.meta["skull_stripped"] is False and s.pathology == "stroke"
        vol = adapter.load(s)
        t1, les = np.asarray(vol.channel("t1")), np.asarray(vol.lesion)
        assert t1.shape == les.shape == M.ATLAS_SHAPE and vol.spacing == (1.0, 1.0, 1.0)
        assert int(les.sum()) == summary["lesion_voxels"][sub]
        assert int(les[:, :, M.ATLAS_SLICE].sum()) == summary["lesion_pixels_on_slice"][sub]
        # hypo-intense: the lesion is darker than the brain around it (a 4 voxel shell)
        shell = ndimage.binary_dilation(les > 0, iterations=4) & ~(les > 0) & (t1 > 0.5 * M._ATLAS_WM)
        assert float(t1[les > 0].mean()) < 0.7 * float(t1[shell].mean()), sub
        # slice 95 is through the head: tissue at the centre, air in the corners
        mid = t1[:, :, M.ATLAS_SLICE]
        assert (mid[44:64, 54:74] > 0).all() and mid[:3, :3].max() == 0
    img = nib.load(phanes / M.atlas_paths(ATLAS_IDS[0])[0])
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine[:3, 3], M.ATLAS_ORIGIN)


def test_phanes_setups_prepare(phanes, tmp_path):
    import nibabel as nib

    from datasets.recipes_paper import SETUPS

    store = SETUPS["phanes-atlas2"].prepare(phanes, cache_dir=tmp_path)
    m = store.manifest
    assert sorted(m["subject"]) == sorted(ATLAS_IDS) and set(m["split"]) == {"test"}
    assert set(m["slice"]) == {M.ATLAS_SLICE}
    counts = {sub: int(np.asarray(store.lesion[i]).sum()) for i, sub in enumerate(m["subject"])}
    assert counts == atlas_summary(phanes)["lesion_pixels_on_slice"]
    assert counts[ONE_PIXEL] == 1 and counts[EMPTY] == 0
    assert sum(n > 1 for n in counts.values()) == 4  # what the official evaluation scores (more than one pixel)
    label = dict(zip(m["subject"], m["label"]))
    assert label[EMPTY] == 0 and all(label[s] == 1 for s in ATLAS_IDS if s != EMPTY)
    for i, sub in enumerate(m["subject"]):
        # 108 × 128 slice: padded with its minimum to 128², not resized, so the mask is the file's slice 95
        mask = np.asarray(nib.load(phanes / M.atlas_paths(sub)[1]).dataobj)[:, :, M.ATLAS_SLICE]
        les, img = np.asarray(store.lesion[i, 0]), np.asarray(store.images[i, 0])
        assert np.array_equal(les[:, 10:118], np.rot90(mask)) and les[:, :10].sum() == les[:, 118:].sum() == 0
        assert (img[:, :10] == img.min()).all()
        if counts[sub] > 1:
            assert float(img[les > 0].mean()) < 0.75 * float(img[img > 0.2].mean()), sub
    # PHANES Table 2's store (train/val from RA's IXI + fastMRI+ normals, test = ATLAS) and RA's part, one root
    merged = SETUPS["phanes-ixi-fastmri-atlas2"].prepare(phanes, cache_dir=tmp_path)
    assert merged.manifest["split"].value_counts().to_dict() == {"train": 14, "test": 6, "val": 3}
    fast = SETUPS["ra-fastmri"].prepare(phanes, cache_dir=tmp_path)
    assert fast.manifest["split"].value_counts().to_dict() == {"test": 19, "train": 6, "val": 3}


# ---------------------------------------------------------------------------------------------------
# IterMask2: BraTS2021


@pytest.fixture(scope="module")
def itermask2(cache) -> Path:
    return M.miniature_root("itermask2", cache_dir=cache)


def test_brats_ids_are_in_the_official_lists_they_play():
    for split, cases in M.ITERMASK2_BRATS.items():
        listed = {r["subject_id"] for r in read_csv(f"itermask2/brats2021_{split}.csv")}
        assert set(cases) <= listed, split


def test_brats_release_layout_labels_and_bytes(itermask2, tmp_path):
    import nibabel as nib

    from benchmark.registry import get_dataset

    assert itermask2.name == f"itermask2-v{M.BRATS_VERSION}"
    summary = json.loads((itermask2 / "miniature.json").read_text())
    cases = [c for cs in M.ITERMASK2_BRATS.values() for c in cs]
    assert sorted(p.name for p in itermask2.iterdir() if p.is_dir()) == sorted(cases + ["ATLAS_2", "SISS2015_Training"])
    for case in cases:
        assert sorted(p.name for p in (itermask2 / case).iterdir()) == sorted(
            f"{case}_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2"))
    seg = np.asarray(nib.load(itermask2 / "BraTS2021_00123" / "BraTS2021_00123_seg.nii.gz").dataobj)
    assert set(np.unique(seg)) == {0, 1, 2, 4} and seg.shape[2] == M.BRATS_SLICES
    # test cases have tumour in IterMask2's slices 70-89; training / validation cases none
    assert all((summary["lesion_voxels_z70_89"][c] > 0) == (c in M.ITERMASK2_BRATS["test"]) for c in cases)
    subjects = {s.id for s in get_dataset("brats")(itermask2).subjects()}
    assert subjects == set(cases)
    isles = {s.id: s for s in get_dataset("isles2015")(itermask2).subjects()}
    assert sorted(isles) == [f"training{i:02d}" for i in range(1, 29)]
    assert all(set(s.files) == {"flair", "t1", "t2", "dwi", "seg"} for s in isles.values())
    assert all(str(f).endswith(".nii") for s in isles.values() for f in s.files.values())  # uncompressed, as shipped
    atlas = {s.id for s in get_dataset("atlas2")(itermask2).subjects()}
    assert atlas == {sub for subs in M.ITERMASK2_ATLAS.values() for sub in subs}
    M.write_itermask2_release(tmp_path / "again")
    assert digest(tmp_path / "again") == digest(itermask2)


def test_brats_setups_prepare(itermask2, tmp_path):
    from datasets.recipes_paper import SETUPS

    store = SETUPS["itermask2-brats2021-flair"].prepare(itermask2, cache_dir=tmp_path, subset=True)
    m = store.manifest
    by_split = m.groupby("split")["subject"].agg(lambda s: sorted(set(s))).to_dict()
    assert by_split == {k: sorted(v) for k, v in M.ITERMASK2_BRATS.items()}
    assert (m[m.split != "test"].groupby("subject").size() == 20).all()  # every slice 70-89 is tumour-free
    test = m[m.split == "test"]
    assert len(test) == 3 and test["slice"].between(70, 89).all()
    assert all(np.asarray(store.lesion[i]).any() for i in test.index)
