"""Cross-validated columns: pooled slices in fold order, each fold scored by its own model, fold keys digested."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from benchmark.folds import Folds, FoldScorer, PooledSlices, concat_scores, key_digest
from benchmark.scoring import Scorer, Scores
from protocols.evaluate import collect


class _Slices:
    """A minimal slice set: ``n`` slices whose pixel value is ``base + index``."""

    def __init__(self, base: float, n: int, key: str | None):
        self.base, self.n, self.cache_key = base, n, key

    def __len__(self) -> int:
        return self.n

    @property
    def manifest(self) -> pd.DataFrame:
        return pd.DataFrame({"subject": [f"s{self.base:g}_{i}" for i in range(self.n)], "label": 1})

    def materialize(self, device="cpu"):
        img = (self.base + torch.arange(self.n, dtype=torch.float32)).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
        return img, torch.ones_like(img), (img > 0).float(), torch.ones(self.n, dtype=torch.long), None


class _ConstScorer(Scorer):
    """Scores every slice with its pixel value × ``gain``: which model scored a slice is visible in its map."""

    def __init__(self, gain: float):
        super().__init__(SimpleNamespace(name="fake", device=torch.device("cpu")), None, progress=False)
        self.gain, self.calls = gain, 0

    def scores(self, slices) -> Scores:
        self.calls += 1
        img = slices.materialize()[0] * self.gain
        return Scores(img, img.flatten(1).mean(1), None, {"k": img[:, 0, 0, 0]}, wall_s=1.0)


def test_pooled_slices_concatenate_in_fold_order():
    a, b = _Slices(0.0, 2, "a"), _Slices(10.0, 3, "b")
    pooled = PooledSlices([a, b])
    assert len(pooled) == 5 and pooled.manifest["fold"].tolist() == [0, 0, 1, 1, 1]
    img, brain, lesion, label, aux = pooled.materialize()
    assert img[:, 0, 0, 0].tolist() == [0, 1, 10, 11, 12] and aux is None and label.shape == (5,)
    assert pooled.cache_key == key_digest(["a", "b"]) != PooledSlices([b, a]).cache_key
    assert PooledSlices([a, _Slices(1.0, 1, None)]).cache_key is None  # one uncacheable part: never cached


def test_each_fold_is_scored_by_its_own_model():
    a, b = _Slices(0.0, 2, "a"), _Slices(10.0, 3, "b")
    s0, s1 = _ConstScorer(1.0), _ConstScorer(-1.0)
    scored = collect(FoldScorer([s0, s1]), PooledSlices([a, b]), progress=False)
    assert scored.maps[:, 0, 0, 0].tolist() == [0, 1, -10, -11, -12]
    assert scored.extras["k"].tolist() == [0, 1, -10, -11, -12] and scored.wall_s == 2.0
    assert (s0.calls, s1.calls) == (1, 1) and FoldScorer([s0, s1]).name == "fake"
    with pytest.raises(TypeError, match="pooled slices of its 2 folds"):
        FoldScorer([s0, s1]).scores(a)


def test_concat_keeps_only_shared_extras_and_reconstructions():
    x = torch.zeros(2, 1, 2, 2)
    one = Scores(x, torch.zeros(2), x, {"a": torch.zeros(2), "b": torch.zeros(2)})
    two = Scores(x, torch.zeros(2), None, {"a": torch.ones(2)})
    out = concat_scores([one, two])
    assert out.reconstruction is None and set(out.extras) == {"a"} and len(out) == 4


def test_folds_need_two_stores_and_collect_skipped_subjects():
    class _Store:
        def __init__(self, fp, skipped):
            self.fingerprint, self.meta, self.path = fp, {"skipped": skipped}, "/tmp"

    f = Folds([_Store("x", ["s1"]), _Store("y", ["s1", "s2"])], "cv")
    assert f.meta["skipped"] == ["s1", "s2"] and f.fingerprint == key_digest(["x", "y"])
    with pytest.raises(ValueError, match="at least 2 folds"):
        Folds([_Store("x", [])])
