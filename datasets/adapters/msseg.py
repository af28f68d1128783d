"""MS-SEG2015 = the ISBI 2015 longitudinal MS lesion challenge (5 training patients × 4–5 time points
= 21 scans), read from its ``preprocessed/`` folders (skull-stripped, MNI, 1 mm) with the rater masks.

AFSC tests on these 21 scans; the ground-truth rater is a protocol choice (rater 1 by default).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.adapters._common import (check_same_grid, is_nifti, natural_key, nifti_spacing,
                                       modality_channels, read_labels, require_dir)
from datasets.base import DatasetAdapter, Subject, Volume

_IMG = re.compile(r"^(?P<case>(?P<patient>(training|test)\d+)_(?P<tp>\d+))_(?P<mod>flair|mprage|pd|t2)_pp\.nii(\.gz)?$",
                  re.I)
_MASK = re.compile(r"^(?P<case>(training|test)\d+_\d+)_mask(?P<rater>[12])\.nii(\.gz)?$", re.I)
CANON = {"flair": "flair", "mprage": "t1", "pd": "pd", "t2": "t2"}


@register_dataset
class MSSeg2015Adapter(DatasetAdapter):
    """ISBI 2015 longitudinal MS challenge; ``rater``: 1, 2, ``union`` or ``intersection``."""

    name = "msseg2015"
    title = "MS-SEG2015 / ISBI 2015 Longitudinal MS Lesion Segmentation Challenge (21 training scans)"
    url = "https://smart-stats-tools.org/lesion-challenge-2015 (registration required)"
    layout = ("<root>/training/trainingNN/preprocessed/trainingNN_TT_{flair,mprage,pd,t2}_pp.nii and "
              "<root>/training/trainingNN/masks/trainingNN_TT_mask{1,2}.nii (test cases without masks are "
              "listed with no lesion mask)")
    default_recipe = "afsc_t2_brain"

    def __init__(self, root: str | Path, *, rater: int | str = 1):
        super().__init__(root)
        if rater not in (1, 2, "1", "2", "union", "intersection"):
            raise ValueError(f"rater must be 1, 2, 'union' or 'intersection', not {rater!r}")
        self.rater = str(rater)

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        found: dict[str, dict[str, Path]] = {}
        meta: dict[str, dict] = {}
        for p in sorted(root.rglob("*.nii*")):
            if not is_nifti(p):
                continue
            m = _IMG.match(p.name)
            if m:
                found.setdefault(m.group("case"), {})[CANON[m.group("mod").lower()]] = p
                meta[m.group("case")] = {"patient": m.group("patient"), "timepoint": int(m.group("tp")),
                                         "folder": str(p.parent.parent)}
                continue
            m = _MASK.match(p.name)
            if m:
                found.setdefault(m.group("case"), {})[f"mask{m.group('rater')}"] = p
        out = []
        for case in sorted(found, key=natural_key):
            files = found[case]
            if case not in meta:
                continue  # masks without images
            out.append(Subject(id=case, files=files, split="all", pathology="ms", meta=meta[case]))
        return out

    def load(self, subject: Subject) -> Volume:
        check_same_grid(subject.files)
        folder = Path(subject.meta["folder"])

        to_native = {v: k for k, v in CANON.items()}
        channels = modality_channels(subject.files, ("flair", "t1", "pd", "t2"),
                                     lambda m: folder / "preprocessed" / f"{subject.id}_{to_native[m]}_pp.nii",
                                     native=lambda m: to_native.get(m, m), aliases={"mprage": "t1"})
        lesion = self._lesion(subject, folder)
        ref = next(p for r, p in subject.files.items() if not r.startswith("mask"))
        return Volume(channels=channels, lesion=lesion, spacing=nifti_spacing(ref), source=str(folder))

    def _lesion(self, subject: Subject, folder: Path) -> np.ndarray | None:
        masks = {r: p for r, p in subject.files.items() if r.startswith("mask")}
        if not masks:
            return None  # challenge test scans: no public masks
        need = ["mask1", "mask2"] if self.rater in ("union", "intersection") else [f"mask{self.rater}"]
        arrays = []
        for r in need:
            if r not in masks:
                raise DataError(folder / "masks" / f"{subject.id}_{r}.nii", f"rater mask {r} missing")
            arrays.append(read_labels(masks[r], {1: "lesion"}, "ISBI 2015 rater mask") > 0)
        les = np.logical_and.reduce(arrays) if self.rater == "intersection" else np.logical_or.reduce(arrays)
        return les.astype(np.uint8)
