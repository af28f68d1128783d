"""Cyclic-UNet (Liang, Anthony, Wagner, Kamnitsas, MICCAI MMMI 2023): anomaly detection by a modality cycle.

Two deterministic UNets (guided-diffusion layout, no timestep; ``methods/blocks/unet.py``) are trained on
paired healthy slices with MSE: the *forward* net translates the input modality into an intermediate one, the
*backward* net translates the intermediate modality back (specs/baselines.md §21). At test time the input goes
round the cycle, x_cyc = backward(forward(x)); a lesion the nets never saw does not survive the two
translations, so the map is the squared error (x − x_cyc)² inside the brain.

The intermediate modality is T1 for a FLAIR input and FLAIR for any other (IterMask2 §3). It is not part of the
image: recipes store it beside the image as an auxiliary modality (``aux_channels``; the store's ``aux`` array,
``SliceBatch.aux``), prepared exactly like the input. Only training needs it; scoring sees the input alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import DataSpec, Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import Schedule, Stage, StepContext
from methods.blocks.unet import UNet

NETWORKS = ("forward", "backward")  # input → intermediate, intermediate → input
# A narrow 3-level UNet (attention only in the middle block) for the CPU profiles and tests.
_NARROW = {"model_channels": 8, "channel_mult": (1, 2, 4), "num_res_blocks": 1, "attention_resolutions": ()}


def setups_with_aux() -> list[str]:
    """Setup ids whose recipe stores an intermediate modality beside the input (what this method trains on)."""
    from datasets.recipes_paper import SETUPS, Setup, get_recipe

    return [sid for sid, s in SETUPS.items() if isinstance(s, Setup) and get_recipe(s.recipe).aux_channels]


def no_aux_message() -> str:
    return ("cyclic-unet: needs an intermediate modality stored beside the input (a recipe with aux_channels), "
            f"but these slices have none; setups that provide one: {', '.join(setups_with_aux())}")


def lr_decay_factor(step: int, every: int | None, factor: float) -> float:
    """The official ``TrainLoop.lr_decay``: after optimiser step s (0-based) with s % every == 0 and s > 0 the lr
    becomes lr·factor^(s // every), so the k-th step (k ≥ 1 steps taken) runs at factor^((k − 1) // every)."""
    if not every:
        return 1.0
    return factor ** (max(step - 1, 0) // every)


@dataclass
class CyclicUNetConfig(MethodConfig):
    """Defaults = the official code (MMCCD configs/brats_configs.py, modality_cyclic_train.py; specs §21)."""

    epochs: int = 100_000  # used only without a step budget (max_steps None: the CPU profiles)
    max_steps: int | None = 100_000  # training_score.iterations: both nets take this many steps
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0  # AdamW with weight decay 0, i.e. Adam
    lr_decay_steps: int | None = 150_000  # lr × lr_decay_factor every 150k steps: never within 100k
    lr_decay_factor: float = 0.5
    ema_decay: float | None = None  # the code keeps an EMA (0.9999) but saves and tests the raw weights
    early_stop_patience: int | None = None  # no validation: the last weights are the trained ones
    # UNet (guided diffusion without timestep; GroupNorm with 16 groups as MMCCD's models/nn.py)
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # in pixels at 128 px, like the official string
    dropout: float = 0.1
    num_heads: int = 1
    norm_groups: int = 16


@register_method
class CyclicUNet(Method, Trainable):
    name = "cyclic-unet"
    Config = CyclicUNetConfig
    version = 1
    min_size_multiple = 16  # four stride-2 stages of the paper UNet
    info = MethodInfo(
        paper="Liang, Anthony, Wagner, Kamnitsas, Modality cycles with masked conditional diffusion for "
              "unsupervised anomaly segmentation in MRI, MICCAI MMMI workshop 2023 (arXiv 2308.16150); "
              "Cyclic-UNet is its UNet-only variant",
        summary="A forward UNet translates the input modality into an intermediate one (T1 for FLAIR, FLAIR "
                "otherwise), a backward UNet translates it back; both trained with MSE on paired healthy slices. "
                "x_cyc = backward(forward(x)); map = (x - x_cyc)^2 x brain mask, image score = mean of the map "
                "inside the brain. Needs a store with the intermediate modality (recipe aux_channels).",
        deviations=(
            "Both UNets are trained by the shared trainer in one run: each step updates the forward net "
            "(input -> intermediate) and the backward net (real intermediate -> input) with their own AdamW "
            "optimisers (weight decay 0) on the same batch. The official code trains them in two separate runs "
            "(modality_cyclic_train.py --training_process forward/backward); they share no parameters or losses, "
            "so this equals the official training up to data order and seeds [assumption].",
            "Training length is the trainer's step budget max_steps = 100 000 (training_score.iterations), whatever "
            "the number of epochs that takes; the lr halving every 150 000 steps (lr_decay_steps) is reproduced as "
            "a per-step schedule and never fires within it. No validation and no best-weight selection, as in the "
            "code. The released sampling script loads an intermediate checkpoint (model075000.pt, "
            "model080000.pt at an earlier commit), not the last one [spec §21: 100k].",
            "EMA is off by default (ema_decay None): the official TrainLoop updates EMA parameters (rate 0.9999) "
            "but save() writes the raw master parameters and the sampling script loads those, so the evaluated "
            "weights are raw. ema_decay = 0.9999 enables the trainer's EMA (specs §21 lists it).",
            "The released sampling script builds the backward checkpoint path from --experiment_name_forward "
            "(--experiment_name_backward is never read), so as released it loads the forward weights twice; "
            "phbench cycles through the separately trained backward net, as the paper describes.",
            "The intermediate modality is the store's auxiliary modality (recipe aux_channels): the same slices, "
            "with the input's brain region, normalisation rule (on its own volume), padding and area resize; the "
            "official loader area-resizes both modalities' preprocessed slices in the same way. Fitting on a store "
            "without one fails with one line naming the setups that have one.",
            "The map is (x - x_cyc)^2 summed over channels times the binarised brain mask (B > 0, the code's "
            "brainmask > 0); the image score is its mean inside the brain (the paper defines none) [assumption]. "
            "The test-set min-max normalisation, the 100-step threshold search and the radius-4 disk erosion of "
            "the brain mask belong to the protocol (as for IterMask2).",
            "The UNet is the shared guided-diffusion block with GroupNorm of 16 groups (eps 1e-5), residual "
            "up/down-sampling, attention at 32/16/8 px with 1 head, dropout 0.1. The official model builds a "
            "time-embedding MLP that a timestep-free forward never uses: it is not built. use_scale_shift_norm "
            "only acts on a timestep embedding, so without one both layouts are the same (norm, SiLU, dropout, "
            "zero conv). Attention uses scaled_dot_product_attention (same maths).",
            "On CUDA the UNets run under bf16 autocast (GroupNorm in fp32); the official code is fp32. The trainer "
            "drops the last partial batch (the official loader keeps it).",
            "The smoke and default profiles use a narrow UNet (base width 8, mult (1,2,4), one residual block per "
            "level, attention only in the middle block) and an epoch budget instead of 100k steps; 'default' "
            "trains 1 epoch of batch 8 at lr 2e-3 (72 steps of each net on 576 slices). The paper profile keeps "
            "every config default [assumption: compute budget].",
        ),
        code="github.com/ZiyunLiang/MMCCD @a5ef9b4faf5a966957b45a6f00145b668f7cdab2 (model_name unet)",
    )
    # CPU budgets (the paper profile keeps the config). 'default' on the 576-slice default phantom at 128 px (T1 input,
    # FLAIR intermediate): 72 steps of each net took 925 s and scoring 288 slices 55-90 s on 2 cores shared with
    # ~8 busy processes (load 8-9); pooled pixel AUROC 0.65 untrained -> 0.88 trained (brain only 0.25 -> 0.76).
    profile_overrides = {
        "smoke": {"epochs": 1, "max_steps": None, "batch_size": 8, **_NARROW},
        "default": {"epochs": 1, "max_steps": None, "batch_size": 8, "lr": 2e-3, **_NARROW},
    }

    def __init__(self, config: CyclicUNetConfig | None = None, **kw):
        super().__init__(config, **kw)
        c, size = self.config, self.data.image_size
        multiple = 2 ** (len(c.channel_mult) - 1)
        if size % multiple:
            raise ValueError(f"{self.name}: image size {size} is not a multiple of {multiple} "
                             f"({len(c.channel_mult)} levels)")
        ch, aux = self.data.channels, self.data.aux_channels
        self.forward_net = self._unet(ch, aux).to(self.device)
        self.backward_net = self._unet(aux, ch).to(self.device)

    def _unet(self, in_channels: int, out_channels: int) -> UNet:
        c, size = self.config, self.data.image_size
        return UNet(in_channels=in_channels, out_channels=out_channels, model_channels=c.model_channels,
                    channel_mult=tuple(c.channel_mult), num_res_blocks=c.num_res_blocks,
                    attention_ds=tuple(size // r for r in c.attention_resolutions),
                    dropout=c.dropout, num_heads=c.num_heads, norm="group", norm_groups=c.norm_groups)

    @classmethod
    def check_data(cls, data: DataSpec) -> None:
        super().check_data(data)
        if data.aux_channels < 1:
            raise ValueError(no_aux_message())

    def check_slices(self, slices) -> None:
        super().check_slices(slices)
        got = DataSpec.of(slices).aux_channels
        if got != self.data.aux_channels:
            raise ValueError(no_aux_message() if not got else
                             f"{self.name}: built for {self.data.aux_channels} intermediate channel(s), given {got}")

    def networks(self) -> dict[str, nn.Module]:
        return {"forward": self.forward_net, "backward": self.backward_net}

    # -- training -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {k: torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
                for k, net in self.networks().items()}

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[Schedule]:
        c = self.config
        if not c.lr_decay_steps:
            return []
        f = lambda s: lr_decay_factor(s, c.lr_decay_steps, c.lr_decay_factor)  # noqa: E731
        return [Schedule(torch.optim.lr_scheduler.LambdaLR(opt, f), interval="step") for opt in optimizers.values()]

    def stages(self) -> list[Stage]:
        # a step budget ends training whatever the number of epochs (the official loop counts iterations only)
        steps = self.config.max_steps
        return [Stage("train", max_steps=steps)] if steps is not None else [Stage("train")]

    def ema_decays(self) -> dict[str, float]:
        d = self.config.ema_decay
        return {} if d is None else {k: float(d) for k in NETWORKS}

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        if batch.aux is None:
            raise ValueError(no_aux_message())
        x, mid = batch.image.float(), batch.aux.float()
        with step.autocast():
            to_mid = self.forward_net(x)
            to_x = self.backward_net(mid)
        return {"mse_forward": step.optimize("forward", F.mse_loss(to_mid.float(), mid)),
                "mse_backward": step.optimize("backward", F.mse_loss(to_x.float(), x))}

    # -- inference ----------------------------------------------------------------------------------
    def cycle(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(intermediate translation, x_cyc) of the input, both fp32."""
        with autocast(self.device, self.config.amp):
            mid = self.forward_net(x)
            x_cyc = self.backward_net(mid)
        return mid.float(), x_cyc.float()

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = batch.image.float()
        brain = (batch.brain_mask > 0).float()
        mid, x_cyc = self.cycle(x)
        amap = ((x - x_cyc) ** 2).sum(1, keepdim=True) * brain
        score = amap.flatten(1).sum(1) / brain.flatten(1).sum(1).clamp_min(1.0)
        return ScoreOutput(anomaly_map=amap, image_score=score, reconstruction=x_cyc,
                           extras={"intermediate": mid})
