"""``phbench data info <dataset> --root …``: what a root folder holds and what a recipe makes of it.

It lists subjects by split × pathology (and release-specific facts: sites, label releases, segs present,
ages), then prepares a handful of subjects with the recipe and writes a preview grid (image + lesion
overlay + boxes) so a user sees at once whether orientation, masks and normalisation are right.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import DataError
from benchmark.registry import get_dataset
from datasets.base import Subject

_META_KEYS = ("release", "naming", "grade", "site", "part", "series", "class", "institution", "folder_split",
              "space", "sex")


def _table(counter: collections.Counter, rows: list[str], cols: list[str], title: str) -> list[str]:
    w0 = max([len(title)] + [len(r) for r in rows])
    widths = [max(len(c), 6) for c in cols]
    lines = [f"  {title:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths)) + f"  {'total':>6}"]
    for r in rows:
        vals = [counter.get((r, c), 0) for c in cols]
        lines.append(f"  {r:<{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, widths)) + f"  {sum(vals):>6}")
    return lines


def _pick(subjects: list[Subject], n: int) -> list[Subject]:
    """Up to ``n`` subjects spread over pathologies (anomalous first), evenly through each group."""
    groups: dict[str, list[Subject]] = collections.defaultdict(list)
    for s in subjects:
        groups[s.pathology].append(s)
    order = sorted(groups, key=lambda p: (p == "healthy", p))
    picked: list[Subject] = []
    k = 0
    while len(picked) < min(n, len(subjects)):
        progressed = False
        for p in order:
            g = groups[p]
            idx = int(round(k * (len(g) - 1) / max(1, n - 1))) if len(g) > 1 else 0
            cand = [s for s in g if s not in picked]
            if cand and len(picked) < n:
                picked.append(g[idx] if g[idx] not in picked else cand[0])
                progressed = True
        k += 1
        if not progressed:
            break
    return picked


def _best_slice(slices: list) -> Any:
    """The slice with the largest lesion (else the middle one) represents a subject in the preview."""
    if not slices:
        return None
    areas = [int(s.lesion.sum()) if s.lesion is not None else 0 for s in slices]
    if max(areas) > 0:
        return slices[int(np.argmax(areas))]
    return slices[len(slices) // 2]


def render_preview(items: list[tuple[str, Any]], out_png: str | Path, title: str) -> None:
    """Grid of (caption, PreparedSlice): channel 0 in grey, lesion in red, boxes in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = max(1, len(items))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.3 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (cap, sl) in zip(axes.ravel(), items):
        img = np.asarray(sl.image[0], dtype=np.float32)
        lo, hi = np.percentile(img, [1, 99]) if np.ptp(img) > 0 else (0.0, 1.0)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        if sl.lesion is not None and sl.lesion.any():
            over = np.zeros((*img.shape, 4), np.float32)
            over[sl.lesion > 0] = (1.0, 0.1, 0.1, 0.45)
            ax.imshow(over, interpolation="nearest")
        for x0, y0, x1, y1 in sl.boxes:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


REPO = Path(__file__).resolve().parents[1]

# where the shared development data (data/README.md) keeps each set, for ``root=None``
SHARED_FOLDERS = {
    "lgg": "lgg-mri-segmentation", "ixi": "ixi", "brats": "brats", "brats2023": "brats", "brats2024": "brats",
    "brain_tumor_detection": "brain-mri-images-for-brain-tumor-detection",
    "brain_tumor_classification": "brain-tumor-classification-mri", "brain_mri_tumor": ".",
    "oct2017": "kermany-oct2017", "idrid": "idrid",
}


def default_root(name: str, layout: str) -> Path:
    """``root=None``: the generated phantom, or the set's folder in the shared data, else a clear error."""
    import os

    if name == "phantom":
        from benchmark.profiles import get_profile
        from datasets.base import DEFAULT_CACHE
        from datasets.phantom import write_phantom

        return write_phantom(DEFAULT_CACHE / "phantom", **get_profile("smoke").phantom)
    shared = Path(os.environ.get("PHBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
    if name in SHARED_FOLDERS and (shared / SHARED_FOLDERS[name]).is_dir():
        return (shared / SHARED_FOLDERS[name]).resolve()
    raise DataError(f"phbench data info {name}", f"no --root given and no default copy; pass --root <folder> "
                                                 f"laid out as {layout}")


def resolve_recipe(name: str) -> Any:
    """A recipe by name or id: the paper recipes, else the phantom's ``phantom-<modality>[-<size>]``."""
    from datasets.recipes_paper import get_recipe

    try:
        return get_recipe(name)
    except KeyError:
        base = name.partition("@v")[0]
        if base.startswith("phantom-"):
            from datasets.phantom import phantom_recipe

            parts = base.split("-")
            return phantom_recipe(parts[1], int(parts[2]) if len(parts) > 2 else 128)
        raise


def data_info(name: str, root: str | Path | None, out_png: str | Path | None = None, recipe: Any = None, *,
              n_preview: int = 8, full: bool = False, cache_dir: str | Path | None = None) -> str:
    """Counts per split / pathology (+ release facts) as text, and a preview PNG at ``out_png``
    (default ``out/preview-<dataset>.png``).

    ``root=None`` uses the shared development copy when there is one. ``recipe``: a Recipe, a recipe
    name/id, or None for the adapter's default. ``full=True`` prepares the whole store (official splits)
    and adds slice counts per split × pathology.
    """
    cls = get_dataset(name)
    root = Path(root) if root is not None else default_root(name, cls.layout)
    out_png = Path(out_png) if out_png is not None else REPO / "out" / f"preview-{name}.png"
    adapter = cls(root)
    subjects = adapter.subjects()
    if not subjects:
        raise DataError(root, f"no {name} subjects found; expected layout: {adapter.layout}")
    rec = resolve_recipe(recipe or adapter.default_recipe) if recipe is None or isinstance(recipe, str) else recipe
    lines = [f"{name}: {adapter.title}", f"  root:   {Path(root)}", f"  source: {adapter.url}",
             f"  layout: {adapter.layout}", f"  recipe: {rec.id}", "", f"subjects: {len(subjects)}"]
    split_of = lambda s: s.split or "unsplit"  # noqa: E731
    c = collections.Counter((split_of(s), s.pathology) for s in subjects)
    splits = sorted({split_of(s) for s in subjects})
    paths = sorted({s.pathology for s in subjects}, key=lambda p: (p != "healthy", p))
    lines += _table(collections.Counter({(p, sp): v for (sp, p), v in c.items()}), paths, splits, "pathology \\ split")
    extra = _meta_summary(subjects)
    if extra:
        lines += [""] + extra
    # preview
    items, errors = [], []
    slice_counts: collections.Counter = collections.Counter()
    for s in _pick(subjects, n_preview):
        try:
            sl = rec.slices(adapter.load(s), s, split_of(s))
        except DataError as err:
            errors.append(str(err))
            continue
        for x in sl:
            slice_counts[(x.label, x.pathology)] += 1
        best = _best_slice(sl)
        if best is not None:
            tag = f"{best.pathology}" if best.label else "healthy"
            items.append((f"{s.id[-28:]} z={best.slice}\n{tag[:34]}", best))
    by_label = ", ".join(f"{'anomalous' if lab else 'normal'}/{p} {n}" for (lab, p), n in sorted(slice_counts.items()))
    lines += ["", f"preview ({rec.id}): {len(items)} subjects, slices by label/pathology: {by_label or 'none'}"]
    lines += [f"  skipped: {e}" for e in errors]
    if full:
        from datasets.base import prepare

        store = prepare(adapter, rec, cache_dir=cache_dir, skip_bad=True)
        lines += ["", f"prepared store {store.path} ({len(store)} slices, fingerprint {store.fingerprint[:12]})"]
        lines += ["  " + ln for ln in store.counts().to_string(index=False).splitlines()]
        lines += [f"  skipped: {e}" for e in store.meta.get("skipped", [])]
    render_preview(items, out_png, f"{name} — {rec.id}")
    lines.append(f"preview written to {out_png}")
    return "\n".join(lines)


def _meta_summary(subjects: list[Subject]) -> list[str]:
    out = []
    for key in _META_KEYS:
        vals = [s.meta.get(key) for s in subjects if s.meta.get(key) not in (None, "")]
        if vals:
            cnt = collections.Counter(map(str, vals)).most_common(10)
            out.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in cnt))
    for key in ("has_seg", "skull_stripped"):
        vals = [s.meta[key] for s in subjects if key in s.meta]
        if vals:
            out.append(f"  {key}: yes {sum(map(bool, vals))}, no {len(vals) - sum(map(bool, vals))}")
    ages = [float(s.meta["age"]) for s in subjects if isinstance(s.meta.get("age"), (int, float))]
    if ages:
        out.append(f"  age: {min(ages):.1f}–{max(ages):.1f} (n={len(ages)})")
    n_slices = [len(s.meta["slice_numbers"]) for s in subjects if "slice_numbers" in s.meta]
    if n_slices:
        out.append(f"  slice files: {sum(n_slices)} ({min(n_slices)}–{max(n_slices)} per subject)")
    boxes = [sum(len(b) for b in s.meta["boxes"].values()) for s in subjects if "boxes" in s.meta]
    if boxes:
        out.append(f"  annotated boxes: {sum(boxes)} on {sum(1 for b in boxes if b)} volumes")
    return out
