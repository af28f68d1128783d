"""The AFSC miniature release (HCP T2w, BraTS 2017, ISBI 2015 in one root): its layout, stable bytes, the three real
adapters reading it (each only its own files) and the three AFSC setups preparing stores from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets import miniature as M

BRATS_CASES = [c for cases in M.AFSC_BRATS.values() for c in cases]
ISBI_SCANS = [(p, tp) for p, tps in M.AFSC_ISBI.items() for tp in tps]
HCP_SLICES = round(M.HCP_SHAPE[2] * 0.7)  # 260 slices at 0.7 mm → 182 at 1 mm


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def afsc(cache) -> Path:
    return M.miniature_root("afsc", cache_dir=cache)


@pytest.fixture(scope="module")
def summary(afsc) -> dict:
    return json.loads((afsc / "miniature.json").read_text())


def written(afsc: Path) -> set[str]:
    return {str(p.relative_to(afsc)) for p in afsc.rglob("*") if p.is_file()}


def test_layout_and_summary(afsc, summary):
    assert afsc.name == f"afsc-v{M.AFSC_VERSION}" and M.release_version("afsc") == str(M.AFSC_VERSION)
    expected = {p for sid in M.AFSC_HCP for p in M.hcp_paths(sid)}
    expected |= {p for case in BRATS_CASES for p in M.brats2017_paths(case).values()}
    expected |= {p for p, tp in ISBI_SCANS for p in M.isbi_paths(p, tp).values()}
    assert written(afsc) == expected | {"miniature.json"}
    assert {p.name for p in afsc.iterdir() if p.is_dir()} == set(M.AFSC_DIRS.values())
    assert M.isbi_paths(2, 1)["mask2"] == "ISBI2015/training/training02/masks/training02_01_mask2.nii"
    assert M.brats2017_paths("Brats17_TCIA_101_1")["t2"] == \
        "MICCAI_BraTS17_Data_Training/LGG/Brats17_TCIA_101_1/Brats17_TCIA_101_1_t2.nii.gz"
    assert summary["release"] == "afsc" and summary["version"] == str(M.AFSC_VERSION)
    assert summary["counts"] == {"hcp": 6, "brats2017": 5, "brats2017_hgg": 3, "brats2017_lgg": 2,
                                 "isbi2015_scans": 4, "isbi2015_patients": 2}
    assert summary["brats2017"]["labels"] == {c: [1, 2, 4] if c in M.AFSC_BRATS["HGG"] else [1, 2]
                                              for c in BRATS_CASES}
    for scan, les in summary["isbi2015"]["lesion"].items():
        # lesions on some of the slab's slices, not all: AFSC scores slices and needs both kinds
        assert les["mask1"] > 0 and les["mask2"] > 0 and M.ISBI_SLAB // 4 <= M.ISBI_SLAB - les["slices_mask1"], scan
    total = sum((afsc / p).stat().st_size for p in written(afsc))
    assert total < 40e6, total  # ~35 MB


def test_bytes_are_stable(afsc, tmp_path):
    """Regenerated pieces (one per dataset) equal the cached files byte for byte."""
    from datasets.phantom import _write_nifti

    vols = M._hcp_subject(1, 0)
    M._write_gz(tmp_path / "t2.nii.gz", vols["T2w"], M.HCP_AFFINE)
    assert (tmp_path / "t2.nii.gz").read_bytes() == (afsc / M.hcp_paths(M.AFSC_HCP[1])[1]).read_bytes()
    case = M.AFSC_BRATS["LGG"][0]
    vols, seg = M._brats2017_case(case, "LGG", len(M.AFSC_BRATS["HGG"]), 0)
    M._write_gz(tmp_path / "seg.nii.gz", seg, M.BRATS2017_AFFINE)
    assert (tmp_path / "seg.nii.gz").read_bytes() == (afsc / M.brats2017_paths(case)["seg"]).read_bytes()
    scans = M._isbi_scans(2, M.AFSC_ISBI[2], 0)
    for tp, (vols, _, mask2) in scans.items():
        for name, arr in (("t2", vols["t2"]), ("mask2", mask2)):
            _write_nifti(tmp_path / "x.nii", arr, M.ISBI_AFFINE)
            assert (tmp_path / "x.nii").read_bytes() == (afsc / M.isbi_paths(2, tp)[name]).read_bytes(), (tp, name)


def test_hcp_adapter(afsc):
    import nibabel as nib

    from benchmark.registry import get_dataset

    adapter = get_dataset("hcp")(afsc)
    subjects = adapter.subjects()
    assert [s.id for s in subjects] == list(M.AFSC_HCP)
    assert all(set(s.files) == {"t1", "t2"} and s.pathology == "healthy" for s in subjects)
    vol = adapter.load(subjects[0])
    t1, t2 = np.asarray(vol.channel("t1")), np.asarray(vol.channel("t2"))
    assert t2.shape == t1.shape == M.HCP_SHAPE and vol.spacing == pytest.approx((0.7, 0.7, 0.7)) and vol.lesion is None
    img = nib.load(afsc / M.hcp_paths(M.AFSC_HCP[0])[1])
    assert np.allclose(img.affine, M.HCP_AFFINE) and img.get_data_dtype() == np.uint8
    # the whole brain in the grid, skull-stripped (background exactly 0), T2 vs T1: CSF (ventricles) bright vs dark
    brain = t2 > 0
    for ax in (0, 1):
        assert not np.take(brain, [0, -1], axis=ax).any()
    assert ((t1 > 0) == brain).all()
    mid = np.argwhere(brain).mean(axis=0).astype(int)  # near the lateral ventricles
    box = tuple(slice(c - 15, c + 15) for c in mid)
    bright = t2[box] > np.percentile(t2[brain], 97)
    assert bright.any() and t1[box][bright].mean() < 0.7 * np.percentile(t1[brain], 90)


def test_brats2017_adapter(afsc):
    from benchmark.registry import get_dataset

    adapter = get_dataset("brats2017")(afsc)
    subjects = {s.id: s for s in adapter.subjects()}
    assert set(subjects) == set(BRATS_CASES)
    for grade, cases in M.AFSC_BRATS.items():
        for case in cases:
            s = subjects[case]
            assert s.meta["grade"] == grade and s.meta["release"] == "2017" and s.meta["naming"] == "2017"
            assert set(s.files) == {"flair", "t1", "t1ce", "t2", "seg"}
    for case in (M.AFSC_BRATS["HGG"][0], M.AFSC_BRATS["LGG"][0]):
        s = subjects[case]
        vol = adapter.load(s)
        t2, les = np.asarray(vol.channel("t2")), np.asarray(vol.lesion)
        assert t2.shape == les.shape == M.BRATS2017_SHAPE and vol.spacing == (1.0, 1.0, 1.0)
        assert s.meta["labels_present"] == (["NCR", "ED", "ET"] if s.meta["grade"] == "HGG" else ["NCR", "ED"])
        # whole tumour: bright in T2 against the brain around it
        shell = ndimage_shell(les > 0) & (t2 > 0)
        assert les.any() and t2[les > 0].mean() > 1.2 * t2[shell].mean(), case


def ndimage_shell(m: np.ndarray, width: int = 4) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(m, iterations=width) & ~m


def test_msseg2015_adapter_and_raters(afsc):
    from benchmark.registry import get_dataset

    one, two = get_dataset("msseg2015")(afsc), get_dataset("msseg2015")(afsc, rater=2)
    subjects = one.subjects()
    assert [s.id for s in subjects] == [f"training{p:02d}_{tp:02d}" for p, tp in ISBI_SCANS]
    assert [(s.meta["patient"], s.meta["timepoint"]) for s in subjects] == \
        [(f"training{p:02d}", tp) for p, tp in ISBI_SCANS]
    for s in subjects:
        assert set(s.files) == {"flair", "t1", "pd", "t2", "mask1", "mask2"}
        assert all(str(f).endswith(".nii") for f in s.files.values())  # uncompressed, as shipped
        v1, v2 = one.load(s), two.load(s)
        m1, m2 = np.asarray(v1.lesion) > 0, np.asarray(v2.lesion) > 0
        assert v1.spacing == (1.0, 1.0, 1.0) and m1.shape == (*M.ISBI_GRID[:2], M.ISBI_SLAB)
        assert m1.any() and m2.any() and (m1 != m2).any()
        assert 2 * (m1 & m2).sum() / (m1.sum() + m2.sum()) > 0.6, s.id  # the same lesions, other borders
        t2 = np.asarray(v1.channel("t2"))
        shell = ndimage_shell(m1, 2) & (t2 > 0)
        assert t2[m1].mean() > 1.15 * t2[shell].mean(), s.id  # T2-hyperintense plaques
    # both time points of a patient: one anatomy and one rater-1 lesion load
    a, b = (one.load(s) for s in subjects[:2])
    assert np.array_equal(a.lesion, b.lesion) and ((np.asarray(a.channel("t2")) > 0)
                                                  == (np.asarray(b.channel("t2")) > 0)).all()


def test_each_adapter_reads_only_its_own_files(afsc):
    from benchmark.registry import get_dataset

    sources = {name: {str(f) for s in get_dataset(name)(afsc).subjects() for f in s.files.values()}
               for name in ("hcp", "brats2017", "msseg2015")}
    for name, folder in (("hcp", "hcp"), ("brats2017", "brats2017"), ("msseg2015", "isbi2015")):
        assert all(Path(f).relative_to(afsc).parts[0] == M.AFSC_DIRS[folder] for f in sources[name]), name


@pytest.fixture(scope="module")
def stores(afsc, tmp_path_factory) -> dict:
    from datasets.recipes_paper import SETUPS

    cache_dir = tmp_path_factory.mktemp("stores")
    return {sid: SETUPS[sid].prepare(afsc, cache_dir=cache_dir, subset=True)
            for sid in ("afsc-hcp", "afsc-brats2017", "afsc-msseg2015")}


def test_hcp_setup_prepares_healthy_train_and_val(stores):
    store = stores["afsc-hcp"]
    m = store.manifest
    assert store.images.shape[1:] == (1, 128, 128)
    per_split = m.groupby("split")["subject"].agg(lambda s: sorted(set(s))).to_dict()
    assert sorted(per_split) == ["train", "val"] and len(per_split["val"]) == 1 and len(per_split["train"]) == 5
    assert sorted(per_split["train"] + per_split["val"]) == sorted(M.AFSC_HCP)
    assert (m.groupby("subject").size() == HCP_SLICES).all()  # every axial slice of the volume resampled to 1 mm
    assert (m["label"] == 0).all() and (m["pathology"] == "healthy").all() and not np.asarray(store.lesion).any()
    img = np.asarray(store.images)
    assert img.min() >= 0.0 and img.max() <= 1.0 + 1e-5  # p99.5 clip; the bilinear resize rounds a hair above 1
    assert (img.reshape(len(m), -1).max(axis=1) > 0.5).sum() > len(m) // 2  # most slices cut the brain


def test_tumour_and_ms_setups_prepare_test_slices_with_lesions(stores):
    for sid, n_subjects, n_slices in (("afsc-brats2017", 5, M.BRATS2017_SHAPE[2]), ("afsc-msseg2015", 4, M.ISBI_SLAB)):
        store = stores[sid]
        m = store.manifest
        assert store.images.shape[1:] == (1, 128, 128), sid
        assert set(m["split"]) == {"test"} and m["subject"].nunique() == n_subjects, sid
        assert (m.groupby("subject").size() == n_slices).all(), sid
        lesion = np.asarray(store.lesion).reshape(len(m), -1).any(axis=1)
        assert np.array_equal(m["label"].to_numpy() == 1, lesion), sid
        assert 0 < lesion.sum() < len(m), sid  # anomalous and normal slices, as AUROCimg needs
