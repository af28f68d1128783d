"""AnoDDPM: Wyatt et al.'s DDPM anomaly detection with simplex noise (``anoddpm``; specs/baselines.md §19, §18, §25).

A pixel-space DDPM (ε-prediction, linear β 1e-4 → 2e-2, T = 1000) learns healthy slices with *simplex* noise in
place of every Gaussian draw. At test time a slice is noised to t_AD with simplex noise and denoised back to 0 by
the ancestral sampler; the model has only seen healthy anatomy, so it paints a lesion over with healthy tissue, and
the map is |x − clamp(x̂, 0, 1)|, image score = its mean (ci-ber's ``get_anomaly``, the RA/PHANES convention §0.2).

Composed of the shared blocks only: ``methods/blocks/diffusion.py`` (schedule, ancestral step, noise-and-denoise),
``methods/blocks/simplex.py`` (multi-octave OpenSimplex on the device) and ``methods/blocks/unet.py`` (time-embedded
UNet). The one addition here is :class:`RespacedSchedule`, a DDPM schedule restricted to a subset of its timesteps,
which only the CPU profiles use (``score_steps``) to stride the reverse chain.

Noise levels (specs README resolution 10): t_AD = 250 for the PHANES tables (official ``roc_data``, GenAI_UAD,
project page); 200 (ci-ber autoDDPM ``anoddpm.yaml``) is the scoring-only variant ``"t_AD=200"``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable, Variant, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext
from methods.blocks.augment import random_affine
from methods.blocks.diffusion import DiffusionSchedule, schedule_tables
from methods.blocks.noise import generator_from, slice_generators
from methods.blocks.reconstruction import residual_output
from methods.blocks.simplex import simplex_noise
from methods.blocks.unet import UNet

VAL_NOISE_SEED = 2109  # validation timesteps and noise, per slice: every validation sees the same corruption


@dataclass
class AnoDDPMConfig(MethodConfig):
    """Defaults: the phbench default of specs/baselines.md §19 = the ci-ber DDPM of §18 at 128 px with simplex noise.

    Network (ci-ber/MONAI ``DiffusionModelUNet``, §18): levels of 128, 256, 256 channels, attention at the two
    coarser levels (and the middle), 1 residual block per level, 256 channels per attention head (→ 1 head),
    GroupNorm with 32 groups, sinusoidal timestep embedding. Schedule: T = 1000, linear β 1e-4 → 2e-2, ε-prediction,
    fixed-small variance, x̂₀ clipped to [−1, 1]; data stay in [0, 1]. Training (§18): MSE on the noise, t uniform,
    Adam 1e-4, batch 16, ≤ 3000 epochs, validation every 50 epochs (best validation loss kept), mixed precision;
    RA/PHANES augmentation (protocols/phanes.md §3). Simplex noise (§19): 6 octaves, persistence 0.8, coarsest
    feature 64 px.
    Scoring: t_AD = 250 (README resolution 10), every reverse step (``score_steps=None``).
    """

    epochs: int = 3000
    batch_size: int = 16
    lr: float = 1e-4
    val_every: int = 50
    early_stop_patience: int | None = None
    augment: bool = True
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
    simplex_octaves: int = 6
    simplex_persistence: float = 0.8
    simplex_frequency: float = 64.0  # coarsest feature size in pixels (the official "frequency")
    ema_decay: float | None = None  # ci-ber keeps none; the official AnoDDPM code averages (0.9999)
    # scoring
    t_ad: int = scoring(250)  # noise level of the reconstruction (index into the schedule)
    score_steps: int | None = scoring(None)  # model calls from t_AD to 0; None = every step (t_AD + 1), the paper
    seed: int = scoring(2109)  # per-slice scoring noise: generator seeded by (seed, slice row id)


ANODDPM_VARIANTS: dict[str, Variant] = {
    "t_AD=200": Variant({"t_ad": 200}, description="noise level 200 (ci-ber autoDDPM anoddpm.yaml; baselines.md §19's "
                                                   "value) instead of 250: same trained weights, rescored"),
}

ANODDPM_DEVIATIONS = (
    "phbench default = the ci-ber network and training of specs §18 at 128 px with simplex noise (§19), not the "
    "official AnoDDPM guided-diffusion model at 256 px (base 128, attention at 16 and 8, 2 heads, AdamW, batch 1, EMA) "
    "[assumption of the spec: 004 used the ci-ber framework for its other baselines]. EMA is off (ema_decay None) "
    "as in ci-ber; the field enables the trainer's EMA.",
    "Network = the shared guided-diffusion-style UNet (methods/blocks/unet.py) set to the ci-ber/MONAI "
    "DiffusionModelUNet's widths (128, 256, 256), attention at the two coarser levels and the middle, 1 residual "
    "block per level (decoder 2), 1 head, GroupNorm 32, sinusoidal embedding → MLP of 4·128. It differs from MONAI in: "
    "down/up-sampling inside residual blocks (2×2 average pool / nearest ×2) instead of strided / post-upsample convs, "
    "timestep embedding as a scale-shift of the second norm instead of an added bias, zero-initialised residual "
    "output convs and head, GroupNorm ε 1e-5 instead of 1e-6 [assumption: one shared UNet block].",
    "Training as ci-ber (§18): ε-MSE with t ~ U{0..999}, Adam 1e-4, batch 16, ≤ 3000 epochs, validation every 50 "
    "epochs keeping the best weights, no early stopping. Validation loss = the training loss on validation slices "
    "with per-slice seeded timesteps and simplex noise (seed 2109 and the slice's row id), so validations compare "
    "the same corruption [assumption].",
    "RA/PHANES training augmentation (RandomAffine 10°/0.1/0.9–1.1 + h-flip 0.5, shared random_affine) on: "
    "protocols/phanes.md §3 applies it to every model [assumption for a DDPM baseline].",
    "Every Gaussian draw (training target, forward noising to t_AD, per-step posterior noise) is simplex noise "
    "(6 octaves, persistence 0.8, coarsest feature 64 px at every image size, not re-normalised: std ≈ 0.5) "
    "[spec §19]; the third coordinate is drawn per field rather than set to t, and every row and call gets its own "
    "permutation (methods/blocks/simplex.py's documented assumptions).",
    "t_AD = 250 (specs README resolution 10: official roc_data, GenAI_UAD, project page); variant 't_AD=200' "
    "(ci-ber autoDDPM anoddpm.yaml) changes only scoring and reuses the weights.",
    "Reverse chain in the ci-ber convention (sample_from_image): x noised to index t_AD, then t_AD + 1 ancestral "
    "steps t_AD, …, 0 with x̂₀ clipped to [−1, 1] (fixed-small variance); the official AnoDDPM code noises to "
    "t_AD − 1 and takes t_AD steps (one step less).",
    "Map |x − clamp(x̂, 0, 1)| summed over channels, image score = mean of the map (ci-ber get_anomaly, §0.2), not the "
    "official squared error (x − x̂)².",
    "Scoring noise of slice r comes from generators seeded by (seed 2109, r) on the method's device: a slice's map "
    "is reproducible and does not depend on its batch; training noise from a device generator seeded by the "
    "trainer's generator (one draw per step).",
    "bf16 autocast on CUDA for the UNet only; schedule arithmetic, simplex noise, loss and maps in fp32.",
    "CPU profiles only ('smoke', 'default'): score_steps < t_AD + 1 strides the reverse chain by respaced ancestral "
    "sampling (Nichol & Dhariwal 2021 §4): K timesteps evenly spaced in [0, t_AD] (rounded), "
    "β'_k = 1 − ᾱ_{τ_k}/ᾱ_{τ_{k−1}}, the same forward noising to t_AD, the exact DDPM posterior between kept steps, "
    "the model given the original timesteps. 'smoke': tiny UNet (4 channels, 4 levels, middle attention only), "
    "1 epoch, 2 reverse steps. "
    "'default': UNet (8, 16, 16, 16; attention at the coarsest level and the middle), 3 epochs at lr 2e-3, batch 8, "
    "EMA 0.97, 10 reverse steps (25× fewer model calls than the paper's 251); on one shared core ≈ 10 training "
    "slices/s (≈ 3 min for the phantom's 576) and ≈ 2 scored slices/s (0.08 with all 251 steps, ~90 % of it simplex "
    "noise). "
    "'paper' keeps every step and the spec's network [assumption: compute budget].",
)


def respaced_timesteps(t_ad: int, steps: int) -> list[int]:
    """``steps`` timesteps from 0 to ``t_ad`` (increasing, both ends kept, evenly spaced and rounded); every
    timestep 0..t_ad when ``steps`` ≥ t_ad + 1, and just [t_ad] for one step (x̂₀ predicted in one go)."""
    if steps < 1:
        raise ValueError(f"score_steps must be ≥ 1, got {steps}")
    if steps >= t_ad + 1:
        return list(range(t_ad + 1))
    if steps == 1:
        return [int(t_ad)]
    # spacing t_ad/(steps − 1) ≥ 1, so the rounded values stay distinct
    return [round(i * t_ad / (steps - 1)) for i in range(steps)]


class RespacedSchedule(DiffusionSchedule):
    """A linear-β DDPM schedule restricted to the kept timesteps τ_0 < … < τ_{K−1} (Nichol & Dhariwal 2021 §4).

    Index k of this schedule is timestep τ_k of the full one: ᾱ'_k = ᾱ_{τ_k}, β'_k = 1 − ᾱ_{τ_k} / ᾱ_{τ_{k−1}}
    (ᾱ_{τ_{−1}} = 1), and every posterior coefficient follows from those with the formulas of the full schedule, so
    one ancestral step k → k − 1 is the exact DDPM posterior q(x_{τ_{k−1}} | x_{τ_k}, x̂₀). Keeping every timestep
    gives the full schedule back. The model must be called with ``timesteps[k]`` (:meth:`wrap`), not k.
    """

    def __init__(self, timesteps: Sequence[int], num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 2e-2, device: torch.device | str | None = None) -> None:
        ts = [int(t) for t in timesteps]
        if not ts or any(b <= a for a, b in zip(ts, ts[1:])) or ts[0] < 0 or ts[-1] >= num_timesteps:
            raise ValueError(f"timesteps must increase within [0, {num_timesteps}), got {ts[:5]}…")
        super().__init__(len(ts), beta_start, beta_end, device)  # buffers replaced below
        full = torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64), dim=0)
        abar = full[torch.tensor(ts)]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        for name, value in schedule_tables(1.0 - abar / abar_prev, abar).items():
            setattr(self, name, value.to(device=self.device, dtype=torch.float32))
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=self.device)

    def to(self, device: torch.device | str) -> "RespacedSchedule":
        super().to(device)
        self.timesteps = self.timesteps.to(device)
        return self

    def wrap(self, model: Any) -> Any:
        """``model(x, t)`` called with the full schedule's timesteps τ_k for this schedule's indices k."""

        def respaced_model(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return model(x, self.timesteps.to(k.device)[k])

        return respaced_model


@register_method
class AnoDDPM(Method, Trainable):
    name = "anoddpm"
    Config = AnoDDPMConfig
    version = 1
    score_version = 1
    variants = ANODDPM_VARIANTS
    min_size_multiple = 4  # the default three levels (two halvings); other depths are checked when built
    info = MethodInfo(
        paper="Wyatt, Leach, Schmon, Willcocks, CVPR Workshops (NTIRE) 2022, AnoDDPM (DDPM with simplex noise)",
        summary="DDPM (ε-prediction, linear β, T = 1000) trained with simplex noise on healthy slices; a test slice is "
                "noised to t_AD = 250 with simplex noise and denoised step by step to 0; map |x − clamp(x̂, 0, 1)|, "
                "image score = mean of the map.",
        deviations=ANODDPM_DEVIATIONS,
        code="github.com/Julian-Wyatt/AnoDDPM @3052f04; ci-ber/autoDDPM model_zoo/ddpm.py, net_utils @f74b894; "
             "ci-ber/GenAI_UAD configs/anoddpm.yaml @5060423",
    )
    # CPU budgets (the paper profile keeps the config). 'default' on the 576-slice FLAIR phantom, one shared core:
    # 216 steps in ≈ 3 min (9.5 slices/s), 10 reverse steps ≈ 1.4–1.9 scored slices/s; pixel AUROC 0.54 → 0.70.
    profile_overrides = {
        "smoke": {"epochs": 1, "model_channels": 4, "channel_mult": (1, 1, 1, 1),
                  "attention_levels": (False, False, False, False), "score_steps": 2, "score_batch_size": 8},
        "default": {"epochs": 3, "batch_size": 8, "lr": 2e-3, "ema_decay": 0.97, "model_channels": 8,
                    "channel_mult": (1, 2, 2, 2), "attention_levels": (False, False, False, True), "score_steps": 10},
    }

    def __init__(self, config: AnoDDPMConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        if len(c.attention_levels) != len(c.channel_mult):
            raise ValueError(f"anoddpm: {len(c.attention_levels)} attention flags for {len(c.channel_mult)} levels")
        multiple = 2 ** (len(c.channel_mult) - 1)
        if self.data.image_size % multiple:
            raise ValueError(f"anoddpm: image size {self.data.image_size} is not a multiple of {multiple} "
                             f"({len(c.channel_mult)} levels)")
        if not 0 <= c.t_ad < c.num_timesteps:
            raise ValueError(f"anoddpm: t_ad {c.t_ad} outside [0, {c.num_timesteps})")
        if c.score_steps is not None and c.score_steps < 1:
            raise ValueError(f"anoddpm: score_steps must be ≥ 1 or None, got {c.score_steps}")
        attention_ds = tuple(2**i for i, on in enumerate(c.attention_levels) if on)
        ch = self.data.channels
        self.net = UNet(ch, ch, c.model_channels, tuple(c.channel_mult), c.num_res_blocks, attention_ds, c.dropout,
                        num_heads=c.num_heads, norm="group", time_embedding=True).to(self.device)
        self.schedule = DiffusionSchedule(c.num_timesteps, c.beta_start, c.beta_end, device=self.device)
        self.noise_fn = functools.partial(simplex_noise, octaves=c.simplex_octaves,
                                          persistence=c.simplex_persistence, frequency=c.simplex_frequency)

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def ema_decays(self) -> dict[str, float]:
        return {} if self.config.ema_decay is None else {"net": float(self.config.ema_decay)}

    def eps_model(self, amp: bool):
        """ε̂ = net(x_t, t) under bf16 autocast on CUDA (when ``amp``), returned in fp32."""

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, amp):
                return self.net(x, t).float()

        return model

    # -- training -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.Adam(self.net.parameters(), lr=self.config.lr)}

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        x = batch.image.float()
        if self.config.augment:
            x = random_affine(x, generator=step.generator)
        gen = generator_from(step.generator, x.device)  # timesteps, then simplex noise, drawn on the device
        loss = self.schedule.training_loss(self.eps_model(step.amp), x, self.noise_fn, gen)
        return {"mse": step.optimize("net", loss)}

    @torch.no_grad()
    def validation_loss(self, batch: SliceBatch) -> float:
        """The training loss with per-slice seeded timesteps and noise (the same corruption at every validation)."""
        rows = batch.index if batch.index is not None else torch.arange(len(batch))
        gens = slice_generators(VAL_NOISE_SEED, rows, batch.image.device)
        loss = self.schedule.training_loss(self.eps_model(self.config.amp), batch.image.float(), self.noise_fn, gens)
        return float(loss)

    # -- inference -------------------------------------------------------------------------------------
    def reverse_schedule(self) -> DiffusionSchedule | RespacedSchedule:
        """The schedule the reverse chain runs on: the full one (every step), or the respaced one of ``score_steps``."""
        c = self.config
        if c.score_steps is None or c.score_steps >= c.t_ad + 1:
            return self.schedule
        key = (c.t_ad, c.score_steps)
        if getattr(self, "_respaced_key", None) != key:
            self._respaced = RespacedSchedule(respaced_timesteps(c.t_ad, c.score_steps), c.num_timesteps,
                                              c.beta_start, c.beta_end, device=self.device)
            self._respaced_key = key
        return self._respaced

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """x noised to t_AD with simplex noise and denoised to 0 (unclamped); row i draws from ``generators[i]``."""
        model = self.eps_model(self.config.amp)
        sched = self.reverse_schedule()
        if isinstance(sched, RespacedSchedule):
            return sched.partial_reconstruct(sched.wrap(model), x, sched.num_timesteps - 1, self.noise_fn, generators)
        return sched.partial_reconstruct(model, x, self.config.t_ad, self.noise_fn, generators)

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = batch.image.float()
        rows = batch.index if batch.index is not None else torch.arange(len(batch))
        x_hat = self.reconstruct(x, slice_generators(self.config.seed, rows, self.device))
        return residual_output(x, x_hat.clamp(0.0, 1.0))
