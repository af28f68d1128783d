"""The two Kaggle brain-tumour image sets ProxyAno merges, read as published (one Subject per image).

* "Brain MRI Images for Brain Tumor Detection" (navoneel): ``yes/`` (tumour) and ``no/``; mixed jpg/png
  whose extensions lie, RGB/RGBA/palette/grey.
* "Brain Tumor Classification (MRI)" (Sartaj Bhuvaji et al.): ``{Training,Testing}/{glioma_tumor,
  meningioma_tumor,no_tumor,pituitary_tumor}/``.

Every image is read by content (sniffed) and turned into 8-bit grey.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.adapters._common import grey_image_volume, natural_key, require_dir
from datasets.base import DatasetAdapter, Subject, Volume
from datasets.images import is_image_file

FOUR_CLASS = {"glioma_tumor": "glioma", "meningioma_tumor": "meningioma", "pituitary_tumor": "pituitary",
              "no_tumor": "healthy"}
YES_NO = {"yes": "tumour", "no": "healthy"}


def _children(d: Path) -> dict[str, Path]:
    return {c.name.lower(): c for c in d.iterdir() if c.is_dir()} if d.is_dir() else {}


def find_releases(root: Path) -> dict[str, Path]:
    """{'yes_no': folder, 'four_class': folder} for the releases found at root or one/two levels below."""
    found: dict[str, Path] = {}
    cands = [root] + [c for c in sorted(root.iterdir()) if c.is_dir()] if root.is_dir() else []
    cands += [g for c in cands[1:] for g in sorted(c.iterdir()) if g.is_dir()]
    for c in cands:
        kids = _children(c)
        if "yes" in kids and "no" in kids and "yes_no" not in found:
            found["yes_no"] = c
        if ("training" in kids or "testing" in kids) and "four_class" not in found:
            sub = _children(kids.get("training") or kids["testing"])
            if set(sub) & set(FOUR_CLASS):
                found["four_class"] = c
    return found


def _subjects_yes_no(folder: Path, prefix: str) -> list[Subject]:
    out = []
    for cls, pathology in YES_NO.items():
        d = _children(folder)[cls]
        for p in sorted((q for q in d.iterdir() if is_image_file(q)), key=lambda q: natural_key(q.name)):
            out.append(Subject(id=f"{prefix}{cls}/{p.stem}", files={"image": p}, split="all", pathology=pathology,
                               meta={"release": "yes_no", "class": cls}))
    return out


def _subjects_four_class(folder: Path, prefix: str) -> list[Subject]:
    out = []
    for part, d in sorted(_children(folder).items()):
        if part not in ("training", "testing"):
            continue
        for cls_dir in sorted(c for c in d.iterdir() if c.is_dir()):
            cls = cls_dir.name.lower()
            if cls not in FOUR_CLASS:
                raise DataError(cls_dir, f"unexpected class folder (expected {', '.join(FOUR_CLASS)})")
            for p in sorted((q for q in cls_dir.iterdir() if is_image_file(q)), key=lambda q: natural_key(q.name)):
                out.append(Subject(id=f"{prefix}{d.name}/{cls_dir.name}/{p.stem}", files={"image": p},
                                   split="train" if part == "training" else "test", pathology=FOUR_CLASS[cls],
                                   meta={"release": "four_class", "class": cls}))
    return out


class _KaggleBrainBase(DatasetAdapter):
    releases: ClassVar[tuple[str, ...]] = ()
    default_recipe = "proxyano_grey256"

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        found = find_releases(root)
        missing = [r for r in self.releases if r not in found]
        if len(missing) == len(self.releases):
            raise DataError(root, f"no {self.name} images found; expected layout: {self.layout}")
        both = len(self.releases) > 1
        out = []
        if "yes_no" in found and "yes_no" in self.releases:
            out += _subjects_yes_no(found["yes_no"], "yes_no/" if both else "")
        if "four_class" in found and "four_class" in self.releases:
            out += _subjects_four_class(found["four_class"], "four_class/" if both else "")
        return out

    def load(self, subject: Subject) -> Volume:
        return grey_image_volume(subject.files["image"], colour="reject")  # grey MRI, often stored as RGB


@register_dataset
class BrainTumorDetectionAdapter(_KaggleBrainBase):
    """navoneel ``yes/`` + ``no/`` (253 images)."""

    name = "brain_tumor_detection"
    title = "Kaggle 'Brain MRI Images for Brain Tumor Detection' (navoneel; 155 yes / 98 no)"
    url = "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection"
    layout = "<root>/{yes,no}/*.{jpg,JPG,jpeg,png} (formats are sniffed; extensions are not trusted)"
    releases = ("yes_no",)


@register_dataset
class BrainTumorClassificationAdapter(_KaggleBrainBase):
    """Sartaj Bhuvaji's four-class set; official Training → train, Testing → test."""

    name = "brain_tumor_classification"
    title = "Kaggle 'Brain Tumor Classification (MRI)' (Bhuvaji et al.; glioma/meningioma/pituitary/no tumour)"
    url = "https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri"
    layout = "<root>/{Training,Testing}/{glioma_tumor,meningioma_tumor,no_tumor,pituitary_tumor}/*.jpg"
    releases = ("four_class",)


@register_dataset
class BrainMriTumorAdapter(_KaggleBrainBase):
    """ProxyAno's merged brain set ([28] + [59]): both releases under one root, each in its own layout."""

    name = "brain_mri_tumor"
    title = "ProxyAno brain MRI set: Kaggle tumour-detection (yes/no) + tumour-classification (4 classes)"
    url = ("https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection and "
           "https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri")
    layout = ("<root>/<any name>/{yes,no}/* and <root>/<any name>/{Training,Testing}/<class>/* "
              "(the two Kaggle archives unpacked side by side)")
    releases = ("yes_no", "four_class")
