"""The slice store: prepared 2-D slices as memory-mappable arrays plus a manifest and a fingerprint.

On disk (one folder per dataset × recipe × source)::

    images.npy     float32 [N, C, H, W]  normalised intensities
    brain.npy      float32 [N, 1, H, W]  brain mask in [0, 1] (all ones where a dataset has none)
    lesion.npy     uint8   [N, 1, H, W]  lesion mask {0, 1}
    aux.npy        float32 [N, A, H, W]  optional: auxiliary modality (recipe ``aux_channels``) prepared like
                                         the image, same slices (Cyclic-UNet's intermediate modality)
    manifest.csv   one row per slice: subject, slice, split, label, pathology, boxes, source
    meta.json      recipe id, source fingerprint, shapes, fingerprint (``aux_shape`` when aux.npy is there),
                   ``files``: size and sha256 of every other file

The folder is built under a temporary name and renamed into place when complete (``atomic_dir``),
so a half-written store is never opened. The fingerprint (sha256 of arrays + manifest + recipe)
is recorded in every result row; the auxiliary array is hashed only when present, so a store without one
keeps the fingerprint (and slice content keys) it had before auxiliary modalities existed.

The fingerprint is of content, not of places: the manifest's ``source`` column (where each slice was read, an
absolute path) is left out of it, so the same data under another folder, cache or cluster mount point has the
same fingerprint, and so the same run keys. Opening a store checks its files against the sizes and sha256 in
meta.json (hashed once per process while a file is unchanged: ~0.3 s for the largest phantom store), so a store
changed in place never yields other numbers under its recorded fingerprint. A store of format 1 (fingerprint
with the source paths, no checksums) is upgraded when opened: both are computed from its files and meta.json
is rewritten (where the folder is writable).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from benchmark.contract import SliceBatch
from benchmark.errors import DataError
from benchmark.io import atomic_dir, atomic_write_text, checksum_mismatch, clean_stale, file_sha256

MANIFEST_COLUMNS = ["subject", "slice", "split", "label", "pathology", "boxes", "source"]
# 2: the fingerprint leaves the manifest's source paths out; meta.json records each file's size and sha256
STORE_FORMAT = 2
STORE_FILES = ("images.npy", "brain.npy", "lesion.npy", "aux.npy", "manifest.csv")
log = logging.getLogger(__name__)


def box_label(label: str) -> str:
    """An annotation label as an id: lower case, spaces → ``_`` ("Extra-axial mass" → ``extra-axial_mass``),
    the form RA's box lists use."""
    return "_".join(label.strip().lower().split())


@dataclass(frozen=True)
class BoxRecord:
    """One annotated box of a slice, as the manifest's ``boxes`` column stores it.

    ``xyxy``: the box in stored pixels (exclusive ends); a lesion-component box is only that (stored as a bare
    ``[x0, y0, x1, y1]``). An annotation box also keeps its label id, its index (its place among the slice's
    boxes sorted by label: how RA's box list names boxes) and the box in the source image's frame, so an
    evaluation can rebuild the mask the way a paper's code did (RA resizes a full-size rectangle to a soft mask).
    """

    xyxy: list[int]
    label: str = ""
    index: int = 0
    source_xywh: list[int] | None = None
    source_hw: list[int] | None = None

    def to_json(self) -> list | dict:
        if not self.label and self.source_xywh is None:
            return [int(v) for v in self.xyxy]
        return {"xyxy": [int(v) for v in self.xyxy], "label": self.label, "index": int(self.index),
                "source_xywh": self.source_xywh, "source_hw": self.source_hw}

    @classmethod
    def parse(cls, raw: list | dict) -> "BoxRecord":
        if isinstance(raw, dict):
            return cls([int(v) for v in raw["xyxy"]], str(raw.get("label", "")), int(raw.get("index", 0)),
                       raw.get("source_xywh"), raw.get("source_hw"))
        return cls([int(v) for v in raw])


def parse_boxes(text: str) -> list[BoxRecord]:
    """The ``boxes`` cell of a manifest row (JSON) as records; empty cell → no box."""
    return [BoxRecord.parse(b) for b in json.loads(text)] if isinstance(text, str) and text else []


@dataclass
class PreparedSlice:
    """One slice as a recipe emits it, before it is stacked into the store."""

    image: np.ndarray  # [C, H, W] float32
    brain: np.ndarray  # [H, W] float in [0, 1]
    lesion: np.ndarray | None  # [H, W] {0,1} or None (healthy / no annotation)
    subject: str
    slice: int
    split: str  # train | val | test
    label: int  # 0 healthy, 1 anomalous (pixel lesion or global finding)
    pathology: str = "healthy"
    boxes: list = field(default_factory=list)  # BoxRecord.to_json() entries: [x0, y0, x1, y1] or a dict
    source: str = ""
    aux: np.ndarray | None = None  # [A, H, W] float32: auxiliary modality (recipe ``aux_channels``) or None


def _sha256_arrays(*arrays: np.ndarray, extra: bytes = b"") -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    h.update(extra)
    return h.hexdigest()


def _fingerprint(images: np.ndarray, brain: np.ndarray, lesion: np.ndarray, aux: np.ndarray | None,
                 manifest: pd.DataFrame, recipe: str) -> str:
    """What the slices hold: the arrays, the manifest without where each slice was read from (its ``source`` is
    blanked, so a store whose sources are all empty keeps the fingerprint of format 1), and the recipe id."""
    csv = manifest[MANIFEST_COLUMNS].assign(source="").to_csv(index=False)
    return _sha256_arrays(*_arrays(images, brain, lesion, aux), extra=csv.encode() + recipe.encode())


def write_store(path: str | Path, slices: Iterable[PreparedSlice], meta: dict[str, Any]) -> "SliceStore":
    """Stack ``slices`` into a store at ``path`` atomically and return it opened."""
    items = list(slices)
    if not items:
        raise DataError(path, "no slices to write (every subject was empty or skipped)")
    shape = items[0].image.shape
    aux_shape = None if items[0].aux is None else items[0].aux.shape
    for it in items:
        if it.image.shape != shape:
            raise DataError(it.source or it.subject, f"slice shape {it.image.shape} differs from {shape}")
        if not np.isfinite(it.image).all():
            raise DataError(it.source or it.subject, "slice contains NaN or Inf after preprocessing")
        got = None if it.aux is None else it.aux.shape
        if got != aux_shape:
            raise DataError(it.source or it.subject, f"auxiliary modality shape {got} differs from {aux_shape} "
                                                     "(every slice of a store has one, or none has)")
        if it.aux is not None and not np.isfinite(it.aux).all():
            raise DataError(it.source or it.subject, "auxiliary modality contains NaN or Inf after preprocessing")
    images = np.stack([it.image.astype(np.float32) for it in items])
    aux = None if aux_shape is None else np.stack([it.aux.astype(np.float32) for it in items])
    brain = np.stack([it.brain.astype(np.float32) for it in items])[:, None]
    lesion = np.stack([
        (np.zeros(shape[1:], np.uint8) if it.lesion is None else (it.lesion > 0).astype(np.uint8)) for it in items
    ])[:, None]
    manifest = pd.DataFrame([
        {"subject": it.subject, "slice": int(it.slice), "split": it.split, "label": int(it.label),
         "pathology": it.pathology, "boxes": json.dumps(it.boxes), "source": it.source}
        for it in items
    ], columns=MANIFEST_COLUMNS)
    fingerprint = _fingerprint(images, brain, lesion, aux, manifest, str(meta.get("recipe", "")))
    full_meta = {**meta, "format": STORE_FORMAT, "n": len(items), "shape": list(shape), "fingerprint": fingerprint}
    return _write_arrays(path, images, brain, lesion, manifest.to_csv(index=False), full_meta, aux)


def _arrays(images: np.ndarray, brain: np.ndarray, lesion: np.ndarray, aux: np.ndarray | None) -> tuple:
    """The arrays a fingerprint or content key hashes: the auxiliary one only when the store has it."""
    return (images, brain, lesion) if aux is None else (images, brain, lesion, aux)


def _write_arrays(path: str | Path, images: np.ndarray, brain: np.ndarray, lesion: np.ndarray, manifest_csv: str,
                  meta: dict[str, Any], aux: np.ndarray | None = None) -> "SliceStore":
    """The one way a store reaches disk: built under a temporary name and renamed into place, meta.json last
    (its presence marks a complete store) with the size and sha256 of every other file. ``aux`` (an auxiliary
    modality) is written with the rest and its shape recorded in the meta, which is how an opened store knows
    to expect it."""
    if aux is not None:
        meta = {**meta, "aux_shape": list(aux.shape[1:])}
    with atomic_dir(path) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "brain.npy", brain)
        np.save(tmp / "lesion.npy", lesion)
        if aux is not None:
            np.save(tmp / "aux.npy", aux)
        (tmp / "manifest.csv").write_bytes(manifest_csv.encode())
        (tmp / "meta.json").write_text(json.dumps({**meta, "files": _file_records(tmp)}, indent=2, sort_keys=True))
    return SliceStore(path)


def _file_records(folder: Path) -> dict[str, dict[str, int | str]]:
    """Size and sha256 of each store file in ``folder``: what opening the store checks."""
    out = {}
    for name in STORE_FILES:
        if (folder / name).is_file():
            size, digest = file_sha256(folder / name)
            out[name] = {"size": size, "sha256": digest}
    return out


def merge_stores(path: str | Path, parts: Sequence[tuple["SliceStore", Sequence[str]]], meta: dict[str, Any]
                 ) -> "SliceStore":
    """One store from the chosen splits of several stores (PHANES: train/val from IXI + fastMRI+, test from
    ATLAS, each prepared by its own recipe), written atomically like any store; slices keep their manifest rows
    and the meta records every part's recipe and fingerprint. Parts must agree on slice shape, and on the
    auxiliary modality: all have one of the same shape (it is merged too) or none has."""
    images, brain, lesion, aux, rows, sources = [], [], [], [], [], []
    first = parts[0][0]
    for store, splits in parts:
        keep = np.flatnonzero(store.manifest["split"].isin(list(splits)).to_numpy())
        if store.images.shape[1:] != first.images.shape[1:]:
            raise DataError(store.path, f"slice shape {store.images.shape[1:]} differs from "
                                        f"{first.images.shape[1:]} of {first.path}")
        shape_of = lambda st: None if st.aux is None else (st.aux.shape[1:], st.meta.get("aux_channels"))  # noqa: E731
        if shape_of(store) != shape_of(first):
            raise DataError(store.path, f"auxiliary modality {shape_of(store)} differs from {shape_of(first)} of "
                                        f"{first.path} (merged parts must all have the same one, or none)")
        images.append(np.asarray(store.images[keep]))
        brain.append(np.asarray(store.brain[keep]))
        lesion.append(np.asarray(store.lesion[keep]))
        if store.aux is not None:
            aux.append(np.asarray(store.aux[keep]))
        rows.append(store.manifest.iloc[keep])
        sources.append({"recipe": store.meta.get("recipe"), "dataset": store.meta.get("dataset"),
                        "fingerprint": store.fingerprint, "splits": list(splits),
                        "skipped": store.meta.get("skipped", [])})
    img, br, les = np.concatenate(images), np.concatenate(brain), np.concatenate(lesion)
    ax = np.concatenate(aux) if aux else None
    manifest = pd.concat(rows, ignore_index=True)[MANIFEST_COLUMNS]
    if not len(manifest):
        raise DataError(path, "no slices to write (the chosen splits of every part are empty)")
    csv = manifest.to_csv(index=False)
    recipe = "+".join(str(s["recipe"]) for s in sources)
    fingerprint = _fingerprint(img, br, les, ax, manifest, recipe)
    full_meta = {**meta, "recipe": recipe, "parts": sources, "skipped": [ln for s in sources for ln in s["skipped"]],
                 "format": STORE_FORMAT, "n": len(manifest), "shape": list(img.shape[1:]), "fingerprint": fingerprint}
    if ax is not None and first.meta.get("aux_channels"):
        full_meta["aux_channels"] = first.meta["aux_channels"]
    return _write_arrays(path, img, br, les, csv, full_meta, ax)


class SliceStore:
    """An opened store; arrays are memory maps, so opening is cheap whatever the size (its files are checked
    against meta.json's checksums once per process: :func:`benchmark.io.file_sha256`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        clean_stale(self.path.parent)  # stores that a killed `prepare` left half-built beside this one
        clean_stale(self.path, depth=2)  # and caches that protocols keep inside it (synthetic/)
        meta_file = self.path / "meta.json"
        if not meta_file.exists():
            raise DataError(self.path, "not a complete slice store (meta.json missing); prepare it again")
        try:
            self.meta: dict[str, Any] = json.loads(meta_file.read_text())
            self.images = np.load(self.path / "images.npy", mmap_mode="r")
            self.brain = np.load(self.path / "brain.npy", mmap_mode="r")
            self.lesion = np.load(self.path / "lesion.npy", mmap_mode="r")
            # the auxiliary modality [N, A, H, W] (recipe ``aux_channels``), or None when the store has none
            self.aux = np.load(self.path / "aux.npy", mmap_mode="r") if "aux_shape" in self.meta else None
            self.manifest = pd.read_csv(self.path / "manifest.csv", keep_default_na=False,
                                        dtype={"subject": str, "split": str, "pathology": str, "source": str})
            self._check_files()
        except (OSError, ValueError) as err:
            raise DataError(self.path, f"slice store unreadable ({err}); delete it and prepare again") from err
        # SliceSet.cache_key by rows: every planned run splits the store anew, its content is hashed once
        self.content_keys: dict[bytes, str] = {}
        n = self.meta.get("n")
        if not (len(self.images) == len(self.brain) == len(self.lesion) == len(self.manifest) == n):
            raise DataError(self.path, "slice store arrays and manifest disagree in length; prepare it again")
        if self.aux is not None and (len(self.aux) != n or list(self.aux.shape[1:]) != list(self.meta["aux_shape"])):
            raise DataError(self.path, "slice store auxiliary modality disagrees with its meta; prepare it again")
        if self.meta.get("format", 1) < STORE_FORMAT:
            self._upgrade()

    def _check_files(self) -> None:
        """Every file against the size and sha256 meta.json recorded (stores of format 1 have no record)."""
        for name, record in sorted(self.meta.get("files", {}).items()):
            why = checksum_mismatch(self.path / name, record)
            if why:
                raise DataError(self.path / name, f"{why}; its store no longer holds what its fingerprint names: "
                                                  f"delete {self.path} to prepare it again")

    def _upgrade(self) -> None:
        """A format-1 store: its fingerprint (which hashed the manifest's source paths) and file checksums computed
        anew from its files, and meta.json rewritten, so it is verified from now on like a new store."""
        self.meta = {**self.meta, "format": STORE_FORMAT, "files": _file_records(self.path),
                     "fingerprint": _fingerprint(self.images, self.brain, self.lesion, self.aux, self.manifest,
                                                 str(self.meta.get("recipe", "")))}
        try:
            atomic_write_text(self.path / "meta.json", json.dumps(self.meta, indent=2, sort_keys=True))
        except OSError as err:  # a read-only copy: verified and fingerprinted in memory, every time it is opened
            log.info("%s: store of format 1 upgraded in memory only (%s)", self.path, err)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def __len__(self) -> int:
        return len(self.manifest)

    def split(self, name: str, *, label: int | None = None, pathology: str | None = None) -> "SliceSet":
        m = self.manifest
        keep = m["split"] == name
        if label is not None:
            keep &= m["label"] == label
        if pathology is not None:
            keep &= m["pathology"] == pathology
        return SliceSet(self, np.flatnonzero(keep.to_numpy()), name=name)

    def all(self) -> "SliceSet":
        return SliceSet(self, np.arange(len(self)), name="all")

    def counts(self) -> pd.DataFrame:
        """Slices and subjects per split × label × pathology (``phbench data info / prepare``); splits in
        train, val, test order."""
        g = self.manifest.groupby(["split", "label", "pathology"])
        out = pd.DataFrame({"slices": g.size(), "subjects": g["subject"].nunique()}).reset_index()
        rank = {"train": 0, "val": 1, "test": 2}
        order = sorted(range(len(out)), key=lambda i: (rank.get(out["split"][i], 3), out["split"][i],
                                                       int(out["label"][i]), out["pathology"][i]))
        return out.iloc[order].reset_index(drop=True)


class SliceSet:
    """A subset of a store's rows; the unit passed to ``Method.fit`` and to protocols.

    ``materialize(device)`` copies the rows to a device once (data stay on the GPU for the whole run);
    ``batches`` then only indexes into those tensors. The auxiliary modality, where the store has one, is
    copied the same way (``materialize_aux``) and reaches every batch as ``SliceBatch.aux``.
    """

    def __init__(self, store: SliceStore, rows: Sequence[int] | np.ndarray, name: str = ""):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.name = name
        self._cache: dict[str, tuple[torch.Tensor, ...]] = {}
        self._content_key: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def manifest(self) -> pd.DataFrame:
        return self.store.manifest.iloc[self.rows].reset_index(drop=True)

    @property
    def fingerprint(self) -> str:
        return self.store.fingerprint

    @property
    def cache_key(self) -> str:
        """What trained models and cached scores of these slices are keyed by: a hash of their content (arrays,
        subject, slice, label), not of the store they sit in -- the same slices in two stores (a merged store
        holds another store's train split; the same release under another root) share models and scores.
        The auxiliary modality is part of the content only where the store has one (a model trained with it is
        keyed by it; keys of stores without one are what they were)."""
        if self._content_key is None:
            self._content_key = self.store.content_keys.get(self.rows.tobytes())
        if self._content_key is None:
            h = hashlib.sha256(f"slices:{len(self.rows)}".encode())
            for a in _arrays(self.store.images, self.store.brain, self.store.lesion, self.store.aux):
                h.update(str(a.dtype).encode() + str(a.shape[1:]).encode())
                for start in range(0, len(self.rows), 1024):  # bounded memory on large stores
                    h.update(np.ascontiguousarray(a[self.rows[start:start + 1024]]).data)
            ids = self.store.manifest.iloc[self.rows][["subject", "slice", "label"]]
            h.update(ids.to_csv(index=False).encode())
            self._content_key = self.store.content_keys[self.rows.tobytes()] = h.hexdigest()[:20]
        return self._content_key

    def subset(self, positions: Sequence[int] | np.ndarray, name: str | None = None) -> "SliceSet":
        return SliceSet(self.store, self.rows[np.asarray(positions, dtype=np.int64)], name or self.name)

    def take(self, n: int) -> "SliceSet":
        """The first ``n`` slices spread evenly over the set (smoke profiles)."""
        if n >= len(self):
            return self
        return self.subset(np.linspace(0, len(self) - 1, n).round().astype(np.int64))

    def materialize(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._cache:
            r = self.rows
            tensors = (
                torch.from_numpy(np.ascontiguousarray(self.store.images[r])),
                torch.from_numpy(np.ascontiguousarray(self.store.brain[r])),
                torch.from_numpy(np.ascontiguousarray(self.store.lesion[r]).astype(np.float32)),
                torch.from_numpy(self.store.manifest["label"].to_numpy()[r].astype(np.int64)),
                torch.from_numpy(r.copy()),
            )
            self._cache[key] = tuple(t.to(device) for t in tensors)
        return self._cache[key]

    def materialize_aux(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The rows' auxiliary modality [n, A, H, W] on ``device`` (copied once), or None when the store has none."""
        if self.store.aux is None:
            return None
        key = f"{device}|aux"
        if key not in self._cache:
            self._cache[key] = (torch.from_numpy(np.ascontiguousarray(self.store.aux[self.rows])).to(device),)
        return self._cache[key][0]

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", drop_last: bool = False) -> Iterator[SliceBatch]:
        image, brain, lesion, label, index = self.materialize(device)
        aux = self.materialize_aux(device)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(image.device)
        stop = n - (n % batch_size) if (drop_last and n >= batch_size) else n
        for start in range(0, stop, batch_size):
            sel = order[start:start + batch_size]
            yield SliceBatch(image[sel], brain[sel], lesion[sel], label[sel], index[sel],
                             None if aux is None else aux[sel])

    def batch(self, positions: Sequence[int] | None = None, device: torch.device | str = "cpu") -> SliceBatch:
        """Selected slices (default: all) as one batch."""
        image, brain, lesion, label, index = self.materialize(device)
        aux = self.materialize_aux(device)
        sel = torch.arange(len(self)) if positions is None else torch.as_tensor(positions)
        sel = sel.to(image.device)
        return SliceBatch(image[sel], brain[sel], lesion[sel], label[sel], index[sel],
                          None if aux is None else aux[sel])


class CrossDatasetStore:
    """Train and validation splits from one store, the test split from another: AFSC's cross-dataset protocol (every
    model trained on healthy HCP only, tested on BraTS2017 or MS-SEG2015 without adaptation, protocols/afsc.md §1).

    It answers what a table's runner asks of a store (``split``, ``fingerprint``, ``path``, ``meta``); the models'
    train keys depend on the training slices only, so every test set of one training store shares its models."""

    def __init__(self, train: SliceStore, test: SliceStore, name: str = ""):
        if train.images.shape[1:] != test.images.shape[1:]:
            raise DataError(test.path, f"test slices {tuple(test.images.shape[1:])} differ from the training slices "
                                       f"{tuple(train.images.shape[1:])} of {train.path}; prepare both with one size")
        self.train_store, self.test_store, self.name = train, test, name
        skipped = dict.fromkeys([*train.meta.get("skipped", []), *test.meta.get("skipped", [])])
        self.meta = {"name": name, "train_store": str(train.path), "test_store": str(test.path),
                     "skipped": list(skipped)}

    @property
    def fingerprint(self) -> str:
        pair = f"{self.train_store.fingerprint}\n{self.test_store.fingerprint}"
        return hashlib.sha256(pair.encode()).hexdigest()[:20]

    @property
    def path(self) -> Path:
        return self.test_store.path  # where a protocol may cache what it derives from the test slices

    def split(self, name: str, *, label: int | None = None, pathology: str | None = None) -> "SliceSet":
        store = self.test_store if name == "test" else self.train_store
        return store.split(name, label=label, pathology=pathology)

    def counts(self) -> pd.DataFrame:
        train = self.train_store.counts()
        return pd.concat([train[train["split"] != "test"], self.test_store.counts().query("split == 'test'")],
                         ignore_index=True)
