"""The method contract: what every anomaly-detection method in phbench implements.

Modelled on scikit-learn's estimator contract (config in, ``fit``, then predict-like ``score``) and on
anomalib's split between a torch module and its training wrapper: a :class:`Method` owns one or more
``torch.nn.Module`` networks, declares how to train them through :class:`Trainable` (the shared
:class:`benchmark.trainer.Trainer` runs every loop), and turns a batch into a :class:`ScoreOutput`.

Shapes (B = batch, C = channels, H = W = image size):
    image          [B, C, H, W] float32, the recipe's normalised intensities
    brain_mask     [B, 1, H, W] float32 in [0, 1] (soft at the border after resizing)
    lesion_mask    [B, 1, H, W] float32 {0, 1} (all zero for healthy slices)
    anomaly_map    [B, 1, H, W] float32, larger = more anomalous
    image_score    [B]          float32, larger = more anomalous
    reconstruction [B, C, H, W] float32 or None (pseudo-healthy image where the method makes one)
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn


@dataclass
class SliceBatch:
    """A batch of prepared slices, already on the method's device."""

    image: torch.Tensor
    brain_mask: torch.Tensor
    lesion_mask: torch.Tensor | None = None
    label: torch.Tensor | None = None  # [B] int64: 0 healthy, 1 anomalous
    index: torch.Tensor | None = None  # [B] int64: row ids into the slice store's manifest

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> "SliceBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return SliceBatch(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))


@dataclass
class ScoreOutput:
    """What ``Method.score`` returns; validated so that no metric ever sees a malformed map."""

    anomaly_map: torch.Tensor
    image_score: torch.Tensor
    reconstruction: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. latent-space scores, masks

    def validate(self, batch: SliceBatch, method: str) -> "ScoreOutput":
        b, _, h, w = batch.image.shape
        if tuple(self.anomaly_map.shape) != (b, 1, h, w):
            raise ValueError(f"{method}: anomaly_map has shape {tuple(self.anomaly_map.shape)}, expected {(b, 1, h, w)}")
        if tuple(self.image_score.shape) != (b,):
            raise ValueError(f"{method}: image_score has shape {tuple(self.image_score.shape)}, expected {(b,)}")
        if self.reconstruction is not None and tuple(self.reconstruction.shape) != tuple(batch.image.shape):
            raise ValueError(
                f"{method}: reconstruction has shape {tuple(self.reconstruction.shape)}, expected {tuple(batch.image.shape)}")
        for name in ("anomaly_map", "image_score"):
            t = getattr(self, name)
            if not torch.is_floating_point(t):
                raise TypeError(f"{method}: {name} must be a floating tensor, got {t.dtype}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{method}: {name} contains NaN or Inf")
        return self


@dataclass(frozen=True)
class MethodInfo:
    """Metadata shown by ``phbench list`` and printed as table footnotes."""

    paper: str  # short citation
    summary: str
    variants: tuple[str, ...] = ()  # names accepted by ``Method(variant=...)``
    deviations: tuple[str, ...] = ()  # every place where phbench differs from the paper / official code
    code: str = ""  # official code reference


@dataclass
class MethodConfig:
    """Base config. Subclasses are dataclasses whose defaults are the paper's settings.

    Training-budget fields are shared so that profiles can override them uniformly.
    """

    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    early_stop_patience: int | None = None  # epochs without validation improvement; None = off
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    augment: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "MethodConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise KeyError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


class Method(ABC):
    """Base class of every method. Subclasses set ``name``, ``Config`` and ``info`` and register.

    Life cycle: ``m = Method(config, variant=..., device=...)`` → ``m.fit(train, val)`` (the shared trainer)
    → ``m.calibrate(val)`` (optional, fits thresholds on healthy validation) → ``m.score(batch)``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    info: ClassVar[MethodInfo]

    def __init__(self, config: MethodConfig | None = None, *, variant: str = "", device: torch.device | str = "cpu"):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}, got {type(self.config).__name__}")
        if variant and variant not in self.info.variants:
            raise ValueError(f"{self.name}: unknown variant {variant!r}; known: {list(self.info.variants) or 'none'}")
        self.variant = variant
        self.device = torch.device(device)
        self.calibration: dict[str, float] = {}  # scalars fitted on healthy validation data (thresholds, τ, ...)

    # -- networks -----------------------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> Mapping[str, nn.Module]:
        """Every trainable module by name (checkpointing, train/eval mode and device moves use this)."""

    def train_mode(self, on: bool = True) -> None:
        for net in self.networks().values():
            net.train(on)

    # -- training -------------------------------------------------------------------------------------
    def fit(self, train: "SliceSource", val: "SliceSource | None" = None, *, trainer: Any | None = None) -> dict[str, Any]:
        """Train on healthy slices with the shared trainer, then calibrate on ``val``; returns a fit report."""
        from benchmark.trainer import Trainer

        trainer = trainer or Trainer(device=self.device)
        report = trainer.fit(self, train, val)
        if val is not None and len(val):
            self.calibrate(val)
        return report

    def calibrate(self, val: "SliceSource") -> None:
        """Fit scalars on healthy validation slices (thresholds etc.). Default: nothing to fit."""

    # -- inference ----------------------------------------------------------------------------------
    @abstractmethod
    def _score(self, batch: SliceBatch) -> ScoreOutput:
        """Compute maps for one batch (networks are in eval mode, grads off, batch on the device)."""

    @torch.no_grad()
    def score(self, batch: SliceBatch) -> ScoreOutput:
        self.train_mode(False)
        batch = batch.to(self.device)
        out = self._score(batch)
        out = ScoreOutput(
            anomaly_map=out.anomaly_map.float(),
            image_score=out.image_score.float(),
            reconstruction=None if out.reconstruction is None else out.reconstruction.float(),
            extras=out.extras,
        )
        return out.validate(batch, self.name)

    # -- persistence --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {k: v.state_dict() for k, v in self.networks().items()},
            "calibration": dict(self.calibration),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        nets = self.networks()
        missing = set(nets) - set(state["networks"])
        if missing:
            raise KeyError(f"{self.name}: checkpoint lacks networks {sorted(missing)}")
        for k, net in nets.items():
            net.load_state_dict(state["networks"][k])
        self.calibration = {k: float(v) for k, v in state.get("calibration", {}).items()}

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for net in self.networks().values():
            net.to(self.device)
        return self


class Trainable(ABC):
    """Mixin the shared trainer drives. Methods write steps, never loops.

    ``training_step`` receives the optimisers from ``configure_optimizers`` and performs its own
    ``optimizer_step`` calls, so methods with alternating updates (GANs, SI-VAE, RA) fit as well as
    plain one-loss models.
    """

    @abstractmethod
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    @abstractmethod
    def training_step(self, batch: SliceBatch, step: "StepContext") -> dict[str, float]:
        """One optimisation step on a training batch; returns scalar losses for logging."""

    def validation_loss(self, batch: SliceBatch) -> float:
        """Scalar used for early stopping / best-checkpoint selection (lower is better)."""
        raise NotImplementedError

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[Any]:
        """Per-epoch LR schedulers; default none."""
        return []


# Forward references resolved at runtime by duck typing: a SliceSource has __len__, and
# ``batches(batch_size, shuffle, generator, device)`` yielding SliceBatch (datasets.store.SliceSet).
SliceSource = Any
StepContext = Any
