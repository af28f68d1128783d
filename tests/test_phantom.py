"""The embedded MNI phantom and the NIfTI reader it goes through.

Sizes are tiny (a few subjects, 6-8 slices): the point is the generator's contract (determinism,
contrasts, lesion placement, caching, atomicity), not its speed, which is timed by hand.
"""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from benchmark.errors import DataError
from benchmark.registry import get_dataset
from datasets import phantom as ph
from datasets.adapters.phantom import PhantomAdapter
from datasets.nifti import read_nifti

SIZES = dict(n_train=1, n_val=1, n_test=7, slices_per_subject=8)  # test = one of each pathology + 2 healthy


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "subjects.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    return ph.write_phantom(tmp_path_factory.mktemp("phantom"), seed=0, **SIZES)


def test_layout_and_pathology_mix(phantom_root):
    rows = _rows(phantom_root)
    assert [r["split"] for r in rows] == ["train", "val"] + ["test"] * 7
    assert {r["pathology"] for r in rows if r["split"] != "test"} == {"healthy"}
    assert {r["pathology"] for r in rows if r["split"] == "test"} == {"healthy", "tumour", "stroke", "ms", "atrophy"}
    for r in rows:
        sid = r["subject"]
        for c in ("t1", "t2", "flair"):
            img = nib.load(str(phantom_root / sid / f"{sid}-{c}.nii.gz"))
            assert img.get_data_dtype() == np.float32
            assert np.allclose(np.diag(img.affine)[:3], 2.0) and img.shape[2] == SIZES["slices_per_subject"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(n_train=1, n_val=0, n_test=2, slices_per_subject=6)
    a = ph.write_phantom(tmp_path / "a", seed=3, **kw)
    b = ph.write_phantom(tmp_path / "b", seed=3, **kw)
    c = ph.write_phantom(tmp_path / "c", seed=4, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    sid = "phantom-train-000"
    x, _ = read_nifti(a / sid / f"{sid}-flair.nii.gz")
    y, _ = read_nifti(c / sid / f"{sid}-flair.nii.gz")
    assert not np.array_equal(x, y)


def test_subject_independent_of_dataset_size():
    """A subject's stream depends on (seed, split, index) only, so growing n_train keeps the test set."""
    one = ph.synth_subject("test", 1, "tumour", 6, seed=0)
    two = ph.synth_subject("test", 1, "tumour", 6, seed=0)
    for c in ph.CHANNELS:
        assert np.array_equal(one.channels[c], two.channels[c])
    assert np.array_equal(one.seg, two.seg)


def test_tissue_contrast_ordering():
    s = ph.synth_subject("train", 0, "healthy", 8, seed=0)
    pure = {t: s.tissue[t] > 0.75 for t in ("csf", "gm", "wm")}
    assert all(int(m.sum()) > 20 for m in pure.values())
    mean = {c: {t: float(s.channels[c][m].mean()) for t, m in pure.items()} for c in ph.CHANNELS}
    assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
    assert mean["t2"]["csf"] > mean["t2"]["gm"] > mean["t2"]["wm"]
    assert mean["flair"]["gm"] > mean["flair"]["wm"] > mean["flair"]["csf"]
    # background is exactly 0 and the brain strictly positive, so brain = image > 0 as in BraTS
    for c in ph.CHANNELS:
        assert np.array_equal(s.channels[c] > 0, s.brain)


def test_lesions_only_in_lesion_subjects_and_inside_brain(phantom_root):
    for r in _rows(phantom_root):
        sid, pathology = r["subject"], r["pathology"]
        seg_file = phantom_root / sid / f"{sid}-seg.nii.gz"
        assert seg_file.exists() == (pathology in ("tumour", "stroke", "ms")), sid
        if not seg_file.exists():
            continue
        seg, _ = read_nifti(seg_file)
        assert set(np.unique(seg).astype(int)) <= {0, 1, 2, 3}
        brain, _ = read_nifti(phantom_root / sid / f"{sid}-t1.nii.gz")
        assert (seg > 0).sum() > 0 and np.all(brain[seg > 0] > 0), sid
        if pathology == "tumour":
            assert {1, 3} <= set(np.unique(seg).astype(int))


@pytest.mark.parametrize("pathology, brighter, darker", [
    ("tumour", ("t2", "flair"), ("t1",)),
    ("stroke", ("t2",), ("t1",)),
    ("ms", ("t2", "flair"), ()),
])
def test_lesion_contrast_against_surrounding_wm(pathology, brighter, darker):
    index = ph.TEST_CYCLE.index(pathology)
    s = ph.synth_subject("test", index, pathology, 8, seed=0)
    les = s.seg > 0
    ring = ndimage.binary_dilation(les, iterations=6) & ~ndimage.binary_dilation(les, iterations=2)
    wm = ring & (s.tissue["wm"] > 0.75)
    if wm.sum() < 10:  # tiny MS blobs near the ventricles: compare with all pure WM instead
        wm = (s.tissue["wm"] > 0.75) & ~ndimage.binary_dilation(les, iterations=2)
    for c in brighter:
        assert s.channels[c][les].mean() > 1.1 * s.channels[c][wm].mean(), c
    for c in darker:
        assert s.channels[c][les].mean() < 0.9 * s.channels[c][wm].mean(), c


def test_atrophy_is_global_and_enlarges_csf(phantom_root):
    adapter = PhantomAdapter(phantom_root)
    atrophy = [s for s in adapter.subjects() if s.pathology == "atrophy"]
    assert len(atrophy) == 1 and "seg" not in atrophy[0].files
    vol = adapter.load(atrophy[0])
    assert vol.lesion is None and atrophy[0].split == "test"
    # same subject stream with and without the finding: only the atrophy warp differs
    index = ph.TEST_CYCLE.index("atrophy")
    sick = ph.synth_subject("test", index, "atrophy", 8, seed=0)
    well = ph.synth_subject("test", index, "healthy", 8, seed=0)
    assert sick.tissue["csf"].sum() > 1.2 * well.tissue["csf"].sum()


def test_cache_is_reused_without_rewriting(phantom_root, monkeypatch):
    csv_file = phantom_root / "subjects.csv"
    before = {p: p.stat().st_mtime_ns for p in phantom_root.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise AssertionError("regenerated a cached phantom")

    monkeypatch.setattr(ph, "synth_subject", boom)
    assert ph.write_phantom(phantom_root.parent, seed=0, **SIZES) == phantom_root
    assert {p: p.stat().st_mtime_ns for p in phantom_root.rglob("*") if p.is_file()} == before
    assert csv_file.exists()


def test_interrupted_generation_leaves_no_usable_phantom(tmp_path, monkeypatch):
    real = ph.synth_subject
    calls = []

    def flaky(*a, **k):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash mid-generation")
        return real(*a, **k)

    monkeypatch.setattr(ph, "synth_subject", flaky)
    kw = dict(n_train=2, n_val=0, n_test=1, slices_per_subject=4)
    with pytest.raises(KeyboardInterrupt):
        ph.write_phantom(tmp_path, **kw)
    # neither the target nor the temporary folder remains (only the writers' lock file)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(ph, "synth_subject", real)
    root = ph.write_phantom(tmp_path, **kw)
    assert len(_rows(root)) == 3


def test_phantom_store_smoke(tmp_path):
    assert get_dataset("phantom") is PhantomAdapter
    store = ph.phantom_store("smoke", cache_dir=tmp_path)
    m = store.manifest
    assert store.images.shape[1:] == (1, 128, 128) and store.meta["recipe"] == "phantom-flair@v2"
    assert set(m["split"]) == {"train", "val", "test"}
    held = m[m["split"] != "test"]
    assert (held["label"] == 0).all() and (held["pathology"] == "healthy").all()
    test = m["split"].to_numpy() == "test"
    sick = test & (m["label"].to_numpy() == 1)
    assert sick.any() and (m["label"].to_numpy()[test] == 0).any()
    assert store.lesion[sick].reshape(int(sick.sum()), -1).sum(axis=1).min() > 0
    assert all(b != "[]" for b in m["boxes"][m["pathology"].isin(["tumour", "ms", "stroke"])])
    assert ph.phantom_store("smoke", cache_dir=tmp_path).path == store.path  # prepared once


def test_adapter_reports_shape_mismatch(phantom_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom_root, root)
    sid = next(r["subject"] for r in _rows(root) if r["pathology"] == "tumour")
    seg_file = root / sid / f"{sid}-seg.nii.gz"
    img = nib.load(str(seg_file))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-3], img.affine), str(seg_file))
    subject = next(s for s in PhantomAdapter(root).subjects() if s.id == sid)
    with pytest.raises(DataError, match="differs from") as err:
        PhantomAdapter(root).load(subject)
    assert str(seg_file) in str(err.value)


# ---------------------------------------------------------------------------------------------------
# read_nifti


def _save(path: Path, arr: np.ndarray, affine=None, slope: float | None = None) -> Path:
    img = nib.Nifti1Image(arr, np.eye(4) if affine is None else affine)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return path


def test_read_nifti_general_inputs(tmp_path):
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    las = np.diag([-2.0, 2.0, 3.0, 1.0])  # x flipped: must come back in RAS+
    data, spacing = read_nifti(_save(tmp_path / "las.nii.gz", a, las))
    assert data.dtype == np.float32 and spacing == (2.0, 2.0, 3.0)
    assert np.array_equal(data, a[::-1])
    data, _ = read_nifti(_save(tmp_path / "i16.nii.gz", a.astype(np.int16), slope=0.5))
    assert np.allclose(data, a * 0.5)
    data, _ = read_nifti(_save(tmp_path / "u8.nii", a.astype(np.uint8)))
    assert np.array_equal(data, a)
    data, _ = read_nifti(_save(tmp_path / "four.nii.gz", a[..., None]))
    assert data.shape == a.shape
    assert not read_nifti(_save(tmp_path / "seg.nii.gz", np.zeros((3, 3, 3), np.uint8)), allow_empty=True)[0].any()


def _truncated(tmp_path: Path) -> Path:
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).random((30, 30, 30), dtype=np.float32))
    bad = tmp_path / "truncated.nii.gz"
    raw = good.read_bytes()
    bad.write_bytes(raw[: len(raw) * 2 // 3])
    return bad


def _nan(tmp_path: Path) -> Path:
    a = np.ones((4, 4, 4), np.float32)
    a[1, 2, 3] = np.nan
    return _save(tmp_path / "nan.nii.gz", a)


def _notgzip(tmp_path: Path) -> Path:
    p = tmp_path / "notgzip.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti header")[:10] + b"junk")
    return p


@pytest.mark.parametrize("make, cause", [
    (_truncated, "corrupt or truncated"),
    (_notgzip, "corrupt or truncated"),
    (_nan, "NaN/Inf"),
    (lambda d: _save(d / "zero.nii.gz", np.zeros((4, 4, 4), np.float32)), "all-zero"),
    (lambda d: d / "missing.nii.gz", "not found"),
])
def test_read_nifti_bad_inputs_name_the_file(tmp_path, make, cause):
    path = make(tmp_path)
    with pytest.raises(DataError) as err:
        read_nifti(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and cause in msg and "\n" not in msg


def test_concurrent_writers_generate_the_phantom_once(tmp_path, monkeypatch):
    """Two writers at once (two jobs of a sweep on one cache): one generates, the other waits and reuses it."""
    import threading

    real, calls = ph._generate, []

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(ph, "_generate", counted)
    kw = dict(n_train=1, n_val=0, n_test=1, slices_per_subject=4)
    roots: list = []
    threads = [threading.Thread(target=lambda: roots.append(ph.write_phantom(tmp_path, **kw))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(roots) == 2 and roots[0] == roots[1] and len(_rows(roots[0])) == 2
