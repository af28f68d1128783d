"""Subject-level split functions for :func:`datasets.base.prepare` (``split_fn(subjects) -> {id: split}``).

Official lists (RA, PHANES, IterMask2 BraTS2021) are the CSVs copied verbatim into this folder; the
suite-defined splits (IterMask2 ATLAS/ISLES, LGG) are seeded and committed here as CSV too, so a split
never changes when code or data order does. ``None`` means "not used by this setup" (prepare skips it).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from benchmark.errors import DataError
from datasets.base import Subject

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SplitFn = Callable[[list[Subject]], dict[str, "str | None"]]


@lru_cache(maxsize=None)
def read_csv(rel: str) -> tuple[dict[str, str], ...]:
    """Rows of a committed split CSV (relative to this folder), cached."""
    path = HERE / rel
    if not path.is_file():
        raise DataError(path, "split list missing from the installation")
    with open(path, newline="") as fh:
        return tuple(csv.DictReader(fh))


def sourced(fn: SplitFn, source: str) -> SplitFn:
    """Tag a split function with where its assignment comes from (``phbench data info`` prints it)."""
    fn.source = source  # type: ignore[attr-defined]
    return fn


def split_source(fn: SplitFn) -> str:
    return getattr(fn, "source", "computed by the split function")


# ---------------------------------------------------------------------------------------------------
# generic


def official() -> SplitFn:
    """The split the adapter read from the release's own layout (or ``all``)."""
    return sourced(lambda subjects: {s.id: s.split for s in subjects}, "the release's own folders")


def all_as(split: str) -> SplitFn:
    """Every subject into one split (AFSC: all BraTS2017 / MS-SEG scans are test)."""
    return sourced(lambda subjects: {s.id: split for s in subjects}, f"every subject in {split}")


def from_lists(lists: dict[str, Iterable[str]], *, key: Callable[[Subject], str] = lambda s: s.id) -> SplitFn:
    """Subjects named in ``lists[split]`` go to that split; unlisted subjects are left out."""
    lookup: dict[str, str] = {}
    for split, ids in lists.items():
        for i in ids:
            if i in lookup and lookup[i] != split:
                raise ValueError(f"id {i} is in both {lookup[i]} and {split}")
            lookup[i] = split
    fn = lambda subjects: {s.id: lookup.get(key(s)) for s in subjects}  # noqa: E731
    fn.listed = lookup  # type: ignore[attr-defined]  # id → split, for summaries without subjects
    return fn


_SUBSET_NOTED: set[tuple[str, str]] = set()


def require_listed(fn: SplitFn, lists: str, root: Path | str, *, subset: bool = False) -> SplitFn:
    """``fn`` (a :func:`from_lists` split) that stops with one line when ``root`` holds only part of the subjects
    of its lists: a paper's table is the paper's only on all of them. ``subset=True`` runs on the listed subjects
    found (logged with the counts); subjects outside the lists are never used either way."""
    listed: dict[str, str] = fn.listed  # type: ignore[attr-defined]

    def check(subjects: list[Subject]) -> dict[str, "str | None"]:
        found = {s.id for s in subjects}
        per: dict[str, list[int]] = {}
        for sid, split in listed.items():
            got = per.setdefault(split, [0, 0])
            got[0] += sid in found
            got[1] += 1
        n_found = sum(g for g, _ in per.values())
        counts = ", ".join(f"{sp} {g}/{n}" for sp, (g, n) in per.items())
        outside = len(found - set(listed))
        if n_found == 0:  # --subset cannot help: the folder's ids are not the release's (or it is another folder)
            example = ", ".join(sorted(found)[:3]) or "none"
            raise DataError(root, f"none of the {len(listed)} subjects of {lists} is here ({outside} subject(s) "
                                  f"outside the lists, e.g. {example}): a paper's table runs on the release's own "
                                  "subject ids; point --root at the release folder as downloaded (phbench list says "
                                  "what each table needs; --subset cannot help), or give your own split of these "
                                  "subjects with --subjects FILE")
        if n_found < len(listed):
            what = (f"{n_found} of the {len(listed)} subjects of {lists} are here ({counts}; {outside} subject(s) "
                    "outside the lists, never used)")
            if not subset:
                raise DataError(root, f"{what}. The paper's table needs them all; to run on the listed subjects you "
                                      "have, add --subset, or give your own split with --subjects FILE (the table "
                                      "is then yours, not the paper's)")
            if (str(root), lists) not in _SUBSET_NOTED:  # once per root and lists, not once per store
                _SUBSET_NOTED.add((str(root), lists))
                log.warning("%s: %s: running on this subset (--subset)", root, what)
        return fn(subjects)
    return sourced(check, split_source(fn))


SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SubjectsFile:
    """A user's own subject split (``--subjects FILE``: a CSV with the header ``subject,split``) that replaces a
    table's committed lists. Only the rows travel (a sweep job re-plans from them, wherever it runs), and a store's
    key holds the split it was prepared with, so the same rows under another path reuse the stores and other rows
    never do."""

    path: str
    rows: tuple[tuple[str, str], ...]  # (subject id, split), in file order

    @classmethod
    def read(cls, path: str | Path) -> "SubjectsFile":
        """The file's rows; one line naming the file (and the line) when it is not such a CSV."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(p, f"cannot read the --subjects file ({type(err).__name__}: {err}); it must be a CSV "
                               "with the header subject,split") from err
        reader = csv.reader(io.StringIO(text))
        header = [h.strip() for h in next(reader, [])]
        if header != ["subject", "split"]:
            raise DataError(p, f"line 1: the header must be 'subject,split', not {','.join(header)!r}")
        rows: list[tuple[str, str]] = []
        first: dict[str, int] = {}
        for rec in reader:
            n = reader.line_num
            if not any(c.strip() for c in rec):
                continue
            if len(rec) != 2:
                raise DataError(p, f"line {n}: {len(rec)} fields, expected 2 (subject,split)")
            sid, split = rec[0].strip(), rec[1].strip()
            if not sid:
                raise DataError(p, f"line {n}: no subject id")
            if split not in SPLIT_NAMES:
                raise DataError(p, f"line {n}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
            if sid in first:
                raise DataError(p, f"line {n}: subject {sid} is listed again (first on line {first[sid]})")
            first[sid] = n
            rows.append((sid, split))
        if not rows:
            raise DataError(p, "no subjects under the header subject,split")
        return cls(str(p), tuple(rows))

    @property
    def name(self) -> str:
        return Path(self.path).name

    def counts(self) -> dict[str, int]:
        """Subjects per split, in train / val / test order (splits with none left out)."""
        got = Counter(split for _, split in self.rows)
        return {sp: got[sp] for sp in SPLIT_NAMES if got[sp]}

    def describe(self) -> str:
        return f"{self.name} (" + ", ".join(f"{sp} {n}" for sp, n in self.counts().items()) + " subjects)"

    def only(self, *splits: str) -> "SubjectsFile":
        """The rows of some splits: the part of a table that takes only those splits from its own release (PHANES
        Table 2's ATLAS test side, AFSC's HCP training side) looks for only those subjects in its release."""
        return replace(self, rows=tuple(r for r in self.rows if r[1] in splits))

    def split_fn(self, root: Path | str) -> SplitFn:
        """The file's split; one line naming the file when a listed subject is not among the root's."""
        lookup = dict(self.rows)

        def fn(subjects: list[Subject]) -> dict[str, "str | None"]:
            found = {s.id for s in subjects}
            missing = [sid for sid, _ in self.rows if sid not in found]
            if missing:
                here = ", ".join(sorted(found)[:3]) or "none"
                raise DataError(self.path, f"{len(missing)} of its {len(self.rows)} subjects are not under {root} "
                                           f"(e.g. {', '.join(missing[:3])}; the root holds e.g. {here}): list only "
                                           "subjects of the release under --root, by the ids its adapter gives them")
            return {s.id: lookup.get(s.id) for s in subjects}
        return sourced(fn, f"{self.path} (--subjects: {self.describe()})")


def subjects_for(subset: "bool | SubjectsFile", *splits: str) -> "bool | SubjectsFile":
    """``subset`` as one release of a multi-release table gets it: a :class:`SubjectsFile` keeps the rows of the
    splits that release supplies (it looks for no other subject there); ``--subset``'s True / False passes as is."""
    return subset.only(*splits) if isinstance(subset, SubjectsFile) else subset


def union(*fns: SplitFn) -> SplitFn:
    """Each subject's split from the first function that assigns it one (lists of disjoint releases)."""
    def fn(subjects: list[Subject]) -> dict[str, "str | None"]:
        out: dict[str, str | None] = {s.id: None for s in subjects}
        for f in fns:
            for sid, split in f(subjects).items():
                if split is not None and out.get(sid) is None:
                    out[sid] = split
        return out
    return sourced(fn, " + ".join(split_source(f) for f in fns))


def holdout(fraction: float = 0.05, seed: int = 0, *, held: str = "val", rest: str = "train",
            group: str | None = None) -> SplitFn:
    """Seeded subject-level hold-out (suite rule for the calibration set of AFSC/ProxyAno training normals).

    ``group`` names a ``Subject.meta`` key (e.g. ``patient``) so all scans of one patient stay together.
    """
    def fn(subjects: list[Subject]) -> dict[str, str | None]:
        gid = {s.id: str(s.meta.get(group, s.id)) if group else s.id for s in subjects}
        groups = sorted(set(gid.values()))
        order = np.random.default_rng(seed).permutation(len(groups))
        n_held = max(1, int(round(fraction * len(groups)))) if len(groups) > 1 else 0
        held_set = {groups[i] for i in order[:n_held]}
        return {s.id: held if gid[s.id] in held_set else rest for s in subjects}
    return sourced(fn, f"computed: seeded subject-level {fraction:.0%} hold-out (seed {seed}) → {held}, rest {rest}")


# ---------------------------------------------------------------------------------------------------
# official lists


def itermask2_brats2021() -> SplitFn:
    """IterMask2's 990 / 128 / 133 BraTS2021 subject lists."""
    return sourced(from_lists({sp: [r["subject_id"] for r in read_csv(f"itermask2/brats2021_{sp}.csv")]
                               for sp in ("train", "val", "test")}),
                   "datasets/splits/itermask2/brats2021_{train,val,test}.csv")


_ATLAS_SUB = re.compile(r"(sub-r\d+s\d+)")


def atlas_ids(rel: str = "phanes/atlas_train.csv") -> list[str]:
    return [_ATLAS_SUB.search(r["filename"]).group(1) for r in read_csv(rel)]


def phanes_atlas() -> SplitFn:
    """PHANES Table 2: the 655 ATLAS training cases are all test images (no ATLAS image is trained on)."""
    return sourced(from_lists({"test": atlas_ids()}), "datasets/splits/phanes/atlas_train.csv (all → test)")


def ra_fastmri(train_list: str = "bkp") -> SplitFn:
    """fastMRI+ for RA/PHANES: normal train (131; ``train_list='official'``: the config's 130), val 15,
    test = 30 normals + the global-detection (50) and localisation (92) images."""
    rows = read_csv("ra/fastmri_normal_splits.csv")
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for r in rows:
        lists[r["split"]].append(r["file_id"])
    if train_list == "official":
        used = {r["subject_or_file_id"] for r in read_csv("ra/train_ixi_fastmri_official.csv") if r["dataset"] != "ixi"}
        lists["train"] = [i for i in lists["train"] if i in used]
    elif train_list != "bkp":
        raise ValueError("train_list must be 'bkp' (712 = 131 + 581, default) or 'official' (711)")
    test = set(lists["test"]) | {r["file_id"] for r in read_csv("ra/global_detection_test.csv")}
    test |= {r["file_id"] for r in read_csv("ra/localization_boxes.csv")}
    lists["test"] = sorted(test)
    files = ["fastmri_normal_splits.csv", "global_detection_test.csv", "localization_boxes.csv"]
    if train_list == "official":
        files.append("train_ixi_fastmri_official.csv")
    return sourced(from_lists(lists), "datasets/splits/ra/{" + ",".join(files) + "}")


RA_GLOBAL_GROUPS = {"normal": "normal", "global_pathology": "global pathology", "global_artefact": "global artefacts"}


def ra_global_sets() -> dict[str, list[str]]:
    """RA's global detection sets by file id (``global_detection_test.csv``): "normal" (normal_test.csv, 30),
    "global pathology" (27) and "global artefacts" (23) -- the column groups of RA Table 2(a)."""
    out: dict[str, list[str]] = {name: [] for name in RA_GLOBAL_GROUPS.values()}
    for r in read_csv("ra/global_detection_test.csv"):
        out[RA_GLOBAL_GROUPS[r["group"]]].append(r["file_id"])
    return out


def ra_box_list() -> list[list]:
    """RA's evaluated boxes (``localization_boxes.csv``), one ``[file_id, label, index, group, counted]`` each:
    label as ``datasets.store.box_label`` writes it, index among that image's boxes of the label, group = the
    paper's pathology name (App. C.3), counted = in the 171 (the 16 "artefacts" boxes are scored, not reported)."""
    return [[r["file_id"], r["box_label"], int(r["box_index"]), r["paper_pathology_name"],
             r["counted_in_171"] == "1"] for r in read_csv("ra/localization_boxes.csv")]


def ra_ixi() -> SplitFn:
    """IXI for RA/PHANES: the 581 listed subjects are all training data."""
    return sourced(from_lists({"train": [r["ixi_subject_id"] for r in read_csv("ra/ixi_t1_png_all.csv")]}),
                   "datasets/splits/ra/ixi_t1_png_all.csv (all → train)")


# ---------------------------------------------------------------------------------------------------
# suite-defined, committed


def make_ra_ixi_dev(ids: list[str], seed: int = 0, n_val: int = 4, n_test: int = 8) -> list[dict[str, str]]:
    """IXI development split (``ra-ixi-dev``): rng(seed) permutation of the sorted subject ids; the first
    ``n_test`` test, the next ``n_val`` val, the rest train (36 shared volumes → 24 / 4 / 8)."""
    ids = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    out = [{"ixi_subject_id": ids[i], "split": "test" if rank < n_test else "val" if rank < n_test + n_val
            else "train"} for rank, i in enumerate(order)]
    return sorted(out, key=lambda r: r["ixi_subject_id"])


def ra_ixi_dev() -> SplitFn:
    rows = read_csv("ra/ixi_dev_split.csv")
    lists = {sp: [r["ixi_subject_id"] for r in rows if r["split"] == sp] for sp in ("train", "val", "test")}
    return sourced(from_lists(lists), "datasets/splits/ra/ixi_dev_split.csv")



def make_itermask2_atlas2(seed: int = 0) -> list[dict[str, str]]:
    """ATLAS (655 labelled cases, the PHANES list as universe): rng(seed) permutation of the sorted ids
    cut at the BraTS proportions 79.1 / 10.2 / 10.6 % → 518 / 67 / 70 (protocols/itermask2.md §3.6)."""
    ids = sorted(set(atlas_ids()))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train, n_val = int(round(0.791 * len(ids))), int(round(0.102 * len(ids)))
    out = []
    for rank, i in enumerate(order):
        split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        out.append({"subject_id": ids[i], "split": split})
    return sorted(out, key=lambda r: r["subject_id"])


def itermask2_atlas2() -> SplitFn:
    rows = read_csv("itermask2/atlas2_suite_split.csv")
    lists = {sp: [r["subject_id"] for r in rows if r["split"] == sp] for sp in ("train", "val", "test")}
    return sourced(from_lists(lists), "datasets/splits/itermask2/atlas2_suite_split.csv")


def make_itermask2_isles2015(seed: int = 0, folds: int = 4, n_val: int = 3) -> list[dict[str, str]]:
    """ISLES SISS 28 cases, 4-fold subject-level CV: rng(seed) permutation; fold k tests 7 cases; τ comes
    from the healthy slices of the first ``n_val`` remaining cases in permutation order."""
    ids = [f"training{i:02d}" for i in range(1, 29)]
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    per = len(ids) // folds
    out = []
    for k in range(folds):
        test = order[k * per:(k + 1) * per]
        others = [i for i in order if i not in test]
        val = others[:n_val]
        for sid in ids:
            split = "test" if sid in test else "val" if sid in val else "train"
            out.append({"fold": str(k), "subject_id": sid, "split": split})
    return out


def itermask2_isles2015(fold: int = 0) -> SplitFn:
    rows = [r for r in read_csv("itermask2/isles2015_cv4.csv") if int(r["fold"]) == fold]
    if not rows:
        raise ValueError(f"ISLES fold {fold} not in isles2015_cv4.csv (folds 0–3)")
    lists = {sp: [r["subject_id"] for r in rows if r["split"] == sp] for sp in ("train", "val", "test")}
    return sourced(from_lists(lists), f"datasets/splits/itermask2/isles2015_cv4.csv (fold {fold})")


def lgg() -> SplitFn:
    """LGG dev benchmark: committed patient-level split (``lgg/lgg_patients.csv``)."""
    rows = read_csv("lgg/lgg_patients.csv")
    return sourced(from_lists({sp: [r["folder"] for r in rows if r["split"] == sp] for sp in ("train", "val", "test")}),
                   "datasets/splits/lgg/lgg_patients.csv")


# ---------------------------------------------------------------------------------------------------
# ProxyAno reconstructions (protocols/proxyano.md)


def proxyano_oct() -> SplitFn:
    """OCT2017: NORMAL scans of the official train split train; all 1,000 official test (test ∪ val) scans test."""
    return sourced(lambda subjects: {s.id: ("train" if s.pathology == "healthy" else None) if s.split == "train"
                                     else "test" for s in subjects},
                   "computed: official train NORMAL → train, official test ∪ val → test")


def proxyano_idrid(test: str = "all81") -> SplitFn:
    """IDRiD: train = grade-0 images of B's training set (134); test = part A (``all81``: train+test folders,
    the suite default; ``test27``: A's test folder only)."""
    if test not in ("all81", "test27"):
        raise ValueError("test must be 'all81' or 'test27'")

    def fn(subjects: list[Subject]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for s in subjects:
            if s.meta.get("part") == "B":
                out[s.id] = "train" if s.split == "train" and s.pathology == "healthy" else None
            else:
                out[s.id] = "test" if test == "all81" or s.split == "test" else None
        return out
    return sourced(fn, f"computed ({test}): B grading grade-0 train images → train, part A → test")


def phash(path: Path) -> int:
    """64-bit DCT perceptual hash of the grey image (near-duplicate detection across Kaggle sets)."""
    from PIL import Image
    from scipy.fft import dctn

    from datasets.images import read_grey

    g = read_grey(path, colour="convert")
    small = np.asarray(Image.fromarray(g.astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR), np.float32)
    d = dctn(small, norm="ortho")[:8, :8].ravel()
    bits = d > np.median(d[1:])
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicate_groups(hashes: list[int], max_distance: int = 4) -> list[int]:
    """Group index per item: items within ``max_distance`` bits are merged (union-find)."""
    h = np.array(hashes, dtype=np.uint64)
    parent = list(range(len(h)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(h)):
        close = np.flatnonzero(np.bitwise_count(h[i + 1:] ^ h[i]) <= max_distance) + i + 1
        for j in close:
            ri, rj = find(i), find(int(j))
            if ri != rj:
                parent[rj] = ri
    return [find(i) for i in range(len(h))]


def proxyano_brain(variant: str = "bt_default", seed: int = 0) -> SplitFn:
    """ProxyAno brain split (``bt_default``): de-duplicate all images (pHash, Hamming ≤ 4; a duplicate
    group with both labels is dropped), shuffle normals with ``seed``, 400 train (scaled by n/598 when
    fewer than the full 598 normals are present), rest test; the same number of test abnormals sampled
    with ``seed``. ``bt_train500``: 500 train normals; ``bt_test500abn``: 500 test abnormals."""
    if variant not in ("bt_default", "bt_train500", "bt_test500abn"):
        raise ValueError(f"unknown ProxyAno brain split {variant!r}")

    def fn(subjects: list[Subject]) -> dict[str, str | None]:
        subs = sorted(subjects, key=lambda s: s.id)
        groups = near_duplicate_groups([phash(s.files["image"]) for s in subs])
        keep: dict[int, Subject] = {}
        mixed: set[int] = set()
        for g, s in zip(groups, subs):
            if g in keep and (keep[g].pathology == "healthy") != (s.pathology == "healthy"):
                mixed.add(g)
            keep.setdefault(g, s)
        uniq = [s for g, s in keep.items() if g not in mixed]
        normals = sorted((s.id for s in uniq if s.pathology == "healthy"))
        abnormals = sorted((s.id for s in uniq if s.pathology != "healthy"))
        rng = np.random.default_rng(seed)
        normals = [normals[i] for i in rng.permutation(len(normals))]
        full = 598
        n_train = {"bt_default": 400, "bt_train500": 500, "bt_test500abn": 400}[variant]
        if len(normals) < full:
            n_train = int(round(len(normals) * n_train / full))
        train, test_norm = normals[:n_train], normals[n_train:]
        n_abn = min(len(abnormals), 500 if variant == "bt_test500abn" else len(test_norm))
        test_abn = [abnormals[i] for i in np.random.default_rng(seed).permutation(len(abnormals))[:n_abn]]
        lookup = {**{i: "train" for i in train}, **{i: "test" for i in test_norm + test_abn}}
        return {s.id: lookup.get(s.id) for s in subjects}
    return sourced(fn, f"computed ({variant}, seed {seed}): pHash de-duplication, 400 train normals "
                       "(× n/598 when fewer), test = the other normals + as many abnormals")


SPLITS: dict[str, Callable[..., SplitFn]] = {
    "official": official, "all_as": all_as, "holdout": holdout,
    "itermask2_brats2021": itermask2_brats2021, "itermask2_atlas2": itermask2_atlas2,
    "itermask2_isles2015": itermask2_isles2015, "phanes_atlas": phanes_atlas, "ra_fastmri": ra_fastmri,
    "ra_ixi": ra_ixi, "lgg": lgg, "proxyano_oct": proxyano_oct, "proxyano_idrid": proxyano_idrid,
    "proxyano_brain": proxyano_brain,
}
