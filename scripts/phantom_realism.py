"""Phantom realism, measured (issue 21): the phantom's healthy slices against real healthy scans.

Why: the phantom generator (datasets/phantom.py) should change only where it is measurably unlike real data.
This script prints, per modality pair, one table with phantom / real / ratio / verdict columns:

- ``t1``: phantom T1 vs IXI T1 (``ra-ixi-dev``: 36 shared volumes, 11 central slices at 2 mm, RA's per-slice
  98th-percentile preparation); ``flair``: phantom FLAIR vs the tumour-free LGG FLAIR slices (``lgg_store``);
  the phantom of ``--profile`` at 128 px, scaled by its 98th percentile like the real sets (``--phantom-normalise
  median``: as table1 stores it, which sets every brain median to 0.5 and so removes intensity spread by design).
  Healthy training slices throughout (the AE rows: trained on train, measured on val).
- Intensities (brain pixels): p5/25/50/75/95; 1-D Wasserstein (W1) distances between subjects within each set
  and between the sets (pooled and per subject pair).
- Tissue contrast: a 3-class multi-Otsu split of each subject's brain pixels → class means by brightness,
  named by the modality's tissue order (T1: CSF < GM < WM; FLAIR: CSF < WM < GM) → GM/WM, CSF/WM, CSF share;
  noise = median |x − median₃ₓ₃(x)| over the brain core ÷ the WM mean.
- Variability: between adjacent slices of a subject (|Δ mean| inside the stored mask, 1 − SSIM of the frames)
  and between subjects (std of the per-subject brain mean; coefficient of variation of the largest slice's area).
- A trained AE (the suite's ``ae``, default-profile config, capped at ``--ae-steps`` optimiser steps on either
  set: the same budget for both): validation L1 / MSE per pixel inside the stored mask, on its own set and on
  the other one (models cached under ``--models``: a rerun retrains nothing).

Brain pixels: the real stores are not skull-stripped (their mask is the head), so their brain is found per slice
by :func:`brain_region` (tissue above the lowest multi-Otsu threshold, eroded until one large component no longer
touches the head's rim, grown back, holes filled); slices where that fails are left out of the brain measures
(the coverage row says how many). The phantom's brain goes through the same steps without the rim test, so outer
CSF is treated alike. Verdict: ``similar`` when phantom / real is within [1/1.25, 1.25] (for the W1 rows: when
the between-set distance is at most 1.25 × the larger within-set one), ``n/c`` where the slice spacing differs.

Usage: ``OMP_NUM_THREADS=1 python scripts/phantom_realism.py [--pairs t1 flair] [--ae-steps 300 | --no-ae]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.filters import threshold_multiotsu  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmark.device import pick_device  # noqa: E402
from benchmark.errors import PhbenchError  # noqa: E402
from benchmark.models import ModelStore, model_spec, obtain  # noqa: E402
from benchmark.profiles import configure, get_profile  # noqa: E402
from benchmark.scoring import score_slices  # noqa: E402
from datasets.base import DEFAULT_CACHE, shared_release  # noqa: E402
from datasets.store import SliceSet, SliceStore  # noqa: E402

BAND = 1.25  # phantom / real within [1/BAND, BAND] → similar
RIM_PX = 2  # a brain candidate may not come within this many pixels (plus the erosion) of the head's edge
MAX_ERODE = 7  # pixels: erosions tried to cut the brain from the scalp
MIN_SHARE = 0.15  # the brain component's least share of the head
QUANTILES = (5, 25, 50, 75, 95)
W1_GRID = np.linspace(0.0005, 0.9995, 1000)  # quantile levels: W1 = mean |Q_a − Q_b| over them
TISSUE_ORDER = {"t1": ("CSF", "GM", "WM"), "flair": ("CSF", "WM", "GM")}  # multi-Otsu classes, dark to bright
MIN_SUBJECT_PX = 2000  # brain pixels a subject needs for its own tissue classes and W1


# ---------------------------------------------------------------------------------------------------
# slices


def brain_region(image: np.ndarray, mask: np.ndarray, *, scalp: bool) -> np.ndarray:
    """Brain pixels of one slice (bool), or an all-False array where none is found.

    Tissue = mask pixels above the lowest 3-class multi-Otsu threshold (that drops background, skull and outer
    CSF); it is eroded until its largest component is at least ``MIN_SHARE`` of the mask and, where ``scalp`` is
    True (a head mask), no longer reaches the head's rim (so it is not the scalp), then grown back inside the
    tissue and its holes (ventricles) filled."""
    head = mask > 0.5
    empty = np.zeros_like(head)
    if head.sum() < 100:
        return empty
    try:
        tissue = head & (image > threshold_multiotsu(image[head], classes=3)[0])
    except ValueError:  # fewer than three grey levels: no tissue classes to tell apart
        return empty
    edge = ndimage.distance_transform_edt(head)
    for r in range(1, MAX_ERODE + 1):
        core = ndimage.binary_erosion(tissue, iterations=r)
        lab, n = ndimage.label(core)
        if n == 0:
            return empty
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        if scalp:
            sizes[np.unique(lab[core & (edge <= RIM_PX + r)])] = 0
        if sizes.max() >= MIN_SHARE * head.sum():
            grown = ndimage.binary_dilation(lab == sizes.argmax(), iterations=r) & tissue
            return ndimage.binary_fill_holes(grown) & head
        if not scalp:  # no scalp to cut away: a first erosion that leaves no large component will not either
            return empty
    return empty


@dataclass(frozen=True)
class Slices:
    """One set's healthy slices as the measures read them (first channel; masks as bool)."""

    name: str
    image: np.ndarray  # [N, H, W] float32
    mask: np.ndarray  # [N, H, W] the store's mask: the brain (phantom) or the head (scans not skull-stripped)
    region: np.ndarray  # [N, H, W] brain pixels (brain_region); all False where none was found
    subject: np.ndarray  # [N] subject ids
    index: np.ndarray  # [N] slice numbers in the volume
    step: int  # slice-number difference of adjacent stored slices
    spacing_mm: float | None  # their distance, where known

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(self.subject.tolist()))


def slices_of(name: str, s: SliceSet, *, scalp: bool, spacing_mm: float | None) -> Slices:
    """A store's slice set as :class:`Slices` (``scalp``: its mask is a head mask)."""
    rows = s.rows
    image = np.asarray(s.store.images[rows, 0], dtype=np.float32)
    mask = np.asarray(s.store.brain[rows, 0]) > 0.5
    region = np.stack([brain_region(x, m, scalp=scalp) for x, m in zip(image, mask)])
    m = s.store.manifest.iloc[rows]
    index = m["slice"].to_numpy()
    steps = [np.diff(np.sort(index[m["subject"].to_numpy() == sid])) for sid in m["subject"].unique()]
    step = int(np.median(np.concatenate(steps))) if any(len(d) for d in steps) else 1
    return Slices(name, image, mask, region, m["subject"].to_numpy(), index, step, spacing_mm)


# ---------------------------------------------------------------------------------------------------
# measures


def quantile_function(values: np.ndarray) -> np.ndarray:
    return np.quantile(values, W1_GRID)


def w1(qa: np.ndarray, qb: np.ndarray) -> float:
    """1-D Wasserstein distance from two quantile functions on ``W1_GRID``."""
    return float(np.mean(np.abs(qa - qb)))


def subject_pixels(s: Slices, *, shape_only: bool = False) -> dict[str, np.ndarray]:
    """Brain pixels per subject (subjects with fewer than ``MIN_SUBJECT_PX`` left out); ``shape_only``: divided by
    the subject's median, so only the histogram's shape is compared, not the scale the normalisation set."""
    out = {}
    for sid in s.subjects:
        sel = s.subject == sid
        px = s.image[sel][s.region[sel]]
        if px.size >= MIN_SUBJECT_PX:
            out[sid] = px / np.median(px) if shape_only else px
    return out


def tissue_classes(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class means dark → bright, class shares) of a 3-class multi-Otsu split."""
    lab = np.digitize(px, threshold_multiotsu(px, classes=3))
    return (np.array([px[lab == k].mean() for k in range(3)]),
            np.array([(lab == k).mean() for k in range(3)]))


def noise_level(s: Slices, modality: str) -> float:
    """Median over slices of median |x − median₃ₓ₃(x)| inside the WM class's interior (its multi-Otsu class
    eroded by one pixel, where edges between tissues are rare: mostly noise and fine texture)."""
    wm = TISSUE_ORDER[modality].index("WM")
    out = []
    for x, r in zip(s.image, s.region):
        if r.sum() < 500:
            continue
        inner = ndimage.binary_erosion(r & (np.digitize(x, threshold_multiotsu(x[r], classes=3)) == wm), iterations=1)
        if inner.sum() >= 50:
            out.append(np.median(np.abs(x - ndimage.median_filter(x, 3))[inner]))
    return float(np.median(out)) if out else float("nan")


def adjacent_pairs(s: Slices) -> list[tuple[int, int]]:
    """Row pairs of consecutive stored slices of one subject."""
    pairs = []
    for sid in s.subjects:
        rows = np.flatnonzero(s.subject == sid)
        rows = rows[np.argsort(s.index[rows])]
        pairs += [(int(a), int(b)) for a, b in zip(rows[:-1], rows[1:]) if s.index[b] - s.index[a] == s.step]
    return pairs


def describe(s: Slices, modality: str) -> dict[str, float]:
    """Every single-set measure of ``s`` (name → value)."""
    out: dict[str, float] = {"subjects": len(s.subjects), "slices": len(s.image),
                             "brain found (share of slices)": float(s.region.any(axis=(1, 2)).mean())}
    pooled = s.image[s.region]
    for q, v in zip(QUANTILES, np.percentile(pooled, QUANTILES)):
        out[f"brain p{q}"] = float(v)
    per = subject_pixels(s)
    classes = [tissue_classes(px) for px in per.values()]
    names = TISSUE_ORDER[modality]
    means = {n: np.array([c[0][k] for c in classes]) for k, n in enumerate(names)}
    out["GM / WM"] = float(np.mean(means["GM"] / means["WM"]))
    out["CSF / WM"] = float(np.mean(means["CSF"] / means["WM"]))
    out["CSF-class share"] = float(np.mean([c[1][names.index("CSF")] for c in classes]))
    out["WM-interior noise ÷ WM mean"] = noise_level(s, modality) / float(np.mean(means["WM"]))
    pairs = adjacent_pairs(s)
    inside = [s.image[i][s.mask[i]].mean() if s.mask[i].any() else 0.0 for i in range(len(s.image))]
    out["slice↔slice |Δ mean|"] = float(np.mean([abs(inside[a] - inside[b]) for a, b in pairs]))
    out["slice↔slice 1 − SSIM"] = float(np.mean([1.0 - structural_similarity(s.image[a], s.image[b], data_range=1.0)
                                                  for a, b in pairs]))
    out["subject↔subject std of brain mean"] = float(np.std([px.mean() for px in per.values()]))
    biggest = [s.mask[s.subject == sid].sum(axis=(1, 2)).max() for sid in s.subjects]
    out["subject↔subject CV of largest mask area"] = float(np.std(biggest) / np.mean(biggest))
    out["mask area px (median slice)"] = float(np.median(s.mask.sum(axis=(1, 2))))
    out["brain area px (largest slice of a subject, median)"] = float(np.median(
        [s.region[s.subject == sid].sum(axis=(1, 2)).max() for sid in s.subjects]))
    found = s.region.any(axis=(1, 2))
    out["brain share of mask (median slice)"] = float(np.median(s.region[found].sum(axis=(1, 2))
                                                                / s.mask[found].sum(axis=(1, 2))))
    return out


def w1_summary(a: Slices, b: Slices, *, shape_only: bool = False) -> dict[str, float]:
    """W1 between the pooled brain pixels of ``a`` and ``b``, and the medians over subject pairs within each set and
    between the sets (``shape_only``: each subject's pixels ÷ its median)."""
    pa, pb = subject_pixels(a, shape_only=shape_only), subject_pixels(b, shape_only=shape_only)
    qa = {k: quantile_function(v) for k, v in pa.items()}
    qb = {k: quantile_function(v) for k, v in pb.items()}

    def within(q: dict[str, np.ndarray]) -> float:
        keys = list(q)
        return float(np.median([w1(q[x], q[y]) for i, x in enumerate(keys) for y in keys[i + 1:]] or [np.nan]))

    return {"within a": within(qa), "within b": within(qb),
            "between": float(np.median([w1(x, y) for x in qa.values() for y in qb.values()])),
            "pooled": w1(quantile_function(np.concatenate(list(pa.values()))),
                         quantile_function(np.concatenate(list(pb.values()))))}


# ---------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Row:
    measure: str
    phantom: float
    real: float
    verdict: str

    @property
    def ratio(self) -> float:
        return self.phantom / self.real if self.real else float("nan")


def ratio_verdict(a: float, b: float) -> str:
    if not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return "—"
    return "similar" if 1.0 / BAND <= a / b <= BAND else "unlike"


INFO_ROWS = ("subjects", "slices", "brain found (share of slices)")
SPACING_ROWS = ("slice↔slice |Δ mean|", "slice↔slice 1 − SSIM")


def compare(phantom: Slices, real: Slices, modality: str) -> list[Row]:
    """The rows of one modality pair (AE rows apart: :func:`ae_rows`)."""
    a, b = describe(phantom, modality), describe(real, modality)
    same_spacing = phantom.spacing_mm is not None and phantom.spacing_mm == real.spacing_mm
    rows = []
    for k in a:
        verdict = ("" if k in INFO_ROWS else "n/c" if k in SPACING_ROWS and not same_spacing
                   else ratio_verdict(a[k], b[k]))
        rows.append(Row(k, a[k], b[k], verdict))
    for shape_only, unit in ((False, ""), (True, " (÷ subject median)")):
        w = w1_summary(phantom, real, shape_only=shape_only)
        rows.append(Row(f"W1{unit} subject↔subject within the set (median)", w["within a"], w["within b"],
                        ratio_verdict(w["within a"], w["within b"])))
        larger = max(w["within a"], w["within b"])
        for label, v in (("subject pairs (median)", w["between"]), ("pooled", w["pooled"])):
            rows.append(Row(f"W1{unit} phantom↔real {label} | larger within", v, larger,
                            "similar" if v <= BAND * larger else "unlike"))
    return rows


# ---------------------------------------------------------------------------------------------------
# the AE


def trained_ae(train: SliceSet, val: SliceSet, models: ModelStore, steps: int, device: torch.device):
    """The suite's ``ae`` with the default profile's config, trained for exactly ``steps`` optimiser steps (the
    epoch budget lifted so both sets get the same number of updates), cached in ``models``."""
    profile = get_profile("default")
    spec = model_spec("ae", "", lambda cls: configure(cls, profile, epochs=10_000, max_steps=steps), train, val, 0)
    got = obtain(spec, train, val, models, device, progress=False)
    wall = float(got.training.get("train_wall_s") or 0.0)
    return got.method, f"{wall:.0f} s" + ("" if got.trained else " earlier, reused")


def reconstruction_error(method, s: SliceSet) -> tuple[float, float]:
    """(L1, MSE) per pixel inside the stored mask, pooled over ``s``."""
    maps = score_slices(method, s, progress=False).anomaly_map.float().cpu()
    inside = torch.from_numpy(np.asarray(s.store.brain[s.rows]) > 0.5)
    n = float(inside.sum())
    return float(maps[inside].sum()) / n, float((maps[inside] ** 2).sum()) / n


def ae_rows(ph: tuple[SliceSet, SliceSet], real: tuple[SliceSet, SliceSet], models: ModelStore, steps: int,
            device: torch.device) -> tuple[list[Row], dict[str, str]]:
    """Own and cross validation errors of an AE trained on either set; the rows and the training wall times."""
    ae_ph, t_ph = trained_ae(*ph, models, steps, device)
    ae_real, t_real = trained_ae(*real, models, steps, device)
    own_ph, own_real = reconstruction_error(ae_ph, ph[1]), reconstruction_error(ae_real, real[1])
    cross_ph, cross_real = reconstruction_error(ae_real, ph[1]), reconstruction_error(ae_ph, real[1])
    rows = []
    for k, name in enumerate(("L1", "MSE")):
        rows.append(Row(f"AE val {name} / mask px, trained on this set", own_ph[k], own_real[k],
                        ratio_verdict(own_ph[k], own_real[k])))
        rows.append(Row(f"AE val {name} / mask px, trained on the other set", cross_ph[k], cross_real[k],
                        ratio_verdict(cross_ph[k], cross_real[k])))
    pen_ph, pen_real = cross_ph[0] / own_ph[0], cross_real[0] / own_real[0]
    rows.append(Row("AE transfer penalty: other-set L1 ÷ own L1", pen_ph, pen_real,
                    "similar" if max(pen_ph, pen_real) <= BAND else "unlike"))
    return rows, {"phantom": t_ph, "real": t_real}


def render(title: str, rows: list[Row]) -> str:
    table = [[r.measure, f"{r.phantom:.4g}", f"{r.real:.4g}", f"{r.ratio:.3f}", r.verdict] for r in rows]
    return f"{title}\n" + tabulate(table, headers=["measure", "phantom", "real", "ratio", "verdict"],
                                   tablefmt="github")


# ---------------------------------------------------------------------------------------------------
# data


def _real_store(modality: str, data_root: Path | None) -> tuple[SliceStore, float | None]:
    """The real healthy store of a modality and its slice spacing in mm (None: unknown)."""
    from datasets.lgg_benchmark import lgg_store
    from datasets.recipes_paper import SETUPS

    if modality == "t1":
        root = data_root / "ixi" if data_root else shared_release("ixi")
        if root is None or not Path(root).is_dir():
            raise PhbenchError("no IXI T1 folder found: pass --data <folder holding ixi/> or set PHBENCH_SHARED_DATA")
        return SETUPS["ra-ixi-dev"].prepare(Path(root)), 2.0
    # LGG keeps every 3rd slice of volumes whose thickness the tifs do not record
    return lgg_store(None if data_root is None else data_root / "lgg-mri-segmentation"), None


def main(argv: list[str] | None = None) -> int:
    from datasets.phantom import SPACING_MM, phantom_store

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", choices=sorted(TISSUE_ORDER), default=["t1", "flair"])
    ap.add_argument("--profile", default="default", help="phantom size (datasets.phantom.PHANTOM_SIZES)")
    ap.add_argument("--data", type=Path, default=None, help="shared data folder (default: PHBENCH_SHARED_DATA or "
                                                            "../shared/data)")
    ap.add_argument("--ae-steps", type=int, default=300, help="optimiser steps of each AE (batch 8)")
    ap.add_argument("--no-ae", action="store_true", help="skip the AE rows (no training)")
    ap.add_argument("--models", type=Path, default=DEFAULT_CACHE / "realism", help="trained AEs (reused)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--phantom-normalise", choices=["p98", "median"], default="p98",
                    help="the phantom's volume scaling: p98 (default) compares the generator under the percentile "
                         "scaling the real sets use; median is the phantom as table1 stores it (recipe v2)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    names = {"t1": "IXI T1 (ra-ixi-dev)", "flair": "LGG FLAIR tumour-free (lgg-dev)"}
    for modality in args.pairs:
        t0 = time.perf_counter()
        ph_store = phantom_store(args.profile, modality=modality, normalise=args.phantom_normalise)
        real_store, spacing = _real_store(modality, args.data)
        ph = slices_of("phantom", ph_store.split("train", label=0), scalp=False, spacing_mm=SPACING_MM)
        real = slices_of(names[modality], real_store.split("train", label=0), scalp=True, spacing_mm=spacing)
        rows = compare(ph, real, modality)
        t_measures = time.perf_counter() - t0
        note = f"measures {t_measures:.0f} s"
        if not args.no_ae:
            t1 = time.perf_counter()
            more, walls = ae_rows((ph_store.split("train", label=0), ph_store.split("val", label=0)),
                                  (real_store.split("train", label=0), real_store.split("val", label=0)),
                                  ModelStore(args.models), args.ae_steps, device)
            rows += more
            note += (f"; AE {time.perf_counter() - t1:.0f} s ({args.ae_steps} steps each; training wall "
                     f"phantom {walls['phantom']}, real {walls['real']})")
        print(render(f"\n## {modality}: phantom ({args.profile}, {ph_store.path.name}) vs {names[modality]} "
                     f"({real_store.path.name})", rows))
        print(f"slice steps: phantom {ph.step} ({ph.spacing_mm} mm), real {real.step} "
              f"({'unknown' if real.spacing_mm is None else f'{real.spacing_mm} mm'}); {note}")
    print(f"\nverdict: similar when phantom / real is within [{1 / BAND:.2f}, {BAND}]; W1 rows: the phantom↔real "
          f"distance at most {BAND} × the larger within-set distance; n/c: slice spacings differ or are unknown.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PhbenchError as err:  # bad or missing input: one line, no traceback
        print(f"phantom_realism: {err}", file=sys.stderr)
        sys.exit(2)
