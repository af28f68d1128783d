"""fastMRI brain (multi-coil ``reconstruction_rss``) with the fastMRI+ clinical annotations.

fastMRI+ labellers saw every slice **flipped up/down**, so ``brain.csv`` boxes live in that flipped
frame; this adapter flips the reconstruction the same way, and the boxes need no transform.
``study_level=Yes`` rows are volume-level (global) findings without a box. A volume listed in
``brain_file_list.csv`` without rows was reviewed and found normal.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.adapters._common import LazyChannels, natural_key, require_dir, to_axial_stack
from datasets.base import DatasetAdapter, Subject, Volume
from datasets.images import one_line

# findings that describe a normal brain: not anomalies (RA's normal sets carry these study labels)
NORMAL_LABELS = {"normal for age", "normal variant"}
_SERIES = re.compile(r"^file_brain_(?P<series>[A-Z0-9]+?)_(?P<site>\d+)_(?P<n>\d+)$")


def series_channel(series: str) -> str:
    """AXT1/AXT1PRE → t1, AXT1POST → t1post, AXT2 → t2, AXFLAIR → flair (recipes ask for these names)."""
    s = series.upper().removeprefix("AX")
    return {"T1": "t1", "T1PRE": "t1", "T1POST": "t1post", "T2": "t2", "FLAIR": "flair"}.get(s, s.lower())


def find_annotations(root: Path, given: str | Path | None) -> Path:
    cands = [Path(given)] if given else []
    if os.environ.get("PHBENCH_FASTMRI_PLUS"):
        cands.append(Path(os.environ["PHBENCH_FASTMRI_PLUS"]))
    for base in (root, root.parent):
        cands += [base / "Annotations" / "brain.csv", base / "fastmri-plus" / "Annotations" / "brain.csv"]
    cands.append(root / "brain.csv")
    for c in cands:
        c = c / "brain.csv" if c.is_dir() else c
        if c.is_file():
            return c
    raise DataError(root, "fastMRI+ annotations not found: put Annotations/brain.csv (github.com/microsoft/"
                          "fastmri-plus) under the root, or pass annotations=… / set PHBENCH_FASTMRI_PLUS")


def read_annotations(path: Path) -> tuple[dict[str, dict], set[str] | None]:
    """brain.csv → {file: {'global': [...], 'boxes': {slice: [(label, x, y, w, h), ...]}}} and the
    reviewed-file list (brain_file_list.csv beside it, or None when absent)."""
    ann: dict[str, dict] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            need = {"file", "slice", "study_level", "x", "y", "width", "height", "label"}
            if not need <= set(reader.fieldnames or ()):
                raise DataError(path, f"not a fastMRI+ brain.csv (columns {reader.fieldnames}; need {sorted(need)})")
            for i, row in enumerate(reader, start=2):
                rec = ann.setdefault(row["file"], {"global": [], "boxes": {}})
                label = row["label"].strip()
                if row["study_level"].strip().lower() == "yes":
                    rec["global"].append(label)
                    continue
                try:
                    box = (label, *(int(float(row[k])) for k in ("x", "y", "width", "height")))
                    z = int(row["slice"])
                except ValueError as err:
                    raise DataError(path, f"line {i}: bad box values ({one_line(err)})") from err
                rec["boxes"].setdefault(z, []).append(box)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(path, f"cannot read annotations ({one_line(err)})") from err
    listing = path.with_name("brain_file_list.csv")
    reviewed = None
    if listing.is_file():
        reviewed = {ln.strip() for ln in listing.read_text().splitlines() if ln.strip()}
    return ann, reviewed


def finding_name(label: str) -> str:
    return label.lower().removeprefix("global label:").strip()


def series_of(file_id: str) -> str:
    m = _SERIES.match(file_id)
    return m.group("series") if m else "?"


def annotation_summary(ann_path: Path) -> list[str]:
    """Text lines: annotated / reviewed files (by series), boxes per label, global (study_level=Yes) labels."""
    import collections

    ann, reviewed = read_annotations(ann_path)
    boxes: collections.Counter = collections.Counter()
    box_files: dict[str, set] = collections.defaultdict(set)
    glob_files: dict[str, set] = collections.defaultdict(set)
    for f, rec in ann.items():
        for bs in rec["boxes"].values():
            for b in bs:
                boxes[b[0]] += 1
                box_files[b[0]].add(f)
        for g in rec["global"]:
            glob_files[g].add(f)
    with_boxes = {f for f, rec in ann.items() if rec["boxes"]}
    with_global = {f for f, rec in ann.items() if rec["global"]}
    by_series = collections.Counter(series_of(f) for f in ann)
    out = [f"  annotations: {ann_path}",
           f"  annotated files: {len(ann)} ({len(with_boxes)} with boxes, {len(with_global)} with global labels); "
           "by series: " + ", ".join(f"{k} {v}" for k, v in sorted(by_series.items()))]
    if reviewed is None:
        out.append("  reviewed file list: brain_file_list.csv not found beside brain.csv")
    else:
        rs = collections.Counter(series_of(f) for f in reviewed)
        out.append(f"  reviewed files (brain_file_list.csv): {len(reviewed)}, {len(reviewed - set(ann))} of them "
                   "without any annotation row (reviewed normal); by series: "
                   + ", ".join(f"{k} {v}" for k, v in sorted(rs.items())))
        not_listed = set(ann) - reviewed
        if not_listed:
            out.append(f"  annotated but not in brain_file_list.csv: {len(not_listed)}")
    knee = ann_path.with_name("knee_file_list.csv")
    if knee.is_file():
        n_knee = sum(1 for ln in knee.read_text().splitlines() if ln.strip())
        out.append(f"  knee_file_list.csv: {n_knee} knee files (not used by the brain adapter)")
    w = max([len(k) for k in list(boxes) + list(glob_files)] + [20])
    out.append(f"  boxes per label ({sum(boxes.values())} boxes; label, boxes, files):")
    out += [f"    {k:<{w}}  {v:>6}  {len(box_files[k]):>5}" for k, v in boxes.most_common()]
    n_glob = sum(len(v) for v in glob_files.values())
    out.append(f"  global labels, study_level=Yes ({n_glob} file labels; label, files):")
    out += [f"    {k:<{w}}  {len(v):>6}" for k, v in sorted(glob_files.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    out.append(f"  counted as normal, not anomalies: {', '.join(sorted(NORMAL_LABELS))}")
    return out


@register_dataset
class FastMRIPlusAdapter(DatasetAdapter):
    """fastMRI brain h5 volumes that fastMRI+ reviewed; boxes/global findings in ``Subject.meta``."""

    name = "fastmri_plus"
    title = "fastMRI brain (multi-coil, reconstruction_rss) + fastMRI+ bounding-box / study-level labels"
    url = ("https://fastmri.med.nyu.edu (NYU data sharing agreement) + "
           "https://github.com/microsoft/fastmri-plus (Annotations/brain.csv, MIT)")
    layout = ("<root>/[multicoil_train|multicoil_val/]file_brain_<SERIES>_<site>_<n>.h5 (with reconstruction_rss) and "
              "<root>/Annotations/{brain.csv,brain_file_list.csv} (or annotations=…, PHBENCH_FASTMRI_PLUS)")
    default_recipe = "ra_mid_t1"

    def __init__(self, root: str | Path, *, annotations: str | Path | None = None,
                 series: tuple[str, ...] | None = None, report_missing: bool = False):
        super().__init__(root)
        self.annotations = annotations
        self.series = tuple(s.upper() for s in series) if series else None  # e.g. ("AXT1",) for RA/PHANES
        # annotated volumes without an h5 become subjects whose load fails naming the file: a setup whose split
        # lists need them reports them (or skips them with --skip-bad) instead of silently running on fewer.
        # Off by default: annotations cover every fastMRI+ volume, and a partial download is a normal root.
        self.report_missing = report_missing

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        ann_path = find_annotations(root, self.annotations)
        ann, reviewed = read_annotations(ann_path)
        found: dict[str, Path | None] = {p.stem: p for p in root.rglob("file_brain_*.h5")}
        if self.report_missing:
            for fid in set(ann) | (reviewed or set()):
                found.setdefault(fid, None)
        out = []
        for fid in sorted(found, key=natural_key):
            p = found[fid]
            m = _SERIES.match(fid)
            if not m or (self.series and m.group("series") not in self.series):
                continue
            if reviewed is not None and fid not in reviewed and fid not in ann:
                continue  # not part of fastMRI+: no labels at all
            rec = ann.get(fid, {"global": [], "boxes": {}})
            findings = [finding_name(g) for g in rec["global"] if finding_name(g) not in NORMAL_LABELS]
            boxes: dict[int, list] = {}
            normal_boxes: dict[int, list] = {}
            for z, bs in rec["boxes"].items():
                for b in bs:
                    (normal_boxes if finding_name(b[0]) in NORMAL_LABELS else boxes).setdefault(z, []).append(b)
            local = sorted({finding_name(b[0]) for bs in boxes.values() for b in bs})
            pathology = findings[0] if findings else ("local" if local else "healthy")
            files = {"h5": p, "annotations": ann_path} if p is not None else {"annotations": ann_path}
            out.append(Subject(id=fid, files=files, split="all", pathology=pathology,
                               meta={"series": m.group("series"), "channel": series_channel(m.group("series")),
                                     "global": [finding_name(g) for g in rec["global"]], "global_findings": findings,
                                     "boxes": boxes, "normal_boxes": normal_boxes, "local_findings": local,
                                     "skull_stripped": False}))
        return out

    def describe_without_subjects(self) -> list[str] | None:
        """An annotations-only root (fastMRI+ CSVs without the NYU h5 files): what the annotations hold."""
        root = require_dir(self.root, self.name, self.layout)
        ann_path = find_annotations(root, self.annotations)
        n_h5 = sum(1 for _ in root.rglob("*.h5"))
        why = (f"{n_h5} .h5 file(s) under the root, none a fastMRI+ reviewed file_brain_*.h5"
               + (f" of series {', '.join(self.series)}" if self.series else "")) if n_h5 else \
            "no file_brain_*.h5 under the root"
        return [f"annotations only: h5 volumes missing ({why}), so nothing is prepared and no preview is drawn",
                *annotation_summary(ann_path)]

    def load(self, subject: Subject) -> Volume:
        import h5py

        if "h5" not in subject.files:
            raise DataError(subject.files["annotations"], f"names {subject.id}, but no {subject.id}.h5 is under "
                                                          f"{self.root}")
        path = subject.files["h5"]
        try:
            with h5py.File(path, "r") as f:
                if "reconstruction_rss" not in f:
                    raise DataError(path, f"no reconstruction_rss dataset (has {sorted(f.keys())}; test-set files "
                                          "ship k-space only)")
                rss = np.asarray(f["reconstruction_rss"], dtype=np.float32)
        except DataError:
            raise
        except Exception as err:  # h5py raises OSError/KeyError for truncated or foreign files
            raise DataError(path, f"unreadable HDF5 file ({one_line(err)})") from err
        if rss.ndim != 3 or rss.size == 0:
            raise DataError(path, f"reconstruction_rss has shape {rss.shape}; expected [slices, H, W]")
        flipped = rss[:, ::-1, :]  # the fastMRI+ labelling frame
        vol = to_axial_stack(list(flipped))
        lesion = np.zeros(flipped.shape, np.uint8)
        h, w = flipped.shape[1:]
        for z, boxes in subject.meta.get("boxes", {}).items():
            if not 0 <= z < flipped.shape[0]:
                raise DataError(subject.files["annotations"], f"{subject.id}: box on slice {z} but the volume has "
                                                             f"{flipped.shape[0]} slices")
            for label, x, y, bw, bh in boxes:  # anomalous boxes only; "Normal variant" boxes are in normal_boxes
                if x < 0 or y < 0 or x + bw > w or y + bh > h:
                    raise DataError(subject.files["annotations"],
                                    f"{subject.id}: {label!r} box x={x} y={y} width={bw} height={bh} on slice {z} "
                                    f"lies outside the {h}×{w} image")
                lesion[z, y:y + bh, x:x + bw] = 1
        channel = subject.meta.get("channel", "t1")
        return Volume(channels=LazyChannels({channel: lambda: vol}, aliases={"rss": channel}),
                      lesion=to_axial_stack(list(lesion)), brain=None, spacing=(), source=str(path))
