"""The ProxyAno miniature release (the two Kaggle brain-tumour sets, OCT2017 and IDRiD in one root): its layout and
file formats, stable bytes, the real adapters reading it (each only its own files) and the three ProxyAno setups
preparing stores from it through the real split functions and recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets import miniature as M

OCT_FILES = {f"{M.PROXYANO_DIRS['oct2017']}/{split}/{cls}/{name}.jpeg": (split, cls)
             for split, classes in M.PROXYANO_OCT.items() for cls, names in classes.items() for name in names}
GRADE0 = [i for i, (g, _) in M.PROXYANO_IDRID_B["train"].items() if g == 0]
PART_A = [(split, image) for split, images in M.PROXYANO_IDRID_A.items() for image in images]
SOURCE, COPY = M.PROXYANO_BRAIN_DUPLICATE


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def root(cache) -> Path:
    return M.miniature_root("proxyano", cache_dir=cache)


@pytest.fixture(scope="module")
def summary(root) -> dict:
    return json.loads((root / "miniature.json").read_text())


def written(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def expected_files() -> set[str]:
    out = {f.rel for f in M.PROXYANO_BRAIN} | set(OCT_FILES)
    out |= {p for split, image in PART_A for p in M.idrid_paths("A", split, image).values()}
    out |= {M.idrid_paths("B", split, image)["image"] for split, images in M.PROXYANO_IDRID_B.items()
            for image in images}
    out |= {f"{M.PROXYANO_DIRS['idrid']}/B. Disease Grading/2. Groundtruths/{name}" for name in M.IDRID_CSV.values()}
    return out | {"miniature.json"}


def test_layout_formats_and_summary(root, summary):
    from PIL import Image

    from datasets.images import sniff_format

    assert root.name == f"proxyano-v{M.PROXYANO_VERSION}" and M.release_version("proxyano") == str(M.PROXYANO_VERSION)
    assert written(root) == expected_files()
    assert {p.name for p in root.iterdir() if p.is_dir()} == set(M.PROXYANO_DIRS.values())
    assert M.proxyano_roots(root) == {sid: root for sid in M.PROXYANO_SETUPS}
    assert summary["release"] == "proxyano" and summary["version"] == str(M.PROXYANO_VERSION)
    assert summary["brain"]["normals"] == 20 and summary["brain"]["abnormals"] == 20
    for f in M.PROXYANO_BRAIN:  # the bytes are what the plan says, whatever the extension
        im = Image.open(root / f.rel)
        assert (sniff_format(root / f.rel), im.mode) == (f.fmt, f.mode), f.rel
        assert 96 <= min(im.size) and max(im.size) <= 360, f.rel  # the copy is 1.2× its ≤ 300 px source
    assert {Path(f.rel).suffix for f in M.PROXYANO_BRAIN} == {".jpg", ".jpeg", ".JPG", ".png"}
    for rel in OCT_FILES:
        im = Image.open(root / rel)
        assert im.format == "JPEG" and im.mode == "L" and im.height == M.OCT_HEIGHT and im.width in M.OCT_WIDTHS, rel
    assert {Image.open(root / rel).width for rel in OCT_FILES} == set(M.OCT_WIDTHS)
    h, w = M.IDRID_SHAPE
    for split, image in PART_A:
        paths = M.idrid_paths("A", split, image)
        im = Image.open(root / paths["image"])
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (w, h)
        for t in M.PROXYANO_IDRID_A[split][image]:
            mask = Image.open(root / paths[t])
            assert mask.format == "TIFF" and mask.mode == "P" and mask.size == (w, h), (image, t)
            assert set(np.unique(np.asarray(mask))) == {0, 1} and mask.getpalette()[:6] == [0, 0, 0, 255, 0, 0]
    assert any("SE" not in types for images in M.PROXYANO_IDRID_A.values() for types in images.values())
    csv = (root / M.PROXYANO_DIRS["idrid"] / "B. Disease Grading" / "2. Groundtruths" / M.IDRID_CSV["train"])
    lines = csv.read_bytes().split(b"\r\n")
    assert lines[0] == b"Image name,Retinopathy grade,Risk of macular edema" + b"," * 9 and lines[-1] == b""
    assert b"IDRiD_118,0,0,,,,,,,,," in lines and len(GRADE0) >= 6
    total = sum((root / p).stat().st_size for p in written(root))
    assert total < 3e6, total  # ~2 MB


def test_second_write_is_byte_identical_and_the_cache_is_reused(root, cache, tmp_path, monkeypatch):
    again = tmp_path / "again"
    M.write_proxyano_release(again)
    assert written(again) == written(root)
    for rel in sorted(written(root)):
        assert (again / rel).read_bytes() == (root / rel).read_bytes(), rel
    monkeypatch.setitem(M.RELEASES, "proxyano", lambda path: pytest.fail("rebuilt an existing release"))
    assert M.miniature_root("proxyano", cache_dir=cache) == root


def test_mask_writer_reproduces_the_real_idrid_masks():
    from PIL import Image

    from datasets.base import shared_release

    real = shared_release("idrid")
    if real is None:
        pytest.skip("no shared IDRiD data")
    masks = sorted(real.glob("A. Segmentation/2. All Segmentation Groundtruths/*/*/*.tif"))
    assert masks
    for p in masks[:: max(1, len(masks) // 12)]:
        assert M._tif_1bit(np.asarray(Image.open(p))) == p.read_bytes(), p.name


def test_brain_images_are_distinct_but_the_planted_pair(root, summary):
    from datasets.splits import near_duplicate_groups, phash

    rels = [f.rel for f in M.PROXYANO_BRAIN]
    hashes = [phash(root / r) for r in rels]
    groups = near_duplicate_groups(hashes)
    assert len(set(groups)) == len(rels) - 1 and groups[rels.index(SOURCE)] == groups[rels.index(COPY)]
    h = np.array(hashes, np.uint64)
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    np.fill_diagonal(dist, 64)
    dist[rels.index(SOURCE), rels.index(COPY)] = dist[rels.index(COPY), rels.index(SOURCE)] = 64
    assert dist.min() >= 12 == summary["brain"]["phash_min_bits_apart"]  # far from the split's ≤ 4


def test_each_adapter_reads_only_its_own_files(root):
    from PIL import Image

    from benchmark.registry import get_dataset

    brain = get_dataset("brain_mri_tumor")(root).subjects()
    assert {s.id for s in brain} == {M.kaggle_subject_id(f.rel) for f in M.PROXYANO_BRAIN}
    by = {s.id: s for s in brain}
    for f in M.PROXYANO_BRAIN:
        assert (by[M.kaggle_subject_id(f.rel)].pathology == "healthy") == (not f.finding), f.rel
    octs = get_dataset("oct2017")(root).subjects()
    assert {s.id for s in octs} == {f"{split}/{Path(rel).stem}" for rel, (split, _) in OCT_FILES.items()}
    assert {s.meta["patient"] for s in octs if s.meta["folder_split"] == "val"} == {"4872585", "6294785", "9583225",
                                                                                 "9800172"}
    idrid = {s.id: s for s in get_dataset("idrid")(root).subjects()}
    assert set(idrid) == {f"A-{i}" for _, i in PART_A} | {f"B-{split}-{i}" for split, images in
                                                         M.PROXYANO_IDRID_B.items() for i in images}
    assert [i for i in GRADE0 if idrid[f"B-train-{i}"].pathology == "healthy"] == GRADE0
    assert idrid["B-train-IDRiD_001"].pathology == "dr_grade3" and idrid["B-test-IDRiD_029"].pathology == "healthy"
    assert idrid["A-IDRiD_56"].meta["mask_types"] == sorted(M.PROXYANO_IDRID_A["test"]["IDRiD_56"])
    for name, subjects, folders in (("brain_mri_tumor", brain, ("brain_tumor_detection", "brain_tumor_classification")),
                                    ("oct2017", octs, ("oct2017",)), ("idrid", idrid.values(), ("idrid",))):
        tops = {Path(f).relative_to(root).parts[0] for s in subjects for f in s.files.values()}
        assert tops == {M.PROXYANO_DIRS[k] for k in folders}, name
    vol = get_dataset("idrid")(root).load(idrid["A-IDRiD_03"])
    assert vol.lesion.shape == M.IDRID_SHAPE and vol.lesion.any()
    od = np.asarray(Image.open(root / M.idrid_paths("A", "train", "IDRiD_03")["OD"]))
    assert not (vol.lesion.astype(bool) & (od > 0)).any()  # the optic disc is anatomy, not a lesion


@pytest.fixture(scope="module")
def stores(root, tmp_path_factory) -> dict:
    from datasets.recipes_paper import SETUPS

    cache_dir = tmp_path_factory.mktemp("stores")
    roots = M.proxyano_roots(root)
    return {sid: SETUPS[sid].prepare(roots[sid], cache_dir=cache_dir, subset=True) for sid in M.PROXYANO_SETUPS}


def test_brain_setup_dedups_and_balances(stores):
    store = stores["proxyano-brain"]
    m = store.manifest
    assert store.images.shape[1:] == (1, 256, 256)
    subjects = set(m["subject"])
    assert M.kaggle_subject_id(SOURCE) not in subjects and M.kaggle_subject_id(COPY) in subjects  # planted pair → one
    normals = {M.kaggle_subject_id(f.rel) for f in M.PROXYANO_BRAIN if not f.finding} - {M.kaggle_subject_id(SOURCE)}
    assert normals <= subjects
    train, test = m[m.split == "train"], m[m.split == "test"]
    assert len(train) == round(20 * 400 / 598) == 13 and (train.label == 0).all()  # bt_default scaled to 20 normals
    assert (test.label == 0).sum() == 7 == (test.label == 1).sum()
    assert set(train.subject) | set(test[test.label == 0].subject) == normals
    img = np.asarray(store.images)
    assert 0.0 <= img.min() and img.max() <= 1.0 + 1e-5 and (img.reshape(len(m), -1).std(axis=1) > 0.1).all()


def test_oct_setup_trains_on_normals_and_tests_test_and_val(stores):
    m = stores["proxyano-oct2017"].manifest
    train, test = m[m.split == "train"], m[m.split == "test"]
    assert len(train) == len(M.PROXYANO_OCT["train"]["NORMAL"]) >= 12 and (train.label == 0).all()
    n_test = {cls: len(M.PROXYANO_OCT["test"][cls]) + len(M.PROXYANO_OCT["val"][cls]) for cls in M.PROXYANO_OCT["test"]}
    assert (test.label == 0).sum() == n_test["NORMAL"] and (test.label == 1).sum() == sum(n_test.values()) - \
        n_test["NORMAL"]
    assert {s.split("/")[0] for s in test.subject} == {"test", "val"}


def test_idrid_setup_tiles_grade0_train_and_part_a_test(stores):
    store = stores["proxyano-idrid"]
    m = store.manifest
    train, test = m[m.split == "train"], m[m.split == "test"]
    assert sorted(set(train.subject)) == sorted(f"B-train-{i}" for i in GRADE0) and len(train) == 9 * len(GRADE0)
    assert sorted(set(test.subject)) == sorted(f"A-{i}" for _, i in PART_A) and len(test) == 9 * len(PART_A)
    assert sorted(set(m.slice)) == list(range(9)) and (train.label == 0).all()
    lesion = np.asarray(store.lesion).reshape(len(m), -1).sum(axis=1)
    assert np.array_equal(m["label"].to_numpy() == 1, lesion > 0)
    assert (lesion[train.index] == 0).all()
    per_image = test.assign(lesion=lesion[test.index]).groupby("subject")["lesion"].sum()
    assert (per_image > 0).all()  # every part-A image has lesion pixels in its tiles
    assert 0 < (test.label == 1).sum() < len(test)  # lesion tiles and lesion-free tiles (the black corners)
