import numpy as np
import pytest
import torch

from benchmark.errors import DataError
from datasets.store import SliceStore, write_store
from tests.conftest import toy_slices


def test_store_round_trip_and_memmap(toy_store):
    assert isinstance(toy_store.images, np.memmap)
    assert toy_store.images.shape == (32, 1, 128, 128)
    test = toy_store.split("test")
    assert len(test) == 12 and int(test.manifest["label"].sum()) == 6
    batch = test.batch()
    assert batch.image.shape == (12, 1, 128, 128) and batch.lesion_mask.sum() > 0
    assert set(toy_store.split("train", label=0).manifest["split"]) == {"train"}


def test_batches_cover_every_row_once_and_shuffle_is_seeded(toy_store):
    train = toy_store.split("train")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = torch.cat([b.index for b in train.batches(5, shuffle=True, generator=g1)])
    b = torch.cat([b.index for b in train.batches(5, shuffle=True, generator=g2)])
    assert torch.equal(a, b) and sorted(a.tolist()) == sorted(train.rows.tolist())
    assert sum(len(b) for b in train.batches(5, drop_last=True)) == 15


def test_fingerprint_depends_on_content(tmp_path):
    a = write_store(tmp_path / "a", toy_slices(seed=0), {"recipe": "toy@v1"})
    b = write_store(tmp_path / "b", toy_slices(seed=1), {"recipe": "toy@v1"})
    c = write_store(tmp_path / "c", toy_slices(seed=0), {"recipe": "toy@v2"})
    assert a.fingerprint != b.fingerprint and a.fingerprint != c.fingerprint
    assert a.fingerprint == write_store(tmp_path / "a2", toy_slices(seed=0), {"recipe": "toy@v1"}).fingerprint


def test_fingerprint_leaves_source_paths_out_and_files_are_checksummed(tmp_path):
    """Where slices were read from is not what they hold: the same data read under another mount point has the
    same fingerprint (so the same run keys); meta.json records what opening the store checks."""
    import dataclasses

    moved = [dataclasses.replace(s, source=f"/scratch/node-b/{s.subject}") for s in toy_slices(seed=0)]
    a = write_store(tmp_path / "a", toy_slices(seed=0), {"recipe": "toy@v1"})
    b = write_store(tmp_path / "b", moved, {"recipe": "toy@v1"})
    assert a.fingerprint == b.fingerprint and b.manifest["source"][0].startswith("/scratch/node-b/")
    assert sorted(b.meta["files"]) == ["brain.npy", "images.npy", "lesion.npy", "manifest.csv"]
    assert b.meta["files"]["images.npy"]["size"] == (tmp_path / "b" / "images.npy").stat().st_size


def test_half_written_store_is_never_opened(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError):
        write_store(tmp_path / "s", toy_slices(), {"recipe": "toy@v1"})
    assert not (tmp_path / "s").exists()
    with pytest.raises(DataError, match="not a complete slice store"):
        SliceStore(tmp_path / "s")


def test_nan_slice_is_rejected_naming_the_source(tmp_path):
    items = toy_slices(2, 0, 0)
    items[1].image[0, 3, 3] = np.nan
    items[1].source = "sub-7/t2.nii.gz"
    with pytest.raises(DataError, match="sub-7/t2.nii.gz: .*NaN"):
        write_store(tmp_path / "s", items, {"recipe": "toy@v1"})


def test_existing_store_survives_a_failed_rebuild(tmp_path, monkeypatch):
    good = write_store(tmp_path / "s", toy_slices(), {"recipe": "toy@v1"})
    fp = good.fingerprint
    items = toy_slices()
    items[0].image[0, 0, 0] = np.inf
    with pytest.raises(DataError):
        write_store(tmp_path / "s", items, {"recipe": "toy@v1"})
    assert SliceStore(tmp_path / "s").fingerprint == fp


def test_merge_takes_the_chosen_splits_of_each_store(tmp_path):
    from datasets.store import merge_stores

    a = write_store(tmp_path / "a", toy_slices(4, 2, 6, size=32, seed=0), {"recipe": "ra@v1", "dataset": "a"})
    b = write_store(tmp_path / "b", toy_slices(4, 2, 6, size=32, seed=1), {"recipe": "atlas@v1", "dataset": "b"})
    m = merge_stores(tmp_path / "m", [(a, ("train", "val")), (b, ("test",))], {"dataset": "a+b"})
    assert list(m.manifest["split"]) == ["train"] * 4 + ["val"] * 2 + ["test"] * 6
    np.testing.assert_array_equal(m.images[:6], a.images[:6])  # a's train and val rows, in order
    np.testing.assert_array_equal(m.images[6:], b.images[6:])  # b's test rows
    np.testing.assert_array_equal(m.lesion[6:], b.lesion[6:])
    assert m.meta["recipe"] == "ra@v1+atlas@v1" and [p["fingerprint"] for p in m.meta["parts"]] == [
        a.fingerprint, b.fingerprint]
    again = merge_stores(tmp_path / "m2", [(a, ("train", "val")), (b, ("test",))], {"dataset": "a+b"})
    assert again.fingerprint == m.fingerprint
    c = write_store(tmp_path / "c", toy_slices(2, 1, 2, size=16), {"recipe": "x"})
    with pytest.raises(DataError, match="slice shape"):
        merge_stores(tmp_path / "bad", [(a, ("train",)), (c, ("test",))], {})
