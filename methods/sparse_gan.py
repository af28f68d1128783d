"""Sparse-GAN (``sparse-gan``, specs/baselines.md §12): an encoder–decoder GAN whose latent code is kept sparse and
which scores anomalies in latent space (Zhou et al., ISBI 2020).

No official code exists, so every detail below is the spec's [assumption], built from the pieces the paper names: a
pix2pix-style image-to-image GAN without skip connections (so it cannot copy its input), an L1 sparsity penalty on
the latent code z, a second encoder E2 on the reconstruction x̂, and a latent anomaly score ‖z − E2(x̂)‖². That is
GANomaly's encoder–decoder–encoder pattern, so this method is :class:`methods.ganomaly.EncoderDecoderEncoderGAN`
with three hooks changed: D is the 70×70 PatchGAN, G's adversarial term is the non-saturating BCE on D's patch
logits (pix2pix) instead of feature matching, and G's loss gains w_sparse·mean|z|.

G's layout: the suite's DCGAN stacks with pix2pix's encoder widths (64, 128, 256, 512, 512, …: Conv 4×4 s2, BN
except on the first, LeakyReLU 0.2) down to 4×4, then a 4×4 valid conv to a 1×1×512 latent (pix2pix's innermost
width); the decoder mirrors it (ConvTranspose + BN + ReLU, tanh). pix2pix's last two 2×2 / 1×1 downsamplings are
the one 4×4 "to 1×1" conv, and its decoder dropout is left out (a deterministic reconstructor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.contract import MethodInfo
from benchmark.registry import register_method
from methods.blocks.gan import PatchDiscriminator
from methods.ganomaly import EncoderDecoderEncoderGAN, GANomalyConfig


@dataclass
class SparseGANConfig(GANomalyConfig):
    """Defaults: baselines.md §12 [assumption throughout]: Adam 2e-4, β1 0.5, batch 16, 100 epochs; G loss
    1·BCE adv + 50·|x − x̂|₁ + 1·‖z − E2(x̂)‖² + 1·‖z‖₁ (GANomaly's weights plus the sparsity term)."""

    epochs: int = 100
    batch_size: int = 16
    nz: int = 512  # pix2pix's innermost width, at 1×1
    ngf: int = 64
    ndf: int = 64  # the 70×70 PatchGAN (3 layers, ndf 64)
    max_mult: int | None = 8  # pix2pix's encoder widths stop doubling at 512
    w_adv: float = 1.0  # non-saturating BCE on D's patch logits of x̂
    w_sparse: float = 1.0  # mean |z|
    d_reinit_below: float | None = None  # GANomaly's D re-initialisation is not part of pix2pix


SPARSE_GAN_DEVIATIONS = (
    "No official code: the whole method is baselines.md §12's reading of the paper [assumption]; the paper's "
    "Sparsity Regularization Net is an L1 penalty on z (weight 1), its anomaly activation map is not built (the map "
    "is |x − x̂|, ProxyAno eq. 14).",
    "G = encoder–decoder without skips from the suite's DCGAN stacks (methods/blocks/dcgan.py, shared with "
    "GANomaly): pix2pix's encoder widths 64…512 down to 4×4, then one 4×4 valid conv to a 1×1×512 latent instead "
    "of pix2pix's last two stride-2 downsamplings; decoder mirrored (ConvTranspose + BN + ReLU, tanh), without "
    "pix2pix's dropout; E2 = a second encoder of the same layout on x̂.",
    "D = 70×70 PatchGAN (PatchDiscriminator defaults: 3 layers, ndf 64, batch norm), unconditional (it sees x or x̂ "
    "alone: the task is reconstruction, there is no input–output pair to condition on).",
    "G loss = 1·BCE_ns(D(x̂)) + 50·mean|x − x̂| + 1·mean (z − E2(x̂))² + 1·mean|z| (means over elements, like "
    "GANomaly's terms); D loss = 0.5·(BCE real + BCE fake) over patches (pix2pix); G then D on the same x̂ per "
    "step (GANomaly's order); no D re-initialisation.",
    "Native image score = ‖z − E2(x̂)‖² (sum over the 512 latent dims); image_score='latent' = ‖z − E2(x̂)‖_F "
    "(ProxyAno eq. 13, the square root: same ranking). Scoring in eval mode (BatchNorm running statistics).",
    "The stores' [0, 1] are mapped to [−1, 1] for the tanh decoder; x̂ comes back to [0, 1] for the map.",
    "bf16 autocast on CUDA for G and D; losses and scores in fp32.",
    "CPU profiles only: 'default' ngf = ndf = 8 (G widths 8…64, PatchGAN 8…64, latent 64 instead of 512), batch "
    "16, 15 epochs instead of 100; 'smoke' ngf = ndf = 4, latent 8, batch 8, 1 epoch. 'paper' keeps the config.",
)


@register_method
class SparseGAN(EncoderDecoderEncoderGAN):
    name = "sparse-gan"
    Config = SparseGANConfig
    version = 1
    info = MethodInfo(
        paper="Zhou et al., ISBI 2020 (Sparse-GAN)",
        summary="Encoder–decoder GAN without skips and a 70×70 PatchGAN, L1-sparse latent z, second encoder on x̂; "
                "trained on healthy slices with BCE adv + 50·|x − x̂|₁ + ‖z − E2(x̂)‖² + ‖z‖₁; image score = "
                "‖z − E2(x̂)‖² (or its Frobenius norm, ProxyAno eq. 13), map = |x − x̂|.",
        deviations=SPARSE_GAN_DEVIATIONS,
        code="none located (baselines.md §12)",
    )
    # CPU budgets as GANomaly's (256-px toy store, one thread, shared cores): 'default' trains at 21 slices/s wall (30
    # per CPU-second) → 15 epochs × ~400 slices ≈ 3.5–5 min; scores ~85 slices/s. 'smoke': 29 / ~90 slices/s.
    profile_overrides = {
        "smoke": {"epochs": 1, "batch_size": 8, "ngf": 4, "ndf": 4, "nz": 8},
        "default": {"epochs": 15, "ngf": 8, "ndf": 8, "nz": 64},
    }

    def check_config(self) -> None:
        super().check_config()
        if self.data.image_size < 32:  # 3 stride-2 and 2 valid-ish 4×4 convs leave no patch below 32 px
            raise ValueError(f"{self.name}: the 70×70 PatchGAN needs slices of at least 32 px, got "
                             f"{self.data.image_size}")

    def make_discriminator(self) -> nn.Module:
        return PatchDiscriminator(self.data.channels, ndf=self.config.ndf)

    def adversarial_term(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return self.gan_loss.generator_loss(self.discriminator(fake))

    def loss_weights(self) -> dict[str, float]:
        return {**super().loss_weights(), "sparse": self.config.w_sparse}

    def generator_terms(self, x: torch.Tensor, fake: torch.Tensor, z: torch.Tensor, z_hat: torch.Tensor,
                        adversarial: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().generator_terms(x, fake, z, z_hat, adversarial), "sparse": z.abs().mean()}

    def native_score(self, z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        return (z - z_hat).square().sum(dim=1)
