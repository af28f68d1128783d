"""IDRiD fundus images in the release's own folder names.

* Part A (segmentation): ``A. Segmentation/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_XX.jpg``
  with per-lesion masks ``2. All Segmentation Groundtruths/<set>/{1. Microaneurysms,…,5. Optic Disc}/
  IDRiD_XX_{MA,HE,EX,SE,OD}.tif``. A missing mask file means that lesion type is absent.
* Part B (grading): ``B. Disease Grading/1. Original Images/<set>/IDRiD_XXX.jpg`` + the grading CSVs;
  DR grade 0 images are the normals ProxyAno trains on.

The lesion mask is the union of MA, HE, EX and SE (the optic disc is anatomy, not a lesion).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.adapters._common import LazyChannels, natural_key, require_dir
from datasets.base import DatasetAdapter, Subject, Volume
from datasets.images import is_image_file, read_binary_mask, read_rgb

LESIONS = ("MA", "HE", "EX", "SE")
MASK_TYPES = ("MA", "HE", "EX", "SE", "OD")
_A_IMG = re.compile(r"^IDRiD_(?P<n>\d{2})$")
_MASK = re.compile(r"^IDRiD_(?P<n>\d{2})_(?P<t>MA|HE|EX|SE|OD)$", re.I)


def _find(d: Path, *words: str) -> Path | None:
    """Sub-folder whose name contains every word (case-insensitive): the release numbers its folders
    ("1. Original Images", "a. Training Set") and re-packs sometimes drop the numbering."""
    if not d.is_dir():
        return None
    for c in sorted(d.iterdir()):
        if c.is_dir() and all(w in c.name.lower() for w in words):
            return c
    return None


def read_grades(csv_path: Path) -> dict[str, int]:
    grades: dict[str, int] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                name = (row.get("Image name") or "").strip()
                if name:
                    grades[name] = int(str(row.get("Retinopathy grade", "")).strip())
    except (OSError, ValueError) as err:
        raise DataError(csv_path, f"unreadable IDRiD grading CSV ({err})") from err
    return grades


@register_dataset
class IDRiDAdapter(DatasetAdapter):
    """IDRiD A (lesion masks; official train/test) and B (DR grade; normals are grade 0)."""

    name = "idrid"
    title = "IDRiD (Indian Diabetic Retinopathy Image Dataset): A. Segmentation + B. Disease Grading"
    url = "https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid (CC BY 4.0)"
    layout = ("<root>/A. Segmentation/{1. Original Images,2. All Segmentation Groundtruths}/{a. Training Set,"
              "b. Testing Set}/… and <root>/B. Disease Grading/{1. Original Images/<set>/IDRiD_XXX.jpg,"
              "2. Groundtruths/*.csv}")
    default_recipe = "proxyano_idrid_tiles256"

    def __init__(self, root: str | Path, *, lesions: tuple[str, ...] = LESIONS):
        super().__init__(root)
        unknown = set(lesions) - set(MASK_TYPES)
        if unknown:
            raise ValueError(f"unknown IDRiD mask types {sorted(unknown)}; known {MASK_TYPES}")
        self.lesions = tuple(lesions)

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        if not _find(root, "segmentation") and not _find(root, "grading"):
            for c in sorted(root.iterdir()):  # the zip unpacks into a parent folder
                if c.is_dir() and (_find(c, "segmentation") or _find(c, "grading")):
                    root = c
                    break
        return self._part_a(root) + self._part_b(root)

    def _part_a(self, root: Path) -> list[Subject]:
        seg = _find(root, "segmentation")
        images, truths = _find(seg, "original") if seg else None, _find(seg, "groundtruth") if seg else None
        out = []
        for words, split in ((("train",), "train"), (("test",), "test")):
            img_dir = _find(images, *words) if images else None
            if img_dir is None:
                continue
            gt_dir = _find(truths, *words) if truths else None
            masks: dict[str, dict[str, Path]] = {}
            if gt_dir is not None:
                for p in gt_dir.rglob("*"):
                    m = _MASK.match(p.stem) if p.is_file() else None
                    if m:
                        masks.setdefault(m.group("n"), {})[m.group("t").upper()] = p
            for p in sorted((q for q in img_dir.iterdir() if is_image_file(q)), key=lambda q: natural_key(q.name)):
                m = _A_IMG.match(p.stem)
                if not m:
                    continue
                files = {"image": p, **{f"mask_{t}": q for t, q in sorted(masks.get(m.group("n"), {}).items())}}
                out.append(Subject(id=f"A-{p.stem}", files=files, split=split, pathology="dr",
                                   meta={"part": "A", "mask_types": sorted(masks.get(m.group("n"), {}))}))
        return out

    def _part_b(self, root: Path) -> list[Subject]:
        grading = _find(root, "grading")
        if grading is None:
            return []
        images, truths = _find(grading, "original"), _find(grading, "groundtruth")
        out = []
        for words, split in ((("train",), "train"), (("test",), "test")):
            img_dir = _find(images, *words) if images else None
            if img_dir is None:
                continue
            csvs = sorted(truths.glob("*.csv")) if truths else []
            csv_path = next((c for c in csvs if words[0] in c.name.lower()), None)
            grades = read_grades(csv_path) if csv_path else {}
            for p in sorted((q for q in img_dir.iterdir() if is_image_file(q)), key=lambda q: natural_key(q.name)):
                g = grades.get(p.stem)
                pathology = "ungraded" if g is None else ("healthy" if g == 0 else f"dr_grade{g}")
                files = {"image": p, **({"grades": csv_path} if csv_path else {})}  # a regrade rebuilds the store
                out.append(Subject(id=f"B-{split}-{p.stem}", files=files, split=split, pathology=pathology,
                                   meta={"part": "B", "grade": g}))
        return out

    def load(self, subject: Subject) -> Volume:
        p = subject.files["image"]
        rgb = read_rgb(p)
        h, w = rgb.shape[:2]
        lesion = None
        if subject.meta.get("part") == "A":
            lesion = np.zeros((h, w), np.uint8)
            for t in self.lesions:
                mp = subject.files.get(f"mask_{t}")
                if mp is None:
                    continue  # IDRiD: no file = no lesion of that type
                m = read_binary_mask(mp, values=(0, 1, 255))  # palette index {0,1}, or grey/colour {0,255}
                if m.shape != (h, w):
                    raise DataError(mp, f"mask shape {m.shape} differs from image {p.name} shape {(h, w)}")
                lesion |= m
        grey = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)
        chans = {"grey": lambda: grey, "red": lambda: rgb[..., 0], "green": lambda: rgb[..., 1],
                 "blue": lambda: rgb[..., 2]}
        return Volume(channels=LazyChannels(chans), lesion=lesion, brain=np.ones((h, w), np.float32), source=str(p))
