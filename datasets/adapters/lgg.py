"""TCGA-LGG ``kaggle_3m`` (Buda et al.): per-patient folders of RGB slice tifs + ``_mask.tif``.

One Subject per patient; its Volume stacks the patient's slices along z (``datasets.recipes.axial``
gives each tif back upright), so splits are patient-level by construction. Channels are
(pre-contrast, FLAIR, post-contrast) = tif channels (0, 1, 2). Slice numbers have gaps in
subsets, so files are globbed and the original numbers kept in ``meta['slice_numbers']``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.adapters._common import LazyChannels, natural_key, require_dir, to_axial_stack
from datasets.base import DatasetAdapter, Subject, Volume
from datasets.images import read_tif_array

_SLICE = re.compile(r"^(?P<patient>TCGA_[A-Z0-9]+_[A-Z0-9]+_\d{8})_(?P<n>\d+)\.tif$")
CHANNELS = ("pre", "flair", "post")


def lgg_root(root: Path) -> Path:
    """Accept the kaggle_3m folder itself or a parent holding it (the Kaggle archive nests it)."""
    for cand in (root, root / "kaggle_3m", root / "lgg-mri-segmentation" / "kaggle_3m"):
        if cand.is_dir() and any(cand.glob("TCGA_*")):
            return cand
    return root


def read_clinical(csv_path: Path) -> dict[str, dict]:
    import pandas as pd

    if not csv_path.is_file():
        return {}
    try:
        df = pd.read_csv(csv_path)
    except Exception as err:  # pandas parser errors
        raise DataError(csv_path, f"unreadable data.csv ({err})") from err
    keep = [c for c in ("neoplasm_histologic_grade", "gender", "age_at_initial_pathologic") if c in df.columns]
    return {str(r["Patient"]): {k: (None if pd.isna(r[k]) else r[k].item() if hasattr(r[k], "item") else r[k])
                                for k in keep} for _, r in df.iterrows()}


@register_dataset
class LGGAdapter(DatasetAdapter):
    """kaggle_3m: one subject per patient (110), slices stacked in slice-number order."""

    name = "lgg"
    title = "LGG segmentation dataset (Buda et al.; TCGA-LGG FLAIR with tumour masks), kaggle_3m"
    url = "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation (TCIA TCGA-LGG)"
    layout = ("<root>/[kaggle_3m/]TCGA_<inst>_<patient>_<YYYYMMDD>/TCGA_…_<n>.tif (RGB: pre, FLAIR, post) + "
              "TCGA_…_<n>_mask.tif ({0,255}); optional data.csv")
    default_recipe = "lgg_flair"

    def subjects(self) -> list[Subject]:
        root = lgg_root(require_dir(self.root, self.name, self.layout))
        clinical = read_clinical(root / "data.csv")
        out = []
        for folder in sorted((d for d in root.iterdir() if d.is_dir() and d.name.startswith("TCGA_")),
                             key=lambda d: d.name):
            numbers: list[int] = []
            files: dict[str, Path] = {}
            for p in folder.glob("*.tif"):
                m = _SLICE.match(p.name)
                if not m:
                    continue
                n = int(m.group("n"))
                numbers.append(n)
                files[f"img{n:03d}"] = p
                files[f"mask{n:03d}"] = p.with_name(f"{p.stem}_mask.tif")  # existence checked in load()
            if not numbers:
                continue
            patient = "_".join(folder.name.split("_")[:3])
            out.append(Subject(id=folder.name, files=dict(sorted(files.items(), key=lambda kv: natural_key(kv[0]))),
                               split="all", pathology="tumour",
                               meta={"patient": patient, "institution": folder.name.split("_")[1],
                                     "slice_numbers": sorted(numbers), "folder": str(folder),
                                     "skull_stripped": False, **clinical.get(patient, {})}))
        return out

    def source_fingerprint(self, subjects: list[Subject]) -> str:
        """Like the base, but a missing mask must not crash fingerprinting (it is reported by load)."""
        present = [Subject(s.id, {r: p for r, p in s.files.items() if Path(p).exists()}, s.split) for s in subjects]
        return super().source_fingerprint(present)

    def load(self, subject: Subject) -> Volume:
        imgs, masks = [], []
        shape = None
        for n in subject.meta["slice_numbers"]:
            ip, mp = subject.files[f"img{n:03d}"], subject.files[f"mask{n:03d}"]
            img = read_tif_array(ip)
            if img.ndim != 3 or img.shape[-1] != 3:
                raise DataError(ip, f"expected an RGB slice [H, W, 3] (pre, FLAIR, post), got shape {img.shape}")
            if img.dtype != np.uint8:
                raise DataError(ip, f"expected 8-bit pixels, got {img.dtype}")
            if shape is None:
                shape = img.shape[:2]
            elif img.shape[:2] != shape:
                raise DataError(ip, f"slice shape {img.shape[:2]} differs from the patient's first slice {shape}")
            if not mp.is_file():
                raise DataError(mp, "mask file missing for this slice")
            mask = read_tif_array(mp)
            if mask.ndim == 3 and mask.shape[-1] in (3, 4):
                mask = mask[..., 0]
            if mask.shape != shape:
                raise DataError(mp, f"mask shape {mask.shape} differs from image shape {shape}")
            bad = np.setdiff1d(np.unique(mask), [0, 255])
            if bad.size:
                raise DataError(mp, f"unknown mask value(s) {bad[:5].tolist()}; expected 0/255")
            imgs.append(img)
            masks.append((mask > 0).astype(np.uint8))
        stack = np.stack(imgs).astype(np.float32)  # [Z, H, W, 3]
        vols = {c: to_axial_stack(list(stack[..., i])) for i, c in enumerate(CHANNELS)}
        return Volume(channels=LazyChannels({c: (lambda c=c: vols[c]) for c in CHANNELS}),
                      lesion=to_axial_stack(masks), brain=None, spacing=(), source=subject.meta["folder"])
