"""Why is image AUROC near chance on table1? (issue 21) What each image score ranks, per pathology.

For the phantom FLAIR test set of table1 (and, model-free, for lgg-dev's test split) it prints:

- the data: per pathology, slices, lesion area (pixels; share of the brain), and the AUROC of plain slice
  properties used as scores: mean brain intensity, brain area, how central the slice is in its subject's slab
  (−|slice − the subject's middle slice|); and the mean intensity of lesion-free brain pixels per subject kind
  (per-volume 98th-percentile normalisation divides a lesion volume by a brighter reference);
- per method (default ``ae`` and ``intensity``, the table1 runs' trained models, read from ``--store``): AUROC of
  the native image score (the stored scores; reproduced from the maps by the first rule in ``RULES`` that matches
  them, or labelled "the method's own" when none does, e.g. ProxyAno's latent-distance score),
  of an oracle (mean map inside the lesion; a lesion-free slice: mean map inside the brain), and of the native
  rule on the map with the lesion's pixels replaced by the slice's median lesion-free brain value ("outside");
  the lesion's share of the map's sum; Spearman correlations of the image score with brain area, centrality and
  mean brain intensity on the lesion-free slices (what the score ranks when there is no lesion).

Negatives are every lesion-free test slice (label 0), as in the table. Nothing here is tuned on test data.
Usage (after ``python -m benchmark table table1 --profile default --methods ae intensity --store S``):
``python scripts/why_image_auroc.py --store S [--methods ae intensity] [--no-lgg]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmark.contract import DataSpec  # noqa: E402
from benchmark.device import pick_device  # noqa: E402
from benchmark.errors import PhbenchError  # noqa: E402
from benchmark.models import ModelStore  # noqa: E402
from benchmark.models import scorer as model_scorer  # noqa: E402
from benchmark.profiles import configure, get_profile  # noqa: E402
from benchmark.registry import get_method, get_table  # noqa: E402
from benchmark.runner import load_trained, plan_run  # noqa: E402
from benchmark.runstore import RunStore  # noqa: E402
from methods.blocks.reconstruction import max_of_mean_filtered  # noqa: E402
from phantom_realism import brain_region  # noqa: E402  (scripts/ is on the path)
from protocols import metrics as M  # noqa: E402
from protocols.evaluate import ScoreSet, collect  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _brain_quantile(q: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def rule(maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        inside = torch.where(brain > 0.5, maps, torch.full_like(maps, float("nan"))).flatten(1)
        got = torch.nanquantile(inside, q, dim=1)
        return torch.where(torch.isnan(got), maps.flatten(1).amax(1), got)  # no brain pixel: the frame's max
    return rule


# image-score rules the suite's methods use, tried in this order against a method's stored scores
RULES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean over the frame": lambda m, b: m.flatten(1).mean(1),
    "q99 inside the brain": _brain_quantile(0.99),
    "max over the frame": lambda m, b: m.flatten(1).amax(1),
    "max of the 21×21 mean": lambda m, b: max_of_mean_filtered(m, 21),
    "mean inside the brain": lambda m, b: (m * (b > 0.5)).flatten(1).sum(1) / (b > 0.5).flatten(1).sum(1).clamp(min=1),
    "Σ map / Σ soft brain": lambda m, b: m.flatten(1).sum(1) / b.float().flatten(1).sum(1).clamp(min=1e-8),
}
OWN = "the method's own"  # a score no rule of RULES reproduces (e.g. computed from another map than the stored one)


def native_rule(s: ScoreSet) -> str:
    """The rule of ``RULES`` that reproduces the method's image scores from its maps, else ``OWN`` (its stored scores
    are still ranked; only the lesion-free re-scoring needs the rule)."""
    for name, rule in RULES.items():
        got = rule(s.maps.float(), s.brain)
        if torch.allclose(got, s.scores.float(), rtol=1e-4, atol=1e-6):
            return name
    return OWN


def lesion_free_maps(maps: torch.Tensor, lesion: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """The maps with each slice's lesion pixels set to the median of its lesion-free brain pixels."""
    out = maps.clone()
    for i in torch.nonzero(lesion.flatten(1).amax(1) > 0).flatten().tolist():
        les = lesion[i] > 0.5
        rest = maps[i][(brain[i] > 0.5) & ~les]
        out[i][les] = rest.median() if rest.numel() else 0.0
    return out


def centrality(manifest: pd.DataFrame) -> np.ndarray:
    """−|slice − the subject's middle slice| in slice steps (0 at the middle)."""
    z = manifest["slice"].to_numpy().astype(float)
    mid = manifest.groupby("subject")["slice"].transform(lambda v: (v.min() + v.max()) / 2).to_numpy()
    step = manifest.groupby("subject")["slice"].transform(lambda v: np.median(np.diff(np.sort(v))) if len(v) > 1
                                                          else 1).to_numpy()
    return -np.abs(z - mid) / step


def subject_median(images: np.ndarray, brain: np.ndarray, manifest: pd.DataFrame) -> np.ndarray:
    """Per slice, the median mask intensity of all its subject's slices: a lesion-robust volume scale (a lesion
    of a few per cent of the volume barely moves a median, while it can hold the 98th percentile)."""
    subj = manifest["subject"].to_numpy()
    med = {sid: float(np.median(images[subj == sid][brain[subj == sid]])) for sid in np.unique(subj)}
    return np.array([med[sid] for sid in subj])


def groups(manifest: pd.DataFrame, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Positive slices per pathology (and all of them) → rows to rank against the lesion-free slices."""
    path = manifest["pathology"].to_numpy()
    out = {p: (labels == 1) & (path == p) for p in sorted(set(path[labels == 1]))}
    if len(out) > 1:
        out["all abnormal"] = labels == 1
    return out


def _auc(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    keep = pos | neg
    return M.auroc(torch.as_tensor(score[keep]), torch.as_tensor(pos[keep].astype(np.int64)))


def subject_kind(manifest: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """Per slice, its subject's pathology (the one of its abnormal slices; 'healthy' when it has none)."""
    kind = {}
    for sid, p, y in zip(manifest["subject"], manifest["pathology"], labels):
        if y == 1:
            kind[sid] = p
    return manifest["subject"].map(lambda s: kind.get(s, "healthy")).to_numpy()


def data_table(images: np.ndarray, brain: np.ndarray, lesion: np.ndarray, manifest: pd.DataFrame,
               labels: np.ndarray, stripped: np.ndarray | None = None) -> str:
    """Method-free rows per pathology (``stripped``: brain pixels of a head-mask store, to give the lesion's share
    of the brain as well as of the head)."""
    area = brain.sum(axis=(1, 2))
    mean_int = np.array([x[b].mean() if b.any() else 0.0 for x, b in zip(images, brain)])
    q99 = np.array([np.quantile(x[b], 0.99) if b.any() else x.max() for x, b in zip(images, brain)])
    scale = subject_median(images, brain, manifest)
    cen = centrality(manifest)
    les_px = lesion.sum(axis=(1, 2))
    neg = labels == 0
    rows = []
    for p, pos in groups(manifest, labels).items():
        px = les_px[pos]
        with_mask = px > 0
        share = px[with_mask] / area[pos][with_mask]
        row = [p, int(pos.sum()),
               f"{np.median(px[with_mask]):.0f} ({np.percentile(px[with_mask], 10):.0f})" if with_mask.any() else "—",
               f"{100 * np.median(share):.2f}" if with_mask.any() else "—"]
        if stripped is not None:
            keep = with_mask & stripped[pos].any(axis=(1, 2))
            b_px = stripped[pos].sum(axis=(1, 2))
            row.append(f"{100 * np.median(px[keep] / b_px[keep]):.2f} (n={int(keep.sum())})" if keep.any() else "—")
        row += [f"{_auc(v, pos, neg):.3f}" for v in (mean_int, mean_int / scale, q99 / scale, area.astype(float), cen)]
        rows.append(row)
    head = ["pathology", "slices", "lesion px median (p10)", "lesion % of mask"]
    if stripped is not None:
        head.append("lesion % of brain")
    head += ["AUROC mean intensity", "… ÷ subject median", "AUROC q99 ÷ subject median", "AUROC mask area",
             "AUROC centrality"]
    kind = subject_kind(manifest, labels)
    clean = brain & (lesion == 0)
    clean_mean = np.array([x[c].mean() if c.any() else np.nan for x, c in zip(images, clean)])
    free = [f"{k}: {np.nanmean(clean_mean[kind == k]):.3f}" for k in sorted(set(kind))]
    return (tabulate(rows, headers=head, tablefmt="github")
            + "\nmean lesion-free intensity inside the mask, by subject kind: " + ", ".join(free)
            + f"\nlesion-free slices: {int(neg.sum())}")


def rule_rows(name: str, s: ScoreSet) -> list[list]:
    """Image AUROC per pathology of one method's map under every rule of ``RULES`` (fixed rules, none fitted)."""
    labels = s.labels.cpu().numpy()
    scores = {k: rule(s.maps.float(), s.brain).cpu().numpy() for k, rule in RULES.items()}
    return [[name, p, *(f"{_auc(v, pos, labels == 0):.3f}" for v in scores.values())]
            for p, pos in groups(s.manifest, labels).items()]


def method_rows(name: str, s: ScoreSet) -> tuple[list[list], str]:
    """AUROC rows per pathology for one method, and a line of correlations on the lesion-free slices."""
    rule = native_rule(s)
    maps, brain, lesion = s.maps.float(), s.brain, s.lesion
    labels = s.labels.cpu().numpy()
    score = s.scores.float().cpu().numpy()
    outside = None if rule == OWN else RULES[rule](lesion_free_maps(maps, lesion, brain), brain).cpu().numpy()
    les, inb = lesion > 0.5, brain > 0.5
    in_lesion = ((maps * les).flatten(1).sum(1) / les.flatten(1).sum(1).clamp(min=1)).cpu().numpy()
    in_brain = ((maps * inb).flatten(1).sum(1) / inb.flatten(1).sum(1).clamp(min=1)).cpu().numpy()
    has_lesion = les.flatten(1).any(1).cpu().numpy()
    oracle = np.where(has_lesion, in_lesion, in_brain)
    lesion_share = ((maps * les).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp(min=1e-12)).cpu().numpy()
    neg = labels == 0
    rows = []
    for p, pos in groups(s.manifest, labels).items():
        has = pos & has_lesion
        rows.append([name, rule, p, f"{_auc(score, pos, neg):.3f}",
                     f"{_auc(oracle, has, neg):.3f}" if has.any() else "—",
                     "—" if outside is None else f"{_auc(outside, pos, neg):.3f}",
                     f"{100 * np.median(lesion_share[has]):.2f}" if has.any() else "—"])
    area = inb.flatten(1).sum(1).cpu().numpy().astype(float)
    mean_int = ((s.images.float().mean(1, keepdim=True) * inb).flatten(1).sum(1)
                / inb.flatten(1).sum(1).clamp(min=1)).cpu().numpy()
    cen = centrality(s.manifest)
    corr = ", ".join(f"{k} {spearmanr(score[neg], v[neg])[0]:+.2f}"
                     for k, v in (("brain area", area), ("centrality", cen), ("mean brain intensity", mean_int)))
    return rows, f"{name}: Spearman ρ of the image score on lesion-free slices with {corr}"


METHOD_HEAD = ["method", "native image score", "pathology", "AUROC image score", "AUROC oracle (in lesion)",
               "AUROC outside lesion", "lesion % of map sum"]


def _arrays(slices) -> tuple[np.ndarray, ...]:
    r = slices.rows
    st = slices.store
    return (np.asarray(st.images[r, 0]), np.asarray(st.brain[r, 0]) > 0.5, np.asarray(st.lesion[r, 0]),
            st.manifest.iloc[r].reset_index(drop=True), st.manifest["label"].to_numpy()[r])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=REPO / "runs", help="the run store table1 ran into")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--methods", nargs="+", default=["ae", "intensity"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-lgg", action="store_true", help="skip lgg-dev's test split")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    profile = get_profile(args.profile)
    spec = get_table("table1")
    part = spec.all_parts[0]
    data = part.store(profile.data_name, None)
    runs = RunStore(args.store / profile.name)
    test = None
    rows, notes, alternatives = [], [], []
    for name in args.methods:
        plan = plan_run(spec, name, "", args.seed, profile, data, part.overrides)
        try:
            method = load_trained(plan, runs, device)
        except FileNotFoundError as err:
            raise PhbenchError(f"{err}: python -m benchmark table table1 --profile {profile.name} --methods "
                               f"{' '.join(args.methods)} --store {args.store}") from None
        test = plan.test
        got = collect(model_scorer(plan.model, method, ModelStore(runs.root), progress=False), plan.test,
                      progress=False)
        more, note = method_rows(name, got)
        rows += more
        notes.append(note)
        alternatives += rule_rows(name, got)
    images, brain, lesion, manifest, labels = _arrays(test)
    print(f"## table1 test set ({profile.name} phantom FLAIR, {data.path.name}): the data\n")
    print(data_table(images, brain, lesion, manifest, labels))
    print("\n## table1: what the methods' image scores rank\n")
    print(tabulate(rows, headers=METHOD_HEAD, tablefmt="github"))
    print("\n".join(notes))
    print("\n## table1: image AUROC of the same maps under each fixed image-score rule\n")
    print(tabulate(alternatives, headers=["method", "pathology", *RULES], tablefmt="github"))
    if not args.no_lgg:
        from datasets.lgg_benchmark import lgg_store

        lgg_test = lgg_store().split("test")
        images, brain, lesion, manifest, labels = _arrays(lgg_test)
        stripped = np.stack([brain_region(x, b, scalp=True) for x, b in zip(images, brain)])
        print(f"\n## lgg-dev test split ({lgg_test.store.path.name}): the data (mask = head)\n")
        print(data_table(images, brain, lesion, manifest, labels, stripped))
        cls = get_method("intensity")
        floor = cls.build(configure(cls, profile), device=device, data=DataSpec.of(lgg_test))
        got = collect(floor, lgg_test, progress=False)
        rows, note = method_rows("intensity", got)
        print("\n" + tabulate(rows, headers=METHOD_HEAD, tablefmt="github"))
        print(note)
        print("\n" + tabulate(rule_rows("intensity", got), headers=["method", "pathology", *RULES], tablefmt="github"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PhbenchError as err:  # bad or missing input: one line, no traceback
        print(f"why_image_auroc: {err}", file=sys.stderr)
        sys.exit(2)
