"""AnoGAN (``anogan``, specs/baselines.md §8): a DCGAN trained on healthy slices, scored by a latent search.

Training is a plain non-saturating DCGAN (BCE). AnoGAN has no encoder, so scoring searches, per slice, the z whose
G(z) best explains the slice: Adam on L(z) = (1 − λ)·Σ|x − G(z)| + λ·Σ|f_D(x) − f_D(G(z))| (f_D = D's last conv
features). Image score = L(z*) (the native score ProxyAno's Table I uses), map = |x − G(z*)|, reconstruction = G(z*).

Why the whole batch is searched at once: L is a sum of per-image terms and Adam is element-wise, so each slice's z
follows exactly the trajectory it would follow alone; z starts from a generator seeded by the slice's row id, so a
slice's score does not depend on its batch or on how often it is scored. The networks see [−1, 1] (tanh output, as
in the reference code); the stores are [0, 1], mapped in and out here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext, frozen
from methods.blocks.dcgan import LEAKY_02, DCGANDecoder, DCGANEncoder, fit_widths, stage_count
from methods.blocks.gan import (bce_discriminator_loss, bce_generator_loss, dcgan_optimizers, feature_matching_loss,
                                init_normal_)
from methods.blocks.noise import slice_generators
from methods.blocks.reconstruction import residual_output

WIDTHS = (64, 128, 256, 512)  # D at 64 px (df_dim = 64: ×1, ×2, ×4, ×8); G mirrors them (gf_dim = 64)
FEATURE_NORMS = ("running", "per_image")


def to_tanh(x: torch.Tensor) -> torch.Tensor:
    """Store intensities [0, 1] → the generator's tanh range [−1, 1] (the reference code's /127.5 − 1)."""
    return x.float() * 2.0 - 1.0


def from_tanh(g: torch.Tensor) -> torch.Tensor:
    return (g.float() + 1.0) * 0.5


def dcgan_pair(channels: int, image_size: int, widths: tuple[int, ...], z_dim: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) of the DCGAN: one stride-2 stage per halving down to 4×4, so 64 px gives the reference's four stages
    and 128 / 256 px repeat the widest one (``fit_widths``). Biases everywhere, as in the TF layers."""
    h = fit_widths(widths, stage_count(image_size, 4))
    gen = DCGANDecoder(z_dim, h[::-1], channels, image_size=image_size, norm=nn.BatchNorm2d,
                       activation=nn.ReLU, bias=True, out_activation=nn.Tanh)
    disc = DCGANEncoder(channels, h, 1, image_size=image_size, norm=nn.BatchNorm2d, norm_first=False,
                        activation=LEAKY_02, bias=True)
    return init_normal_(gen), init_normal_(disc)


@dataclass
class LatentSearch:
    """What the search found for a batch: z*, G(z*) in [−1, 1], and L per image at z* and at the start."""

    z: torch.Tensor  # [B, z_dim]
    generated: torch.Tensor  # [B, C, H, W], tanh range
    loss: torch.Tensor  # [B] L(z*)
    residual: torch.Tensor  # [B] Σ|x − G(z*)| (tanh range)
    feature: torch.Tensor  # [B] Σ|f_D(x) − f_D(G(z*))|
    initial_loss: torch.Tensor  # [B] L(z₀)


@dataclass
class AnoGANConfig(MethodConfig):
    """Defaults: baselines.md §8 — LeeDoYup/AnoGAN-tf main.py (Adam 2e-4, β1 0.5, batch 64, 25 epochs, z = 100,
    two G updates per D update) and the paper's search (500 steps, λ = 0.1) with the code's Adam 1e-3, β1 0.5."""

    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    early_stop_patience: int | None = None
    z_dim: int = 100
    widths: tuple[int, ...] = WIDTHS  # D widths at 64 px; stretched to log2(size/4) stages, G mirrored
    g_steps: int = 2  # G updates per D update on the same z (model.py: "run g_optim twice")
    search_steps: int = scoring(500)  # Γ (paper); the TF code's test_epoch is 100
    search_lr: float = scoring(1e-3)
    search_beta1: float = scoring(0.5)
    lam: float = scoring(0.1)  # λ: weight of the discrimination (feature) term
    search_seed: int = scoring(2109)  # seeds each slice's z₀ ~ U[−1, 1]^z with its row id
    # D's batch norm in f_D: "running" (eval-mode statistics), or "per_image" (each image's own statistics: what
    # the TF code computes, its feature_match_layer running batch norm in training mode on a batch of one image)
    feature_norm: str = scoring("running")


ANOGAN_DEVIATIONS = (
    "DCGAN from the suite's stride-2 stack (methods/blocks/dcgan.py): 4×4 convolutions (PyTorch DCGAN) instead of "
    "the TF code's 5×5 'SAME' ones; G's Linear z → 4×4×512 is the equivalent 1×1 → 4×4 ConvTranspose; D's final "
    "Linear is the equivalent 4×4 valid conv to one logit (BCE with logits = sigmoid + BCE).",
    "Image size from the store: 128 px (AFSC) adds one stride-2 stage to G and D, 256 px (ProxyAno) two, each "
    "repeating the widest (512) stage [assumption: baselines.md §8 'keeps the DCGAN pattern'].",
    "z = 100, U[−1, 1] as in the reference code; two G updates per D update as in its model.py (paper: DCGAN, no "
    "ratio given); D loss = BCE(real) + BCE(fake), non-saturating G loss; Adam 2e-4 / β1 0.5, batch 64, 25 epochs.",
    "The stores' [0, 1] intensities are mapped to [−1, 1] for the tanh generator (the TF code's /127.5 − 1) and "
    "G(z*) back to [0, 1] for the map and the reconstruction; L(z) — hence the image score — is in the [−1, 1] "
    "units the networks see, as in the code (the residual term is 2× its [0, 1] value).",
    "Search: Adam lr 1e-3, β1 0.5 (TF code) for search_steps = 500 (paper Γ; the code's default is 100); no clamp "
    "of z (the code has none); z₀ ~ U[−1, 1] drawn per slice from a generator seeded by (search_seed, row id), "
    "where the TF code initialises z once and carries it from one test image to the next. All slices of a batch "
    "are optimised together (exactly per-slice: the loss is a sum over images and Adam is element-wise). The "
    "score is L at the final z* (the code prints L of the last step before its update).",
    "f_D uses D's running batch-norm statistics (eval mode); feature_norm='per_image' reproduces the TF code, "
    "whose feature layer normalises with the test image's own statistics (scoring-only field).",
    "bf16 autocast on CUDA for G and D (training and search); losses and z in fp32.",
    "CPU profiles only: 'default' keeps the 25 epochs but narrows the widths to (16, 32, 64, 128), trains at "
    "batch 8 (1,800 steps on the 576-slice phantom: the GAN leaves its D-dominated start after ~600 steps) and "
    "searches 50 steps; 'smoke' widths (4, 8, 8, 16), z = 16, 1 epoch, 3 search steps. 'paper' keeps the config.",
)


@register_method
class AnoGAN(Method, Trainable):
    name = "anogan"
    Config = AnoGANConfig
    version = 1
    score_with_grad = True  # the latent search differentiates L(z) through frozen G and D
    min_size_multiple = 8  # at least one stride-2 stage down to 4×4 (the size must be 4·2^k: checked at build)
    info = MethodInfo(
        paper="Schlegl et al., IPMI 2017 (AnoGAN)",
        summary="DCGAN trained on healthy slices; per slice, Adam searches z minimising (1 − λ)·Σ|x − G(z)| + "
                "λ·Σ|f_D(x) − f_D(G(z))| (λ = 0.1); image score = that loss at z*, map = |x − G(z*)|.",
        deviations=ANOGAN_DEVIATIONS,
        code="github.com/LeeDoYup/AnoGAN-tf @4c650b3 (used by ProxyAno); no official code by the authors",
    )
    # CPU budgets on 2 shared cores, 128-px phantom. 'default': 64 slices/s training on a quiet machine (batch 8 and
    # 16 cost the same per slice) → 25 epochs × 576 slices ≈ 4 min; scoring 8.4 slices/s at 50 search steps (≈ 45 s
    # for test + val). With two other jobs on the cores the full run took 885 s (16 slices/s) and scored at 6.3
    # slices/s; phantom test: pixel AUROC 0.81, image AUROC of L(z*) 0.51. Full widths cost ~16× more per slice.
    # 'smoke': ~290 slices/s training, ~350 slices/s scoring (3 steps).
    profile_overrides = {
        "smoke": {"epochs": 1, "batch_size": 8, "widths": (4, 8, 8, 16), "z_dim": 16, "search_steps": 3},
        "default": {"batch_size": 8, "widths": (16, 32, 64, 128), "search_steps": 50},
    }

    @classmethod
    def score_passes(cls, config: AnoGANConfig) -> float:
        return float(config.search_steps)

    @classmethod
    def score_passes_capped(cls, config: AnoGANConfig, k: int) -> dict[str, Any]:
        return {"search_steps": k}

    def __init__(self, config: AnoGANConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        self.check_choices(feature_norm=FEATURE_NORMS)
        if c.search_steps < 0 or c.g_steps < 1:
            raise ValueError(f"{self.name}: search_steps must be ≥ 0 and g_steps ≥ 1, got {c.search_steps}, "
                             f"{c.g_steps}")
        gen, disc = dcgan_pair(self.data.channels, self.data.image_size, tuple(c.widths), c.z_dim)
        self.generator, self.discriminator = gen.to(self.device), disc.to(self.device)

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    # -- training --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dcgan_optimizers(self.generator, self.discriminator, self.config.lr, self.config.beta1)

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        """One D update on real vs G(z), then ``g_steps`` G updates on the same z (reference order)."""
        x = to_tanh(batch.image)
        z = (torch.rand(len(batch), self.config.z_dim, generator=step.generator) * 2 - 1).to(x.device)
        with step.autocast():
            real_logits = self.discriminator(x)
            fake = self.generator(z)
            fake_logits = self.discriminator(fake.detach())
        loss_real, loss_fake = bce_discriminator_loss(real_logits, fake_logits)
        logs = {"loss_d": step.optimize("d", loss_real + loss_fake),
                "d_real": float(loss_real.detach()), "d_fake": float(loss_fake.detach())}
        for _ in range(self.config.g_steps):
            with frozen(self.discriminator), step.autocast():
                logits = self.discriminator(self.generator(z))
            logs["loss_g"] = step.optimize("g", bce_generator_loss(logits))
        return logs

    # -- latent search ---------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f_D: D's last conv block output (after its LeakyReLU), with the config's batch-norm statistics."""
        if self.config.feature_norm == "running":
            return self.discriminator.features(x)
        h = x
        for block in self.discriminator.features:
            for layer in block:
                if isinstance(layer, nn.BatchNorm2d):  # batch norm over a batch of one image = its own statistics
                    h = F.instance_norm(h, weight=layer.weight, bias=layer.bias, eps=layer.eps)
                else:
                    h = layer(h)
        return h

    def latent_loss(self, x: torch.Tensor, f_x: torch.Tensor, z: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L, residual, feature term, G(z)) per image for ``x`` in [−1, 1] with precomputed f_D(x)."""
        with autocast(self.device, self.config.amp):
            g = self.generator(z)
            f_g = self.features(g)
        g = g.float()
        residual = (x - g).abs().flatten(1).sum(dim=1)
        feature = feature_matching_loss(f_x, f_g, norm="l1", per_sample=True, reduction="sum")
        lam = self.config.lam
        return (1 - lam) * residual + lam * feature, residual, feature, g

    def initial_z(self, batch: SliceBatch) -> torch.Tensor:
        """z₀ ~ U[−1, 1] of slice row r from its own generator (on the host: the same numbers on every device)."""
        rows = batch.index if batch.index is not None else torch.arange(len(batch))
        gens = slice_generators(self.config.search_seed, rows, "cpu")
        z = torch.stack([torch.rand(self.config.z_dim, generator=g) for g in gens]) * 2 - 1
        return z.to(self.device)

    def latent_search(self, batch: SliceBatch) -> LatentSearch:
        """Adam on each slice's z for ``search_steps`` steps; G and D are only read (no parameter gradients, eval-mode
        batch norm: a slice never sees its batch's statistics)."""
        c = self.config
        self.train_mode(False)
        x = to_tanh(batch.image)
        with torch.no_grad(), autocast(self.device, c.amp):
            f_x = self.features(x)
        z = self.initial_z(batch).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=c.search_lr, betas=(c.search_beta1, 0.999))
        initial = None
        with torch.enable_grad():
            for _ in range(c.search_steps):
                loss = self.latent_loss(x, f_x, z)[0]
                if initial is None:
                    initial = loss.detach()
                (z.grad,) = torch.autograd.grad(loss.sum(), z)  # images independent: the sum's gradient is per z
                opt.step()
        with torch.no_grad():
            loss, residual, feature, g = self.latent_loss(x, f_x, z)
        return LatentSearch(z.detach(), g, loss, residual, feature, loss if initial is None else initial)

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        s = self.latent_search(batch)
        out = residual_output(batch.image, from_tanh(s.generated))
        return ScoreOutput(out.anomaly_map, s.loss, out.reconstruction,
                           {"residual_loss": s.residual, "feature_loss": s.feature})
