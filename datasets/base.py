"""Dataset adapter contract and the one ``prepare`` path every dataset goes through.

An adapter knows one release's *published on-disk layout*: it lists subjects under a root folder and
loads one subject into a :class:`Volume` (arrays in a canonical frame). A :class:`datasets.recipes.Recipe`
turns a volume into normalised fixed-size slices; :func:`prepare` stacks them into a slice store,
atomically, cached by (adapter, recipe, source fingerprint).
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark.errors import DataError
from datasets.store import PreparedSlice, SliceStore, write_store

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("PHBENCH_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


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

    def source_fingerprint(self, subjects: list[Subject]) -> str:
        """Cheap identity of the source files (names, sizes, mtimes) for cache invalidation."""
        h = hashlib.sha256()
        for s in subjects:
            for role, p in sorted(s.files.items()):
                try:
                    st = Path(p).stat()
                except OSError as err:
                    raise DataError(p, f"cannot read ({err.strerror or err})") from err
                h.update(f"{s.id}|{role}|{Path(p).name}|{st.st_size}|{int(st.st_mtime)}|{s.split}".encode())
        return h.hexdigest()[:16]


def _describe(value: Any) -> str:
    """Stable text for a recipe field; a slice-rule closure is named with its captured parameters."""
    if callable(value):
        cells = [c.cell_contents for c in (getattr(value, "__closure__", None) or ())]
        return f"{getattr(value, '__qualname__', type(value).__name__)}{cells}"
    return repr(value)


def prepare(adapter: DatasetAdapter, recipe: "Any", *, cache_dir: str | Path | None = None,
            skip_bad: bool = False, split_fn: "Any | None" = None, force: bool = False) -> SliceStore:
    """Build (or reuse) the slice store for ``adapter`` × ``recipe``.

    ``split_fn(subjects) -> {subject_id: split}`` assigns subject-level splits where the release has none.
    With ``skip_bad`` a subject that fails to load is logged and listed in ``meta['skipped']``;
    without it the first bad file raises its one-line DataError.
    """
    subjects = adapter.subjects()
    if not subjects:
        raise DataError(adapter.root, f"no {adapter.name} subjects found; expected layout: {adapter.layout}")
    splits = split_fn(subjects) if split_fn else {s.id: s.split for s in subjects}
    src = adapter.source_fingerprint(subjects)
    # every recipe field, not only its id, so two same-named recipes of different size never share a store
    fields = {k: _describe(v) for k, v in getattr(recipe, "__dict__", {}).items()}
    key = hashlib.sha256(f"{adapter.name}|{recipe.id}|{sorted(fields.items(), key=str)}|{src}|"
                         f"{sorted(splits.items(), key=str)}".encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE / "stores"
    path = cache_dir / f"{adapter.name}-{recipe.name}-{key}"
    if not force and (path / "meta.json").exists():
        return SliceStore(path)
    slices: list[PreparedSlice] = []
    skipped: list[str] = []
    for s in subjects:
        split = splits.get(s.id)
        if split is None:
            continue
        try:
            vol = adapter.load(s)
            slices.extend(recipe.slices(vol, s, split))
        except DataError as err:
            if not skip_bad:
                raise
            log.warning("skipped %s", err)
            skipped.append(str(err))
    meta = {"dataset": adapter.name, "recipe": recipe.id, "source_fingerprint": src,
            "root": str(adapter.root), "skipped": skipped}
    return write_store(path, slices, meta)
