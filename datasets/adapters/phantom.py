"""Adapter for the generated MNI152 phantom (``datasets/phantom.py``).

The phantom is written in a BraTS-like folder layout and read back through this adapter, so the embedded
default data take exactly the code path real releases take (NIfTI reading, validation, recipe, store).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.base import DatasetAdapter, Subject, Volume
from datasets.nifti import check_same_shape, read_nifti

PHANTOM_CHANNELS = ("t1", "t2", "flair")
PIXEL_PATHOLOGIES = ("tumour", "stroke", "ms")  # these come with a segmentation; others are global labels
SPLITS = ("train", "val", "test")


@register_dataset
class PhantomAdapter(DatasetAdapter):
    """Reads ``root/subjects.csv`` and the per-subject NIfTIs; splits and pathologies come from the csv."""

    name = "phantom"
    title = "MNI152 phantom (generated from the nilearn MNI ICBM152 2009a templates)"
    url = "generated locally by datasets/phantom.py; nothing to download"
    layout = ("<root>/subjects.csv (columns subject,split,pathology); "
              "<root>/<ID>/<ID>-{t1,t2,flair}.nii.gz, plus <ID>-seg.nii.gz for tumour/stroke/ms subjects")
    default_recipe = "phantom-flair"

    def subjects(self) -> list[Subject]:
        table = self.root / "subjects.csv"
        if not table.is_file():
            raise DataError(table, f"missing; expected layout: {self.layout}")
        with table.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"subject", "split", "pathology"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(table, f"missing column(s) {sorted(missing)}; expected subject,split,pathology")
            rows = list(reader)
        out = []
        for line, row in enumerate(rows, start=2):
            sid, split, pathology = row["subject"].strip(), row["split"].strip(), row["pathology"].strip()
            if not sid or split not in SPLITS or not pathology:
                raise DataError(table, f"line {line}: bad row {row!r} (split must be one of {SPLITS})")
            folder = self.root / sid
            files = {c: folder / f"{sid}-{c}.nii.gz" for c in PHANTOM_CHANNELS}
            seg = folder / f"{sid}-seg.nii.gz"
            if pathology in PIXEL_PATHOLOGIES or seg.exists():
                files["seg"] = seg  # a lesion subject without its seg fails in load(), naming the file
            out.append(Subject(id=sid, files=files, split=split, pathology=pathology))
        return out

    def source_fingerprint(self, subjects: list[Subject]) -> str:
        """As the base, but a missing file is reported as a DataError (not an OSError from stat)."""
        for s in subjects:
            for p in s.files.values():
                if not Path(p).is_file():
                    raise DataError(p, "file not found")
        return super().source_fingerprint(subjects)

    def load(self, subject: Subject) -> Volume:
        arrays: dict[Path, np.ndarray] = {}
        channels: dict[str, np.ndarray] = {}
        spacing: tuple[float, ...] = ()
        for c in PHANTOM_CHANNELS:
            p = subject.files[c]
            arrays[p], zooms = read_nifti(p)
            channels[c] = arrays[p]
            spacing = spacing or zooms
        lesion = None
        if "seg" in subject.files:
            p = subject.files["seg"]
            arrays[p], _ = read_nifti(p, allow_empty=True)
            lesion = (arrays[p] > 0).astype(np.uint8)  # labels 1 core, 2 lesion/oedema, 3 rim: all lesion
        check_same_shape(arrays)
        return Volume(channels=channels, lesion=lesion, brain=None, spacing=spacing,
                      source=str(self.root / subject.id))
