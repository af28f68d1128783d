"""ISLES 2015 SISS (sub-acute ischemic stroke): 28 training cases, skull-stripped, co-registered to FLAIR.

Each case folder holds one sub-folder per sequence, ``VSD.Brain.XX.O.MR_<Seq>.<id>/…<id>.nii``, and the
ground truth as ``VSD.Brain.XX.O.OT.<id>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from benchmark.registry import register_dataset
from datasets.adapters._common import (check_same_grid, is_nifti, natural_key, nifti_spacing,
                                       modality_channels, read_labels, require_dir)
from datasets.base import DatasetAdapter, Subject, Volume

_FILE = re.compile(r"^VSD\.Brain\.XX\.O\.(?:MR_(?P<mod>[A-Za-z0-9]+)|(?P<ot>OT))\.(?P<vsd>\d+)\.nii(\.gz)?$")
CANON = {"flair": "flair", "t1": "t1", "t2": "t2", "dwi": "dwi"}


@register_dataset
class Isles2015Adapter(DatasetAdapter):
    """SISS 2015 (training cases with OT; testing cases listed without a lesion mask)."""

    name = "isles2015"
    title = "ISLES 2015 SISS (sub-acute ischemic stroke lesion segmentation), 28 training cases"
    url = "https://www.isles-challenge.org/ISLES2015/ (SMIR registration required)"
    layout = ("<root>/[SISS2015_]Training/<case n>/VSD.Brain.XX.O.MR_{Flair,T1,T2,DWI}.<id>/"
              "VSD.Brain.XX.O.MR_<seq>.<id>.nii and VSD.Brain.XX.O.OT.<id>/VSD.Brain.XX.O.OT.<id>.nii")
    default_recipe = "itermask2_isles_flair"

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        cases: dict[Path, dict[str, Path]] = {}
        for p in sorted(root.rglob("VSD.Brain.XX.O.*")):
            if not is_nifti(p):
                continue
            m = _FILE.match(p.name)
            if not m:
                continue
            case_dir = p.parent.parent if p.parent.name.startswith("VSD.") else p.parent
            role = "seg" if m.group("ot") else m.group("mod").lower()
            if role not in ("seg", *CANON):
                continue  # SPES sequences (CBF, Tmax, ...) are not part of SISS
            cases.setdefault(case_dir, {})[role] = p
        out = []
        for case_dir, files in sorted(cases.items(), key=lambda kv: natural_key(str(kv[0]))):
            rel = [x.lower() for x in case_dir.relative_to(root).parts[:-1]]
            part = "testing" if any("test" in x for x in rel) else "training"
            num = case_dir.name
            sid = f"{part}{int(num):02d}" if num.isdigit() else f"{part}_{num}"
            out.append(Subject(id=sid, files=files, split="all", pathology="stroke",
                               meta={"part": part, "case": num, "folder": str(case_dir), "has_seg": "seg" in files}))
        return out

    def load(self, subject: Subject) -> Volume:
        check_same_grid(subject.files)
        folder = Path(subject.meta["folder"])
        native = lambda m: "DWI" if m == "dwi" else m.capitalize()  # noqa: E731
        channels = modality_channels(subject.files, CANON, lambda m: folder / f"VSD.Brain.XX.O.MR_{native(m)}.*",
                                     native=native)
        lesion = None
        if "seg" in subject.files:
            lesion = (read_labels(subject.files["seg"], {1: "lesion"}, "ISLES SISS OT") > 0).astype(np.uint8)
        ref = next((p for r, p in subject.files.items() if r != "seg"), subject.files.get("seg"))
        return Volume(channels=channels, lesion=lesion,
                      spacing=nifti_spacing(ref), source=str(folder))
