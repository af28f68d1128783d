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
from datasets.store import BoxRecord

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
        for x0, y0, x1, y1 in (BoxRecord.parse(b).xyxy for b in sl.boxes):
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
        from datasets.base import DEFAULT_CACHE
        from datasets.phantom import phantom_sizes, write_phantom

        return write_phantom(DEFAULT_CACHE / "phantom", **phantom_sizes("smoke"))
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


SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
UNUSED = "unused"  # a subject the split function leaves out of the setup


def suite_setup(name: str, recipe: Any) -> Any:
    """The suite setup (``datasets.recipes_paper.SETUPS``) that prepares ``name`` with ``recipe``: the one with
    this exact recipe, else one with a recipe of the same paper (``afsc_t2`` for ``afsc_t2_brain``); None
    when the suite defines no split for this pair (then the release's own split applies)."""
    from datasets.recipes_paper import SETUPS

    mine = [st for st in SETUPS.values() if getattr(st, "dataset", None) == name]  # MergedSetups have none
    base = getattr(recipe, "name", str(recipe)).partition("@v")[0]
    exact = [st for st in mine if st.recipe == base]
    if exact:
        return exact[0]
    paper = base.split("_")[0]
    same_paper = [st for st in mine if st.recipe.split("_")[0] == paper]
    return same_paper[0] if same_paper else None


def suite_split(name: str, recipe: Any, subjects: list[Subject]) -> tuple[dict[str, str | None], str, Any]:
    """(subject id → split or None, one line naming the split and its file, setup or None)."""
    from datasets.splits import split_source

    setup = suite_setup(name, recipe)
    if setup is None:
        assign = {s.id: s.split for s in subjects}
        kinds = sorted({str(v) for v in assign.values()})
        nosetup = f"no suite setup pairs {name} with {recipe.id}"
        if kinds == ["all"]:
            return assign, f"split: none — the release defines none and {nosetup}; subjects shown as 'all'", None
        return assign, f"split: the release's own folders ({', '.join(kinds)}); {nosetup}", None
    fn = setup.split()
    assign = fn(subjects)
    kw = f"; the setup reads {dict(setup.adapter_kwargs)}" if setup.adapter_kwargs else ""
    note = f" ({setup.note})" if setup.note else ""
    return assign, f"split: setup {setup.id}{note} — {split_source(fn)}{kw}", setup


def _split_cols(values) -> list[str]:
    return sorted({v for v in values if v != UNUSED}, key=lambda v: (SPLIT_ORDER.get(v, 3), v)) + \
        ([UNUSED] if UNUSED in values else [])


def _store_lines(store: Any) -> list[str]:
    lines = [f"  store:       {store.path}", f"  fingerprint: {store.fingerprint}",
             f"  slices:      {len(store)} of {store.manifest['subject'].nunique()} subjects, "
             f"[C, H, W] = {list(store.images.shape[1:])}"]
    lines += ["  " + ln for ln in store.counts().to_string(index=False).splitlines()]
    skipped = store.meta.get("skipped_subjects") or []
    if skipped:
        lines.append(f"  skipped {len(skipped)} subject(s):")
        lines += [f"    {d['subject']}: {d['path']}: {d['cause']}" for d in skipped]
    else:
        lines += [f"  skipped: {e}" for e in store.meta.get("skipped", [])]
    return lines


def prepare_for_suite(name: str, adapter: Any, rec: Any, subjects: list[Subject], *, cache_dir=None,
                      skip_bad: bool = False, workers: int | None = None, force: bool = False,
                      own: Any = None) -> tuple[Any, str]:
    """Prepare the store the suite itself uses for ``name`` × ``rec`` (its setup's split and adapter options),
    falling back to the release's split when no setup applies or none of the subjects is in its split; ``own``: the
    user's split (a :class:`datasets.splits.SubjectsFile`, ``--subjects FILE``) instead of the setup's."""
    from benchmark.registry import get_dataset
    from datasets.base import prepare

    assign, line, setup = suite_split(name, rec, subjects)
    split_fn = None
    if own is not None:
        split_fn, line = own.split_fn(adapter.root), f"split: {own.describe()} (--subjects)"
        if setup is not None:
            adapter = get_dataset(name)(adapter.root, **dict(setup.adapter_kwargs))
    elif setup is not None:
        if not any(v is not None for v in assign.values()):
            line += f" — none of the {len(subjects)} subjects is listed there, so the release's own split is used"
        else:
            split_fn = setup.split()
            adapter = get_dataset(name)(adapter.root, **dict(setup.adapter_kwargs))
    store = prepare(adapter, rec, cache_dir=cache_dir, skip_bad=skip_bad, split_fn=split_fn, workers=workers,
                    force=force)
    return store, line


def data_info(name: str, root: str | Path | None, out_png: str | Path | None = None, recipe: Any = None, *,
              n_preview: int = 8, full: bool = False, cache_dir: str | Path | None = None, skip_bad: bool = False,
              workers: int | None = None) -> str:
    """Counts per split / pathology (+ release facts) as text, and a preview PNG at ``out_png``
    (default ``out/preview-<dataset>.png``).

    Subjects are counted under the split the suite prepares this dataset with (``suite_split``: e.g. the
    committed LGG patient split, RA's IXI list), else under the release's own. ``root=None`` uses the shared
    development copy when there is one. ``recipe``: a Recipe, a recipe name/id, or None for the adapter's
    default. ``full=True`` prepares the whole store with that split and adds slice counts per split × label ×
    pathology; a bad subject stops it unless ``skip_bad`` (then it is listed). A root the adapter can describe
    but not prepare (fastMRI+ annotations without h5 volumes) gets that description and no preview.
    """
    cls = get_dataset(name)
    root = Path(root) if root is not None else default_root(name, cls.layout)
    out_png = Path(out_png) if out_png is not None else REPO / "out" / f"preview-{name}.png"
    adapter = cls(root)
    subjects = adapter.subjects()
    rec = resolve_recipe(recipe or adapter.default_recipe) if recipe is None or isinstance(recipe, str) else recipe
    head = [f"{name}: {adapter.title}", f"  root:   {Path(root)}", f"  source: {adapter.url}",
            f"  layout: {adapter.layout}", f"  recipe: {rec.id}", ""]
    if not subjects:
        described = adapter.describe_without_subjects()
        if described is None:
            raise DataError(root, f"no {name} subjects found; expected layout: {adapter.layout}")
        return "\n".join(head + ["subjects: 0", *described, *_annotation_split_lines(name, rec)])
    assign, split_line, _ = suite_split(name, rec, subjects)
    split_of = {s.id: (assign.get(s.id) or UNUSED) for s in subjects}
    lines = head + [f"subjects: {len(subjects)}", f"  {split_line}"]
    c = collections.Counter((s.pathology, split_of[s.id]) for s in subjects)
    splits = _split_cols(set(split_of.values()))
    paths = sorted({s.pathology for s in subjects}, key=lambda p: (p != "healthy", p))
    lines += _table(c, paths, splits, "pathology \\ split")
    extra = _meta_summary(subjects)
    if extra:
        lines += [""] + extra
    # preview: every slice the recipe keeps (the release's split), so lesions show whatever the suite split
    items, errors = [], []
    slice_counts: collections.Counter = collections.Counter()
    for s in _pick(subjects, n_preview):
        try:
            sl = rec.slices(adapter.load(s), s, s.split or "unsplit")
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
    lines += ["", f"preview ({rec.id}, every slice the recipe keeps): {len(items)} subjects, slices by "
                  f"label/pathology: {by_label or 'none'}"]
    lines += [f"  skipped: {e}" for e in errors]
    if not full:
        lines.append("(--full prepares every subject and adds slice counts per split × label × pathology)")
    else:
        store, line = prepare_for_suite(name, adapter, rec, subjects, cache_dir=cache_dir, skip_bad=skip_bad,
                                        workers=workers)
        lines += ["", f"prepared store ({line}):", *_store_lines(store)]
    render_preview(items, out_png, f"{name} — {rec.id}")
    lines.append(f"preview written to {out_png}")
    return "\n".join(lines)


def _annotation_split_lines(name: str, rec: Any) -> list[str]:
    """For a root without subjects: how many ids the suite's split lists hold per split."""
    from datasets.splits import split_source

    setup = suite_setup(name, rec)
    if setup is None:
        return []
    fn = setup.split()
    listed = getattr(fn, "listed", None)
    if not listed:
        return [f"  split: setup {setup.id} — {split_source(fn)}"]
    cnt = collections.Counter(listed.values())
    per = ", ".join(f"{k} {cnt[k]}" for k in _split_cols(set(cnt)))
    return [f"  split: setup {setup.id} — {split_source(fn)}: {len(listed)} listed files ({per})"]


def prepare_report(name: str, root: str | Path | None, recipe: Any = None, *, skip_bad: bool = False,
                   cache_dir: str | Path | None = None, workers: int | None = None, force: bool = False,
                   subjects: Any = None) -> str:
    """``phbench data prepare``: build (or reuse) the store the suite uses; counts, path, fingerprint, skips.
    ``subjects``: the user's split (``--subjects FILE``) instead of the suite's."""
    import time

    cls = get_dataset(name)
    root = Path(root) if root is not None else default_root(name, cls.layout)
    adapter = cls(root)
    found = adapter.subjects()
    if not found:
        raise DataError(root, f"no {name} subjects found; expected layout: {adapter.layout}")
    rec = resolve_recipe(recipe or adapter.default_recipe) if recipe is None or isinstance(recipe, str) else recipe
    wall, t0 = time.time(), time.perf_counter()
    store, line = prepare_for_suite(name, adapter, rec, found, cache_dir=cache_dir, skip_bad=skip_bad,
                                    workers=workers, force=force, own=subjects)
    dt = time.perf_counter() - t0
    built = (store.path / "meta.json").stat().st_mtime >= wall - 1.0
    how = f"built in {dt:.1f} s" if built else f"reused the cached store ({dt:.1f} s; --force rebuilds it)"
    return "\n".join([f"{name} × {rec.id}: {len(found)} subjects under {root}", f"  {line}", f"  {how}",
                      *_store_lines(store)])


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
