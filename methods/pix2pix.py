"""pix2pix as an anomaly detector (``pix2pix``, spec id pix2pix_ad, specs/baselines.md §13; ProxyAno Table I).

ProxyAno only says "pix2pix based anomaly detection" with the junyanz code. Here the pix2pix cGAN learns image →
same image on healthy slices: G is the U-Net-256 layout *without* its skip connections (with them G could pass the
input, lesion included, straight to the output), D the 70×70 PatchGAN on concat(input, output), loss = BCE
adversarial + 100·L1, Adam 2e-4 / β1 0.5, 100 constant + 100 linearly decaying epochs. Image score = mean
|x − x̂| (the native score), map = |x − x̂|; ``image_score="latent"`` is ProxyAno's eq. 13 with G's encoder half,
‖E(x) − E(x̂)‖_F over the whole 1×1×512 code (Table II).

Test time: the pix2pix paper and code run G at test time exactly as in training (test.py calls ``model.eval()``
only with --eval): dropout stays on and batch norm uses the test batch's statistics, with a test batch of one
image. Both are kept by default without making a slice's score depend on its batch: G runs on each slice alone
(its own statistics, the running ones untouched), and the dropout masks come from a generator seeded by the slice's
row id. ``test_norm="running"`` / ``test_dropout=False`` give the reference's --eval mode instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from benchmark.contract import Method, MethodInfo, ScoreOutput, SliceBatch, Trainable, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext, frozen
from methods.anogan import from_tanh, to_tanh
from methods.blocks.gan import GANLoss, PatchDiscriminator, dcgan_optimizers
from methods.blocks.noise import slice_generators
from methods.blocks.reconstruction import residual_output
from methods.blocks.translation import (IMAGE_SCORES, JunyanzConfig, UNetGenerator, batch_statistics, latent_distance,
                                        linear_decay_schedulers, seeded_dropout, unet_levels)

TEST_NORMS = ("per_image", "running")


@dataclass
class Pix2PixConfig(JunyanzConfig):
    """Defaults: junyanz/pytorch-CycleGAN-and-pix2pix @032e884 for pix2pix (options/base_options.py,
    train_options.py, models/pix2pix_model.py): batch 1, Adam 2e-4 / β1 0.5, niter 100 + niter_decay 100, ngf = ndf =
    64, batch norm, dropout 0.5, vanilla GAN, λ_L1 = 100, no image pool."""

    lambda_l1: float = 100.0
    dropout: float = 0.5
    skips: bool = False  # the encoder–decoder variant (baselines.md §13); True = the translation U-Net
    image_score: str = scoring("native")  # "native": mean |x − x̂|; "latent": ‖E(x) − E(x̂)‖_F (ProxyAno eq. 13)
    test_norm: str = scoring("per_image")  # "per_image": each slice's own BN statistics (reference test.py)
    test_dropout: bool = scoring(True)  # dropout at test time (reference test.py), masks seeded per slice
    dropout_seed: int = scoring(0)  # seeds each slice's test-time dropout masks with its row id


PIX2PIX_DEVIATIONS = (
    "Task [assumption, baselines.md §13]: image → same image on healthy slices with the pix2pix cGAN (ProxyAno gives "
    "no formulation); G is the U-Net-256 layout with its skip connections removed (an encoder–decoder to 1×1×512), "
    "since a U-Net could copy the input; skips=True gives the translation U-Net.",
    "Levels from the store's size, down to 1×1: 8 at 256 px (unet_256), 7 at 128 px (unet_128); dropout after the "
    "(levels − 5) 512→512 up blocks that follow the innermost one, as in the reference's UnetGenerator.",
    "D's real pair is concat(x, x), since input and target are the same image.",
    "Test time: the reference runs G in training mode (batch-norm statistics of the test batch of one image, dropout "
    "on). phbench runs G on each slice alone with batch statistics (running statistics untouched) and draws the "
    "dropout masks from a generator seeded by (dropout_seed, row id), so a slice's map does not depend on its batch "
    "or on how often it is scored; test_norm='running' and test_dropout=False give the reference's --eval mode.",
    "image_score='latent' (scoring-only): ProxyAno eq. 13, ‖E(x) − E(x̂)‖_F over G's innermost 1×1×512 code, E = G's "
    "down half applied to x and to x̂ in the network's [−1, 1] units; the other score is returned in extras.",
    "Data: the stores' [0, 1] slices are mapped to the tanh range [−1, 1] and back; no resize-286 / random-crop-256 "
    "/ flip augmentation (the reference's default preprocessing) [assumption: the stores are already 256 px].",
    "Losses from methods/blocks/gan.py: BCE with logits (the reference's vanilla GANLoss is BCEWithLogitsLoss), "
    "D loss ½·(real + fake); L1 is the mean over pixels, as nn.L1Loss.",
    "bf16 autocast on CUDA for G and D; losses in fp32.",
    "CPU profiles only: 'default' narrows G and D to ngf = ndf = 16 (same layout), trains at batch 8 for 8 epochs "
    "(4 constant + 4 decaying) [assumption: compute budget; training batch norm then pools 8 slices where the "
    "reference's batch 1 normalises each slice alone, as the per-slice test mode does]; 'smoke' ngf = ndf = 4, "
    "1 epoch. 'paper' keeps the config.",
)


@register_method
class Pix2Pix(Method, Trainable):
    name = "pix2pix"
    budget_fields = (*Method.budget_fields, "decay_epochs")
    Config = Pix2PixConfig
    version = 1
    info = MethodInfo(
        paper="Isola et al., CVPR 2017 (pix2pix), as an anomaly detector in ProxyAno (Table I)",
        summary="pix2pix cGAN (encoder–decoder U-Net-256 without skips, 70×70 PatchGAN on (input, output), BCE + "
                "100·L1) trained to reproduce healthy slices; image score = mean |x − x̂|, map = |x − x̂|.",
        deviations=PIX2PIX_DEVIATIONS,
        code="github.com/junyanz/pytorch-CycleGAN-and-pix2pix @032e884 (used by ProxyAno)",
    )
    # CPU budgets at 256 px (toy store of 400 training slices), measured with ONE torch thread while other jobs loaded
    # the 2 cores (load 3–6; two threads then lost up to 10× to OpenMP waits; a quiet 2-core run is faster than
    # these): 'default' (ngf = ndf = 16, batch 8) trains 11–12 slices/s → 8 epochs × 400 ≈ 4.5 min; scores 31–35
    # slices/s in the per-slice test mode (≈ 13 s for 400 test slices). ngf 32: 3.8 / 12 slices/s; ngf 8: 27 / 74.
    # 'smoke' (ngf = ndf = 4): ~7 slices/s training at batch 4 (mostly the first steps), ~60 slices/s scoring.
    profile_overrides = {
        "smoke": {"epochs": 1, "decay_epochs": 0, "batch_size": 4, "ngf": 4, "ndf": 4},
        "default": {"epochs": 8, "decay_epochs": 4, "batch_size": 8, "ngf": 16, "ndf": 16},
    }

    def __init__(self, config: Pix2PixConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        self.check_choices(image_score=IMAGE_SCORES)
        self.check_choices(test_norm=TEST_NORMS)
        if not 0 <= c.decay_epochs <= c.epochs:
            raise ValueError(f"{self.name}: decay_epochs must be in [0, epochs = {c.epochs}], got {c.decay_epochs}")
        if c.lambda_l1 < 0:
            raise ValueError(f"{self.name}: lambda_l1 must be ≥ 0, got {c.lambda_l1}")
        levels = unet_levels(self.data.image_size)  # raises for a size that is not a power of 2
        if levels < 5:
            raise ValueError(f"{self.name}: the U-Net-256 layout needs ≥ 5 levels (≥ 32 px), got "
                             f"{self.data.image_size} px")
        ch = self.data.channels
        self.generator = UNetGenerator(ch, ch, self.data.image_size, ngf=c.ngf, norm="batch", dropout=c.dropout,
                                       skips=c.skips).to(self.device)
        self.discriminator = PatchDiscriminator(2 * ch, ndf=c.ndf, n_layers=c.n_layers_d, norm="batch"
                                                ).to(self.device)
        self.gan = GANLoss("bce", d_factor=0.5)

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    # -- training --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dcgan_optimizers(self.generator, self.discriminator, self.config.lr, self.config.beta1)

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[Any]:
        return linear_decay_schedulers(optimizers, self.config.epochs, self.config.decay_epochs)

    def losses(self, x: torch.Tensor, fake: torch.Tensor, fake_logits: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G's total, adversarial, L1) for input = target ``x`` and ``fake`` = G(x), in fp32."""
        adv = self.gan.generator_loss(fake_logits)
        l1 = (fake.float() - x.float()).abs().mean()
        return adv + self.config.lambda_l1 * l1, adv, l1

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        """The reference's order: G(x), one D update on (x, x) vs (x, G(x)) detached, then one G update."""
        x = to_tanh(batch.image)
        with step.autocast():
            fake = self.generator(x)
            fake_logits = self.discriminator(torch.cat([x, fake.detach()], dim=1))
            real_logits = self.discriminator(torch.cat([x, x], dim=1))
        loss_d = self.gan.discriminator_loss(real_logits, fake_logits)
        logs = {"loss_d": step.optimize("d", loss_d)}
        with frozen(self.discriminator), step.autocast():
            logits = self.discriminator(torch.cat([x, fake], dim=1))
        total, adv, l1 = self.losses(x, fake, logits)
        logs.update(loss_g=step.optimize("g", total), g_adv=float(adv.detach()), g_l1=float(l1.detach()))
        return logs

    # -- scoring ---------------------------------------------------------------------------------------
    def per_slice(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  rows: torch.Tensor | None) -> torch.Tensor:
        """``fn`` (a pass through G or its encoder) in the configured test mode: each slice alone with its own
        batch statistics ("per_image") or the batch at once with running statistics; dropout masks per slice."""
        c = self.config
        rows = rows if rows is not None else torch.arange(len(x))
        gens = slice_generators(c.dropout_seed, rows, x.device) if c.test_dropout else None
        with autocast(self.device, c.amp):
            if c.test_norm == "running":
                with seeded_dropout(self.generator, gens):
                    return fn(x).float()
            outs = []
            with batch_statistics(self.generator):
                for i in range(len(x)):
                    with seeded_dropout(self.generator, None if gens is None else gens[i:i + 1]):
                        outs.append(fn(x[i:i + 1]).float())
            return torch.cat(outs)

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = to_tanh(batch.image)
        fake = self.per_slice(self.generator, x, batch.index)
        out = residual_output(batch.image, from_tanh(fake))
        latent = latent_distance(self.per_slice(self.generator.encode, x, batch.index),
                                 self.per_slice(self.generator.encode, fake, batch.index))
        if self.config.image_score == "latent":
            return ScoreOutput(out.anomaly_map, latent, out.reconstruction, {"residual_score": out.image_score})
        return ScoreOutput(out.anomaly_map, out.image_score, out.reconstruction, {"latent_score": latent})
