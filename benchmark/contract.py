"""The method contract (v2): what every anomaly-detection method in phbench implements.

Modelled on scikit-learn's estimator contract (config in, ``fit``, then predict-like ``score``) and on
anomalib's split between torch modules and their training wrapper: a :class:`Method` owns ``torch.nn.Module``
networks, declares how to train them through :class:`Trainable` (the shared :class:`benchmark.trainer.Trainer`
runs every loop), and turns a batch into a :class:`ScoreOutput`.

What a method declares, and who acts on it:

- ``Config`` (a :class:`MethodConfig` dataclass): every field is a *training* field unless marked with
  :func:`scoring` (changes only how a trained model scores: a variant that only changes such fields reuses
  the trained weights) or :func:`runtime` (changes nothing in the numbers, e.g. the scoring batch size).
- ``variants``: name → :class:`Variant` (config overrides, resolved *before* anything is recorded, and whether
  the variant may see the lesion mask at scoring).
- ``version`` / ``score_version``: the method's code versions; they are part of the train / score key, so an
  edited method never serves a stale model or stale cached maps.
- ``upstreams(config)``: trained methods this one is built on (PHANES on RA, AutoDDPM on DDPM); the runner
  trains each once, under its own key, and hands it over before ``fit``.
- ``networks()`` (trained, saved), ``fitted`` (non-parameter tensors such as memory banks, saved),
  ``helper(...)`` (frozen pretrained trunks: moved with the method, never saved), ``calibration`` (floats
  fitted on healthy validation slices, stored per scoring configuration).

Shapes (B = batch, C = channels, H = W = image size; C and H come from the slice store as a :class:`DataSpec`):
    image          [B, C, H, W] float32, the recipe's normalised intensities
    aux            [B, A, H, W] float32 or None: an auxiliary modality prepared like the image (Cyclic-UNet's
                   intermediate modality); only where the store keeps one (recipe ``aux_channels``)
    brain_mask     [B, 1, H, W] float32 in [0, 1] (soft at the border after resizing)
    lesion_mask    [B, 1, H, W] float32 {0, 1}; None at scoring unless the variant declares it uses it
    anomaly_map    [B, 1, H, W] float32, larger = more anomalous
    image_score    [B]          float32, larger = more anomalous
    reconstruction [B, C, H, W] float32 or None (pseudo-healthy image where the method makes one)
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

ROLE_TRAIN, ROLE_SCORE, ROLE_RUNTIME = "train", "score", "runtime"


def scoring(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that only changes scoring (maps, calibration): it stays out of the train key."""
    return field(default=default, default_factory=default_factory, metadata={"role": ROLE_SCORE})


def runtime(default: Any = dataclasses.MISSING) -> Any:
    """A config field that changes no number (batch size of scoring): out of the train and the score key."""
    return field(default=default, metadata={"role": ROLE_RUNTIME})


@dataclass(frozen=True)
class DataSpec:
    """Image size and channels of the slices a method trains and scores on (read from the slice store).

    ``aux_channels``: channels of the auxiliary modality the store keeps beside the image (``SliceBatch.aux``;
    0: none). It is announced, not compared: two specs that differ only in it are equal, so a method that
    ignores the auxiliary modality takes slices with or without it, and one that needs it checks it itself.
    """

    image_size: int = 128
    channels: int = 1
    aux_channels: int = field(default=0, compare=False)

    @classmethod
    def of(cls, slices: Any) -> "DataSpec":
        """The spec of a store or a slice set (anything with a ``store.images`` or ``images`` array, and an
        optional ``aux`` array beside it)."""
        src = getattr(slices, "store", slices)
        arr = getattr(src, "images")
        _, c, h, w = arr.shape
        if h != w:
            raise ValueError(f"slices are {h}×{w}: phbench methods take square slices")
        aux = getattr(src, "aux", None)
        return cls(int(h), int(c), 0 if aux is None else int(aux.shape[1]))


@dataclass
class SliceBatch:
    """A batch of prepared slices, already on the method's device."""

    image: torch.Tensor
    brain_mask: torch.Tensor
    lesion_mask: torch.Tensor | None = None
    label: torch.Tensor | None = None  # [B] int64: 0 healthy, 1 anomalous
    index: torch.Tensor | None = None  # [B] int64: row ids into the slice store's manifest
    # [B, A, H, W] float32: the auxiliary modality stored beside the image (the recipe's ``aux_channels``, prepared
    # like the image); None when the store has none. An input, not ground truth: scoring sees it.
    aux: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> "SliceBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return SliceBatch(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def without_ground_truth(self) -> "SliceBatch":
        """The batch a method may see at scoring: no lesion mask, no label (the auxiliary modality stays)."""
        return SliceBatch(self.image, self.brain_mask, None, None, self.index, self.aux)


@dataclass
class ScoreOutput:
    """What ``Method.score`` returns; validated so that no metric ever sees a malformed map.

    ``extras``: tensors whose first dimension is the batch (e.g. a latent-space score ``[B]``, masks
    ``[B, 1, H, W]``); they are cached with the maps and reach the protocols.
    """

    anomaly_map: torch.Tensor
    image_score: torch.Tensor
    reconstruction: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

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
        for k, v in self.extras.items():
            if not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != b:
                raise ValueError(f"{method}: extras[{k!r}] must be a tensor with the batch ({b}) as first dimension")
        return self

    def detached_float(self) -> "ScoreOutput":
        f = lambda t: None if t is None else t.detach().float()  # noqa: E731
        return ScoreOutput(f(self.anomaly_map), f(self.image_score), f(self.reconstruction),
                           {k: v.detach() for k, v in self.extras.items()})


@dataclass(frozen=True)
class Variant:
    """A named row of a paper table: config overrides (resolved before the run is recorded) and what the
    variant may see. ``uses_lesion_mask``: the lesion mask reaches ``_score`` (oracle rows, PHANES-GT); every
    other variant never sees it. ``protocol``: hints for protocols (e.g. a per-image-best threshold)."""

    overrides: Mapping[str, Any] = field(default_factory=dict)
    uses_lesion_mask: bool = False
    description: str = ""
    protocol: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Upstream:
    """A trained method this one is built on: registry name, variant and config overrides of the upstream."""

    method: str
    variant: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodInfo:
    """Metadata shown by ``phbench list`` and printed as table footnotes."""

    paper: str  # short citation
    summary: str
    deviations: tuple[str, ...] = ()  # every place where phbench differs from the paper / official code
    code: str = ""  # official code reference


@dataclass
class MethodConfig:
    """Base config. Subclasses are dataclasses whose defaults are the paper's settings.

    Image size and channels are not config: they come from the slice store (:class:`DataSpec`).
    Training-budget fields are shared so that profiles can override them uniformly.
    """

    epochs: int = 100
    max_steps: int | None = None  # optimiser-step budget of the main stage; None = epochs only
    batch_size: int = 8
    lr: float = 1e-4
    early_stop_patience: int | None = None  # validations without improvement; None = off
    val_every: int = 1  # validate every k epochs (when the method has a validation loss)
    grad_clip_norm: float | None = None  # clip each optimiser's gradient norm before its step
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    augment: bool = False
    score_batch_size: int = runtime(32)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fields_with_role(self, role: str) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("role", ROLE_TRAIN) == role}

    def training_dict(self) -> dict[str, Any]:
        """The fields the trained weights depend on (part of the train key)."""
        return jsonable(self.fields_with_role(ROLE_TRAIN))

    def scoring_dict(self) -> dict[str, Any]:
        """The fields that change only scoring (part of the score key)."""
        return jsonable(self.fields_with_role(ROLE_SCORE))

    def replace(self, **changes: Any) -> "MethodConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise KeyError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


def jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples as lists etc., so a config dict hashes the same after a JSON round trip."""
    return json.loads(json.dumps(d, sort_keys=True, default=str))


class Method(ABC):
    """Base class of every method. Subclasses set ``name``, ``Config``, ``info`` (and ``variants``,
    ``version``) and register with ``@register_method``.

    Life cycle: ``m = Method.build(config, variant=..., data=DataSpec(...), device=...)`` → ``m.fit(train, val)``
    (the shared trainer, then ``calibrate``) → ``m.score(batch)``. The runner does the same through the run
    store, so trained models, calibrations and scores are each computed once.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    info: ClassVar[MethodInfo]
    version: ClassVar[int] = 1  # bump when a change alters what this method trains (retrains, rescores)
    score_version: ClassVar[int] = 1  # bump when only scoring changes (rescores from the same weights)
    variants: ClassVar[Mapping[str, Variant]] = {}
    score_with_grad: ClassVar[bool] = False  # scoring needs autograd (z search, saliency); params stay frozen
    min_size_multiple: ClassVar[int] = 1  # image size must be a multiple of this (strided networks)
    channels_supported: ClassVar[tuple[int, ...] | None] = None  # None: any channel count
    profile_overrides: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # networks built through ``place`` use channels_last memory format: convolutions then skip the NCHW ↔ blocked
    # reorders (oneDNN on CPU: 1.1–1.4× per training step on table1's methods; NHWC tensor cores on CUDA)
    channels_last: ClassVar[bool] = False
    # config fields that count training length (epochs, steps, schedule periods tied to them): a profile's
    # budget_scale (the gpu profile) multiplies them together, so a schedule keeps its shape when training is longer
    budget_fields: ClassVar[tuple[str, ...]] = ("epochs", "max_steps")

    def __init__(self, config: MethodConfig | None = None, *, variant: str = "", device: torch.device | str = "cpu",
                 data: DataSpec | None = None, upstream: Mapping[str, "Method"] | None = None):
        if variant and variant not in self.variants:
            raise ValueError(f"{self.name}: unknown variant {variant!r}; known: {list(self.variants) or 'none'}")
        self.variant = variant
        self.config = config if config is not None else self.resolve(None, variant)
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}, got {type(self.config).__name__}")
        self._check_resolved()
        self.data = data or DataSpec()
        self.check_data(self.data)
        self.device = torch.device(device)
        self.calibration: dict[str, float] = {}  # scalars fitted on healthy validation data (thresholds, τ, ...)
        self.fitted: dict[str, torch.Tensor] = {}  # non-parameter state (memory banks, coresets), saved
        self._helpers: dict[str, nn.Module] = {}
        self.upstream: dict[str, Method] = {}
        wanted = self.upstreams(self.config)
        if upstream is not None:
            missing = set(wanted) - set(upstream)
            if missing:
                raise ValueError(f"{self.name}: upstream method(s) {sorted(missing)} not given")
            self.upstream = {k: upstream[k] for k in wanted}
            for up in self.upstream.values():  # trained under its own key: frozen here
                up.train_mode(False)
                for net in up.networks().values():
                    net.requires_grad_(False)

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, config: MethodConfig | None, variant: str = "") -> MethodConfig:
        """``config`` (default: the paper's) with ``variant``'s overrides applied: the config that runs."""
        cfg = config if config is not None else cls.Config()
        if variant:
            if variant not in cls.variants:
                raise ValueError(f"{cls.name}: unknown variant {variant!r}; known: {list(cls.variants) or 'none'}")
            if cls.variants[variant].overrides:
                cfg = cfg.replace(**cls.variants[variant].overrides)
        return cfg

    @classmethod
    def build(cls, config: MethodConfig | None = None, *, variant: str = "", **kw: Any) -> "Method":
        """Construct with ``variant`` resolved into ``config`` (what the runner records is what runs)."""
        return cls(cls.resolve(config, variant), variant=variant, **kw)

    def _check_resolved(self) -> None:
        if not self.variant:
            return
        for k, v in self.variants[self.variant].overrides.items():
            if getattr(self.config, k) != v:
                raise ValueError(f"{self.name}/{self.variant}: config.{k} = {getattr(self.config, k)!r}, the variant "
                                 f"sets {v!r}; build with {type(self).__name__}.build(config, variant=...)")

    @classmethod
    def check_data(cls, data: DataSpec) -> None:
        if data.image_size % cls.min_size_multiple:
            raise ValueError(f"{cls.name}: image size {data.image_size} is not a multiple of {cls.min_size_multiple}")
        if cls.channels_supported is not None and data.channels not in cls.channels_supported:
            raise ValueError(f"{cls.name}: {data.channels}-channel slices; supported: {cls.channels_supported}")

    @classmethod
    def score_passes(cls, config: MethodConfig) -> float | None:
        """Network passes per scored slice when a config field sets them (a chain or a search length), so that
        ``phbench estimate`` scales a figure timed at another length. Default None: one pass, or data-dependent."""
        return None

    @classmethod
    def score_passes_capped(cls, config: MethodConfig, k: int) -> dict[str, Any]:
        """Config overrides that score with about ``k`` passes (or the fewest the chain allows), for timing a
        long chain briefly. Default: none (``score_passes`` is None)."""
        return {}

    @classmethod
    def upstreams(cls, config: MethodConfig) -> dict[str, Upstream]:
        """Trained methods this one builds on, by the name ``self.upstream`` uses. Default: none."""
        return {}

    def upstream_method(self, name: str) -> "Method":
        """The trained upstream ``name``; built without it (a bare constructor call), one line that says how."""
        if name not in self.upstream:
            raise RuntimeError(f"{self.name}: no {name} upstream; build with upstream={{'{name}': <trained {name}>}} "
                               "(the runner and benchmark.models.obtain do)")
        return self.upstream[name]

    @property
    def uses_lesion_mask(self) -> bool:
        return bool(self.variant and self.variants[self.variant].uses_lesion_mask)

    # -- networks, helpers, state ----------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> Mapping[str, nn.Module]:
        """Every trained module by name (saved, moved, switched between train/eval mode)."""

    def helper(self, name: str, make: Callable[[], nn.Module]) -> nn.Module:
        """A frozen pretrained module (LPIPS, an ImageNet trunk), built on first use on the method's device:
        moved with the method, always in eval mode, no gradients into it, never saved in the model file."""
        if name not in self._helpers:
            module = make().to(self.device).eval()
            for p in module.parameters():
                p.requires_grad_(False)
            self._helpers[name] = module
        return self._helpers[name]

    def helpers(self) -> Mapping[str, nn.Module]:
        return dict(self._helpers)

    def place(self, module: nn.Module) -> nn.Module:
        """``module`` on the method's device, in channels_last format when the method sets ``channels_last`` (the
        same maths, other float rounding; ``Module.to`` keeps the format on later moves and weight loads)."""
        if self.channels_last:
            return module.to(self.device, memory_format=torch.channels_last)
        return module.to(self.device)

    def train_mode(self, on: bool = True) -> None:
        for net in self.networks().values():
            net.train(on)
        for h in self._helpers.values():
            h.eval()

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for module in [*self.networks().values(), *self._helpers.values()]:
            module.to(self.device)
        self.fitted = {k: v.to(self.device) for k, v in self.fitted.items()}
        for up in self.upstream.values():
            up.to(self.device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Trained weights and fitted tensors (not helpers, not upstream methods: each has its own file)."""
        return {
            "networks": {k: v.state_dict() for k, v in self.networks().items()},
            "fitted": {k: v.detach().clone() for k, v in self.fitted.items()},
            "calibration": dict(self.calibration),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        nets = self.networks()
        missing = set(nets) - set(state["networks"])
        if missing:
            raise KeyError(f"{self.name}: checkpoint lacks networks {sorted(missing)}")
        for k, net in nets.items():
            net.load_state_dict(state["networks"][k])
        self.fitted = {k: v.to(self.device) for k, v in state.get("fitted", {}).items()}
        self.calibration = {k: float(v) for k, v in state.get("calibration", {}).items()}

    # -- training -------------------------------------------------------------------------------------
    def fit(self, train: "SliceSource", val: "SliceSource | None" = None, *, trainer: Any | None = None) -> dict[str, Any]:
        """``learn`` then ``calibrate`` on ``val`` (the runner does the two apart: calibration is stored per
        scoring configuration). Returns the fit report."""
        from benchmark.trainer import Trainer

        report = self.learn(train, val, trainer=trainer or Trainer(device=self.device))
        if val is not None and len(val):
            self.calibrate(val)
        return report

    def learn(self, train: "SliceSource", val: "SliceSource | None", *, trainer: Any) -> dict[str, Any]:
        """Everything saved in the model file comes from here: the shared trainer for a :class:`Trainable`
        method. A method without gradient training (a feature bank, a coreset) overrides this and fills
        ``self.fitted``; one that trains and then builds a bank calls ``super().learn`` first."""
        self.check_slices(train)
        if isinstance(self, Trainable):
            return trainer.fit(self, train, val)
        return {"steps": 0, "epochs_run": 0}

    def calibrate(self, val: "SliceSource") -> None:
        """Fit scalars on healthy validation slices (thresholds etc.) into ``self.calibration``. Default: none."""

    def check_choices(self, **allowed: Sequence[Any]) -> None:
        """Raise one clear ValueError for the first named config field whose value is not among its choices, e.g.
        ``self.check_choices(image_score=("native", "latent"))`` in ``__init__``."""
        for field_name, choices in allowed.items():
            value = getattr(self.config, field_name)
            if value not in choices:
                raise ValueError(f"{self.name}: {field_name} must be one of {tuple(choices)}, got {value!r}")

    def check_slices(self, slices: Any) -> None:
        """Raise when a slice set's size or channels differ from the ``DataSpec`` this method was built for."""
        got = DataSpec.of(slices)
        if got != self.data:
            raise ValueError(f"{self.name}: built for {self.data.image_size} px × {self.data.channels} channel(s), "
                             f"given {got.image_size} px × {got.channels} channel(s)")

    # -- inference ----------------------------------------------------------------------------------
    @abstractmethod
    def _score(self, batch: SliceBatch) -> ScoreOutput:
        """Compute maps for one batch (networks in eval mode, batch on the device, no ground truth unless the
        variant declares ``uses_lesion_mask``; grads off unless ``score_with_grad``)."""

    def score(self, batch: SliceBatch) -> ScoreOutput:
        """Validated maps of one batch. The lesion mask and label are removed unless the variant uses them."""
        b, c, h, w = batch.image.shape
        if (h, c) != (self.data.image_size, self.data.channels) or h != w:
            raise ValueError(f"{self.name}: batch of {h}×{w} px × {c} channel(s); the method was built for "
                             f"{self.data.image_size} px × {self.data.channels}")
        self.train_mode(False)
        seen = batch if self.uses_lesion_mask else batch.without_ground_truth()
        seen = seen.to(self.device)
        if self.score_with_grad:
            params = [p for m in self.networks().values() for p in m.parameters()]
            flags = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad_(False)
            try:
                with torch.enable_grad():
                    out = self._score(seen)
            finally:
                for p, f in zip(params, flags):
                    p.requires_grad_(f)
        else:
            with torch.no_grad():
                out = self._score(seen)
        return out.detached_float().validate(seen, self.name)


class Trainable(ABC):
    """Mixin the shared trainer drives. Methods write steps, never loops.

    ``training_step`` receives the optimisers from ``configure_optimizers`` and performs its own
    ``step.optimize`` calls, so methods with alternating updates (GANs, SI-VAE, RA) fit as well as
    plain one-loss models. Several stages (f-AnoGAN: WGAN-GP then encoder) are declared by ``stages``;
    ``step.stage`` tells the step which one runs.
    """

    @abstractmethod
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    @abstractmethod
    def training_step(self, batch: SliceBatch, step: "StepContext") -> dict[str, float]:
        """One optimisation step on a training batch; returns scalar losses for logging."""

    def stages(self) -> list["Stage"]:
        """The training stages in order; default: one stage with the config's budget."""
        from benchmark.trainer import Stage

        return [Stage("train")]

    def validation_loss(self, batch: SliceBatch) -> float:
        """Scalar used for early stopping / best-checkpoint selection (lower is better)."""
        raise NotImplementedError

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[Any]:
        """LR schedules: ``torch.optim.lr_scheduler`` objects (stepped per epoch) or
        :class:`benchmark.trainer.Schedule` (``interval="step"`` for per-step schedules). Default none."""
        return []

    def ema_decays(self) -> dict[str, float]:
        """Network name → EMA decay: the trainer keeps an exponential moving average of those weights,
        validates with it and leaves it in the networks at the end (diffusion models). Default: none."""
        return {}

    def on_fit_start(self, train: "SliceSource", val: "SliceSource | None") -> None:
        """Called by the trainer before the first step with the slice sets it trains on: per-slice data a method
        derives once (ProxyAno's and Cycle-GAN's superpixel proxies, cached on disk). Default: nothing."""

    def on_epoch_end(self, step: "StepContext") -> None:
        """Called after each epoch (before validation): e.g. AFSC binarises its masks at a given epoch."""

    def on_stage_end(self, step: "StepContext") -> None:
        """Called after a stage has finished (after its best weights are restored)."""


# Forward references resolved at runtime by duck typing: a SliceSource has __len__, and
# ``batches(batch_size, shuffle, generator, device)`` yielding SliceBatch (datasets.store.SliceSet).
SliceSource = Any
StepContext = Any
Stage = Any
