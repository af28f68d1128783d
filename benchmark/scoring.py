"""Scoring a slice set once: a trained model's maps, scores, reconstructions and extras, cached on disk.

Why: every table on the same data asks the same trained model for the same maps (``table1``, its detail,
synthetic and localisation tables; the calibration set of every protocol). A diffusion method spends hundreds
of network passes per slice, so scores are keyed by what determines them -- the *score key* (trained weights +
scoring config + calibration data) and the *slice key* (which slices, with which pixel values) -- written
atomically and read back by every later table. A protocol receives a :class:`Scorer`, never the cache itself.
A slice set is scored under a lock (processes sharing a store score it once); a cache file that cannot be read
is a cache miss with a warning: it is scored again and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.contract import Method, ScoreOutput
from benchmark.io import atomic_path, atomic_write_text, exclusive

SCORES_FORMAT = 1
log = logging.getLogger(__name__)


def slice_key(slices: Any) -> str | None:
    """What determines the pixels of a slice set: ``slices.cache_key`` when it has one (a store's slice set:
    a hash of its content; synthetic sets say what they hold), else the store fingerprint and the rows. None:
    the set cannot be cached."""
    own = getattr(slices, "cache_key", None)
    if own:
        return str(own)
    fp, rows = getattr(slices, "fingerprint", None), getattr(slices, "rows", None)
    if fp is None or rows is None:
        return None
    h = hashlib.sha256(f"{fp}:".encode())
    h.update(np.asarray(rows, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


@dataclass
class Scores:
    """A method's outputs on every slice of a set, in slice order (tensors on one device)."""

    anomaly_map: torch.Tensor  # [N,1,H,W]
    image_score: torch.Tensor  # [N]
    reconstruction: torch.Tensor | None  # [N,C,H,W]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # first dimension N
    wall_s: float = 0.0  # seconds the network passes took when they ran (read back from the cache)

    def __len__(self) -> int:
        return int(self.anomaly_map.shape[0])


def score_slices(method: Method, slices: Any, *, batch_size: int | None = None, progress: bool = True) -> Scores:
    """Run ``method.score`` over every slice (batches of ``config.score_batch_size``); outputs stay on the
    method's device."""
    bs = int(batch_size or getattr(method.config, "score_batch_size", 32) or 32)
    t0 = time.perf_counter()
    outs: list[ScoreOutput] = []
    n_batches = (len(slices) + bs - 1) // bs
    for batch in tqdm(slices.batches(bs, device=method.device), total=n_batches, desc=f"score {method.name}",
                      disable=not progress, leave=False, dynamic_ncols=True):
        outs.append(method.score(batch))
    if method.device.type == "cuda":
        torch.cuda.synchronize(method.device)
    if not outs:
        raise ValueError(f"{method.name}: nothing to score (empty slice set)")
    recon = [o.reconstruction for o in outs]
    keys = [k for k in outs[0].extras if all(k in o.extras for o in outs)]
    return Scores(torch.cat([o.anomaly_map for o in outs]), torch.cat([o.image_score for o in outs]),
                  None if any(r is None for r in recon) else torch.cat(recon),
                  {k: torch.cat([o.extras[k] for o in outs]) for k in keys}, time.perf_counter() - t0)


class ScoreCache:
    """One folder per score key: ``<slice key>.pt`` holds the Scores of one slice set (weights-only
    loadable), ``calibration.json`` the method's calibration under this scoring configuration."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str, device: torch.device) -> Scores | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            d = torch.load(p, map_location=device, weights_only=True)
        except Exception as err:  # a damaged cache file: score again (it is rewritten atomically)
            log.warning("%s: unreadable score cache (%s: %s); scoring again", p, type(err).__name__, err)
            return None
        if not isinstance(d, dict) or d.get("format") != SCORES_FORMAT:
            return None
        # wall_s: what the network passes took when they ran (so a cached table still reports scoring speed)
        return Scores(d["anomaly_map"], d["image_score"], d["reconstruction"], dict(d["extras"]),
                      float(d.get("wall_s", 0.0)))

    def save(self, key: str, scores: Scores) -> None:
        payload = {"format": SCORES_FORMAT, "anomaly_map": scores.anomaly_map.cpu(),
                   "image_score": scores.image_score.cpu(),
                   "reconstruction": None if scores.reconstruction is None else scores.reconstruction.cpu(),
                   "extras": {k: v.cpu() for k, v in scores.extras.items()}, "wall_s": scores.wall_s}
        with atomic_path(self.path(key)) as tmp:
            torch.save(payload, tmp)

    def load_calibration(self) -> dict[str, float] | None:
        p = self.root / "calibration.json"
        if not p.is_file():
            return None
        try:
            return {k: float(v) for k, v in json.loads(p.read_text()).items()}
        except (ValueError, TypeError, AttributeError) as err:
            log.warning("%s: unreadable calibration (%s); calibrating again", p, err)
            return None

    def save_calibration(self, calibration: dict[str, float]) -> None:
        atomic_write_text(self.root / "calibration.json", json.dumps(calibration, sort_keys=True))


class Scorer:
    """A trained method as protocols see it: ``scores(slices)`` runs the network only for slice sets no
    table has scored before (under the same score key). ``passes`` counts the sets actually scored."""

    def __init__(self, method: Method, cache: ScoreCache | None = None, *, progress: bool = True):
        self.method = method
        self.cache = cache
        self.progress = progress
        self.passes = 0
        self._memo: dict[str, Scores] = {}

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def device(self) -> torch.device:
        return self.method.device

    def scores(self, slices: Any) -> Scores:
        key = slice_key(slices)
        if key is not None and key in self._memo:
            return self._memo[key]
        if self.cache is None or key is None:
            got = self._score(slices)
        else:
            got = self.cache.load(key, self.device)
            if got is None:
                with exclusive(self.cache.path(key).with_suffix(".lock"), f"{self.name} scores {key}"):
                    got = self.cache.load(key, self.device)  # another process may have scored it while we waited
                    if got is None:
                        got = self._score(slices)
                        self.cache.save(key, got)
        if key is not None:
            self._memo[key] = got
        return got

    def _score(self, slices: Any) -> Scores:
        self.passes += 1
        return score_slices(self.method, slices, progress=self.progress)


def as_scorer(method_or_scorer: Method | Scorer, *, progress: bool = True) -> Scorer:
    """Protocols accept a bare method (tests, notebooks: no cache) or the runner's cached scorer."""
    return method_or_scorer if isinstance(method_or_scorer, Scorer) else Scorer(method_or_scorer, progress=progress)
