"""The real-data development benchmark: TCGA-LGG FLAIR slices (``kaggle_3m``).

Train on the tumour-free slices of training patients; validate on the tumour-free slices of a few
patients held out from training; test on held-out patients (every slice: tumour slices with masks and
tumour-free ones). The patient split is seeded and committed (``datasets/splits/lgg/lgg_patients.csv``),
so results stay comparable across code and data-order changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.errors import DataError
from datasets.adapters.lgg import LGGAdapter, lgg_root
from datasets.base import prepare, shared_release
from datasets.recipes_paper import LGG_FLAIR, with_size
from datasets.splits import lgg as lgg_split
from datasets.store import SliceStore

SEED = 0
N_TEST, N_VAL = 30, 10  # of 110 patients; the other 70 train


def default_root() -> Path | None:
    """``$PHBENCH_SHARED_DATA`` or ``<repo>/../shared/data``, when it holds the LGG folder."""
    return shared_release("lgg-mri-segmentation", "kaggle_3m")


def make_lgg_split(folders: list[str], seed: int = SEED, n_test: int = N_TEST,
                   n_val: int = N_VAL) -> list[dict[str, str]]:
    """Patient folders → rows (folder, patient, split): rng(seed) permutation of the sorted folders;
    the first ``n_test`` test, the next ``n_val`` val, the rest train."""
    folders = sorted(set(folders))
    order = np.random.default_rng(seed).permutation(len(folders))
    rows = []
    for rank, i in enumerate(order):
        split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        rows.append({"folder": folders[i], "patient": "_".join(folders[i].split("_")[:3]), "split": split})
    return sorted(rows, key=lambda r: r["folder"])


def lgg_store(root: Path | None = None, size: int = 128, cache_dir=None, *, skip_bad: bool = False,
              force: bool = False) -> SliceStore:
    """Prepared LGG FLAIR store with splits train / val / test (memory-mapped; cached after the first call)."""
    if root is None:
        root = default_root()
        if root is None:
            raise DataError("lgg_store(root=None)", "no LGG data found: pass root=<folder holding kaggle_3m/TCGA_*> "
                                                    "or set PHBENCH_SHARED_DATA to the shared data folder")
    adapter = LGGAdapter(lgg_root(Path(root)))
    return prepare(adapter, with_size(LGG_FLAIR, size), cache_dir=cache_dir, skip_bad=skip_bad,
                   split_fn=lgg_split(), force=force)
