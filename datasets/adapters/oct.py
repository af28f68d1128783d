"""Kermany retinal OCT (OCT2017): ``{train,test,val}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg``.

The Kaggle mirror splits the 1,000 official test images into ``test/`` (968) and ``val/`` (32); ProxyAno
evaluates on all 1,000, so both become split ``test`` (the folder is kept in ``meta['folder_split']``).
OCT scans are greyscale; a colour file is reported, not silently converted.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.errors import DataError
from benchmark.registry import register_dataset
from datasets.adapters._common import grey_image_volume, natural_key, require_dir
from datasets.base import DatasetAdapter, Subject, Volume
from datasets.images import is_image_file

CLASSES = {"CNV": "cnv", "DME": "dme", "DRUSEN": "drusen", "NORMAL": "healthy"}
SPLITS = {"train": "train", "test": "test", "val": "test"}
_NAME = re.compile(r"^(?P<cls>[A-Z]+)-(?P<patient>\d+)-(?P<n>\d+)$")


def oct_root(root: Path) -> Path:
    """The folder holding train/test/val: root itself or ``OCT2017`` (the Kaggle copy names it "OCT2017 ")."""
    for cand in (root, root / "OCT2017", root / "OCT2017 "):
        if cand.is_dir() and any((cand / s).is_dir() for s in SPLITS):
            return cand
    return root


@register_dataset
class OCT2017Adapter(DatasetAdapter):
    """One Subject per scan; ``split`` train or test (test ∪ val)."""

    name = "oct2017"
    title = "Kermany et al. 2018 retinal OCT (OCT2017: CNV, DME, DRUSEN, NORMAL)"
    url = ("https://data.mendeley.com/datasets/rscbjbr9sj/2 (OCT2017.tar.gz) or "
           "https://www.kaggle.com/datasets/paultimothymooney/kermany2018")
    layout = "<root>/[OCT2017/]{train,test,val}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg"
    default_recipe = "proxyano_grey256"

    def subjects(self) -> list[Subject]:
        root = oct_root(require_dir(self.root, self.name, self.layout))
        out = []
        for folder_split, split in SPLITS.items():
            d = root / folder_split
            if not d.is_dir():
                continue
            for cls_dir in sorted(c for c in d.iterdir() if c.is_dir()):
                if cls_dir.name.upper() not in CLASSES:
                    raise DataError(cls_dir, f"unexpected class folder (expected {', '.join(CLASSES)})")
                for p in sorted((q for q in cls_dir.iterdir() if is_image_file(q)), key=lambda q: natural_key(q.name)):
                    m = _NAME.match(p.stem)
                    out.append(Subject(id=f"{folder_split}/{p.stem}", files={"image": p}, split=split,
                                       pathology=CLASSES[cls_dir.name.upper()],
                                       meta={"folder_split": folder_split, "class": cls_dir.name.upper(),
                                             "patient": m.group("patient") if m else None}))
        return out

    def load(self, subject: Subject) -> Volume:
        return grey_image_volume(subject.files["image"], colour="reject")
