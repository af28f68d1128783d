"""Dataset adapter contract and the one ``prepare`` path every dataset goes through.

An adapter knows one release's *published on-disk layout*: it lists subjects under a root folder and
loads one subject into a :class:`Volume` (arrays in a canonical frame). A :class:`datasets.recipes.Recipe`
turns a volume into normalised fixed-size slices; :func:`prepare` stacks them into a slice store,
atomically, cached by (adapter, recipe, source fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from benchmark.errors import DataError
from benchmark.io import exclusive
from datasets.store import PreparedSlice, SliceStore, write_store

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("PHBENCH_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


def shared_release(*parts: str) -> Path | None:
    """A folder of the project's shared real data (``$PHBENCH_SHARED_DATA``, default ``<repo>/../shared/data``)
    that the development tables read when no --root is given; None when it is not there."""
    base = Path(os.environ.get("PHBENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    cand = base.joinpath(*parts)
    return cand if cand.is_dir() else None


@dataclass
class Subject:
    """One subject (or one 2-D image for slice datasets) as found on disk."""

    id: str
    files: dict[str, Path]  # role → path, e.g. {"t2": ..., "seg": ...}
    split: str | None = None  # official split when the release or a committed list defines one
    pathology: str = "healthy"  # healthy, tumour, stroke, ms, ... or a global finding
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Volume:
    """Arrays of one subject. 3-D arrays are [X, Y, Z] in RAS+ (axial slice = [:, :, z]); 2-D sets use [H, W]."""

    channels: dict[str, np.ndarray]
    lesion: np.ndarray | None = None  # same shape, 0 = background, >0 = lesion (labels already mapped to 0/1)
    brain: np.ndarray | None = None  # same shape, bool/float; None = derive from the image (> 0)
    spacing: tuple[float, ...] = ()
    source: str = ""

    def channel(self, name: str) -> np.ndarray:
        if name not in self.channels:
            raise DataError(self.source, f"modality {name!r} missing (have {sorted(self.channels)})")
        return self.channels[name]


class DatasetAdapter(ABC):
    """Reads one dataset family in its own published layout. Never downloads anything."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    url: ClassVar[str] = ""  # where users get the release
    layout: ClassVar[str] = ""  # the expected folder layout, shown by ``phbench data info`` and the README
    default_recipe: ClassVar[str] = ""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @abstractmethod
    def subjects(self) -> list[Subject]:
        """All subjects under ``self.root`` (raises DataError naming the root when the layout is wrong)."""

    @abstractmethod
    def load(self, subject: Subject) -> Volume:
        """Read one subject; raises DataError(path, cause) on bad files."""

    def describe_without_subjects(self) -> list[str] | None:
        """Lines that ``data info`` prints for a root with files the adapter can describe but no subjects
        to prepare (fastMRI+ annotations without volumes); None: such a root is an error."""
        return None

    def source_fingerprint(self, subjects: list[Subject]) -> str:
        """Cheap identity of the source files (names, sizes, mtimes in ns) for cache invalidation.

        Contents are not hashed (terabytes for BraTS); a rewritten file changes its mtime, and nanoseconds
        catch a same-size rewrite within the same second.
        """
        h = hashlib.sha256()
        for s in subjects:
            for role, p in sorted(s.files.items()):
                try:
                    st = Path(p).stat()
                except OSError as err:
                    raise DataError(p, f"cannot read ({err.strerror or err})") from err
                h.update(f"{s.id}|{role}|{Path(p).name}|{st.st_size}|{st.st_mtime_ns}|{s.split}".encode())
        return h.hexdigest()[:16]


class UnionAdapter(DatasetAdapter):
    """Several releases read as one dataset, for papers that train on more than one (RA: IXI T1 and
    fastMRI+ normals). Subject ids must not collide; each subject loads through the adapter that found it.
    One recipe prepares them all, so every slice of the store is preprocessed the same way."""

    title = "union of releases"

    def __init__(self, parts: list[DatasetAdapter]):
        super().__init__(parts[0].root)
        self.name = "+".join(p.name for p in parts)  # type: ignore[misc]  # per instance: its parts' names
        self.layout = "; ".join(f"{p.name}: {p.layout}" for p in parts)  # type: ignore[misc]
        # what `prepare` puts into the cache key (public attributes): each part's root and options
        self.sources = [(p.name, str(p.root), sorted((k, _describe(v)) for k, v in vars(p).items()
                                                      if k != "root" and not k.startswith("_"))) for p in parts]
        self._parts = list(parts)
        self._owner: dict[str, DatasetAdapter] = {}

    def subjects(self) -> list[Subject]:
        out: list[Subject] = []
        self._owner = {}
        for part in self._parts:
            for s in part.subjects():
                if s.id in self._owner:
                    raise DataError(self.root, f"subject id {s.id} found by both {self._owner[s.id].name} and "
                                               f"{part.name}")
                self._owner[s.id] = part
                out.append(s)
        return out

    def load(self, subject: Subject) -> Volume:
        if subject.id not in self._owner:
            self.subjects()
        return self._owner[subject.id].load(subject)


def _describe(value: Any) -> str:
    """Stable text for a recipe field; a slice-rule closure is named with its captured parameters."""
    if callable(value):
        cells = [c.cell_contents for c in (getattr(value, "__closure__", None) or ())]
        return f"{getattr(value, '__qualname__', type(value).__name__)}{cells}"
    return repr(value)


def default_workers() -> int:
    """Worker processes ``prepare`` uses when not told: ``$PHBENCH_PREPARE_WORKERS``, else min(4, usable cores).

    Capped because loading is partly I/O bound and every worker holds one decoded volume in memory.
    """
    env = os.environ.get("PHBENCH_PREPARE_WORKERS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise DataError("PHBENCH_PREPARE_WORKERS", f"not a whole number: {env!r}") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _can_fork() -> bool:
    """Workers are forked: they inherit the adapter and recipe (recipes hold closures, which do not pickle).

    No fork on Windows, none on macOS (system libraries are not fork-safe there), none inside a daemonic
    process (it may not have children): those prepare serially.
    """
    import multiprocessing
    import sys

    return ("fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
            and not multiprocessing.current_process().daemon)


# (adapter, recipe, [(subject, split), ...]) inherited by forked workers; set only inside them
_WORK: tuple | None = None


def _prepare_one(adapter: DatasetAdapter, recipe: Any, subject: Subject, split: str) -> tuple[list[PreparedSlice], Any]:
    """One subject's slices, or (no slices, (path, cause)) when its files are bad."""
    try:
        return recipe.slices(adapter.load(subject), subject, split), None
    except DataError as err:
        return [], (err.path, err.cause)


def _worker_init(work: tuple) -> None:
    global _WORK
    _WORK = work
    try:  # one thread per worker: the workers already use the cores, and forked OpenMP pools can hang
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _worker_run(i: int) -> tuple[int, list[PreparedSlice], Any]:
    adapter, recipe, todo = _WORK
    subject, split = todo[i]
    return (i, *_prepare_one(adapter, recipe, subject, split))


def _prepared(adapter: DatasetAdapter, recipe: Any, todo: list[tuple[Subject, str]], workers: int,
              stop_at_error: bool) -> Iterator[tuple[Subject, list[PreparedSlice], Any]]:
    """(subject, slices, error) in ``todo`` order, serially or from a pool of forked workers.

    Order and content do not depend on ``workers``: every subject is prepared by the same function and
    results are consumed in subject order, so the store (and its fingerprint) is the same.
    """
    if workers <= 1 or len(todo) < 2 or not _can_fork():
        for s, split in todo:
            slices, err = _prepare_one(adapter, recipe, s, split)
            yield s, slices, err
            if err is not None and stop_at_error:
                return
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    workers = min(workers, len(todo))
    chunk = max(1, len(todo) // (workers * 8))  # small chunks keep every worker busy to the end
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init,
                             initargs=((adapter, recipe, todo),))
    try:
        for i, slices, err in ex.map(_worker_run, range(len(todo)), chunksize=chunk):
            yield todo[i][0], slices, err
            if err is not None and stop_at_error:
                return
    except BrokenProcessPool as err:
        raise DataError(adapter.root, f"a preparation worker died ({err}); out of memory? prepare again with "
                                      "workers=1 (--workers 1)") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def prepare(adapter: DatasetAdapter, recipe: "Any", *, cache_dir: str | Path | None = None,
            skip_bad: bool = False, split_fn: "Any | None" = None, force: bool = False,
            workers: int | None = None) -> SliceStore:
    """Build (or reuse) the slice store for ``adapter`` × ``recipe``.

    ``split_fn(subjects) -> {subject_id: split}`` assigns subject-level splits where the release has none.
    With ``skip_bad`` a subject that fails to load is logged and listed in ``meta['skipped']`` (one line
    each) and ``meta['skipped_subjects']``; without it the first bad file (in subject order) raises its
    one-line DataError, also when a cached store was built with ``skip_bad`` and left subjects out.
    ``workers`` processes prepare subjects in parallel (default :func:`default_workers`, serial below four
    subjects); the store is identical to a serial build.
    """
    subjects = adapter.subjects()
    if not subjects:
        raise DataError(adapter.root, f"no {adapter.name} subjects found; expected layout: {adapter.layout}")
    splits = split_fn(subjects) if split_fn else {s.id: s.split for s in subjects}
    src = adapter.source_fingerprint(subjects)
    # every recipe field, not only its id, so two same-named recipes of different size never share a store;
    # ``aux_channels`` only when the recipe has some, so the keys of recipes without them are what they were
    fields = {k: _describe(v) for k, v in getattr(recipe, "__dict__", {}).items()
              if not (k == "aux_channels" and not v)}
    # and every adapter option (MS-SEG rater, BraTS lesion classes, IDRiD lesion types…): they change the masks
    options = {k: _describe(v) for k, v in vars(adapter).items() if k != "root" and not k.startswith("_")}
    key = hashlib.sha256(f"{adapter.name}|{recipe.id}|{sorted(fields.items(), key=str)}|{src}|"
                         f"{sorted(splits.items(), key=str)}|{sorted(options.items())}".encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE / "stores"
    path = cache_dir / f"{adapter.name}-{recipe.name}-{key}"
    if not force and (path / "meta.json").exists():
        return _cached_store(path, skip_bad)
    with exclusive(cache_dir / f".{path.name}.lock", f"preparing {path.name}"):  # one builder per store
        if not force and (path / "meta.json").exists():  # another process built it while this one waited
            return _cached_store(path, skip_bad)
        return _build_store(adapter, recipe, path, subjects, splits, src, skip_bad, workers)


def _cached_store(path: Path, skip_bad: bool) -> SliceStore:
    store = SliceStore(path)
    bad = store.meta.get("skipped_subjects") or []
    if bad and not skip_bad:
        first = bad[0]
        raise DataError(first["path"], f"{first['cause']} (subject {first['subject']}; the cached store "
                                       f"{path.name} left it out: pass skip_bad / --skip-bad to use it)")
    return store


def _build_store(adapter: DatasetAdapter, recipe: "Any", path: Path, subjects: list, splits: dict, src: Any,
                 skip_bad: bool, workers: int | None) -> SliceStore:
    todo = [(s, splits[s.id]) for s in subjects if splits.get(s.id) is not None]
    if workers is None:
        workers = default_workers() if len(todo) >= 4 else 1
    slices: list[PreparedSlice] = []
    skipped: list[str] = []
    skipped_subjects: list[dict[str, str]] = []
    with contextlib.closing(_prepared(adapter, recipe, todo, workers, stop_at_error=not skip_bad)) as results:
        for s, got, err in results:  # closing: a raise below shuts the worker pool down at once
            if err is not None:
                if not skip_bad:
                    raise DataError(*err)
                line = str(DataError(*err))
                log.warning("skipped %s: %s", s.id, line)
                skipped.append(line)
                skipped_subjects.append({"subject": s.id, "path": err[0], "cause": err[1]})
                continue
            slices.extend(got)
    meta = {"dataset": adapter.name, "recipe": recipe.id, "source_fingerprint": src,
            "root": str(adapter.root), "skipped": skipped, "skipped_subjects": skipped_subjects}
    aux = tuple(getattr(recipe, "aux_channels", ()) or ())
    if aux:  # the store's aux array holds these modalities, in this order
        meta["aux_channels"] = list(aux)
    return write_store(path, slices, meta)
