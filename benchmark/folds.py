"""Cross-validated table columns: one model per fold, every fold's test slices pooled into one evaluation.

Why: a dataset too small for a held-out split (ISLES 2015: 28 subjects) is evaluated by k-fold subject-level
cross-validation, and a protocol that picks one threshold over the whole test set (IterMask2's) must see the
k test sets *pooled* — k separate evaluations would pick k thresholds. A :class:`Folds` is what a table part's
store returns for such a column; :class:`PooledSlices` is the union of one split over the folds (in fold order)
with the slice-set interface protocols use; :class:`FoldScorer` scores each fold's slices with that fold's own
model (through each fold's cached :class:`~benchmark.scoring.Scorer`, so nothing is scored twice).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch

from benchmark.scoring import Scorer, Scores, slice_key


def key_digest(parts: Sequence[str]) -> str:
    """One key for an ordered list of keys (a cross-validated run's train / score keys, its data fingerprint)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


@dataclass
class Folds:
    """The prepared stores of a cross-validated column, one per fold (each with train / val / test splits)."""

    stores: list[Any]
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.stores) < 2:
            raise ValueError(f"{self.name or 'folds'}: cross-validation needs at least 2 folds, got {len(self.stores)}")
        skipped: dict[str, None] = {}
        for s in self.stores:
            skipped.update(dict.fromkeys(s.meta.get("skipped", [])))
        self.meta = {**self.meta, "skipped": list(skipped)}

    @property
    def fingerprint(self) -> str:
        return key_digest([s.fingerprint for s in self.stores])

    @property
    def path(self) -> Any:
        return self.stores[0].path  # where a protocol may cache what it derives (synthetic sets)


class PooledSlices:
    """One split of every fold, concatenated in fold order (``fold`` column in the manifest)."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def manifest(self) -> pd.DataFrame:
        return pd.concat([p.manifest.assign(fold=k) for k, p in enumerate(self.parts)], ignore_index=True)

    @property
    def cache_key(self) -> str | None:
        keys = [slice_key(p) for p in self.parts]
        return None if any(k is None for k in keys) else key_digest(keys)

    def materialize(self, device: torch.device | str = "cpu") -> tuple[Any, ...]:
        cols = list(zip(*(p.materialize(device) for p in self.parts)))
        return tuple(None if any(c is None for c in col) else torch.cat(col) for col in cols)


def concat_scores(parts: Sequence[Scores]) -> Scores:
    recon = [s.reconstruction for s in parts]
    keys = [k for k in parts[0].extras if all(k in s.extras for s in parts)]
    return Scores(torch.cat([s.anomaly_map for s in parts]), torch.cat([s.image_score for s in parts]),
                  None if any(r is None for r in recon) else torch.cat(recon),
                  {k: torch.cat([s.extras[k] for s in parts]) for k in keys}, sum(s.wall_s for s in parts))


class FoldScorer(Scorer):
    """Scores a :class:`PooledSlices` fold by fold, each with its own model's scorer (and score cache)."""

    def __init__(self, scorers: Sequence[Scorer]):
        super().__init__(scorers[0].method, None, progress=scorers[0].progress)
        self.scorers = list(scorers)

    @property
    def passes(self) -> int:  # type: ignore[override]
        return sum(s.passes for s in self.scorers)

    @passes.setter
    def passes(self, value: int) -> None:  # Scorer.__init__ sets it; the folds' own counts are the truth
        pass

    def scores(self, slices: Any) -> Scores:
        if not isinstance(slices, PooledSlices) or len(slices.parts) != len(self.scorers):
            raise TypeError(f"{self.name}: a cross-validated model scores the pooled slices of its "
                            f"{len(self.scorers)} folds, got {type(slices).__name__}")
        return concat_scores([sc.scores(part) for sc, part in zip(self.scorers, slices.parts)])
