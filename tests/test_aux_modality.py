"""The auxiliary-modality data path: a recipe's ``aux_channels`` prepared like the input, stored beside the image
(``aux.npy``), carried by slice sets into ``SliceBatch.aux`` and announced by ``DataSpec``; stores, fingerprints
and cache keys without an auxiliary modality are what they were before it existed."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.contract import DataSpec, SliceBatch
from benchmark.errors import DataError
from benchmark.registry import get_dataset
from datasets.base import Volume, prepare
from datasets.recipes import Recipe, rule_every_brain_slice
from datasets.recipes_paper import RECIPES, SETUPS, PaperRecipe, Setup, cyclic_intermediate, get_recipe
from datasets.store import SliceStore, merge_stores, write_store
from protocols.suites import TensorSlices
from tests.conftest import toy_slices, with_aux
from tests.layouts import phantom, write_brats, write_isles


def two_contrasts(shape=(24, 24, 100), seed: int = 1):
    """A volume pair (flair, t1) on the same support with different contrast, and its lesion."""
    img, les = phantom(shape, seed=seed, lesion_z=0.6, lesion_r2=0.03)
    img = img.astype(np.float32)
    t1 = np.where(img > 0, 2.0 + np.sqrt(img) * 3.0 - 0.8 * les, 0.0).astype(np.float32)
    return img, t1, les


# -- recipes -----------------------------------------------------------------------------------------------


def _same_slices(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x.subject, x.slice, x.split, x.label, x.pathology, x.boxes) == \
               (y.subject, y.slice, y.split, y.label, y.pathology, y.boxes)
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.brain, y.brain)
        assert (x.lesion is None) == (y.lesion is None)
        if x.lesion is not None:
            np.testing.assert_array_equal(x.lesion, y.lesion)


@pytest.mark.parametrize("split", ["train", "test"])
def test_paper_recipe_prepares_aux_exactly_like_the_input(split):
    """itermask2_brats_flair (aux T1): the image slices are those of the recipe without aux, and the aux of each
    slice is what the same recipe makes of the T1 volume as its input (own normalisation, same slices)."""
    flair, t1, les = two_contrasts()
    vol = Volume(channels={"flair": flair, "t1": t1}, lesion=les, spacing=(1.0, 1.0, 1.0), source="mem")
    from datasets.base import Subject

    subj = Subject("BraTS2021_00002", {}, pathology="tumour")
    rec = get_recipe("itermask2_brats_flair")
    assert rec.aux_channels == ("t1",)
    got = rec.slices(vol, subj, split)
    plain = dataclasses.replace(rec, aux_channels=()).slices(vol, subj, split)
    as_input = dataclasses.replace(rec, channels=("t1",), aux_channels=()).slices(vol, subj, split)
    _same_slices(got, plain)
    assert all(s.aux is None for s in plain)
    for g, t in zip(got, as_input):
        assert g.aux.shape == (1, 128, 128) and g.aux.dtype == np.float32
        np.testing.assert_array_equal(g.aux, t.image)
        assert not np.allclose(g.aux, g.image)  # another contrast, normalised on its own volume
    assert float(got[0].aux.min()) == pytest.approx(-3.0)  # the IterMask2 map of the T1 volume: background −3


def test_core_recipe_prepares_aux_exactly_like_the_input():
    flair, t1, les = two_contrasts((20, 20, 16), seed=3)
    vol = Volume(channels={"flair": flair, "t1": t1}, lesion=les, source="mem")
    from datasets.base import Subject

    subj = Subject("s", {}, pathology="tumour")
    rec = Recipe("r", 1, ("flair",), rule_every_brain_slice(0.05), normalise="p98", size=32, aux_channels=("t1",))
    got = rec.slices(vol, subj, "test")
    _same_slices(got, dataclasses.replace(rec, aux_channels=()).slices(vol, subj, "test"))
    for g, t in zip(got, dataclasses.replace(rec, channels=("t1",), aux_channels=()).slices(vol, subj, "test")):
        np.testing.assert_array_equal(g.aux, t.image)


def test_the_itermask2_recipes_store_cyclic_unets_intermediate_modality():
    assert cyclic_intermediate("flair") == ("t1",)
    assert all(cyclic_intermediate(m) == ("flair",) for m in ("t1", "t1ce", "t2"))
    for m in ("flair", "t1", "t1ce", "t2"):
        assert get_recipe(f"itermask2_brats_{m}").aux_channels == cyclic_intermediate(m)
    assert get_recipe("itermask2_isles_flair").aux_channels == ("t1",)
    with_aux_ = {n for n, r in RECIPES.items() if r.aux_channels}
    assert with_aux_ == {"itermask2_brats_flair", "itermask2_brats_t1", "itermask2_brats_t1ce", "itermask2_brats_t2",
                         "itermask2_isles_flair", "lgg_flair"}  # ATLAS (T1 only), AFSC, RA, PHANES, ProxyAno: none
    assert get_recipe("lgg_flair").aux_channels == ("pre",)  # lgg-dev: the pre-contrast T1 is the release's T1
    from methods.cyclic_unet import setups_with_aux

    assert set(setups_with_aux()) == {*(f"itermask2-brats2021-{m}" for m in ("flair", "t1", "t1ce", "t2")),
                                      *(f"itermask2-isles2015-fold{k}" for k in range(4)), "lgg-dev"}


def test_a_missing_aux_modality_names_its_file(tmp_path):
    write_brats(tmp_path, "BraTS2021_00010", shape=(24, 24, 100), modalities=("flair", "t1ce"), lesion_z=0.6)
    a = get_dataset("brats2021")(tmp_path)
    s = a.subjects()[0]
    with pytest.raises(DataError, match="t1"):
        get_recipe("itermask2_brats_flair").slices(a.load(s), s, "train")


# -- setups ------------------------------------------------------------------------------------------------


def test_brats_setup_prepares_aux_beside_the_image(tmp_path):
    from datasets import splits as sp

    train_id = sp.read_csv("itermask2/brats2021_train.csv")[0]["subject_id"]
    test_id = sp.read_csv("itermask2/brats2021_test.csv")[0]["subject_id"]
    write_brats(tmp_path, train_id, shape=(24, 24, 100), lesion_z=0.6, lesion_r2=0.03)
    write_brats(tmp_path, test_id, shape=(24, 24, 100), lesion_z=0.6, seed=2, lesion_r2=0.03)
    store = SETUPS["itermask2-brats2021-t2"].prepare(tmp_path, cache_dir=tmp_path / "c", subset=True)
    assert (store.path / "aux.npy").is_file() and store.meta["aux_channels"] == ["flair"]
    assert store.aux.shape == store.images.shape and store.meta["aux_shape"] == [1, 128, 128]
    assert DataSpec.of(store) == DataSpec(128, 1) and DataSpec.of(store).aux_channels == 1
    assert DataSpec.of(store.split("train")).aux_channels == 1
    assert np.isfinite(store.aux).all() and not np.array_equal(store.aux, store.images)


def test_isles_setup_reads_t1_as_aux(tmp_path):
    for c in (1, 2):
        write_isles(tmp_path, c)
    setup = SETUPS["itermask2-isles2015-fold0"]
    assert isinstance(setup, Setup) and get_recipe(setup.recipe).aux_channels == ("t1",)
    a = get_dataset("isles2015")(tmp_path)
    rec = get_recipe("itermask2_isles_flair")
    s = a.subjects()[0]
    sl = rec.slices(a.load(s), s, "test")
    assert len(sl) == 1 and sl[0].aux.shape == sl[0].image.shape


# -- store, keys, batches --------------------------------------------------------------------------------------


def _old_fingerprint(store: SliceStore) -> str:
    """The fingerprint as computed before auxiliary modalities (images, brain, lesion, manifest, recipe id)."""
    h = hashlib.sha256()
    for a in (store.images, store.brain, store.lesion):
        a = np.asarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    h.update((store.path / "manifest.csv").read_text().encode() + str(store.meta["recipe"]).encode())
    return h.hexdigest()


def _old_content_key(store: SliceStore, rows: np.ndarray) -> str:
    h = hashlib.sha256(f"slices:{len(rows)}".encode())
    for a in (store.images, store.brain, store.lesion):
        h.update(str(a.dtype).encode() + str(a.shape[1:]).encode())
        h.update(np.ascontiguousarray(a[rows]).data)
    h.update(store.manifest.iloc[rows][["subject", "slice", "label"]].to_csv(index=False).encode())
    return h.hexdigest()[:20]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same toy slices without and with an auxiliary modality, and with another auxiliary content."""
    base = tmp_path_factory.mktemp("aux")
    plain = toy_slices(6, 2, 4, size=32)
    meta = {"recipe": "toy@v1", "dataset": "toy"}
    return (write_store(base / "plain", plain, meta), write_store(base / "aux", with_aux(plain), meta),
            write_store(base / "aux2", with_aux(plain, seed=1), meta))


def test_stores_without_aux_keep_their_fingerprint_and_content_keys(pair):
    plain, aux, aux2 = pair
    assert plain.aux is None and not (plain.path / "aux.npy").exists() and "aux_shape" not in plain.meta
    assert plain.fingerprint == _old_fingerprint(plain)
    train = plain.split("train")
    assert train.cache_key == _old_content_key(plain, train.rows)
    # with aux: the same images, yet another store and other slice keys; another aux content, other keys again
    assert np.array_equal(aux.images, plain.images)
    assert len({plain.fingerprint, aux.fingerprint, aux2.fingerprint}) == 3
    keys = {s.split("train").cache_key for s in (plain, aux, aux2)}
    assert len(keys) == 3


def test_slice_sets_carry_aux_into_every_batch(pair):
    plain, aux, _ = pair
    train = aux.split("train")
    for b in train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert b.aux is not None and b.aux.shape == b.image.shape
        rows = b.index.numpy()
        np.testing.assert_array_equal(b.aux.numpy(), np.asarray(aux.aux[rows]))
    one = train.batch([1, 3])
    np.testing.assert_array_equal(one.aux.numpy(), np.asarray(aux.aux[train.rows[[1, 3]]]))
    seen = one.without_ground_truth()
    assert seen.lesion_mask is None and seen.label is None and seen.aux is one.aux  # an input, not ground truth
    assert seen.to("cpu").aux is not None
    assert all(b.aux is None for b in plain.split("train").batches(4))
    assert plain.split("test").batch().aux is None and plain.split("test").materialize_aux() is None
    assert len(train.materialize()) == 5  # callers unpack five tensors; aux has its own accessor


def test_dataspec_announces_aux_but_compares_without_it(pair):
    plain, aux, _ = pair
    assert DataSpec.of(plain).aux_channels == 0 and DataSpec.of(aux).aux_channels == 1
    assert DataSpec.of(plain) == DataSpec.of(aux) == DataSpec(32, 1)


def test_write_store_refuses_mixed_or_bad_aux(tmp_path):
    items = with_aux(toy_slices(2, 1, 1, size=16))
    items[1] = dataclasses.replace(items[1], aux=None)
    with pytest.raises(DataError, match="auxiliary modality"):
        write_store(tmp_path / "mixed", items, {"recipe": "t@v1"})
    items = with_aux(toy_slices(2, 1, 1, size=16))
    items[0].aux[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        write_store(tmp_path / "nan", items, {"recipe": "t@v1"})
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "nan").exists()


def test_a_store_whose_aux_file_is_missing_is_refused(pair, tmp_path):
    import shutil

    _, aux, _ = pair
    broken = tmp_path / "broken"
    shutil.copytree(aux.path, broken)
    (broken / "aux.npy").unlink()
    with pytest.raises(DataError, match="unreadable"):
        SliceStore(broken)


def test_merged_stores_keep_aux_only_when_every_part_has_it(pair, tmp_path):
    plain, aux, aux2 = pair
    merged = merge_stores(tmp_path / "m", [(aux, ("train", "val")), (aux2, ("test",))], {"dataset": "m"})
    assert merged.aux is not None and len(merged.aux) == len(merged)
    test_rows = np.flatnonzero(merged.manifest["split"].to_numpy() == "test")
    np.testing.assert_array_equal(np.asarray(merged.aux[test_rows]),
                                  np.asarray(aux2.aux[aux2.split("test").rows]))
    none = merge_stores(tmp_path / "n", [(plain, ("train",)), (plain, ("test",))], {"dataset": "n"})
    assert none.aux is None
    with pytest.raises(DataError, match="auxiliary modality"):
        merge_stores(tmp_path / "x", [(plain, ("train",)), (aux, ("test",))], {"dataset": "x"})


def test_tensor_slices_carry_aux():
    n = 3
    img, aux = torch.rand(n, 1, 8, 8), torch.rand(n, 1, 8, 8)
    man = pd.DataFrame({"subject": ["a"] * n, "slice": range(n), "split": ["test"] * n, "label": [0] * n})
    ts = TensorSlices(img, torch.ones(n, 1, 8, 8), torch.zeros(n, 1, 8, 8), torch.zeros(n), man, aux=aux)
    got = torch.cat([b.aux for b in ts.batches(2)])
    assert torch.equal(got, aux)
    assert all(b.aux is None for b in TensorSlices(img, img, img, torch.zeros(n), man).batches(2))
    assert SliceBatch(img, img).aux is None


# -- prepare's cache key -------------------------------------------------------------------------------------


def _legacy(recipe):
    """The recipe as it looked before ``aux_channels`` existed: the same fields and slices, no such field."""

    class Legacy:
        id = recipe.id

        def slices(self, *a):
            return recipe.slices(*a)

    obj = Legacy()
    vars(obj).update({k: v for k, v in vars(recipe).items() if k != "aux_channels"})
    return obj


def test_prepare_keys_of_recipes_without_aux_are_unchanged(tmp_path):
    from datasets.adapters.phantom import PhantomAdapter
    from datasets.phantom import write_phantom

    root = write_phantom(tmp_path / "ph", n_train=1, n_val=0, n_test=1, slices_per_subject=4)
    adapter = PhantomAdapter(root)
    rec = Recipe("phantom-t1-aux", 1, ("t1",), rule_every_brain_slice(0.05), size=16)
    old = prepare(adapter, _legacy(rec), cache_dir=tmp_path / "c", workers=1)
    new = prepare(adapter, rec, cache_dir=tmp_path / "c", workers=1)
    assert new.path == old.path and new.aux is None
    with_aux_ = prepare(adapter, dataclasses.replace(rec, aux_channels=("flair",)), cache_dir=tmp_path / "c",
                        workers=1)
    assert with_aux_.path != old.path and with_aux_.meta["aux_channels"] == ["flair"]
    assert np.array_equal(with_aux_.images, old.images) and with_aux_.aux.shape == old.images.shape
    assert json.loads((with_aux_.path / "meta.json").read_text())["aux_shape"] == [1, 16, 16]
    paper = PaperRecipe("p", 1, ("t1",), rule_every_brain_slice(0.05), size=16)
    assert prepare(adapter, paper, cache_dir=tmp_path / "c", workers=1).path == \
        prepare(adapter, _legacy(paper), cache_dir=tmp_path / "c", workers=1).path
