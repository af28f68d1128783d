"""f-AnoGAN (``f-anogan``, specs/baselines.md §9): a residual WGAN-GP, then an izi_f encoder into its latent space.

Two training stages (``stages()``), as the official code runs two scripts:

1. ``"wgan-gp"`` (wgangp_64x64.py): the residual generator G (z ~ N(0, I), 128-d) and the layer-norm critic D,
   WGAN loss with gradient penalty λ = 10, five critic updates per generator update, Adam 1e-4, β (0, 0.9).
   Each trainer step is one critic update on its own batch of real slices (the code draws a fresh batch per critic
   iteration, so a stage "epoch" is a pass of critic batches over the training set); every ``critic_iters``-th step
   also updates G once.
2. ``"encoder"`` (z_encoding_izif.py): G and D frozen (G's batch norm in inference mode, ``is_training=False`` in the
   code), the encoder E (critic-like, batch norm, Linear + tanh to z) trained by RMSProp 5e-5 on
   izi_f = MSE(x, G(E(x))) + κ·MSE(f(x), f(G(E(x)))), κ = 1, f = D's penultimate (flattened 4×4) features.

Scoring (anomaly_detection.py): the native image score is the same izi_f quantity per image; ``image_score="latent"``
is ProxyAno's eq. 13 with E, ‖E(x) − E(G(E(x)))‖_F (both scores are always returned in ``extras``). The map is
|x − G(E(x))| in the store's [0, 1] units (G's [−1, 1] output mapped back). No network sees batch statistics at
scoring: D uses layer norm, G and E run in eval mode.

Why one G update every ``critic_iters`` trainer steps instead of five critic updates inside one step: the trainer then
hands every critic update its own real batch, as in the code, and the stage budget counts critic iterations as the
code's epochs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import Stage, StepContext, frozen
from methods.anogan import from_tanh, to_tanh
from methods.blocks.gan import feature_matching_loss, gradient_penalty, wgan_critic_loss, wgan_generator_loss
from methods.blocks.reconstruction import residual_output
from methods.blocks.wgan import WGANResEncoder, WGANResGenerator, layer_norm, wgan_widths

IMAGE_SCORES = ("native", "latent")
STAGES = ("wgan-gp", "encoder")


@dataclass
class FAnoGANConfig(MethodConfig):
    """Defaults: baselines.md §9 — tSchlegl/f-AnoGAN wgangp_64x64.py (DIM 64, z 128 normal, λ 10, 5 critic
    iterations, Adam 1e-4 β (0, 0.9), batch 64, TRAIN_EPOCHS 7) and z_encoding_izif.py (tanh_fc encoder, κ 1,
    RMSProp 5e-5, 50,000 iterations)."""

    # stage "wgan-gp": ``epochs`` passes of critic batches over the training set (the code's TRAIN_EPOCHS), or
    # ``max_steps`` critic iterations, whichever ends first
    epochs: int = 7
    batch_size: int = 64
    lr: float = 1e-4  # Adam for G and D
    beta1: float = 0.0
    beta2: float = 0.9
    dim: int = 64  # DIM: widths (1, 2, 4, 8, 8) × dim from 64 px to 4×4, the widest repeated for larger images
    z_dim: int = 128
    critic_iters: int = 5  # critic updates per generator update
    gp_weight: float = 10.0  # λ
    # stage "encoder": ``encoder_epochs`` epochs or ``encoder_steps`` iterations, whichever ends first (None: unbounded)
    encoder_epochs: int | None = None
    encoder_steps: int | None = 50_000  # ITERS_ENC
    encoder_lr: float = 5e-5  # RMSProp
    encoder_rms_decay: float = 0.9  # TF RMSPropOptimizer's decay (PyTorch's alpha)
    kappa: float = 1.0  # κ: weight of the feature term, in training and in the native score
    image_score: str = scoring("native")  # "native" (izi_f) | "latent" (ProxyAno eq. 13 with E)


FANOGAN_DEVIATIONS = (
    "Networks from methods/blocks/wgan.py: the 64×64 residual G / layer-norm critic of wgangp_64x64.py with "
    "PyTorch layers (nearest up-sampling for the code's depth_to_space of four copies, 2×2 average pooling for its "
    "mean of four strided slices, GroupNorm(1, C) for tflib's Layernorm over (C, H, W)); tflib's uniform He / Glorot "
    "initialisation. Batch norm (G, E): PyTorch momentum 0.1 and eps 1e-5 (tf.layers: decay 0.99, eps 1e-3), and "
    "G's running statistics follow every training forward pass of G (the code updates them with G's steps).",
    "Image size from the store: widths (1, 2, 4, 8, 8) × DIM from full resolution to 4×4 at 64 px; 128 px (AFSC) "
    "adds one 8·DIM down / up stage, 256 px (ProxyAno) two [assumption: the reference is 64×64 only]. D's features "
    "f(·) stay the flattened 4×4×8·DIM output of the last residual block.",
    "WGAN-GP order: critic update on every trainer step (one real batch each, fresh z ~ N(0, I)), G update after "
    "every critic_iters-th critic step; the code runs G first from its second outer iteration on, so both interleave "
    "5:1 and differ only in where the stage ends. The gradient penalty is computed in fp32 (methods/blocks/gan.py).",
    "Encoder stage: RMSProp with TF's decay 0.9 and eps 1e-10, but PyTorch's zero-initialised mean square (TF starts "
    "it at 1, which damps the first ~50 updates); E trains with batch norm in training mode, G in eval mode and D "
    "frozen, as in the code.",
    "The stores' [0, 1] intensities are mapped to [−1, 1] (the code's 2·(x/255 − 0.5)); the native score (izi_f, "
    "per-image MSE of pixels + κ · MSE of D features) is in those [−1, 1] units as in the code; the map and the "
    "reconstruction are in [0, 1]. image_score='latent' = ‖E(x) − E(G(E(x)))‖_F (ProxyAno eq. 13; the code's own "
    "z distance is the MSE of the same two codes).",
    "Budgets: the code's TRAIN_EPOCHS = 7 counts passes of critic batches over its (large) training set and "
    "ITERS_ENC = 50,000 encoder iterations; 'paper' keeps both, so on a ~400-image set the WGAN stage is only "
    "~42 critic / ~8 generator iterations at batch 64 [open: the paper gives no budget for other data sets].",
    "Networks run in channels-last memory format (3–4× faster narrow convolutions on CPU; the same numbers up to "
    "rounding); bf16 autocast on CUDA for every network pass, losses in fp32.",
    "CPU profiles only: 'default' narrows DIM to 2 (widths 2…16 at 256 px), batch 8, 8 WGAN-GP epochs and 6 "
    "encoder epochs, the paper's optimisers unchanged; at 256 px that is far too short for the GAN to learn "
    "(measured at the class). 'smoke' DIM 1, z = 16, batch 4, one epoch per stage. 'paper' keeps the config.",
)


@register_method
class FAnoGAN(Method, Trainable):
    name = "f-anogan"
    budget_fields = (*Method.budget_fields, "encoder_epochs", "encoder_steps")
    channels_last = True
    Config = FAnoGANConfig
    version = 1
    min_size_multiple = 8  # 4·2^k px with k ≥ 1 (checked at build)
    info = MethodInfo(
        paper="Schlegl et al., Medical Image Analysis 54:30–44, 2019 (f-AnoGAN)",
        summary="Residual WGAN-GP (λ = 10, 5 critic steps per G step) trained on healthy slices, then an izi_f "
                "encoder E with G and the critic frozen; image score = MSE(x, G(E(x))) + κ·MSE(f(x), f(G(E(x)))), "
                "f = critic features; map = |x − G(E(x))|.",
        deviations=FANOGAN_DEVIATIONS,
        code="github.com/tSchlegl/f-AnoGAN @35b1de9 (wgangp_64x64.py, z_encoding_izif.py, anomaly_detection.py)",
    )
    # CPU budgets at 256 px. 'default' on a quiet machine (2 threads): WGAN-GP stage 16.6 slices/s (critic steps,
    # each 5th with its G step), encoder stage 27 slices/s, scoring 40–47 slices/s; the whole fit on the ProxyAno
    # brain-MRI store's 215 healthy training slices took 149 s (≈ 4.6 min for 400 slices: 400 critic / 80 G steps
    # at batch 8), scoring 400 slices ≈ 10 s. It is too short for the GAN at 256 px: G(E(x)) stays a blurred
    # grey texture, test AUROC (212 slices) native 0.44, latent 0.54 (lr 1e-3 for G, D and E: 0.57 / 0.51, still no
    # brain). The memory-bound narrow convolutions cost about as much per slice at DIM 1–4 and batch 4–16. With two
    # other jobs on the 2 cores, 2 threads fell to 3 slices/s (WGAN-GP) against 9.3 with 1 thread (OpenMP waits).
    # 'smoke' (1 thread, loaded machine): 13.4 slices/s WGAN-GP, 25 encoder, 35 scoring.
    profile_overrides = {
        "smoke": {"epochs": 1, "batch_size": 4, "dim": 1, "z_dim": 16, "encoder_epochs": 1, "encoder_steps": None},
        "default": {"epochs": 8, "batch_size": 8, "dim": 2, "encoder_epochs": 6, "encoder_steps": None},
    }

    def __init__(self, config: FAnoGANConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        self.check_choices(image_score=IMAGE_SCORES)
        if c.critic_iters < 1 or c.dim < 1 or c.z_dim < 1:
            raise ValueError(f"{self.name}: critic_iters, dim and z_dim must be ≥ 1, got {c.critic_iters}, {c.dim}, "
                             f"{c.z_dim}")
        if c.gp_weight < 0 or c.kappa < 0:
            raise ValueError(f"{self.name}: gp_weight and kappa must be ≥ 0, got {c.gp_weight}, {c.kappa}")
        if c.encoder_epochs is None and c.encoder_steps is None:
            raise ValueError(f"{self.name}: the encoder stage needs encoder_epochs or encoder_steps")
        if any(b is not None and b < 1 for b in (c.encoder_epochs, c.encoder_steps)):
            raise ValueError(f"{self.name}: encoder_epochs / encoder_steps must be ≥ 1 or None, got "
                             f"{c.encoder_epochs}, {c.encoder_steps}")
        widths = wgan_widths(self.data.image_size, c.dim)
        ch = self.data.channels
        nets = (WGANResGenerator(c.z_dim, widths, ch, norm=nn.BatchNorm2d),
                WGANResEncoder(ch, widths, 1, norm=layer_norm),
                WGANResEncoder(ch, widths, c.z_dim, norm=nn.BatchNorm2d, out_activation=nn.Tanh))
        self.generator, self.critic, self.encoder = (self.place(n) for n in nets)

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "critic": self.critic, "encoder": self.encoder}

    @staticmethod
    def prepare(image: torch.Tensor) -> torch.Tensor:
        """Store [0, 1] → the networks' [−1, 1], channels-last."""
        return to_tanh(image).contiguous(memory_format=torch.channels_last)

    # -- training --------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c = self.config
        return [Stage("wgan-gp", epochs=c.epochs, max_steps=c.max_steps),
                Stage("encoder", epochs=c.encoder_epochs, max_steps=c.encoder_steps)]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        adam = partial(torch.optim.Adam, lr=c.lr, betas=(float(c.beta1), float(c.beta2)))
        return {"g": adam(self.generator.parameters()), "d": adam(self.critic.parameters()),
                "e": torch.optim.RMSprop(self.encoder.parameters(), lr=c.encoder_lr, alpha=c.encoder_rms_decay,
                                         eps=1e-10)}

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        if step.stage == "wgan-gp":
            return self.wgan_step(batch, step)
        if step.stage == "encoder":
            return self.encoder_step(batch, step)
        raise ValueError(f"{self.name}: unknown stage {step.stage!r}; known: {STAGES}")

    def sample_z(self, n: int, step: StepContext) -> torch.Tensor:
        return torch.randn(n, self.config.z_dim, generator=step.generator).to(self.device)

    def wgan_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        """One critic update (WGAN loss + λ·GP on real vs G(z)); after every ``critic_iters``-th one, a G update."""
        c = self.config
        x = self.prepare(batch.image)
        with torch.no_grad(), step.autocast():
            fake = self.generator(self.sample_z(len(batch), step))
        with step.autocast():
            real_scores, fake_scores = self.critic(x), self.critic(fake)
        wasserstein = wgan_critic_loss(real_scores, fake_scores)
        gp = gradient_penalty(self.critic, x, fake, weight=c.gp_weight, generator=step.generator)
        logs = {"loss_d": step.optimize("d", wasserstein + gp), "gp": float(gp.detach()),
                "w_distance": -float(wasserstein.detach())}
        if (step.stage_step + 1) % c.critic_iters == 0:
            with frozen(self.critic), step.autocast():
                scores = self.critic(self.generator(self.sample_z(len(batch), step)))
            # logged on G steps only: the epoch mean the trainer prints is this sum / all steps
            logs["loss_g"] = step.optimize("g", wgan_generator_loss(scores))
        return logs

    def izi_f(self, x: torch.Tensor, *, per_sample: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(izi_f loss, pixel MSE, feature MSE, z = E(x), G(z)) for ``x`` in [−1, 1]; per image with ``per_sample``,
        else batch means. G and D are only read here; the caller sets the modes."""
        with autocast(self.device, self.config.amp):
            z = self.encoder(x)
            g = self.generator(z)
            f_x, f_g = self.critic.features(x), self.critic.features(g)
        g = g.float()
        pixel = (x.float() - g).square().flatten(1).mean(1)
        if not per_sample:
            pixel = pixel.mean()
        feature = feature_matching_loss(f_x, f_g, norm="l2", per_sample=per_sample)
        return pixel + self.config.kappa * feature, pixel, feature, z, g

    def encoder_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        """izi_f on E with G (inference-mode batch norm) and D frozen: only E's weights and statistics move."""
        self.generator.eval()  # the trainer switches every network to training mode at each epoch
        with frozen(self.generator, self.critic):
            loss, pixel, feature, _, _ = self.izi_f(self.prepare(batch.image))
            logs = {"loss_e": step.optimize("e", loss)}
        return {**logs, "pixel_mse": float(pixel.detach()), "feature_mse": float(feature.detach())}

    # -- scoring ---------------------------------------------------------------------------------------
    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = self.prepare(batch.image)
        native, pixel, feature, z, g = self.izi_f(x, per_sample=True)
        with autocast(self.device, self.config.amp):
            z_again = self.encoder(g.contiguous(memory_format=torch.channels_last))
        latent = (z.float() - z_again.float()).flatten(1).norm(dim=1)
        out = residual_output(batch.image, from_tanh(g).contiguous())
        score = native if self.config.image_score == "native" else latent
        return ScoreOutput(out.anomaly_map, score, out.reconstruction,
                           {"native_score": native, "latent_score": latent, "residual_loss": pixel,
                            "feature_loss": feature})
