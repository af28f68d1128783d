"""AFSC (Adaptive Fourier Space Compression, specs/afsc.md): AFSC module → generator → pseudo-healthy image, trained
with a pixel-wise pair discriminator on synthetic anomalies pasted on healthy slices.

The module is ``methods.blocks.afscm`` (shared with the ``w/ AFSCm`` rows of ``ae`` and ``draem``), the generator
DRAEM's reconstructive sub-network (``EncoderDecoder.draem``), the discriminator DRAEM's discriminative U-Net with a
2-channel (candidate, reference) input and a linear 1-channel output (LSGAN), the anomalies DRAEM's (Perlin masks ×
textures, ``methods.blocks.perlin``). No official AFSC code exists: every choice below is afsc.md's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from benchmark.contract import Method, MethodInfo, ScoreOutput, SliceBatch, Trainable, Variant, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import Stage, StepContext, milestone_schedules
from methods.blocks.afscm import AFSCmConfig, AFSCmHost, with_afscm
from methods.blocks.draem import DiscriminativeUNet
from methods.blocks.encdec import EncoderDecoder
from methods.blocks.gan import lsgan_discriminator_loss, lsgan_generator_loss
from methods.blocks.noise import slice_generators
from methods.blocks.perlin import DraemAnomalies
from methods.blocks.reconstruction import residual_output

_VAL_SEED = 0xAF5C  # the validation anomalies' seed: fixed, so every run and seed is monitored on the same ones


@dataclass
class AFSCConfig(AFSCmConfig):
    """Defaults = afsc.md §3–§8 (paper where it speaks, DRAEM's code base and stated assumptions elsewhere)."""

    afscm: str = "learned"
    afscm_keep: float = 0.5  # s = 0.5 for AFSC (paper §3.2)
    epochs: int = 10  # afsc.md §7 [assumption]: 9 soft-mask epochs, binarise, 1 binary-mask epoch
    batch_size: int = 8
    lr: float = 1e-4  # Adam for G (+ mask logits) and D, separate optimisers
    betas: tuple[float, float] = (0.5, 0.999)
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # MultiStepLR ×0.2 at these fractions of the epochs (DRAEM)
    lr_gamma: float = 0.2
    l1_weight: float = 100.0  # λ of eq. 7 [assumption: pix2pix weighting; the paper does not give it]
    generator_width: int = 128  # DRAEM reconstructive sub-network base width
    discriminator_width: int = 64  # DRAEM discriminative U-Net base width
    texture_dir: str | None = None  # DTD-like texture folder; None: the images bundled with scikit-image
    image_score: str = scoring("max_mean21")  # max of the 21×21 mean-filtered |x − G(x̂)|


@register_method
class AFSC(AFSCmHost, Method, Trainable):
    name = "afsc"
    Config = AFSCConfig
    version = 2  # v2: channels_last networks (float rounding; issue 21)
    channels_last = True
    min_size_multiple = 32  # the discriminator pools five times
    variants = {
        "w/o AFSCm": Variant({"afscm": "off"}, description="AFSC Tables 1–2 ablation: G sees the image itself"),
        "random mask s=0.5": Variant({"afscm": "random", "afscm_keep": 0.5},
                                     description="AFSC Tables 1–2 ablation: fixed random binary masks of the same "
                                                 "sparsity (seeded per run), trained for all epochs"),
    }
    info = MethodInfo(
        paper="AFSC: Adaptive Fourier Space Compression for anomaly detection (HCP → BraTS2017 / MS-SEG2015, T2)",
        summary="AFSC module (learned binary amplitude/phase masks) → DRAEM-style generator → pseudo-healthy image; "
                "pixel pair discriminator (LSGAN); trained on synthetic anomalies over healthy slices; map "
                "|x − G(x̂)|, slice score = max of the 21×21 mean-filtered map.",
        deviations=(
            "Generator = DRAEM's reconstructive sub-network (width 128) and discriminator = DRAEM's discriminative "
            "U-Net (width 64, 2-channel (candidate, reference) input, linear 1-channel output) [assumption, afsc.md "
            "§4: the paper gives no layers].",
            "λ = 100 (L1 weight), δ = 1e-6, Adam 1e-4 β (0.5, 0.999), batch 8, MultiStepLR ×0.2 at 80 / 90 %, "
            "10 epochs: 9 with soft masks, binarised at the end of the 9th, 1 with binary masks [assumption, "
            "afsc.md §6–§7].",
            "Binarisation ranks p = σ(10 w) of the mask logits w (afsc.md §3.5's deterministic rule), not the sum "
            "of the last epoch's relaxed samples; masks are tied under k ↔ −k (one logit per conjugate pair) so the "
            "compressed image is real [assumption: the paper's masks are free H×W maps and it takes the real part].",
            "Synthetic anomalies: DRAEM's Perlin masks with textures from the images bundled in scikit-image (DTD "
            "from texture_dir when given), greyscale, inside the head (x > 0), half the samples clean "
            "(methods/blocks/perlin.py) [assumption, afsc.md §5].",
            "Map |x − G(x̂)| (absolute residual), no post-processing; slice score = max of the 21×21 mean-filtered "
            "map [assumption, afsc.md §8].",
            "Variant 'random mask s=0.5': independent uniform random pairs for amplitude and phase (the run's seed).",
            "CPU profiles: 'default' narrows G and D (widths 16 / 8) and trains 5 epochs (where table1's validation "
            "loss flattens); 'smoke' widths 8 / 8, "
            "2 epochs [assumption: compute budget].",
        ),
        code="none public for this paper; dzy3/AFSC @a38b637 (a later variant's module snippet) read for the mask "
             "parameterisation",
    )
    profile_overrides = {
        "smoke": {"epochs": 2, "generator_width": 8, "discriminator_width": 8},
        # 'default' epochs: table1's validation loss 0.135, 0.052, 0.042, 0.036, 0.034, 0.035, 0.036, 0.031 over 8 soft
        # epochs, 0.029 after binarisation (README): epoch 5 is the first within 20 % of the lowest, the budget rule
        "default": {"epochs": 5, "generator_width": 16, "discriminator_width": 8},
    }

    def __init__(self, config: AFSCConfig | None = None, **kw):
        super().__init__(config, **kw)
        c, ch = self.config, self.data.channels
        self.g = with_afscm(self.place(EncoderDecoder.draem(ch, ch, c.generator_width)), c, self.data)
        self.d = self.place(DiscriminativeUNet(2 * ch, 1, c.discriminator_width))  # DRAEM's N(0, 0.02) init
        self.anomalies = DraemAnomalies(self.data.image_size, texture_dir=c.texture_dir)

    def networks(self) -> dict[str, nn.Module]:
        return {"g": self.g, "d": self.d}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {"g": torch.optim.Adam(self.g.parameters(), lr=c.lr, betas=tuple(c.betas)),
                "d": torch.optim.Adam(self.d.parameters(), lr=c.lr, betas=tuple(c.betas))}

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list:
        c = self.config
        return milestone_schedules(optimizers, c.epochs, c.lr_milestones, c.lr_gamma)

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        clean = batch.image.float()
        pasted, _ = self.anomalies(clean, generator=step.generator)
        with step.autocast():  # eq. 7: λ·L1 + pixel-wise LSGAN term + δ·L_M
            fake = self.g(pasted).float()
            l1 = (clean - fake).abs().mean()
            adv = lsgan_generator_loss(self.d(torch.cat([fake, clean], 1)).float())
        g_loss = step.optimize("g", self.config.l1_weight * l1 + adv + self.afscm_penalty())
        with step.autocast():  # eq. 8: D(x_ori, x_ori) → 1, D(G(x̂), x_ori) → 0
            real_loss, fake_loss = lsgan_discriminator_loss(self.d(torch.cat([clean, clean], 1)).float(),
                                                            self.d(torch.cat([fake.detach(), clean], 1)).float())
        d_loss = step.optimize("d", real_loss + fake_loss)
        return {"g": g_loss, "l1": float(l1.detach()), "d": d_loss}

    def stages(self) -> list[Stage]:
        """The host's stages with ``select_best=False``: the validation loss is a convergence monitor only, so
        the trained weights stay those of each stage's last epoch (as before it existed)."""
        return [replace(s, select_best=False) for s in super().stages()]

    @torch.no_grad()
    def validation_loss(self, batch: SliceBatch) -> float:
        """Monitor of eq. 7's reconstruction term: L1 between the healthy slice and G's output for it with seeded
        synthetic anomalies pasted (each slice draws from its own generator, so the value does not depend on the
        batch). The adversarial and mask terms are left out: they measure the discriminator, not convergence."""
        clean = batch.image.float()
        rows = batch.index if batch.index is not None else torch.arange(len(batch))
        gens = slice_generators(_VAL_SEED, rows, clean.device)
        pasted = torch.cat([self.anomalies(clean[i:i + 1], generator=g)[0] for i, g in enumerate(gens)])
        with autocast(self.device, self.config.amp):
            fake = self.g(pasted).float()
        return float((clean - fake).abs().mean())

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = batch.image.float()
        with autocast(self.device, self.config.amp):
            pseudo_healthy = self.g(x).float()
        return residual_output(x, pseudo_healthy, image_score=self.config.image_score)
