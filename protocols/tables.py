"""Table specifications: which data, methods, protocol and metrics make each table.

``table1`` is the suite's own table on the embedded MNI phantom; the 18 paper tables
(``results/paper_tables.csv``) are listed with their status until their protocol is implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from benchmark.registry import register_table
from protocols.evaluate import ScoreSet, standard_rows

PAPER_TABLES_CSV = Path(__file__).resolve().parent.parent / "results" / "paper_tables.csv"


@dataclass(frozen=True)
class TableSpec:
    table_id: str
    title: str
    dataset: str
    protocol: str  # protocol id recorded in the run key
    methods: tuple[tuple[str, str], ...]  # (method, variant)
    metrics: tuple[str, ...]
    # profile name -> SliceStore with train / val / test splits
    store: Callable[[str], Any]
    # (test ScoreSet, healthy val ScoreSet) -> rows
    rows: Callable[[ScoreSet, ScoreSet | None], list[dict[str, Any]]] = standard_rows
    footnotes: tuple[str, ...] = ()
    runnable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _phantom_store(profile: str):
    from datasets.phantom import phantom_store

    return phantom_store(profile, modality="flair")


TABLE1 = register_table(TableSpec(
    table_id="table1",
    title="Table 1 — MNI phantom (FLAIR, 128 px): tumour, stroke, MS-like lesions and atrophy",
    dataset="phantom-flair",
    protocol="table1@v1",
    methods=(("ae", ""), ("ra", ""), ("itermask2", ""), ("intensity", "")),
    metrics=("auroc", "ap", "auroc_pixel", "ap_pixel", "dice", "dice_oracle"),
    store=_phantom_store,
    footnotes=(
        "Data: MNI ICBM152 2009a phantom generated from the nilearn templates (train/val healthy; test: healthy, "
        "tumour, stroke, MS-like, atrophy subjects); every brain slice of an axial slab, 98th-percentile normalised.",
        "Each method's own anomaly map and image score (no per-paper re-scoring).",
        "dice: pooled Dice at the threshold giving 5 % false-positive brain pixels on the healthy validation "
        "slices (fpr@5%_healthy_brain); dice_oracle: best of 1000 thresholds chosen on the test set (oracle).",
    ),
))


def paper_table_ids() -> list[str]:
    if not PAPER_TABLES_CSV.exists():
        return []
    return sorted(pd.read_csv(PAPER_TABLES_CSV, usecols=["table_id"])["table_id"].unique())


def _lgg_store(profile: str):
    from datasets.lgg_benchmark import lgg_store

    return lgg_store()


LGG_DEV = register_table(TableSpec(
    table_id="lgg-dev",
    title="Development benchmark — TCGA-LGG FLAIR (kaggle_3m, 128 px), held-out patients",
    dataset="lgg-flair",
    protocol="table1@v1",
    methods=(("ae", ""), ("ra", ""), ("itermask2", ""), ("intensity", "")),
    metrics=TABLE1.metrics,
    store=_lgg_store,
    footnotes=(
        "Data: ../shared/data LGG kaggle_3m (every 3rd slice, 128 px); train = tumour-free slices of training "
        "patients, val = tumour-free slices of validation patients, test = held-out patients (tumour + tumour-free "
        "slices); patient-level split datasets/splits/lgg/lgg_patients.csv. The 'brain' mask is a head mask.",
        *TABLE1.footnotes[1:],
    ),
))
