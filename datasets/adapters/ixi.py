"""IXI healthy brains: ``IXI<id>-<site>-<n>-{T1,T2,PD}.nii.gz`` (flat, or one folder per tar) + ``IXI.xls``.

IXI T1 is acquired sagittally (axis order P, S, R on disk); the project's NIfTI reader returns RAS+, so
axial slices come out like every other dataset's. The files are whole-head (no skull stripping).
T1 and T2/PD are separate acquisitions on different grids, so a recipe should use one modality at a time.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path


from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.adapters._common import modality_channels, natural_key, nifti_spacing, require_dir
from datasets.base import DatasetAdapter, Subject, Volume
from datasets.images import one_line

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(?P<id>IXI\d{3})-(?P<site>Guys|HH|IOP)-(?P<n>\d{4})-(?P<mod>T1|T2|PD)\.nii(\.gz)?$")
SITES = {"Guys": "Guy's Hospital (Philips 1.5T)", "HH": "Hammersmith Hospital (Philips 3T)",
         "IOP": "Institute of Psychiatry (GE 1.5T)"}


def read_demographics(xls: Path) -> dict[str, dict]:
    """IXI.xls sheet ``Table`` → {'IXI012': {'age': 38.8, 'sex': 'm'}}; the first row with an age wins
    (the sheet repeats some IDs)."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' xlrd deprecation notice
            table = pd.read_excel(xls, sheet_name="Table")
    except Exception as err:  # xlrd/pandas raise many types for a broken workbook
        raise DataError(xls, f"unreadable IXI demographics workbook ({one_line(err)})") from err
    sex_col = next((c for c in table.columns if str(c).startswith("SEX_ID")), None)
    if "IXI_ID" not in table.columns or "AGE" not in table.columns:
        raise DataError(xls, "sheet 'Table' lacks IXI_ID/AGE columns")
    out: dict[str, dict] = {}
    for _, row in table.iterrows():
        key = f"IXI{int(row['IXI_ID']):03d}"
        age = float(row["AGE"]) if pd.notna(row["AGE"]) else None
        if key in out and out[key]["age"] is not None:
            continue
        sex = {1: "m", 2: "f"}.get(int(row[sex_col])) if sex_col is not None and pd.notna(row[sex_col]) else None
        out[key] = {"age": age, "sex": sex}
    return out


@register_dataset
class IXIAdapter(DatasetAdapter):
    """IXI subjects keyed by IXI id (``IXI012``) with lazily read T1/T2/PD; demographics from IXI.xls."""

    name = "ixi"
    title = "IXI dataset (~580 healthy adults; T1, T2, PD, MRA, DTI from three London hospitals)"
    url = "https://brain-development.org/ixi-dataset/ (CC BY-SA 3.0)"
    layout = ("<root>/[IXI-T1/]IXI<id>-<Guys|HH|IOP>-<nnnn>-T1.nii.gz (likewise IXI-T2/, IXI-PD/; flat also "
              "works) and optionally <root>/IXI.xls")
    default_recipe = "ra_mid_t1"

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        files: dict[str, dict[str, Path]] = {}
        info: dict[str, dict] = {}
        for p in sorted(root.rglob("IXI*.nii*")):
            m = _FILE.match(p.name)
            if not m or not p.is_file():
                continue
            files.setdefault(m.group("id"), {})[m.group("mod").lower()] = p
            info[m.group("id")] = {"site": m.group("site"), "scan": f"{m.group('id')}-{m.group('site')}-{m.group('n')}"}
        xls = next((q for q in (root / "IXI.xls", root.parent / "IXI.xls") if q.is_file()), None)
        demo = read_demographics(xls) if xls else {}
        out = []
        for sid in sorted(files, key=natural_key):
            meta = {**info[sid], "skull_stripped": False, **demo.get(sid, {"age": None, "sex": None})}
            out.append(Subject(id=sid, files=files[sid], split="all", pathology="healthy", meta=meta))
        if xls is None and out:
            log.info("IXI.xls not found beside %s: ages/sexes left empty", root)
        return out

    def load(self, subject: Subject) -> Volume:
        ref = subject.files.get("t1", next(iter(subject.files.values())))

        def expected(mod: str) -> Path:
            """Where the release puts the missing file: IXI-<MOD>/ beside the subject's own IXI-<mod>/ folder,
            or the same folder when the release is unpacked flat."""
            name = f"{subject.meta['scan']}-{mod.upper()}.nii.gz"
            if re.fullmatch(r"IXI-(T1|T2|PD)", ref.parent.name, re.I):
                return ref.parent.parent / f"IXI-{mod.upper()}" / name
            return ref.parent / name

        channels = modality_channels(subject.files, ("t1", "t2", "pd"), expected, native=str.upper)
        return Volume(channels=channels, lesion=None,
                      spacing=nifti_spacing(ref), source=str(ref))
