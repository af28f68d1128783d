"""Table specifications: which data, methods, protocol and metric ids make each table.

``table1`` is the suite's own table on the embedded MNI phantom; ``table1-detail``, ``table1-synthetic`` and
``table1-localisation`` evaluate the same trained models with every metric variant, RA's synthetic anomalies
and RA's box localisation; ``lgg-dev`` is the real-data development table. Paper tables whose methods and
protocol exist here are registered under their paper id (``itermask2-table1``) and run on the user's copy of
the release (``--root``); the other paper ids of ``results/paper_tables.csv`` are listed by ``phbench list``
as reference numbers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import pandas as pd

from benchmark.registry import register_table
from protocols.evaluate import CORE_METRIC_IDS
from protocols.suites import get_protocol, validate

if TYPE_CHECKING:
    from datasets.splits import SubjectsFile

PAPER_TABLES_CSV = Path(__file__).resolve().parent.parent / "results" / "paper_tables.csv"


@dataclass(frozen=True)
class TablePart:
    """One block of columns with its own data (and so its own trained models): e.g. one MRI modality of
    IterMask2 Table 1. ``store(profile, root, skip_bad=False, subset=False)`` returns the prepared slice store
    with train/val/test (or :class:`benchmark.folds.Folds`, one store per fold); ``skip_bad`` leaves out (and
    lists) subjects with bad files instead of stopping; ``subset`` runs on the listed subjects a root holds when it
    holds only part of a paper's lists, or is a :class:`datasets.splits.SubjectsFile` (``--subjects FILE``) that
    replaces the lists by the user's split."""

    column_group: str
    store: Callable[..., Any]  # (profile, root, skip_bad=False, subset=False) -> SliceStore | Folds
    # rows this part's data cannot serve (the paper's "–"), with why: a method name (every variant, e.g. Cyclic-UNet
    # on single-modality ATLAS) or "method/variant" (one row: DAE's hypo-intense noise on FLAIR ISLES)
    skip_methods: Mapping[str, str] = field(default_factory=dict)
    # config fields per method name this part's data needs (IterMask2's τ percentile 70 on ATLAS): part of the keys;
    # a value may be a function of the profile name (a paper's budget that only its paper profile should take)
    overrides: Mapping[str, Mapping[str, Any] | Callable[[str], Mapping[str, Any]]] = field(default_factory=dict)
    # a part on another dataset than the table's (ProxyAno Table I: brain jpgs, OCT, fundus), with its own metric ids
    # (image-level on the first two, pixel-level on the fundus); empty = the table's
    dataset: str = ""
    metrics: tuple[str, ...] = ()

    def skips(self, method: str, variant: str) -> bool:
        return method in self.skip_methods or f"{method}/{variant}" in self.skip_methods


@dataclass(frozen=True)
class TableSpec:
    """One table: its data, methods, protocol and metric ids (each id is footnoted when rendered).

    ``protocol`` names a :data:`protocols.suites.PROTOCOLS` entry and ``options`` its settings (synthetic
    preset, FPR target, box variant); both are part of the run key. ``reference_method`` is the row the
    paired test compares every other method against (default: each column's best).
    """

    table_id: str
    title: str
    dataset: str
    protocol: str
    methods: tuple[tuple[str, str], ...]  # (method, variant)
    metrics: tuple[str, ...]
    # profile name -> SliceStore with train / val / test splits (single-part tables on embedded data)
    store: Callable[[str], Any] | None = None
    footnotes: tuple[str, ...] = ()
    runnable: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    reference_method: str = ""
    parts: tuple[TablePart, ...] = ()
    needs_root: str = ""  # what --root must point at, for tables on a user-downloaded release
    # CSV metric → the id (or ids, one per column group) that is the paper's computation of it: its column
    # carries the paper's number
    paper_metric_ids: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    # metric id → the column group its cells go under, replacing the protocol's own group (PHANES Table 1 prints
    # LPIPS under "healthy" / "anomaly" and AUPRC, Dice under "anomaly segmentation" for its one kind of anomaly)
    metric_groups: dict[str, str] = field(default_factory=dict)
    # our row (method, variant) → the paper's row whose numbers it sits beside, when the paper names it otherwise
    # (IterMask2 Table 2's plain "DAE" is the suite's dae/noise[0,+inf]); footnoted when rendered
    paper_rows: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # config fields per method name for a single-store table (what TablePart.overrides is for a part): part of keys
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(get_protocol(self.protocol), self.metrics)
        for part in self.parts:
            if part.metrics:
                validate(get_protocol(self.protocol), part.metrics)
        if (self.store is None) == (not self.parts):
            raise ValueError(f"{self.table_id}: give either store or parts")

    @property
    def all_parts(self) -> tuple[TablePart, ...]:
        if self.parts:
            return self.parts
        store, table_id = self.store, self.table_id

        def load(profile: str, root: Path | None, skip_bad: bool = False, subset: Any = False):
            no_subjects_file(table_id, subset)
            return store(profile)
        return (TablePart("", load, overrides=self.overrides),)

    @property
    def protocol_id(self) -> str:
        return get_protocol(self.protocol).id


# Methods whose paper works at 256 px, run on a 128-px table: what keeps their recipe's meaning at half the side
# (ProxyAno: 800 SLIC segments at 256 px = 200 at 128 px, the same superpixel area). Footnoted in each table.
AT_128_PX: dict[str, dict[str, Any]] = {"proxyano": {"slic_segments": 200}}
AT_128_PX_NOTE = ("proxyano runs on the 128-px slices (its paper: 256 px) with 200 SLIC segments, the superpixel area "
                  "of the paper's 800 at 256 px; its pseudo-abnormal patch sides scale with the image (8-64 px).")


def no_subjects_file(table_id: str, subset: Any) -> None:
    """A table that reads no --root has no subject lists for ``--subjects FILE`` to replace: one line, not a table
    silently on its usual data."""
    from benchmark.errors import PhbenchError
    from datasets.splits import SubjectsFile

    if isinstance(subset, SubjectsFile):
        raise PhbenchError(f"{table_id}: --subjects {subset.path}: this table reads no --root (its data are built in "
                           "or shared), so it has no subject lists to replace")


def _phantom_store(profile: str):
    from datasets.phantom import phantom_store

    return phantom_store(profile, modality="flair")


TABLE1 = register_table(TableSpec(
    table_id="table1",
    title="Table 1 — MNI phantom (FLAIR, 128 px): tumour, stroke, MS-like lesions and atrophy",
    dataset="phantom-flair",
    protocol="standard",
    methods=(("ae", ""), ("ra", ""), ("itermask2", ""), ("phanes", ""), ("afsc", ""), ("proxyano", ""),
             ("intensity", "")),
    metrics=CORE_METRIC_IDS,
    store=_phantom_store,
    overrides=AT_128_PX,
    footnotes=(
        "Data: MNI ICBM152 2009a phantom generated from the nilearn templates (train/val healthy; test: healthy, "
        "tumour, stroke, MS-like, atrophy subjects); every brain slice of an axial slab, each volume scaled so its "
        "brain median is 0.5.",
        "Each method's own anomaly map and image score (no per-paper re-scoring).",
        AT_128_PX_NOTE,
    ),
))


DETAIL_METRIC_IDS = (
    "auroc_pixel|pooled_brain", "ap_pixel|pooled_brain", "auroc_pixel|per_volume", "ap_pixel|per_volume",
    "dice|fpr@5%_healthy_image", "dice|per_image|fpr@5%_healthy_brain", "sensitivity|pooled|fpr@5%_healthy_brain",
    "precision|pooled|fpr@5%_healthy_brain", "dice|oracle_test|pr_exact", "dice|per_image|oracle_image",
    "dice|per_image|oracle_test|itermask2", "sensitivity|per_image|oracle_test|itermask2",
    "precision|per_image|oracle_test|itermask2", "dice_small|per_image|oracle_test|itermask2",
    "dice_medium|per_image|oracle_test|itermask2", "dice_large|per_image|oracle_test|itermask2",
    "ssim|normal_brain", "acc|image|fpr@5%_healthy_image", "f1|image|fpr@5%_healthy_image",
    "score_gap|normal_minmax", "auroc|image|afsc_max21", "auroc|image|map_mean", "ap_pixel|per_image",
    "auprc|pooled|trapezoid", "dice|oracle_test|unit101",
)

def _table1_companion(table_id: str, title: str, protocol: str, metrics: tuple[str, ...], *footnotes: str,
                      options: dict[str, Any] | None = None) -> TableSpec:
    """A table that evaluates table1's trained models another way (same data, methods and runs' models)."""
    return register_table(TableSpec(
        table_id=table_id, title=title, dataset=TABLE1.dataset, protocol=protocol, methods=TABLE1.methods,
        metrics=metrics, store=_phantom_store, options=options or {}, overrides=TABLE1.overrides,
        footnotes=(*footnotes, "Same trained models as table1 (nothing is retrained)."),
    ))


TABLE1_DETAIL = _table1_companion(
    "table1-detail", "Table 1 (detail) — every pixel- and image-level metric variant on the table1 runs",
    "standard", DETAIL_METRIC_IDS, TABLE1.footnotes[0],
    "The footnote of each column names its pooling and threshold rule; oracle columns pick their threshold on "
    "the test set.")

TABLE1_SYNTHETIC = _table1_companion(
    "table1-synthetic", "Table 1 (synthetic) — RA's synthetic anomalies on the healthy phantom test slices",
    "synthetic", ("mse|inside_mask", "mse|outside_mask", "lpips|inside_mask", "lpips|outside_mask", "auprc|pooled",
                  "dice|oracle_test|max1000"),
    "Data: the healthy slices of the table1 test subjects, corrupted once (seed 2109) by RA's paper generators: "
    "3 intensity ellipses (1-5th / 30-70th / 95-99th percentile), and one copy-paste rectangle; the draws are "
    "cached beside the slice store with their record.",
    "mse / lpips: the method's reconstruction against the clean slice, inside or outside the synthetic mask; "
    "methods without a reconstruction (intensity) have none.",
    options={"preset": "ra", "seed": 2109})

TABLE1_LOCALISATION = _table1_companion(
    "table1-localisation", "Table 1 (localisation) — RA box localisation and global detection on the phantom",
    "localisation", ("detected_boxes|fpr@5%_healthy_image", "detection_rate|per_box|fpr@5%_healthy_image",
                     "f1|per_box|fpr@5%_healthy_image", "fp_ratio|per_box|fpr@5%_healthy_image",
                     "f1|per_box|fpr@5%_healthy_image|ra_code", "auroc|image|map_mean"),
    "Boxes: one per 8-connected lesion component of each test slice; healthy tissue = brain outside every box of "
    "the slice. Global detection: normal test slices vs the slices of each pathology.",
    options={})


TABLE1_PATHOLOGY = _table1_companion(
    "table1-pathology", "Table 1 (per pathology) — the table1 runs on each lesion class of the phantom",
    "standard", ("auroc|image", "auroc_pixel|pooled", "ap_pixel|pooled", "dice|fpr@5%_healthy_brain"),
    TABLE1.footnotes[0],
    "Column groups: all = table1's test set; each pathology = the healthy test subjects' slices with that "
    "pathology's subjects' slices (image AUROC: healthy-subject slices without a finding vs that pathology's "
    "abnormal slices). atrophy has no lesion mask (a global finding): its pixel columns are empty by design.",
    options={"by_pathology": True})


def _setup_store(setup_id: str, table_id: str, needs: str, miniature: str = "",
                 shared: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A part's store from a suite setup (``datasets.recipes_paper.SETUPS``) prepared from the user's root.

    Without --root: ``shared`` names the folder of the project's shared real data that development tables read;
    ``miniature`` a release of ``datasets.miniature`` that stands in for the root in the smoke profile
    (layout-faithful synthetic files read by the real adapters: CI runs the table end to end)."""
    def load(profile: str, root: Path | None, skip_bad: bool = False, subset: bool | SubjectsFile = False):
        from benchmark.errors import PhbenchError
        from datasets.base import shared_release
        from datasets.recipes_paper import SETUPS
        from datasets.splits import SubjectsFile

        if root is None and shared:
            root = shared_release(*shared)
            if root is None:
                raise PhbenchError(f"{table_id}: no {'/'.join(shared)} in the shared data folder; give --root or "
                                   "set PHBENCH_SHARED_DATA")
        if root is None and miniature and profile == "smoke":
            from datasets.miniature import miniature_root

            root = miniature_root(miniature)
            if not isinstance(subset, SubjectsFile):
                subset = True  # a miniature holds a few subjects of each list
        if root is None:
            raise PhbenchError(f"{table_id}: give --root, the folder of {needs} (see README, Datasets)")
        return SETUPS[setup_id].prepare(root, skip_bad=skip_bad, subset=subset)
    return load


def _itermask2_overrides(dataset: str) -> dict[str, dict[str, Any]]:
    """What IterMask2's data asks of its rows: the sigmoid AE sees each slice's brain range as [0, 1] (the stores
    are at ±3, baselines.md §0.1), and IterMask2's τ percentile is the paper's for the dataset (§3)."""
    from methods.itermask2 import TAU_PERCENTILE_BY_DATASET

    return {"ae": {"input_range": "brain_minmax"},
            "itermask2": {"tau_percentile": TAU_PERCENTILE_BY_DATASET[dataset]}}


ITERMASK2_METRIC_IDS = ("dice|per_image|oracle_test|itermask2", "sensitivity|per_image|oracle_test|itermask2",
                        "precision|per_image|oracle_test|itermask2", "ssim|itermask2_code")
ITERMASK2_SIZE_IDS = ("dice_small|per_image|oracle_test|itermask2", "dice_medium|per_image|oracle_test|itermask2",
                      "dice_large|per_image|oracle_test|itermask2")
# white rows, then the grey per-image-oracle rows (labelled oracle, never ranked): the paper's row order
ITERMASK2_ROWS = (("ae", ""), ("ddpm", ""), ("autoddpm", ""), ("cyclic-unet", ""), ("dae", "noise[0,+inf]"),
                  ("dae", "noise[-inf,0]"), ("dae", "noise[-inf,+inf]"), ("itermask2", ""), ("dae", "oracle"),
                  ("itermask2", "oracle"))
BRATS_NEEDS = "the BraTS2021 training release (BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz)"
ITERMASK2_PROTOCOL_NOTE = (
    "Metrics as the IterMask2 evaluation code computes them (test.py, best_threshold=False): map (x − R)² of the "
    "method's reconstruction, min-max over the whole test set × the soft brain mask B; one global θ ∈ {0, 1e-4, …, "
    "0.0099} maximising the mean per-image Dice on the test set (oracle); Dice casts the prediction 1[θ < map]·B to "
    "int (rim pixels with B < 1 never count), sensitivity and precision count any nonzero prediction; every test "
    "slice is in every mean; SSIM of R·B·(1−G) vs x·B·(1−G) with data range max−min of R·B. The paper scored its "
    "baselines the same way [assumption, the code covers IterMask2 only].")
ITERMASK2_GREY_NOTE = (
    "Grey rows (variant oracle, never ranked): IterMask2 = each slice's best mask of its own §9 search when the "
    "profile runs it (oracle_search), else — like DAE — each slice at its own best θ of the same grid on the same "
    "map; sensitivity, precision and SSIM of that per-slice choice [assumption: the code prints only the Dice].")
_BRATS_PARTS = tuple(TablePart(label, _setup_store(f"itermask2-brats2021-{m}", "itermask2-table1", BRATS_NEEDS,
                                                   miniature="itermask2"), overrides=_itermask2_overrides("brats2021"))
                     for label, m in (("FLAIR", "flair"), ("T1CE", "t1ce"), ("T2", "t2"), ("T1", "t1")))
ITERMASK2_DATA_NOTES = (
    "Data: IterMask2's official 990 / 128 / 133 BraTS2021 subject split (datasets/splits/itermask2/brats2021_*.csv) "
    "and its slice rule and intensity normalisation (recipes itermask2_brats_<modality>); one model per modality "
    "and method. Cyclic-UNet's intermediate modality: T1 for FLAIR, FLAIR otherwise (stored beside the input).",
    "Smoke profile without --root: the layout-faithful BraTS2021 miniature of datasets/miniature.py (phantom "
    "volumes under real ids of the official lists, read by the real adapter), not real data.",
)

ITERMASK2_TABLE1 = register_table(TableSpec(
    table_id="itermask2-table1",
    title="IterMask2 Table 1 — BraTS2021, one model per modality (IterMask2 protocol)",
    dataset="brats2021",
    protocol="standard",
    methods=ITERMASK2_ROWS,
    metrics=ITERMASK2_METRIC_IDS,
    parts=_BRATS_PARTS,
    needs_root=BRATS_NEEDS,
    reference_method="itermask2",
    footnotes=(*ITERMASK2_DATA_NOTES, ITERMASK2_PROTOCOL_NOTE, ITERMASK2_GREY_NOTE),
))


def _isles_folds(profile: str, root: Path | None, skip_bad: bool = False, subset: bool | SubjectsFile = False):
    """ISLES 2015's cross-validated column: the four fold stores of the suite's 4-fold split, one model each."""
    from benchmark.errors import PhbenchError
    from benchmark.folds import Folds
    from datasets.splits import SubjectsFile

    if isinstance(subset, SubjectsFile):
        raise PhbenchError(f"--subjects {subset.path}: the ISLES FLAIR column is a 4-fold cross-validation, which one "
                           "split cannot replace; run the other columns (--parts ATLAS)")

    return Folds([_setup_store(f"itermask2-isles2015-fold{k}", "itermask2-table2", ISLES_NEEDS,
                               miniature="itermask2")(profile, root, skip_bad, subset) for k in range(4)],
                 "ISLES 2015 4-fold")


ISLES_NEEDS = ("ISLES 2015 SISS training cases (SISS2015_Training/<n>/VSD.Brain.XX.O.MR_{Flair,T1}.<id>/… and "
               "VSD.Brain.XX.O.OT.<id>/…)")
ATLAS_NEEDS = "ATLAS v2.0 (ATLAS_2/Training/R<site>/sub-…/ses-1/anat/…_T1w.nii.gz with lesion masks)"


ITERMASK2_TABLE2 = register_table(TableSpec(
    table_id="itermask2-table2",
    title="IterMask2 Table 2 — ISLES 2015 FLAIR (4-fold CV) and ATLAS v2.0 T1 (IterMask2 protocol)",
    dataset="stroke",
    protocol="standard",
    methods=(("ae", ""), ("ddpm", ""), ("autoddpm", ""), ("cyclic-unet", ""), ("dae", "noise[0,+inf]"),
             ("dae", "noise[-inf,0]"), ("dae", "noise[-inf,+inf]"), ("itermask2", ""), ("dae", "oracle"),
             ("itermask2", "oracle")),
    metrics=ITERMASK2_METRIC_IDS,
    parts=(TablePart("ISLES FLAIR", _isles_folds, overrides=_itermask2_overrides("isles2015"),
                     skip_methods={f"dae/{v}": "the paper's DAE on FLAIR ISLES is one row; hypo-intense noise is "
                                               "reported for ATLAS T1 only (protocols/itermask2.md §6.5)"
                                   for v in ("noise[-inf,0]", "noise[-inf,+inf]")}),
           TablePart("ATLAS T1", _setup_store("itermask2-atlas2", "itermask2-table2", ATLAS_NEEDS,
                                              miniature="itermask2"),
                     skip_methods={"cyclic-unet": "ATLAS has T1 only: no intermediate modality (the paper's '–')"},
                     overrides=_itermask2_overrides("atlas2"))),
    needs_root=f"one folder holding {ISLES_NEEDS} and {ATLAS_NEEDS}",
    reference_method="itermask2",
    paper_rows={("dae", "noise[0,+inf]"): ("dae", "")},
    footnotes=(
        "Data (a reconstruction of the paper's protocol, whose code covers BraTS only: protocols/itermask2.md §3): "
        "ISLES 2015 SISS FLAIR, 28 subjects in the suite's 4-fold subject-level cross-validation "
        "(datasets/splits/itermask2/isles2015_cv4.csv: 7 test subjects per fold, τ from the healthy slices of 3 "
        "others), one model per fold, the 28 test slices pooled before the threshold search; ATLAS v2.0 T1 in the "
        "suite split 518 / 67 / 70 (atlas2_suite_split.csv). Both: z-score over the brain, a 20-slice band at the "
        "brain's z-midpoint (train / val: its lesion-free slices; test: its largest-lesion slice), padded square, "
        "area-resized to 128 px (recipes itermask2_isles_flair, itermask2_atlas_t1). IterMask2's τ percentile: 80 "
        "ISLES, 70 ATLAS (paper §3). ATLAS is not skull-stripped here (the paper skull-stripped it; no tool "
        "offline): its brain mask is a head mask.",
        "DAE: the paper does not say which noise; the row is dae/noise[0,+inf] (hyper-intense lesions), beside the "
        "paper's plain DAE row; on ATLAS T1 (hypo-intense lesions) the [−∞,0] and [−∞,+∞] rows are reported as "
        "well, without paper numbers (protocols/itermask2.md §6.5). Cyclic-UNet's intermediate modality on ISLES: "
        "T1.",
        "Smoke profile without --root: the layout-faithful ISLES 2015 and ATLAS v2.0 miniatures of "
        "datasets/miniature.py (phantom volumes under the real ids), not real data.",
        ITERMASK2_PROTOCOL_NOTE, ITERMASK2_GREY_NOTE),
))


ITERMASK2_TABLE3 = register_table(TableSpec(
    table_id="itermask2-table3",
    title="IterMask2 Table 3 — ablations and size-stratified Dice, BraTS2021 FLAIR",
    dataset="brats2021",
    protocol="standard",
    methods=(("itermask2", "-freq"), ("itermask2", "-spat"), ("dae", "noise[0,+inf]"), ("itermask2", ""),
             ("dae", "oracle"), ("itermask2", "oracle")),
    metrics=ITERMASK2_METRIC_IDS[:3] + ITERMASK2_SIZE_IDS,
    parts=(TablePart("BraTS FLAIR", _BRATS_PARTS[0].store, overrides=_BRATS_PARTS[0].overrides),),
    needs_root=BRATS_NEEDS,
    reference_method="itermask2",
    footnotes=(*ITERMASK2_DATA_NOTES, ITERMASK2_PROTOCOL_NOTE, ITERMASK2_GREY_NOTE,
               "Size bins of the lesion area in the 128-px slice: < 200, 200–799, ≥ 800 px (the authors' evaluation "
               "code, which puts a lesion-free slice in 'small'). Every row reuses the FLAIR models of "
               "itermask2-table1; -freq and -spat are retrained."),
))


# ----------------------------------------------------------------------------------------------------
# AFSC: trained on healthy HCP T2 only, tested on BraTS2017 (Table 1) and MS-SEG2015 (Table 2) (protocols/afsc.md)

AFSC_ROWS = (("anogan", ""), ("ae", ""), ("ae", "w/ AFSCm s=0.9"), ("draem", ""), ("draem", "w/ AFSCm s=0.5"),
             ("draem_g", ""), ("draem_g", "w/ AFSCm s=0.5"), ("afsc", "w/o AFSCm"), ("afsc", "random mask s=0.5"),
             ("afsc", ""))
AFSC_METRIC_IDS = ("auroc|image|afsc_max21", "ap|image|afsc_max21", "dice|oracle_test|pr_exact", "auroc_pixel|pooled",
                   "ap_pixel|pooled")
AFSC_PAPER_IDS = {"auroc": "auroc|image|afsc_max21", "ap": "ap|image|afsc_max21", "dice": "dice|oracle_test|pr_exact",
                  "auroc_pixel": "auroc_pixel|pooled", "ap_pixel": "ap_pixel|pooled"}
HCP_NEEDS = "HCP S500 structural preprocessed (<id>/MNINonLinear/T2w_restore_brain.nii.gz)"
BRATS2017_NEEDS = "the BraTS2017 training set (HGG/ and LGG/ Brats17_*/Brats17_*_{t2,seg}.nii.gz)"
MSSEG_NEEDS = ("the ISBI 2015 longitudinal MS training set (training/trainingNN/preprocessed/trainingNN_TT_t2_pp.nii "
               "and masks/trainingNN_TT_mask1.nii)")


def _ae_on_afsc_budget(profile: str) -> dict[str, Any]:
    """AFSC's "AE" = the suite's AE-D trained on AFSC's budget (specs README resolution 3: L1, Adam 1e-4, batch 8,
    no early stopping; 10 epochs in the paper profile, the smaller profiles keep their own epoch budgets)."""
    return {"lr": 1e-4, "batch_size": 8, "early_stop_patience": None, **({"epochs": 10} if profile == "paper" else {})}


def _cross_dataset(test_setup: str, table_id: str, needs: str) -> Callable[..., Any]:
    """HCP's train / val splits with the test split of ``test_setup`` (both from one --root holding both releases)."""
    train_store = _setup_store("afsc-hcp", table_id, HCP_NEEDS, miniature="afsc")
    test_store = _setup_store(test_setup, table_id, needs, miniature="afsc")

    def load(profile: str, root: Path | None, skip_bad: bool = False, subset: bool | SubjectsFile = False):
        from datasets.splits import subjects_for
        from datasets.store import CrossDatasetStore

        return CrossDatasetStore(train_store(profile, root, skip_bad, subjects_for(subset, "train", "val")),
                                 test_store(profile, root, skip_bad, subjects_for(subset, "test")),
                                 name=f"HCP → {test_setup}")
    return load


AFSC_PROTOCOL_NOTE = (
    "Metrics as protocols/afsc.md §6 reconstructs the paper's (no AFSC evaluation code exists): slice score = max of "
    "the 21×21 mean-filtered anomaly map, image AUROC / AP over every test slice pooled (a slice is anomalous with ≥ 1 "
    "lesion pixel); pixel AUROC / AP over every pixel of every test slice, no brain mask; Dice = the best pooled Dice "
    "over the exact PR curve of the test set (oracle). Maps: |x − pseudo-healthy| for every row except DRAEM and "
    "DRAEM w/ AFSCm (their segmentation output); DRAEM_G rows re-score the DRAEM models (no second training).")
AFSC_DATA_NOTE = (
    "Data: every model trained on healthy HCP T2w only (all subjects, a seeded 5 % subject hold-out for validation) "
    "and tested without adaptation; per-volume 99.5th-percentile scaling of brain voxels, HCP resampled 0.7 → 1 mm, "
    "padded square, 128 px, every axial slice (recipe afsc_t2). AE = AE-D on AFSC's budget (Adam 1e-4, batch 8, no "
    "early stopping).")
AFSC_SMOKE_NOTE = ("Smoke profile without --root: the layout-faithful HCP / BraTS2017 / ISBI 2015 miniature of "
                   "datasets/miniature.py (phantom volumes in the real layouts), not real data.")


def _afsc_table(table_id: str, title: str, dataset: str, test_setup: str, needs: str, test_note: str) -> TableSpec:
    return register_table(TableSpec(
        table_id=table_id, title=title, dataset=dataset, protocol="standard", methods=AFSC_ROWS,
        metrics=AFSC_METRIC_IDS,
        parts=(TablePart("", _cross_dataset(test_setup, table_id, needs), overrides={"ae": _ae_on_afsc_budget}),),
        needs_root=f"one folder holding {HCP_NEEDS} and {needs}", reference_method="afsc",
        metric_groups={m: "Metrics" for m in AFSC_METRIC_IDS}, paper_metric_ids=AFSC_PAPER_IDS,
        footnotes=(AFSC_DATA_NOTE, test_note, AFSC_PROTOCOL_NOTE, AFSC_SMOKE_NOTE)))


AFSC_TABLE1 = _afsc_table(
    "afsc-table1", "AFSC Table 1 — HCP → BraTS2017 T2 (cross-dataset tumour detection)", "brats2017",
    "afsc-brats2017", BRATS2017_NEEDS,
    "Test: the 285 BraTS2017 training subjects (210 HGG + 75 LGG), every axial slice; anomaly = whole tumour "
    "(label > 0) [assumption, protocols/afsc.md §2].")
AFSC_TABLE2 = _afsc_table(
    "afsc-table2", "AFSC Table 2 — HCP → MS-SEG2015 T2 (cross-dataset MS lesion detection)", "msseg2015",
    "afsc-msseg2015", MSSEG_NEEDS,
    "Test: the 21 ISBI 2015 training scans (5 patients, 4–5 time points), preprocessed T2, every axial slice; "
    "anomaly = rater 1's mask [assumption, protocols/afsc.md §2].")


def _phantom_t2_part(profile: str, root: Path | None = None, skip_bad: bool = False, subset: Any = False):
    from datasets.phantom import phantom_store

    no_subjects_file("afsc-dev", subset)
    return phantom_store(profile, modality="t2")


AFSC_DEV = register_table(TableSpec(
    table_id="afsc-dev",
    title="Development benchmark — every AFSC-table row on the MNI phantom T2 (128 px)",
    dataset="phantom-t2", protocol="standard", methods=AFSC_ROWS, metrics=AFSC_METRIC_IDS,
    parts=(TablePart("", _phantom_t2_part, overrides={"ae": _ae_on_afsc_budget}),),
    reference_method="afsc", metric_groups={m: "Metrics" for m in AFSC_METRIC_IDS},
    footnotes=(
        "Data: the MNI phantom's T2 contrast (train / val healthy; test: healthy, tumour, stroke, MS-like, atrophy "
        "subjects; every brain slice of an axial slab, each volume scaled so its brain median is 0.5), one store for "
        "training and test (not AFSC's cross-dataset setting); no paper numbers beside these.",
        AFSC_PROTOCOL_NOTE)))


# ----------------------------------------------------------------------------------------------------
# RA (Bercea et al., MIDL 2023): six tables on IXI + fastMRI+ (protocols/ra.md)

RA_NEEDS = ("one folder holding IXI T1 (IXI-T1/IXI<id>-<site>-<n>-T1.nii.gz) and the fastMRI brain multi-coil h5 "
            "files (file_brain_AXT1_*.h5 with reconstruction_rss) with fastMRI+ Annotations/brain.csv")
_RA_PART = (TablePart("", _setup_store("ra-ixi-fastmri", "ra tables", RA_NEEDS, miniature="ra")),)
RA_BASELINES = (("ae-s", ""), ("vae", ""), ("dae", ""), ("si-vae", ""))
RA_ABLATIONS = (("ra", ""), ("ra", "w/o reverse loss"), ("ra", "w/o histogram equalisation"),
                ("ra", "w/o LPIPS (perceptual) term"), ("ra", "w/o histogram equalisation & w/o LPIPS"))
RA_DATA_NOTES = (
    "Data: RA's lists (datasets/splits/ra): train = 581 IXI T1 + 131 fastMRI+ AXT1 normals (712, the `_bkp` list; "
    "the config's 711 is setup ra-fastmri-711), val = 15 fastMRI+ normals, test = 30 normals + 27 global-pathology "
    "+ 23 global-artefact + 92 box images; middle axial slice n//2, 98th percentile of the pixels > 0, clip, 8-bit, "
    "128 px (recipe ra_mid_t1@v2). IXI volumes are read as released (RA used Clinica t1-linear MNI-registered "
    "outputs): a deviation.",
    "Smoke profile without --root: the layout-faithful miniature release of datasets/miniature.py (synthetic "
    "volumes under RA's real file ids, read by the real adapters), not real data.",
)
_RA_GLOBAL_NOTE = ("Global detection as RA's code computes it: score = mean of the anomaly map over the slice; AUROC "
                   "of the 30 normal test slices vs the 27 global-pathology and vs the 23 global-artefact slices "
                   "(lists by file id); average = mean of the two. FPR at 95 % / 99 % TPR and the SSIM of "
                   "reconstruction vs input are what the code prints beside them (the paper reports neither).")
_RA_BOX_NOTE = ("Boxes: the 171 of RA's localization_boxes.csv (its 16 artefact boxes are scored, not reported), "
                "matched by file, label and per-label index on the kept slice (a listed box missing there is "
                "counted in each cell's note). `|ra_code` is RA's object_localization: float32 map ≥ t, soft box "
                "masks (the 320² rectangle resized bilinearly, not binarised), healthy tissue = brain minus every "
                "annotated box binarised at 0.5, FP = int(H / max(A, 1)); t from RA's 1000-value grid search on "
                "the 30 normal test slices, recomputed for every model. Suite ids: hard boxes, threshold at 5 % "
                "healthy-pixel FPR on the validation normals. `paper_fixed`: RA's hard-coded 0.009.")
_RA_SYNTH_NOTE = ("Synthetic anomalies on the 30 normal test slices, generated once (seed 2109) with RA's paper "
                  "parameters in the official generator's semantics (README resolution 9): intensity = 3 ellipses "
                  "(1-5th / 30-70th / 95-99th percentile), texture = one copy-paste rectangle; cached with their "
                  "draw record so every method sees the same anomalies.")
_RA_SYNTH_OPTIONS = {"preset": "ra", "seed": 2109,
                     "group_names": {"sprites": "intensity anomaly", "copy_paste": "texture anomaly"}}


def _ra_global_options() -> dict[str, Any]:
    from datasets.splits import ra_global_sets

    return {"global_sets": ra_global_sets()}


def _ra_box_options() -> dict[str, Any]:
    from datasets.splits import ra_box_list

    return {**_ra_global_options(), "box_list": ra_box_list(), "box_group": "local pathology",
            "box_by_pathology": False, "ra_threshold_on": "test_normal"}


RA_SYNTH_MSE_IDS = ("mse|inside_mask", "lpips|inside_mask", "mse|inside_mask|l1_ra_code")
RA_SYNTH_SEG_IDS = ("auprc|pooled", "auroc_pixel|pooled", "dice|oracle_test|max1000")
RA_GLOBAL_IDS = ("auroc|image|map_mean", "fpr_at_tpr95|image|map_mean|ra_code", "fpr_at_tpr99|image|map_mean|ra_code",
                 "ssim|image|ra_code")
RA_BOX_IDS = ("detected_boxes|fpr@5%_healthy_image|ra_code", "f1|per_box|fpr@5%_healthy_image|ra_code",
              "precision|per_box|fpr@5%_healthy_image|ra_code", "detected_boxes|fpr@5%_healthy_image",
              "f1|per_box|fpr@5%_healthy_image",
              "detected_boxes|paper_fixed|ra_code", "f1|per_box|paper_fixed|ra_code")
RA_BOX_PAPER_IDS = {"detected_boxes": "detected_boxes|fpr@5%_healthy_image|ra_code",
                    "f1": "f1|per_box|fpr@5%_healthy_image|ra_code"}


def _ra_table(table_id: str, title: str, protocol: str, methods: tuple[tuple[str, str], ...],
              metrics: tuple[str, ...], options: dict[str, Any], paper_ids: dict[str, str], *notes: str) -> TableSpec:
    return register_table(TableSpec(
        table_id=table_id, title=title, dataset="fastmri_plus", protocol=protocol, methods=methods, metrics=metrics,
        parts=_RA_PART, needs_root=RA_NEEDS, options=options, reference_method="ra", paper_metric_ids=paper_ids,
        footnotes=(*RA_DATA_NOTES, *notes)))


RA_TABLE1A = _ra_table(
    "ra-table1a", "RA Table 1(a) — synthetic anomalies on fastMRI+: reconstruction error inside the anomaly",
    "synthetic", RA_BASELINES + (("ra", ""),), RA_SYNTH_MSE_IDS, _RA_SYNTH_OPTIONS,
    {"mse": "mse|inside_mask", "lpips": "lpips|inside_mask"}, _RA_SYNTH_NOTE,
    "MSE (Σ(x_rec − x_clean)²·m / Σm) and AlexNet spatial LPIPS inside the anomaly m, mean over the 30 images "
    "(the paper prints them ×100, RA's PHANES-era evaluation code); `|l1_ra_code` is the L1 error RA's code logs "
    "under the name MSE.")
RA_TABLE1B = _ra_table(
    "ra-table1b", "RA Table 1(b) — synthetic anomalies on fastMRI+: anomaly segmentation",
    "synthetic", RA_BASELINES + (("ra", ""),), RA_SYNTH_SEG_IDS, _RA_SYNTH_OPTIONS, {"auprc": "auprc|pooled"},
    _RA_SYNTH_NOTE, "AUPRC: sklearn average precision over every pixel of the 30 images pooled (the method's own "
                    "map; RA: eq. 5). The code also logs the pooled pixel AUROC and the best Dice of 1000 "
                    "thresholds (oracle), not reported in the paper.")
RA_TABLE2A = _ra_table(
    "ra-table2a", "RA Table 2(a) — global detection on fastMRI+ (AUROC, normal vs global pathology / artefacts)",
    "localisation", RA_BASELINES + (("mkd", ""), ("ra", "")), RA_GLOBAL_IDS, _ra_global_options(),
    {"auroc": "auroc|image|map_mean"}, _RA_GLOBAL_NOTE)
RA_TABLE2B = _ra_table(
    "ra-table2b", "RA Table 2(b) — pathology localisation on fastMRI+ (171 boxes: detected, F1)",
    "localisation", RA_BASELINES + (("mkd", ""), ("ra", "")), RA_BOX_IDS, _ra_box_options(), RA_BOX_PAPER_IDS,
    _RA_BOX_NOTE)
RA_TABLE3A = _ra_table(
    "ra-table3a", "RA Table 3(a) — ablations: global detection on fastMRI+", "localisation", RA_ABLATIONS,
    RA_GLOBAL_IDS, _ra_global_options(), {"auroc": "auroc|image|map_mean"}, _RA_GLOBAL_NOTE,
    "w/o reverse loss retrains with λ = 0; the other ablations change only the anomaly map (eq. 5) of the same "
    "trained RA model.")
RA_TABLE3B = _ra_table(
    "ra-table3b", "RA Table 3(b) — ablations: pathology localisation on fastMRI+", "localisation", RA_ABLATIONS,
    RA_BOX_IDS, _ra_box_options(), RA_BOX_PAPER_IDS, _RA_BOX_NOTE, RA_TABLE3A.footnotes[-1])


# ----------------------------------------------------------------------------------------------------
# PHANES (Bercea et al., MICCAI 2023): two tables (protocols/phanes.md)

PHANES_NEEDS = RA_NEEDS + ", plus ATLAS v2.0 (Training/R<site>/sub-…/ses-1/anat/…_T1w.nii.gz with lesion masks)"
PHANES_DATA_NOTE = (
    "Training data as in RA's tables: 581 IXI T1 + 131 fastMRI+ AXT1 normals (712), 15 validation normals "
    "(setup ra-ixi-fastmri, so the baselines' models are the RA tables' models); PHANES inpaints on the RA model "
    "that the run store trained once.")
PHANES_SYNTH_IDS = ("lpips|outside_mask|phanes_code", "lpips|inside_mask|phanes_code", "auprc|pooled",
                    "dice|oracle_test|max1000|phanes_code", "lpips|outside_mask", "lpips|inside_mask",
                    "dice|oracle_test|max1000", "ssim|inside_mask|phanes_code", "mse|outside_mask|phanes_code")
PHANES_TABLE1 = register_table(TableSpec(
    table_id="phanes-table1",
    title="PHANES Table 1 — reversing synthetic anomalies on fastMRI+ (PH reconstruction and segmentation)",
    dataset="fastmri_plus", protocol="synthetic",
    methods=(("phanes", "GT"), ("phanes", ""), ("ra", ""), ("si-vae", ""), ("anoddpm", ""), ("dae", ""),
             ("vae", "")),
    metrics=PHANES_SYNTH_IDS,
    parts=(TablePart("", _setup_store("ra-ixi-fastmri", "phanes-table1", PHANES_NEEDS, miniature="phanes")),),
    needs_root=RA_NEEDS, options={"preset": "phanes", "seed": 2109}, reference_method="phanes",
    metric_groups={"lpips|outside_mask|phanes_code": "healthy", "lpips|outside_mask": "healthy",
                   "mse|outside_mask|phanes_code": "healthy", "lpips|inside_mask|phanes_code": "anomaly",
                   "lpips|inside_mask": "anomaly", "ssim|inside_mask|phanes_code": "anomaly",
                   "auprc|pooled": "anomaly segmentation", "dice|oracle_test|max1000|phanes_code": "anomaly segmentation",
                   "dice|oracle_test|max1000": "anomaly segmentation"},
    paper_metric_ids={"lpips": ("lpips|outside_mask|phanes_code", "lpips|inside_mask|phanes_code"),
                      "auprc": "auprc|pooled", "dice": "dice|oracle_test|max1000|phanes_code"},
    footnotes=(*RA_DATA_NOTES[:2], PHANES_DATA_NOTE,
               "Synthetic anomalies on the 30 normal test slices, generated once (seed 2109) by PHANES's own sprite "
               "generator settings (three filled ellipses: 1-5th / 30-70th / 95-99th percentile of the current "
               "image, semi-axes int(max(|N(4, 6)|, 2)), centre in [32, 96)); cached with their draw record.",
               "LPIPS (AlexNet, spatial, inputs in [0, 1]) between the clean slice and the method's pseudo-healthy "
               "reconstruction, averaged outside (healthy) and inside (anomaly) the synthetic mask, mean over "
               "images (the paper prints ×100); AUPRC pooled over every pixel; ⌈Dice⌉: best pooled Dice of 1000 "
               "thresholds in [0, max map] on the test set (oracle). PHANES^GT inpaints under the ground-truth mask "
               "(uses ground truth: not ranked)."),
))
PHANES_TABLE2 = register_table(TableSpec(
    table_id="phanes-table2",
    title="PHANES Table 2 — ischemic stroke segmentation on ATLAS v2.0 (slice 95)",
    dataset="atlas2", protocol="standard",
    methods=(("phanes", ""), ("anoddpm", ""), ("ra", ""), ("patchcore", ""), ("dae", ""), ("si-vae", ""),
             ("mkd", ""), ("vae", "")),
    metrics=("auprc|pooled|lesion_gt1px|phanes_code", "dice|oracle_test|max1000|lesion_gt1px|phanes_code",
             "auprc|pooled", "dice|oracle_test|max1000", "auroc_pixel|pooled_brain", "dice|fpr@5%_healthy_image"),
    parts=(TablePart("", _setup_store("phanes-ixi-fastmri-atlas2", "phanes-table2", PHANES_NEEDS,
                                      miniature="phanes")),),
    needs_root=PHANES_NEEDS, reference_method="phanes",
    paper_metric_ids={"auprc": "auprc|pooled|lesion_gt1px|phanes_code",
                      "dice": "dice|oracle_test|max1000|lesion_gt1px|phanes_code"},
    footnotes=(RA_DATA_NOTES[0].split(" IXI volumes")[0] + ".", PHANES_DATA_NOTE,
               "Test: ATLAS v2.0 training release (655 T1w with public masks, MNI152NLin2009aSym), axial slice 95, "
               "98th percentile, 8-bit, 128 px; GT = the resized mask > 0 (recipe phanes_atlas_sl95).",
               "AUPRC: pixel average precision pooled over every pixel of every test slice, background included; "
               "⌈Dice⌉: best pooled Dice of 1000 thresholds in [0, max map] (oracle, the Table 1 rule; the PHANES "
               "code computes no Dice for Table 2). `|lesion_gt1px|phanes_code`: only the slices whose mask has "
               "more than one lesion pixel, as PHANES's pathology_localization scores them (the paper's numbers sit "
               "there); the suite ids beside them score every slice. * = the paired test of PHANES against every "
               "other method.",
               "Smoke profile without --root: the layout-faithful miniature release (datasets/miniature.py), not "
               "real data."),
))


RA_IXI_DEV = register_table(TableSpec(
    table_id="ra-ixi-dev",
    title="Development benchmark — RA Table 1 protocol on real IXI T1 (synthetic anomalies, 128 px)",
    dataset="ixi-t1",
    protocol="synthetic",
    methods=RA_BASELINES + (("ra", ""),),
    metrics=RA_SYNTH_MSE_IDS + RA_SYNTH_SEG_IDS,
    parts=(TablePart("", _setup_store("ra-ixi-dev", "ra-ixi-dev", "", shared=("ixi",))),),
    options=_RA_SYNTH_OPTIONS,
    reference_method="ra",
    footnotes=(
        "Data: the 36 IXI T1 volumes of the shared data folder (../shared/data/ixi: 35 Hammersmith at 2 mm, one "
        "Guy's resampled to 2 mm), subject-level split 24 / 4 / 8 (datasets/splits/ra/ixi_dev_split.csv); 11 axial "
        "slices (±10 mm) around the volume's middle slice each (RA takes the middle slice only: a band so that "
        "training has 264 slices), RA's slice preprocessing (recipe ra_ixi_band_t1). Deviations from RA's Table 1: "
        "IXI instead of fastMRI+, raw (not MNI-registered) volumes, far less training data.",
        _RA_SYNTH_NOTE.replace("the 30 normal test slices", "the 88 test slices"),
        "Metrics as in ra-table1a/1b; the paper's numbers (fastMRI+) are not shown beside these.",
    ),
))


# ----------------------------------------------------------------------------------------------------
# ProxyAno (Zhou et al., IEEE TMI): brain MRI jpgs, OCT2017 and IDRiD at 256 px (protocols/proxyano.md)

PROXYANO_BRAIN_NEEDS = ("one folder holding both Kaggle brain sets: <name>/{yes,no}/* (Brain MRI Images for Brain "
                        "Tumor Detection) and <name>/{Training,Testing}/<class>/*.jpg (Brain Tumor Classification)")
PROXYANO_OCT_NEEDS = "OCT2017 (Kermany): OCT2017/{train,test,val}/{NORMAL,CNV,DME,DRUSEN}/*.jpeg"
PROXYANO_IDRID_NEEDS = "IDRiD: 'A. Segmentation/…' and 'B. Disease Grading/…' as released"
PROXYANO_IMAGE_IDS = ("auroc|image", "acc|image|p75_train_normal", "f1|image|p75_train_normal")
PROXYANO_PIXEL_IDS = ("auroc_pixel|pooled", "acc_pixel|pooled|paper_fixed", "f1_pixel|pooled|paper_fixed",
                      "acc_pixel_bal|pooled|paper_fixed", "f1_pixel_bal|pooled|paper_fixed")
PROXYANO_GAP_IDS = ("mean_score_normal|normal_minmax", "mean_score_abnormal|normal_minmax", "score_gap|normal_minmax")
PROXYANO_PAPER_IDS = {"auroc": "auroc|image", "acc": "acc|image|p75_train_normal", "f1": "f1|image|p75_train_normal",
                      "auroc_pixel": "auroc_pixel|pooled", "acc_pixel": "acc_pixel|pooled|paper_fixed",
                      "f1_pixel": "f1_pixel|pooled|paper_fixed"}
PROXYANO_FINAL = ("proxyano", "2xEncDec+SI+mem+rep+lat")
PROXYANO_T1_ROWS = (("ae-proxy", ""), ("memae", ""), ("anogan", ""), ("f-anogan", ""), ("ganomaly", ""),
                    ("sparse-gan", ""), ("pix2pix", ""), ("cycle-gan", ""), PROXYANO_FINAL)
# Table II scores every model with eq. 13 through its own encoder (protocols/proxyano.md §2.4)
PROXYANO_LATENT = {"ae-proxy": {"score_space": "latent"}, "f-anogan": {"image_score": "latent"},
                   "ganomaly": {"image_score": "latent"}, "sparse-gan": {"image_score": "latent"}}


def _proxyano_part(group: str, setup: str, needs: str, dataset: str, metrics: tuple[str, ...],
                   overrides: Mapping[str, Any] | None = None) -> TablePart:
    return TablePart(group, _setup_store(setup, "proxyano tables", needs, miniature="proxyano"), dataset=dataset,
                     metrics=metrics, overrides=overrides or {})


def _brain(group: str = "Brain MRI [28]") -> TablePart:
    return _proxyano_part(group, "proxyano-brain", PROXYANO_BRAIN_NEEDS, "brain_mri_tumor", PROXYANO_IMAGE_IDS)


def _oct(group: str = "Retinal OCT [54]", metrics: tuple[str, ...] = PROXYANO_IMAGE_IDS,
         overrides: Mapping[str, Any] | None = None) -> TablePart:
    return _proxyano_part(group, "proxyano-oct2017", PROXYANO_OCT_NEEDS, "oct2017", metrics, overrides)


PROXYANO_NOTES = (
    "Data (every row, 256 px grey in [0, 1], direct resize): brain = both Kaggle brain sets pooled, pHash "
    "de-duplicated, 400 training normals (× n/598 with fewer), test = the other normals + as many tumour images "
    "(split bt_default, a reconstruction: the paper's 500/500/500 cannot be built from the 598 normals that exist); "
    "OCT2017 = the NORMAL scans of the official train split, test = the 1,000 official test images (Kaggle test ∪ "
    "val); IDRiD = the grade-0 images of B's training set, test = all 81 part-A images (paper: 69), each cut into "
    "3×3 tiles, masks = union of MA / HE / EX / SE (nearest resize).",
    "Scores: each method's own image score (ProxyAno: eq. 13 latent distance; image-space rows ‖I − Î‖_F; the "
    "baselines' native scores, baselines.md); ACC / F1 at the 75th-percentile element of the training normals' "
    "scores (P-Net's rule, abnormal = positive: the paper's printed pairs fit no single threshold, "
    "protocols/proxyano.md §2.2, so they are soft targets); fundus pixel AUROC over every pixel of every tile, "
    "ACC / F1 at A_pix ≥ 0.5 over every pixel (raw; the paper's aggregation is unknown, and its numbers sit beside "
    "these); acc_pixel_bal / f1_pixel_bal: each tile's map min–max scaled, its lesion pixels + as many random "
    "normal pixels, A_pix ≥ 0.5 (protocols/proxyano.md §2.3's balanced variant, an assumption).",
    "Smoke profile without --root: the layout-faithful miniature releases of datasets/miniature.py (synthetic "
    "images in the real layouts), not real data.",
)
PROXYANO_NEEDS = f"{PROXYANO_BRAIN_NEEDS}; {PROXYANO_OCT_NEEDS}; {PROXYANO_IDRID_NEEDS} (each under the one root)"

PROXYANO_TABLE1 = register_table(TableSpec(
    table_id="proxyano-table1",
    title="ProxyAno Table I — image-level detection (brain MRI, OCT) and fundus lesion localisation",
    dataset="brain_mri_tumor", protocol="standard", methods=PROXYANO_T1_ROWS,
    metrics=PROXYANO_IMAGE_IDS + PROXYANO_PIXEL_IDS,
    parts=(_brain(), _oct(),
           _proxyano_part("Retinal Fundus [55]", "proxyano-idrid", PROXYANO_IDRID_NEEDS, "idrid", PROXYANO_PIXEL_IDS)),
    needs_root=PROXYANO_NEEDS, reference_method="proxyano", paper_metric_ids=PROXYANO_PAPER_IDS,
    paper_rows={("ae-proxy", ""): ("ae", "")},
    footnotes=PROXYANO_NOTES,
))

PROXYANO_TABLE2 = register_table(TableSpec(
    table_id="proxyano-table2",
    title="ProxyAno Table II — mean eq. 13 anomaly scores of normal and abnormal OCT test images",
    dataset="oct2017", protocol="standard",
    methods=(("ae-proxy", ""), ("f-anogan", ""), ("ganomaly", ""), ("sparse-gan", ""), ("proxyano", "2xEncDec+SI+lat"),
             PROXYANO_FINAL),
    metrics=PROXYANO_GAP_IDS, parts=(_oct("Anomaly Score", PROXYANO_GAP_IDS, PROXYANO_LATENT),),
    needs_root=PROXYANO_OCT_NEEDS, reference_method="proxyano",
    paper_rows={("ae-proxy", ""): ("ae", ""), ("proxyano", "2xEncDec+SI+lat"): ("proxyano", "2xEncDec+SI")},
    footnotes=(PROXYANO_NOTES[0],
               "Every score is eq. 13, ‖E(I) − E(Î)‖_F with the model's own encoder (ProxyAno: the PEM encoder; AE: "
               "its encoder; f-AnoGAN: its izi_f encoder; GANomaly / Sparse-GAN: their first and second encoders), "
               "min–max scaled by each model's normal test scores, then averaged (protocols/proxyano.md §2.4: the "
               "paper does not say how it scaled). The same trained models as Table I.",
               PROXYANO_NOTES[2]),
))

PROXYANO_TABLE3 = register_table(TableSpec(
    table_id="proxyano-table3",
    title="ProxyAno Table III — the choice of proxy (OCT, image-space score)",
    dataset="oct2017", protocol="standard",
    methods=(("ae-proxy", ""), *(("proxyano", f"proxy={k}") for k in
                                  ("edge", "smooth", "smooth_patches", "edge+smooth", "edge+smooth_patches", "SI"))),
    metrics=("auroc|image",), parts=(_oct("", ("auroc|image",)),),
    needs_root=PROXYANO_OCT_NEEDS, reference_method="proxyano",
    paper_rows={("ae-proxy", ""): ("ae", "proxy=none")},
    footnotes=(PROXYANO_NOTES[0],
               "Every row is 2×EncDec + proxy, no memory, no repair, scored by ‖I − Î‖_F (the Table IV definitions); "
               "proxies: SLIC SI (800 segments, compactness 0.1 on [0, 1]), Canny σ 1, Gaussian 11×11 σ 2.5, 8×8 "
               "mean patches, concatenations [edge, …] (proxyano.md §2.1, O9).", PROXYANO_NOTES[2]),
))

PROXYANO_TABLE4 = register_table(TableSpec(
    table_id="proxyano-table4",
    title="ProxyAno Table IV — ablations (OCT)",
    dataset="oct2017", protocol="standard",
    methods=(("ae-proxy", ""), ("memae", ""), ("proxyano", "EncDec+mem"), ("proxyano", "2xEncDec+SI"),
             ("proxyano", "2xEncDec+SI+mem"), ("proxyano", "2xEncDec+SI+rep"), ("proxyano", "2xEncDec+SI+mem+rep"),
             PROXYANO_FINAL),
    metrics=("auroc|image",), parts=(_oct("", ("auroc|image",)),),
    needs_root=PROXYANO_OCT_NEEDS, reference_method="proxyano",
    paper_rows={("ae-proxy", ""): ("ae", "EncDec"), ("memae", ""): ("memae", "EncDec+mem*")},
    footnotes=(PROXYANO_NOTES[0],
               "Rows 1–7 score ‖I − Î‖_F, row 8 (+lat) eq. 13; mem = ProxyAno's nearest-item EMA memory, mem* = "
               "MemAE's; rep = the repair losses on pseudo-abnormal proxies (eq. 11). MemAE is the model of Table I.",
               PROXYANO_NOTES[2]),
))

PROXYANO_TABLE5 = register_table(TableSpec(
    table_id="proxyano-table5",
    title="ProxyAno Table V — latent vs image-space anomaly score",
    dataset="brain_mri_tumor", protocol="standard",
    methods=(("proxyano", "2xEncDec+SI+mem+rep"), PROXYANO_FINAL),
    metrics=("auroc|image",),
    parts=(_proxyano_part("Brain MRI", "proxyano-brain", PROXYANO_BRAIN_NEEDS, "brain_mri_tumor", ("auroc|image",)),
           _oct("Retinal OCT", ("auroc|image",))),
    needs_root=f"{PROXYANO_BRAIN_NEEDS}; {PROXYANO_OCT_NEEDS}", reference_method="proxyano",
    footnotes=(PROXYANO_NOTES[0],
               "Both rows are the final model's weights (Table I): image space = ‖I − Î‖_F, latent = eq. 13.",
               PROXYANO_NOTES[2]),
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
    protocol="standard",
    # table1's methods plus the baselines that need real anatomy to say anything (diffusion, feature banks, DAE)
    methods=TABLE1.methods + (("anoddpm", ""), ("patchcore", ""), ("ddpm", ""), ("autoddpm", ""), ("dae", ""),
                              ("cyclic-unet", "")),
    metrics=TABLE1.metrics,
    store=_lgg_store,
    overrides=AT_128_PX,
    footnotes=(
        "Data: ../shared/data LGG kaggle_3m (every 3rd slice, 128 px); train = tumour-free slices of training "
        "patients, val = tumour-free slices of validation patients, test = held-out patients (tumour + tumour-free "
        "slices); patient-level split datasets/splits/lgg/lgg_patients.csv. The 'brain' mask is a head mask. "
        "cyclic-unet's intermediate modality is the pre-contrast T1 (the release has no native T1).",
        *TABLE1.footnotes[1:],
    ),
))
