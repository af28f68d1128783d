"""DDPM: pixel-space diffusion anomaly detection with Gaussian noise (``ddpm``; specs/baselines.md §18, §25).

A DDPM (ε-prediction, linear β 1e-4 → 2e-2, T = 1000) learns healthy slices. At test time a slice is noised to t_AD
with Gaussian noise and denoised back to 0 by the ancestral sampler; the model has only seen healthy anatomy, so it
paints a lesion over with healthy tissue. The map is |x − x̂| with x̂ clamped to [0, 1] in the model's range, image
score = its mean (ci-ber ``get_anomaly``, anoDDPM branch). IterMask2's tables (the paper that reports it) compute
their own normalised squared error from the returned reconstruction.

This file is also the base of the other two diffusion methods: ``anoddpm`` (methods/anoddpm.py) is this class with
simplex noise in place of every Gaussian draw, and ``autoddpm`` (methods/autoddpm.py) scores with a trained ``ddpm``
as its upstream through :meth:`DDPM.reconstruct` and :meth:`DDPM.inpaint`. What they share lives here: the config,
the network, the training step, the validation loss, the reverse chains (full, or respaced in the CPU profiles) and
the rescaling of stores that are not in [0, 1] (``input_range``).

Composed of the shared blocks only: ``methods/blocks/diffusion.py`` (schedule, ancestral and RePaint steps,
respacing), ``methods/blocks/unet.py`` (time-embedded UNet) and ``methods/blocks/reconstruction.py`` (UnitRange).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable, Variant, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext
from methods.blocks.augment import random_affine
from methods.blocks.diffusion import DiffusionSchedule, Model, NoiseFn, RespacedSchedule, gaussian_noise, \
    respaced_timesteps
from methods.blocks.noise import generator_from, slice_generators
from methods.blocks.reconstruction import INPUT_RANGES, UnitRange, residual_output
from methods.blocks.unet import UNet

VAL_NOISE_SEED = 2109  # validation timesteps and noise, per slice: every validation sees the same corruption


@dataclass
class DDPMConfig(MethodConfig):
    """Defaults: the ci-ber DDPM of specs/baselines.md §18 at 128 px.

    Network (ci-ber/MONAI ``DiffusionModelUNet``): levels of 128, 256, 256 channels, attention at the two coarser
    levels (and the middle), 1 residual block per level, 256 channels per attention head (→ 1 head), GroupNorm with
    32 groups, sinusoidal timestep embedding. Schedule: T = 1000, linear β 1e-4 → 2e-2, ε-prediction, fixed-small
    variance, x̂₀ clipped to [−1, 1]; the model works on [0, 1] images. Training: MSE on the noise, t uniform, Adam
    1e-4, batch 16, ≤ 3000 epochs, validation every 50 epochs (best validation loss kept), mixed precision; the
    ci-ber loader's augmentation (RandomAffine 10°/0.1/0.9–1.1 + h-flip 0.5, also RA/PHANES's).
    ``input_range``: "brain_minmax" (default) rescales each slice to [0, 1] by its brain's min and max before the
    model and maps the output back (§0.1: IterMask2's stores are in about [−3, 3+]); "unit" feeds [0, 1] stores as
    they are. Scoring: t_AD = 250 (§18, GenAI_UAD's Gaussian config), every reverse step (``score_steps=None``).
    """

    epochs: int = 3000
    batch_size: int = 16
    lr: float = 1e-4
    val_every: int = 50
    early_stop_patience: int | None = None
    augment: bool = True
    input_range: str = "brain_minmax"  # "unit" | "brain_minmax" (specs §0.1): what the model's [0, 1] is
    # network
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2)  # → 128, 256, 256
    attention_levels: tuple[bool, ...] = (False, True, True)  # one flag per level (the middle always has attention)
    num_res_blocks: int = 1
    num_heads: int = 1  # 256 channels per head at 256 channels
    dropout: float = 0.0
    # diffusion
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    ema_decay: float | None = None  # ci-ber keeps none
    # scoring
    t_ad: int = scoring(250)  # noise level of the reconstruction (index into the schedule)
    score_steps: int | None = scoring(None)  # model calls from t_AD to 0; None = every step (t_AD + 1), the paper
    seed: int = scoring(2109)  # per-slice scoring noise: generator seeded by (seed, slice row id)


T_AD_200 = Variant({"t_ad": 200}, description="noise level 200 (ci-ber autoDDPM anoddpm.yaml) instead of 250: same "
                                              "trained weights, rescored")

# The deviations every DDPM of this file family shares (network, training, chain convention, precision, budgets).
NETWORK_DEVIATION = (
    "Network = the shared guided-diffusion-style UNet (methods/blocks/unet.py) set to the ci-ber/MONAI "
    "DiffusionModelUNet's widths (128, 256, 256), attention at the two coarser levels and the middle, 1 residual "
    "block per level (decoder 2), 1 head, GroupNorm 32, sinusoidal embedding → MLP of 4·128. It differs from MONAI in: "
    "down/up-sampling inside residual blocks (2×2 average pool / nearest ×2) instead of strided / post-upsample convs, "
    "timestep embedding as a scale-shift of the second norm instead of an added bias, zero-initialised residual "
    "output convs and head, GroupNorm ε 1e-5 instead of 1e-6 [assumption: one shared UNet block].")
CHAIN_DEVIATION = (
    "Reverse chain in the ci-ber convention (sample_from_image): x noised to index t_AD, then t_AD + 1 ancestral "
    "steps t_AD, …, 0 with x̂₀ clipped to [−1, 1] (fixed-small variance).")
SEEDING_DEVIATION = (
    "Scoring noise of slice r comes from generators seeded by (seed 2109, r) on the method's device: a slice's map "
    "is reproducible and does not depend on its batch; training noise from a device generator seeded by the "
    "trainer's generator (one draw per step).")


def training_deviation(noise: str) -> str:
    return ("Training as ci-ber (§18): ε-MSE with t ~ U{0..999}, Adam 1e-4, batch 16, ≤ 3000 epochs, validation every "
            "50 epochs keeping the best weights, no early stopping. Validation loss = the training loss on validation "
            f"slices with per-slice seeded timesteps and {noise} (seed 2109 and the slice's row id), so validations "
            "compare the same corruption [assumption].")


def respacing_deviation(noise_note: str) -> str:
    return ("CPU profiles only ('smoke', 'default'): score_steps < t_AD + 1 strides the reverse chain by respaced "
            "ancestral sampling (Nichol & Dhariwal 2021 §4): K timesteps evenly spaced in [0, t_AD] (rounded), "
            "β'_k = 1 − ᾱ_{τ_k}/ᾱ_{τ_{k−1}}, the same forward noising to t_AD, the exact DDPM posterior between kept "
            "steps, the model given the original timesteps. 'smoke': tiny UNet (4 channels, 4 levels, middle attention "
            "only), 1 epoch, 2 reverse steps. 'default': UNet (8, 16, 16, 16; attention at the coarsest level and the "
            "middle), 3 epochs at lr 2e-3, batch 8, EMA 0.97, " + noise_note + " 'paper' keeps every step and the "
            "spec's network [assumption: compute budget].")


DDPM_DEVIATIONS = (
    "The paper (IterMask2, 003) cites 'DDPM [18]' without its reference list: phbench runs the ci-ber DDPM of "
    "specs §18 (network, schedule, training of ci-ber/autoDDPM @f74b894) with Gaussian noise, t_AD = 250 "
    "(ci-ber/GenAI_UAD's Gaussian 'AnoDDPM-G' config) [assumption of the spec]; variant 't_AD=200' (ci-ber autoDDPM "
    "anoddpm.yaml) changes only scoring and reuses the weights.",
    "Intensity range (specs §0.1, input_range='brain_minmax'): IterMask2's stores are not in [0, 1] (background −3, "
    "brain up to +3 and beyond), so each slice is min–max rescaled per image and channel inside its brain mask "
    "(> 0.5) to [0, 1] and clipped there before the model (training, validation and scoring alike; the background "
    "below the brain's minimum becomes 0); the clamped reconstruction is mapped back by the same affine map. The map "
    "|x − x̂| is in the store's units, so background pixels clipped at the input keep a residual |x − brain min| "
    "(brain-masked protocols such as IterMask2's ignore it) [assumption of the spec: 003 does not say how baselines "
    "were fed]. input_range='unit' feeds [0, 1] stores unchanged.",
    NETWORK_DEVIATION,
    training_deviation("Gaussian noise"),
    "Training augmentation of the ci-ber loader (IXILoader: RandomAffine 10°/0.1/0.9–1.1 + h-flip 0.5, shared "
    "random_affine) after the [0, 1] rescaling, so the affine fill value 0 is the background; IterMask2's own "
    "models train without augmentation [assumption: ci-ber's recipe kept for its DDPM].",
    CHAIN_DEVIATION,
    "Map |x − x̂| summed over channels (x̂ = the reconstruction clamped to [0, 1] in the model's range, mapped back), "
    "image score = mean of the map (ci-ber get_anomaly). IterMask2's tables apply their own normalised squared "
    "error to the returned reconstruction (specs §0.2).",
    SEEDING_DEVIATION,
    "bf16 autocast on CUDA for the UNet only; schedule arithmetic, noise, rescaling, loss and maps in fp32.",
    respacing_deviation("10 reverse steps (25× fewer model calls than the paper's 251)."),
)


@register_method
class DDPM(Method, Trainable):
    name = "ddpm"
    Config = DDPMConfig
    version = 1
    score_version = 1
    variants: dict[str, Variant] = {"t_AD=200": T_AD_200}
    min_size_multiple = 4  # the default three levels (two halvings); other depths are checked when built
    info = MethodInfo(
        paper="Ho, Jain, Abbeel, NeurIPS 2020 (DDPM), as a noise-and-denoise anomaly detector (Wyatt et al. 2022 "
              "with Gaussian noise; Pinaya et al., MICCAI 2022); 'DDPM [18]' of IterMask2 (003)",
        summary="DDPM (ε-prediction, linear β, T = 1000) trained on healthy slices rescaled to [0, 1] inside the "
                "brain; a test slice is noised to t_AD = 250 with Gaussian noise and denoised step by step to 0; "
                "map |x − x̂| (x̂ clamped to [0, 1], mapped back), image score = mean of the map.",
        deviations=DDPM_DEVIATIONS,
        code="ci-ber/autoDDPM model_zoo/ddpm.py (get_anomaly, sample_from_image), net_utils, projects/autoddpm/"
             "anoddpm.yaml @f74b894; ci-ber/GenAI_UAD configs/anoddpm.yaml @5060423",
    )
    # CPU budgets (the paper profile keeps the config; anoddpm inherits them). 'default' with Gaussian noise on 128-px
    # slices, one shared core: 10 reverse steps ≈ 1.8 scored slices/s (≈ 3 min for 300 slices).
    profile_overrides = {
        "smoke": {"epochs": 1, "model_channels": 4, "channel_mult": (1, 1, 1, 1),
                  "attention_levels": (False, False, False, False), "score_steps": 2, "score_batch_size": 8},
        "default": {"epochs": 3, "batch_size": 8, "lr": 2e-3, "ema_decay": 0.97, "model_channels": 8,
                    "channel_mult": (1, 2, 2, 2), "attention_levels": (False, False, False, True), "score_steps": 10},
    }

    @classmethod
    def score_passes(cls, config: DDPMConfig) -> float:
        return float(config.score_steps or config.t_ad + 1)  # None: every step from t_AD down to 0 (anoddpm too)

    @classmethod
    def score_passes_capped(cls, config: DDPMConfig, k: int) -> dict[str, Any]:
        return {"score_steps": min(k, config.t_ad + 1)}

    def __init__(self, config: DDPMConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        if len(c.attention_levels) != len(c.channel_mult):
            raise ValueError(f"{self.name}: {len(c.attention_levels)} attention flags for {len(c.channel_mult)} levels")
        multiple = 2 ** (len(c.channel_mult) - 1)
        if self.data.image_size % multiple:
            raise ValueError(f"{self.name}: image size {self.data.image_size} is not a multiple of {multiple} "
                             f"({len(c.channel_mult)} levels)")
        self.check_choices(input_range=INPUT_RANGES)
        self.check_chain("t_ad", c.t_ad, "score_steps", c.score_steps)
        attention_ds = tuple(2**i for i, on in enumerate(c.attention_levels) if on)
        ch = self.data.channels
        self.net = UNet(ch, ch, c.model_channels, tuple(c.channel_mult), c.num_res_blocks, attention_ds, c.dropout,
                        num_heads=c.num_heads, norm="group", time_embedding=True).to(self.device)
        self.schedule = DiffusionSchedule(c.num_timesteps, c.beta_start, c.beta_end, device=self.device)
        self.noise_fn: NoiseFn = self.make_noise_fn()
        self._respaced: dict[tuple[int, int], RespacedSchedule] = {}

    def make_noise_fn(self) -> NoiseFn:
        """Every draw of training, forward noising and the reverse steps: Gaussian here (anoddpm: simplex)."""
        return gaussian_noise

    def check_chain(self, t_name: str, t: int, steps_name: str, steps: int | None) -> None:
        """Refuse a chain start outside the schedule or a step count below 1 (named after the config fields)."""
        if not 0 <= t < self.config.num_timesteps:
            raise ValueError(f"{self.name}: {t_name} {t} outside [0, {self.config.num_timesteps})")
        if steps is not None and steps < 1:
            raise ValueError(f"{self.name}: {steps_name} must be ≥ 1 or None, got {steps}")

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def ema_decays(self) -> dict[str, float]:
        return {} if self.config.ema_decay is None else {"net": float(self.config.ema_decay)}

    def eps_model(self, amp: bool) -> Model:
        """ε̂ = net(x_t, t) under bf16 autocast on CUDA (when ``amp``), returned in fp32."""

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, amp):
                return self.net(x, t).float()

        return model

    def unit_range(self, batch: SliceBatch) -> UnitRange:
        """How this model's [0, 1] maps to the batch's intensities (``input_range``)."""
        return UnitRange.of(self.config.input_range, batch.image, batch.brain_mask)

    # -- training -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.Adam(self.net.parameters(), lr=self.config.lr)}

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        x = self.unit_range(batch).to_unit(batch.image.float())
        if self.config.augment:
            x = random_affine(x, generator=step.generator)
        gen = generator_from(step.generator, x.device)  # timesteps, then noise, drawn on the device
        loss = self.schedule.training_loss(self.eps_model(step.amp), x, self.noise_fn, gen)
        return {"mse": step.optimize("net", loss)}

    @torch.no_grad()
    def validation_loss(self, batch: SliceBatch) -> float:
        """The training loss with per-slice seeded timesteps and noise (the same corruption at every validation)."""
        rows = batch.index if batch.index is not None else torch.arange(len(batch))
        gens = slice_generators(VAL_NOISE_SEED, rows, batch.image.device)
        x = self.unit_range(batch).to_unit(batch.image.float())
        return float(self.schedule.training_loss(self.eps_model(self.config.amp), x, self.noise_fn, gens))

    # -- reverse chains ---------------------------------------------------------------------------------
    def chain(self, t_start: int, steps: int | None) -> tuple[DiffusionSchedule, int, Model]:
        """(schedule, start index, model) of a reverse chain from timestep ``t_start`` in ``steps`` model calls:
        the full schedule from index t_start (``steps`` None or ≥ t_start + 1), else the respaced schedule of
        ``steps`` evenly spaced timesteps in [0, t_start] (built once per (t_start, steps)) from its last index,
        with the model given the original timesteps."""
        model = self.eps_model(self.config.amp)
        if steps is None or steps >= t_start + 1:
            return self.schedule, int(t_start), model
        key = (int(t_start), int(steps))
        if key not in self._respaced:
            c = self.config
            self._respaced[key] = RespacedSchedule(respaced_timesteps(*key), c.num_timesteps, c.beta_start, c.beta_end,
                                                   device=self.device)
        sched = self._respaced[key]
        return sched, sched.num_timesteps - 1, sched.wrap(model)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generators: list[torch.Generator], t_start: int | None = None,
                    steps: int | None = None) -> torch.Tensor:
        """x ([0, 1], the model's range) noised to ``t_start`` (default t_AD, ``score_steps``) and denoised to 0,
        unclamped; row i draws from ``generators[i]``."""
        if t_start is None:
            t_start, steps = self.config.t_ad, self.config.score_steps
        sched, start, model = self.chain(t_start, steps)
        return sched.partial_reconstruct(model, x, start, self.noise_fn, generators)

    @torch.no_grad()
    def inpaint(self, x_known: torch.Tensor, x_start: torch.Tensor, mask: torch.Tensor,
                generators: list[torch.Generator], t_start: int, steps: int | None,
                resample_steps: int) -> torch.Tensor:
        """RePaint-style inpainting (AutoDDPM, specs §20 step 4) in the model's range: ``x_start`` noised to
        ``t_start``, ``mask`` (1 = regenerate) filled by the reverse chain while the rest follows ``x_known`` noised
        to each step's level, ``resample_steps`` repeats per step; unclamped. Row i draws from ``generators[i]``."""
        sched, start, model = self.chain(t_start, steps)
        return sched.repaint(model, x_start, x_known, mask, start, resample_steps, noise_fn=self.noise_fn,
                             generator=generators)

    # -- scoring ------------------------------------------------------------------------------------------
    def scoring_generators(self, batch: SliceBatch, seed: int) -> list[torch.Generator]:
        """One generator per slice on the method's device, seeded by (seed, the slice's row id)."""
        rows = batch.index if batch.index is not None else torch.arange(len(batch))
        return slice_generators(seed, rows, self.device)

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = batch.image.float()
        rng = self.unit_range(batch)
        x_hat = self.reconstruct(rng.to_unit(x), self.scoring_generators(batch, self.config.seed))
        return residual_output(x, rng.restore(x_hat.clamp(0.0, 1.0), x))
