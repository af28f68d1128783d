"""Trained models by what determines them, and how the runner gets one: load it, or train it once.

A :class:`ModelSpec` is a method's *resolved* config (variant overrides applied) on given training and
validation slices with a seed, plus the specs of the trained methods it is built on. Its keys:

- ``train_key``: method name and code version, the trainer version, the config's *training* fields, the data
  (image size, channels, training and validation slices), the seed and every upstream's ``train_key``. A
  variant that changes only scoring fields has its default's train key, so it reuses the trained weights.
- ``score_key``: ``train_key`` + the scoring fields + whether the variant sees lesion masks. Calibration and
  cached scores live under it.

:func:`obtain` returns a trained method: upstreams first (each once, under its own key), then the method
itself, loaded from ``models/<train_key>/model.pt`` when any run trained it before. Training a key holds a
file lock, so two processes on one store never train or write the same model twice. train.json records the size
and sha256 of model.pt; a model that does not match it, or cannot be read, is one
:class:`~benchmark.errors.StoreError` line naming the file ("delete it to retrain"), never a stack trace.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from benchmark.contract import DataSpec, Method, MethodConfig, Trainable, jsonable
from benchmark.device import peak_memory_mb, seed_everything
from benchmark.errors import StoreError
from benchmark.io import atomic_path, atomic_write_text, checksum_mismatch, exclusive, file_sha256
from benchmark.provenance import provenance
from benchmark.registry import get_method
from benchmark.runstore import key_hash
from benchmark.scoring import ScoreCache, Scorer, slice_key
from benchmark.trainer import TRAINER_VERSION, Trainer


@dataclass(frozen=True)
class ModelSpec:
    method: str
    variant: str
    config: MethodConfig = field(compare=False)
    data: DataSpec
    train_slices: str  # slice keys of the training and validation sets
    val_slices: str
    seed: int
    upstream: tuple[tuple[str, "ModelSpec"], ...] = ()

    @property
    def method_cls(self) -> type[Method]:
        return get_method(self.method)

    @property
    def train_key(self) -> str:
        return key_hash({"method": self.method, "version": self.method_cls.version, "trainer": TRAINER_VERSION,
                      "config": self.config.training_dict(), "data": [self.data.image_size, self.data.channels],
                      "train": self.train_slices, "val": self.val_slices, "seed": self.seed,
                      "upstream": {k: u.train_key for k, u in self.upstream}})

    @property
    def uses_lesion_mask(self) -> bool:
        v = self.method_cls.variants.get(self.variant) if self.variant else None
        return bool(v and v.uses_lesion_mask)

    @property
    def score_key(self) -> str:
        return key_hash({"train": self.train_key, "scoring": self.config.scoring_dict(),
                      "score_version": self.method_cls.score_version,
                      "lesion_mask": self.uses_lesion_mask,
                      "upstream": {k: u.score_key for k, u in self.upstream}})

    def describe(self) -> dict[str, Any]:
        """What the model is, for train.json and run.json (the config is the resolved one: what ran)."""
        return {"method": self.method, "variant": self.variant, "version": self.method_cls.version,
                "config": jsonable(self.config.to_dict()),
                "data": {"image_size": self.data.image_size, "channels": self.data.channels},
                "train_slices": self.train_slices, "val_slices": self.val_slices, "seed": self.seed,
                "train_key": self.train_key, "score_key": self.score_key,
                "upstream": {k: u.describe() for k, u in self.upstream}}


def model_spec(method: str, variant: str, configure: Callable[[type[Method]], MethodConfig], train: Any, val: Any,
               seed: int) -> ModelSpec:
    """The spec of ``method``/``variant`` on these slices, with ``configure(cls)`` giving the base config of
    any method (the profile's) and each upstream resolved the same way, recursively."""
    cls = get_method(method)
    config = cls.resolve(configure(cls), variant)
    ups = []
    for name, up in cls.upstreams(config).items():
        up_cls = get_method(up.method)
        base = configure(up_cls)
        if up.overrides:
            base = base.replace(**dict(up.overrides))
        ups.append((name, model_spec(up.method, up.variant, lambda c, b=base, uc=up_cls: b if c is uc else configure(c),
                                     train, val, seed)))
    return ModelSpec(method, variant, config, DataSpec.of(train), _key(train), _key(val), seed, tuple(ups))


def _key(slices: Any) -> str:
    if slices is None or not len(slices):
        return ""
    key = slice_key(slices)
    if key is None:
        raise ValueError("training and validation slices need a slice key (a SliceSet of a slice store)")
    return key


class ModelStore:
    """``<root>/models/<train_key>/{model.pt, train.json, checkpoint.pt}`` and ``<root>/scores/<score_key>/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def model_dir(self, spec: ModelSpec) -> Path:
        return self.root / "models" / spec.train_key

    def model_path(self, spec: ModelSpec) -> Path:
        return self.model_dir(spec) / "model.pt"

    def checkpoint_path(self, spec: ModelSpec) -> Path:
        return self.model_dir(spec) / "checkpoint.pt"

    def read_training(self, spec: ModelSpec) -> dict[str, Any]:
        p = self.model_dir(spec) / "train.json"
        if not p.is_file():
            return {}
        try:
            report = json.loads(p.read_text())
        except ValueError as err:
            raise StoreError(p, f"unreadable training report ({err})", "delete it to retrain the model") from err
        if not isinstance(report, dict):
            raise StoreError(p, "not a training report (no JSON object)", "delete it to retrain the model")
        return report

    def is_trained(self, spec: ModelSpec) -> bool:
        return self.model_path(spec).is_file() and bool(self.read_training(spec))

    def load_state(self, spec: ModelSpec, device: torch.device | str) -> dict[str, Any]:
        """model.pt's state, verified against the size and sha256 train.json recorded (models trained before
        there was a record: read as they are); a damaged file is a :class:`StoreError` naming it."""
        path = self.model_path(spec)
        record = self.read_training(spec).get("model_file")
        why = checksum_mismatch(path, record) if record else None
        if why:
            raise StoreError(path, why, "delete it to retrain")
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # torch reports a damaged zip as RuntimeError, OSError, EOFError, pickle errors
            raise StoreError(path, f"unreadable model ({type(err).__name__}: {err})", "delete it to retrain") from err

    def score_cache(self, spec: ModelSpec) -> ScoreCache:
        return ScoreCache(self.root / "scores" / spec.score_key)


@dataclass
class Obtained:
    """A ready method, its training report, and the labels of the models this call trained (upstreams too)."""

    method: Method
    training: dict[str, Any]
    trained: list[str] = field(default_factory=list)


def build(spec: ModelSpec, device: torch.device | str, upstream: dict[str, Method] | None = None) -> Method:
    seed_everything(spec.seed)  # before construction: initial weights come from the seeded RNG
    return spec.method_cls(spec.config, variant=spec.variant, device=device, data=spec.data,
                           upstream=upstream if spec.upstream else None)


def obtain(spec: ModelSpec, train: Any, val: Any, store: ModelStore, device: torch.device, *,
           progress: bool = True, train_missing: bool = True, _memo: dict[str, Obtained] | None = None,
           _as_upstream: bool = False) -> Obtained:
    """The trained and calibrated method of ``spec`` (upstreams trained or loaded first, each once).

    ``train_missing=False``: raise instead of training (diagnostics read finished runs only). ``_memo``: the
    caller's dict of upstream methods already built by score key (only upstreams are kept, so a long table
    does not hold every method in device memory)."""
    memo = {} if _memo is None else _memo
    if spec.score_key in memo:
        return Obtained(memo[spec.score_key].method, memo[spec.score_key].training, [])
    trained: list[str] = []
    ups: dict[str, Method] = {}
    for name, up in spec.upstream:
        got = obtain(up, train, val, store, device, progress=progress, train_missing=train_missing, _memo=memo,
                     _as_upstream=True)
        ups[name] = got.method
        trained += got.trained
    method = build(spec, device, ups)
    path = store.model_path(spec)
    trained_now = False
    learns = isinstance(method, Trainable) or type(method).learn is not Method.learn
    if not store.is_trained(spec):
        if not train_missing:
            raise FileNotFoundError(f"{path}: no trained model for {spec.method} (run the table first)")
        with exclusive(store.model_dir(spec) / ".train.lock", f"{spec.method} {spec.train_key} is being trained"):
            if not store.is_trained(spec):  # another process may have trained it while we waited
                _train(spec, method, train, val, store, device, progress)
                trained_now = True
                if learns:  # a training-free method (the intensity floor) is stored but not "trained"
                    trained.append(spec.method + (f"/{spec.variant}" if spec.variant else ""))
    if not trained_now:
        method.load_state_dict(store.load_state(spec, device))
    method.to(device)
    _calibrate(spec, method, val, store)
    out = Obtained(method, store.read_training(spec), trained)
    if _as_upstream:
        memo[spec.score_key] = out
    return out


def _train(spec: ModelSpec, method: Method, train: Any, val: Any, store: ModelStore, device: torch.device,
           progress: bool) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(device, seed=spec.seed, checkpoint=store.checkpoint_path(spec), progress=progress)
    method.check_slices(train)
    t0 = time.perf_counter()
    report = method.learn(train, val, trainer=trainer)
    # a resumed training reports every segment: the wall time of those before this one is in the checkpoint's record
    earlier = sum(seg.get("wall_s", 0.0) for seg in report.get("segments", [])[:-1])
    info = {"model": spec.describe(), "fit": report, "train_wall_s": round(time.perf_counter() - t0 + earlier, 2),
            "n_train": len(train), "n_val": 0 if val is None else len(val),
            "peak_mem_mb": round(peak_memory_mb(device), 1), "provenance": provenance(device)}
    with atomic_path(store.model_path(spec)) as tmp:
        torch.save(method.state_dict(), tmp)
        size, digest = file_sha256(tmp)
    info["model_file"] = {"size": size, "sha256": digest}
    # train.json after model.pt: a report always has its model
    atomic_write_text(store.model_dir(spec) / "train.json", json.dumps(info, indent=2, sort_keys=True, default=str))
    # the finished model is in model.pt; the resume checkpoint is no longer needed
    store.checkpoint_path(spec).unlink(missing_ok=True)


def _calibrate(spec: ModelSpec, method: Method, val: Any, store: ModelStore) -> None:
    """Calibration belongs to the scoring configuration: fitted once per score key, then read back."""
    cache = store.score_cache(spec)
    known = cache.load_calibration()
    if known is not None:
        method.calibration = known
        return
    method.calibration = {}
    if val is not None and len(val):
        method.calibrate(val)
    cache.save_calibration(method.calibration)


def scorer(spec: ModelSpec, method: Method, store: ModelStore, *, progress: bool = True) -> Scorer:
    return Scorer(method, store.score_cache(spec), progress=progress)
