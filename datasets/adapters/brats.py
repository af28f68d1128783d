"""BraTS in every release's own naming: 2017–2021 (``<case>_{flair,t1,t1ce,t2,seg}``) and 2023/2024
(``<case>-{t2f,t1n,t1c,t2w,seg}``), each with its own label convention.

The label value 4 means *enhancing tumour* up to 2021 and *resection cavity* in the 2024
post-treatment set, and 3 is unused before 2023 — so labels are mapped per release and any value the
release does not define is reported instead of being merged silently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np

from benchmark.registry import register_dataset
from datasets.adapters._common import (check_same_grid, is_nifti, modality_channels, natural_key, nifti_spacing,
                                       read_labels, require_dir)
from datasets.base import DatasetAdapter, Subject, Volume

# value → (short name, meaning); the lesion mask is the union of the classes in ``lesion_classes``.
LABELS_2017_2021 = {1: "NCR", 2: "ED", 4: "ET"}  # necrotic/non-enhancing core, oedema, enhancing
LABELS_2023 = {1: "NETC", 2: "SNFH", 3: "ET"}  # non-enhancing core, surrounding FLAIR hyperintensity, enh.
LABELS_2024 = {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}  # + resection cavity (post-treatment GLI)

RELEASE_LABELS = {"2017": LABELS_2017_2021, "2018": LABELS_2017_2021, "2019": LABELS_2017_2021,
                  "2020": LABELS_2017_2021, "2021": LABELS_2017_2021, "2023": LABELS_2023, "2024": LABELS_2024}

# canonical channel names used by recipes; the 2023+ files are reached through these aliases too
NEW_TO_CANON = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
CANON_TO_NEW = {v: k for k, v in NEW_TO_CANON.items()}
MODALITIES = ("flair", "t1", "t1ce", "t2")

_OLD = re.compile(r"^(?P<case>.+?)_(?P<mod>flair|t1ce|t1|t2|seg)\.nii(\.gz)?$", re.I)
_NEW = re.compile(r"^(?P<case>BraTS-[A-Za-z]+-\d+-\d+)-(?P<mod>t2f|t1n|t1c|t2w|seg)\.nii(\.gz)?$", re.I)
_SEG_QUIRK = re.compile(r"seg", re.I)  # BraTS20_Training_355 ships its label map as W39_1998.09.19_Segm.nii


def _release_from_case(case: str) -> str:
    """Best guess of the release from the case name (only decides the label table)."""
    c = case.lower()
    if c.startswith("brats-"):
        return "2023+"
    for tag, rel in (("brats17", "2017"), ("brats18", "2018"), ("brats19", "2019"), ("brats20_", "2020"),
                     ("brats2021", "2021")):
        if c.startswith(tag):
            return rel
    return "2017-2021"


@register_dataset
class BratsAdapter(DatasetAdapter):
    """Any BraTS release; ``release`` fixes the label table (``auto``: from the file naming)."""

    name = "brats"
    title = "BraTS (multimodal brain tumour segmentation), any release 2017–2024"
    url = "https://www.synapse.org/brats (challenge data; registration required)"
    layout = ("<root>/**/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz (2017–2021, e.g. BraTS2021_00000, "
              "Brats17_2013_10_1 under HGG/ LGG/) or <root>/**/<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz "
              "(2023/2024, e.g. BraTS-GLI-00000-000); seg optional")
    default_recipe = "itermask2_brats_flair"
    release: ClassVar[str] = "auto"

    def __init__(self, root: str | Path, *, release: str | None = None,
                 lesion_classes: tuple[str, ...] | None = None):
        super().__init__(root)
        self.release = release or type(self).release
        if self.release not in ("auto", *RELEASE_LABELS):
            raise ValueError(f"unknown BraTS release {self.release!r}; known: auto, {', '.join(RELEASE_LABELS)}")
        self.lesion_classes = lesion_classes  # None: every labelled voxel (whole tumour, + RC in 2024)

    def label_table(self, case: str) -> tuple[str, dict[int, str]]:
        if self.release != "auto":
            return self.release, RELEASE_LABELS[self.release]
        guess = _release_from_case(case)
        if guess == "2023+":  # 2023 never uses 4 and 2024 adds 4 = RC, so the 2024 table covers both
            return "2023/2024", LABELS_2024
        return guess, LABELS_2017_2021

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        cases: dict[tuple[Path, str], dict[str, Path]] = {}
        naming: dict[tuple[Path, str], str] = {}
        for p in sorted(root.rglob("*.nii*")):
            if not is_nifti(p):
                continue
            m = _NEW.match(p.name) or _OLD.match(p.name)
            if not m:
                continue
            new = m.re is _NEW
            mod = m.group("mod").lower()
            mod = NEW_TO_CANON.get(mod, mod) if new else mod
            key = (p.parent, m.group("case"))
            cases.setdefault(key, {})[mod] = p
            naming[key] = "2023" if new else "2017"
        out = []
        for (folder, case), files in sorted(cases.items(), key=lambda kv: natural_key(kv[0][1])):
            if not any(m in files for m in MODALITIES):
                continue  # a stray seg-only match is not a case
            if "seg" not in files:
                quirk = [q for q in folder.glob("*.nii*") if is_nifti(q) and _SEG_QUIRK.search(q.name)
                         and q not in files.values()]
                if len(quirk) == 1:
                    files["seg"] = quirk[0]
            rel, _ = self.label_table(case)
            parts = {p.lower() for p in folder.relative_to(root).parts}
            meta = {"release": rel, "naming": naming[(folder, case)], "has_seg": "seg" in files,
                    "folder": str(folder)}
            if "hgg" in parts or "lgg" in parts:
                meta["grade"] = "HGG" if "hgg" in parts else "LGG"
            out.append(Subject(id=case, files=dict(files), split="all", pathology="tumour", meta=meta))
        return out

    @staticmethod
    def _expected(subject: Subject, mod: str) -> Path:
        folder = Path(subject.meta.get("folder", ""))
        return folder / (f"{subject.id}-{CANON_TO_NEW[mod]}.nii.gz" if subject.meta.get("naming") == "2023"
                         else f"{subject.id}_{mod}.nii.gz")

    def load(self, subject: Subject) -> Volume:
        check_same_grid({m: p for m, p in subject.files.items()})
        channels = modality_channels(subject.files, MODALITIES, lambda m: self._expected(subject, m),
                                     aliases=dict(NEW_TO_CANON))
        lesion = None
        if "seg" in subject.files:
            rel, table = self.label_table(subject.id)
            lab = read_labels(subject.files["seg"], table, f"BraTS {rel}")
            keep = [v for v, n in table.items() if self.lesion_classes is None or n in self.lesion_classes]
            lesion = np.isin(lab, keep).astype(np.uint8)
            subject.meta["labels_present"] = [table[int(v)] for v in np.unique(lab) if int(v) in table]
        ref = next((subject.files[m] for m in MODALITIES if m in subject.files), None)
        spacing = nifti_spacing(ref) if ref is not None else ()
        return Volume(channels=channels, lesion=lesion, brain=None, spacing=spacing,
                      source=str(subject.meta.get("folder", subject.id)))


def _fixed(release: str, title: str):
    cls = type(f"Brats{release}Adapter", (BratsAdapter,), {
        "name": f"brats{release}", "title": title, "release": release,
        "__doc__": f"BraTS {release}: labels {RELEASE_LABELS[release]}; other values are errors.",
        "__module__": __name__,
    })
    return register_dataset(cls)


Brats2017Adapter = _fixed("2017", "BraTS 2017 training set (HGG/LGG, 285 cases; labels 1 NCR/NET, 2 ED, 4 ET)")
Brats2020Adapter = _fixed("2020", "BraTS 2020 training set (369 cases; labels 1 NCR/NET, 2 ED, 4 ET)")
Brats2021Adapter = _fixed("2021", "BraTS 2021 Task 1 training set (1251 cases; labels 1 NCR, 2 ED, 4 ET)")
Brats2023Adapter = _fixed("2023", "BraTS 2023 (GLI naming; labels 1 NETC, 2 SNFH, 3 ET)")
Brats2024Adapter = _fixed("2024", "BraTS 2024 post-treatment GLI (labels 1 NETC, 2 SNFH, 3 ET, 4 RC)")
Brats2017Adapter.default_recipe = "afsc_t2_brain"
