"""``phbench data prepare`` / ``data info --full`` with ``--skip-bad``, parallel preparation, and cache
invalidation: tiny LGG ``kaggle_3m`` folders (named after the committed patient split) with bad subjects."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.errors import DataError
from datasets.adapters.lgg import LGGAdapter
from datasets.base import default_workers, prepare
from datasets.recipes_paper import LGG_FLAIR
from datasets.splits import lgg as lgg_split
from datasets.splits import read_csv
from datasets.store import SliceStore
from tests.layouts import write_lgg_patient


def _folders(n_per_split: int = 2) -> dict[str, list[str]]:
    """The first patient folders of each split in the committed LGG list."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for r in read_csv("lgg/lgg_patients.csv"):
        if len(out[r["split"]]) < n_per_split:
            out[r["split"]].append(r["folder"])
    return out


def _lgg_root(tmp_path, n_per_split: int = 2):
    folders = _folders(n_per_split)
    for i, f in enumerate(sorted(sum(folders.values(), []))):
        write_lgg_patient(tmp_path / "lgg", f, numbers=(1, 2, 4 + i), tumour=(2,))
    return tmp_path / "lgg", folders


def _corrupt(root, folder: str, n: int = 1):
    """Truncate one slice tif (a broken download)."""
    p = root / "kaggle_3m" / folder / f"{folder}_{n}.tif"
    p.write_bytes(p.read_bytes()[:200])
    return p


def _complete_stores(store_dir) -> list:
    return sorted(p.parent for p in store_dir.glob("*/meta.json")) if store_dir.exists() else []


def test_cli_prepare_first_bad_subject_stops_then_skip_bad_lists_it(tmp_path, capsys):
    root, folders = _lgg_root(tmp_path)
    bad_folder = folders["test"][0]
    bad = _corrupt(root, bad_folder)
    store_dir = tmp_path / "stores"
    args = ["data", "prepare", "lgg", "--root", str(root), "--store", str(store_dir)]

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad.name in err[0] and "truncated or corrupt TIFF" in err[0]
    assert _complete_stores(store_dir) == []  # nothing usable was left behind

    assert main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "lgg_patients.csv" in out and "skipped 1 subject(s):" in out
    skipped = out.split("skipped 1 subject(s):")[1].strip().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(f"{bad_folder}: ") and bad.name in skipped[0]
    assert "truncated or corrupt TIFF" in skipped[0]
    path = re.search(r"store:\s+(\S+)", out).group(1)
    fp = re.search(r"fingerprint:\s+([0-9a-f]{64})", out).group(1)
    store = SliceStore(path)
    assert store.fingerprint == fp and _complete_stores(store_dir) == [store.path]
    m = store.manifest
    assert bad_folder not in set(m["subject"])
    assert set(m["subject"]) == set(sum(folders.values(), [])) - {bad_folder}
    assert set(m[m.split == "train"]["label"]) == {0}  # train keeps tumour-free slices only
    assert m[m.split == "test"]["label"].sum() == 1  # the one good test patient's tumour slice
    for sp in ("train", "val", "test"):  # counts per split × label printed
        assert re.search(rf"^\s*{sp}\s+0\s+healthy\s+\d+\s+\d+\s*$", out, re.M), out

    # the cached store left a subject out: without --skip-bad it is not silently reused
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad.name in err[0] and "--skip-bad" in err[0]


def test_cli_info_full_honours_skip_bad(tmp_path, capsys, monkeypatch):
    root, folders = _lgg_root(tmp_path, n_per_split=1)
    bad = _corrupt(root, folders["val"][0], n=2)
    args = ["data", "info", "lgg", "--root", str(root), "--preview", str(tmp_path / "p.png"), "--full"]
    monkeypatch.setattr("datasets.base.DEFAULT_CACHE", tmp_path / "cache")  # keep the repo's cache clean
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad.name in err[0]
    assert main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "split: setup lgg-dev" in out and "skipped 1 subject(s):" in out and bad.name in out
    # subjects counted under the committed split, not 'all'
    assert re.search(r"^\s*tumour\s+1\s+1\s+1\s+3\s*$", out, re.M), out


def test_parallel_prepare_matches_serial(tmp_path):
    root, folders = _lgg_root(tmp_path, n_per_split=3)
    _corrupt(root, folders["train"][1])
    _corrupt(root, folders["test"][2])
    a = LGGAdapter(root)
    stores = {w: prepare(a, LGG_FLAIR, cache_dir=tmp_path / f"c{w}", split_fn=lgg_split(), skip_bad=True, workers=w)
              for w in (1, 2)}
    s1, s2 = stores[1], stores[2]
    assert len(s1) > 0 and s1.fingerprint == s2.fingerprint
    assert s1.manifest.equals(s2.manifest) and np.array_equal(np.asarray(s1.images), np.asarray(s2.images))
    assert s1.meta["skipped_subjects"] == s2.meta["skipped_subjects"] and len(s1.meta["skipped_subjects"]) == 2
    # strict: both stop at the first bad subject in subject order, with the same line
    errs = []
    for w in (1, 2):
        with pytest.raises(DataError) as e:
            prepare(a, LGG_FLAIR, cache_dir=tmp_path / f"strict{w}", split_fn=lgg_split(), workers=w)
        errs.append(str(e.value))
    first_bad = sorted([folders["train"][1], folders["test"][2]])[0]
    assert errs[0] == errs[1] and first_bad in errs[0]


class _PidLGG(LGGAdapter):
    """Marks each volume with the process that read it."""

    def load(self, subject):
        vol = super().load(subject)
        vol.source = f"pid{os.getpid()}"
        return vol


def test_workers_are_separate_processes(tmp_path):
    root, _ = _lgg_root(tmp_path, n_per_split=2)
    a = _PidLGG(root)
    serial = prepare(a, LGG_FLAIR, cache_dir=tmp_path / "s", split_fn=lgg_split(), workers=1)
    pooled = prepare(a, LGG_FLAIR, cache_dir=tmp_path / "p", split_fn=lgg_split(), workers=2)
    assert set(serial.manifest["source"]) == {f"pid{os.getpid()}"}
    assert f"pid{os.getpid()}" not in set(pooled.manifest["source"])
    assert serial.manifest.drop(columns="source").equals(pooled.manifest.drop(columns="source"))


def test_default_workers(monkeypatch):
    monkeypatch.setenv("PHBENCH_PREPARE_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("PHBENCH_PREPARE_WORKERS", "two")
    with pytest.raises(DataError, match="PHBENCH_PREPARE_WORKERS"):
        default_workers()
    monkeypatch.delenv("PHBENCH_PREPARE_WORKERS")
    assert 1 <= default_workers() <= max(1, os.cpu_count() or 1)


def test_store_rebuilt_when_a_source_file_changes(tmp_path):
    import tifffile

    root, folders = _lgg_root(tmp_path, n_per_split=1)
    a = LGGAdapter(root)
    old = prepare(a, LGG_FLAIR, cache_dir=tmp_path / "c", split_fn=lgg_split())
    assert prepare(a, LGG_FLAIR, cache_dir=tmp_path / "c", split_fn=lgg_split()).path == old.path  # reused
    f = folders["test"][0]
    p = root / "kaggle_3m" / f / f"{f}_1.tif"
    st = p.stat()
    rgb = tifffile.imread(p)
    rgb[..., 1] = np.where(rgb[..., 1] > 0, 255 - rgb[..., 1], 0)  # new FLAIR content, same size
    tifffile.imwrite(p, rgb)
    # same second, same size: only the sub-second mtime tells the rewrite apart
    same_second = st.st_mtime_ns // 10**9 * 10**9 + (st.st_mtime_ns % 10**9 + 5 * 10**8) % 10**9
    os.utime(p, ns=(st.st_atime_ns, same_second))
    assert p.stat().st_size == st.st_size and int(p.stat().st_mtime) == int(st.st_mtime)
    new = prepare(a, LGG_FLAIR, cache_dir=tmp_path / "c", split_fn=lgg_split())
    assert new.path != old.path and new.fingerprint != old.fingerprint
    assert new.meta["source_fingerprint"] != old.meta["source_fingerprint"]
    row = int(np.flatnonzero((new.manifest["subject"] == f) & (new.manifest["slice"] == 1))[0])
    assert not np.array_equal(new.images[row], old.images[row])
    assert SliceStore(old.path).fingerprint == old.fingerprint  # the old store is left intact


def test_half_written_store_is_rebuilt_not_opened(tmp_path, monkeypatch):
    root, _ = _lgg_root(tmp_path, n_per_split=1)
    a = LGGAdapter(root)

    def boom(*args, **kw):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(np, "save", boom)
        with pytest.raises(OSError, match="disk full"):
            prepare(a, LGG_FLAIR, cache_dir=tmp_path / "c", split_fn=lgg_split(), workers=2)
    assert _complete_stores(tmp_path / "c") == [] and not list((tmp_path / "c").glob("*/images.npy"))
    good = prepare(a, LGG_FLAIR, cache_dir=tmp_path / "c", split_fn=lgg_split())
    (good.path / "meta.json").unlink()  # a store interrupted before its last file
    again = prepare(a, LGG_FLAIR, cache_dir=tmp_path / "c", split_fn=lgg_split())
    assert (again.path / "meta.json").is_file() and again.fingerprint == good.fingerprint


def test_lgg_store_carries_the_pre_contrast_t1_for_cyclic_unet(tmp_path):
    """lgg-dev's Cyclic-UNet row: the pre-contrast T1 (tif channel 0) rides beside FLAIR as the intermediate
    modality, prepared like the input (same slices, same head, [0, 1] after its own p98)."""
    from datasets.lgg_benchmark import lgg_store

    root, _ = _lgg_root(tmp_path)
    store = lgg_store(root, size=32, cache_dir=tmp_path / "cache")
    assert store.meta["aux_channels"] == ["pre"]
    aux, img = np.asarray(store.aux), np.asarray(store.images)
    assert aux.shape == img.shape and float(aux.max()) <= 1.0 + 1e-6
    head = img > 0
    assert (aux[head] > 0).mean() > 0.99 and not np.allclose(aux, img)  # the same head, another contrast
