"""GANomaly (``ganomaly``, specs/baselines.md §10) and the encoder–decoder–encoder GAN it shares with Sparse-GAN.

G = encoder E1 → decoder → encoder E2: a slice x gives z = E1(x), x̂ = Dec(z), ẑ = E2(x̂). Trained on healthy slices
only, G learns to reproduce healthy anatomy and to make E2 agree with E1 on its own output; on an anomalous slice x̂
loses the anomaly, so ẑ drifts from z. GANomaly scores that drift, mean_d (z − ẑ)² (its code, lib/model.py), and
ProxyAno's Table II scores every method with eq. 13 through the method's own encoders, ‖E1(x) − E2(x̂)‖_F
(``image_score="latent"``). The map is |x − x̂| (ProxyAno eq. 14).

Why one base class (:class:`EncoderDecoderEncoderGAN`): Sparse-GAN (methods/sparse_gan.py) is the same pattern — an
encoder–decoder G, a second encoder on x̂, a latent score — with another discriminator, another adversarial term and
a sparsity term on z. The training step (G update on the weighted terms, then a BCE update of D on the same x̂, with
GANomaly's optional D re-initialisation) and the scoring are written once here; subclasses change only the hooks
``make_discriminator``, ``adversarial_term``, ``generator_terms`` / ``loss_weights`` and ``native_score``.

The networks see [−1, 1] (tanh decoder, as the reference code's normalised inputs); the stores' [0, 1] are mapped in
and out with AnoGAN's ``to_tanh`` / ``from_tanh``. Latent scores are in the networks' units.
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
from benchmark.trainer import StepContext, frozen
from methods.anogan import from_tanh, to_tanh
from methods.blocks.dcgan import LEAKY_02, DCGANDecoder, DCGANEncoder, stage_count
from methods.blocks.gan import GANLoss, PatchDiscriminator, dcgan_optimizers, feature_matching_loss, init_normal_
from methods.blocks.reconstruction import residual_output

IMAGE_SCORES = ("native", "latent")


def doubling_widths(image_size: int, base: int, max_mult: int | None = None) -> tuple[int, ...]:
    """GANomaly's encoder widths: ``base`` at the first stride-2 stage, doubling per stage until 4×4 (64…2048 at
    256 px); ``max_mult`` caps the multiplier (pix2pix's 512 = 64·8)."""
    cap = max_mult if max_mult is not None else 2**30
    return tuple(base * min(2**i, cap) for i in range(stage_count(image_size, 4)))


class EncoderDecoderEncoder(nn.Module):
    """GANomaly's NetG from the suite's DCGAN stacks: x → (x̂, z, ẑ) with z = E1(x), x̂ = Dec(z), ẑ = E2(x̂).

    Encoders: Conv 4×4 s2 (no norm) + LeakyReLU 0.2, then Conv 4×4 s2 + BN + LeakyReLU 0.2 per ``widths`` entry down
    to 4×4, then a 4×4 valid conv to ``nz`` (1×1, no activation). Decoder mirrors them with ConvTranspose + BN + ReLU
    and a tanh output. No biases anywhere (lib/networks.py). z and ẑ are [B, nz, 1, 1]."""

    def __init__(self, channels: int, image_size: int, widths: tuple[int, ...], nz: int):
        super().__init__()
        enc = partial(DCGANEncoder, channels, widths, nz, image_size=image_size, norm=nn.BatchNorm2d,
                      norm_first=False, activation=LEAKY_02, bias=False)
        self.encoder1 = enc()
        self.decoder = DCGANDecoder(nz, widths[::-1], channels, image_size=image_size, norm=nn.BatchNorm2d,
                                    activation=nn.ReLU, bias=False, out_activation=nn.Tanh)
        self.encoder2 = enc()
        init_normal_(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder1(x)
        fake = self.decoder(z)
        return fake, z, self.encoder2(fake)


@dataclass
class GANomalyConfig(MethodConfig):
    """Defaults: baselines.md §10 — samet-akcay/ganomaly options.py / lib/model.py @78da4ea (Adam 2e-4, β1 0.5,
    batch 64, 15 epochs, nz 100, ngf = ndf = 64, w_adv / w_con / w_enc = 1 / 50 / 1, D re-initialised below 1e-5)."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    nz: int = 100
    ngf: int = 64  # width of G's first encoder stage (decoder mirrored), doubling per stage to 4×4
    ndf: int = 64  # the same for D
    max_mult: int | None = None  # cap of the doubling (None: the code's uncapped 64…2048 at 256 px)
    w_adv: float = 1.0  # ‖f(x) − f(x̂)‖² (D's pre-head features)
    w_con: float = 50.0  # |x − x̂|₁
    w_enc: float = 1.0  # ‖z − ẑ‖²
    d_reinit_below: float | None = 1e-5  # re-draw D's weights when its loss falls below this (None: never)
    # "native": mean over latent dims of (z − ẑ)² (the code's score before its test-set min–max); "latent":
    # ProxyAno eq. 13, ‖E1(x) − E2(x̂)‖_F
    image_score: str = scoring("native")


class EncoderDecoderEncoderGAN(Method, Trainable):
    """The shared encoder–decoder–encoder GAN (not registered): GANomaly's training step and scoring with hooks.

    Training step (lib/model.py ``optimize_params``): G forward → one G update on Σ weight·term → one D update on
    0.5·(BCE(D(x), 1) + BCE(D(x̂), 0)) with the same (detached) x̂ → D re-initialised when that loss is below
    ``d_reinit_below``."""

    Config = GANomalyConfig
    min_size_multiple = 8  # 4·2^k px (k ≥ 1): checked exactly by the DCGAN stacks at build

    def __init__(self, config: GANomalyConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        self.check_config()
        c = self.config
        widths = doubling_widths(self.data.image_size, c.ngf, c.max_mult)
        self.generator = EncoderDecoderEncoder(self.data.channels, self.data.image_size, widths, c.nz).to(self.device)
        self.discriminator = self.make_discriminator().to(self.device)
        self.gan_loss = GANLoss("bce", d_factor=0.5)  # err_d = (BCE real + BCE fake) · 0.5

    def check_config(self) -> None:
        c = self.config
        self.check_choices(image_score=IMAGE_SCORES)
        if min(c.nz, c.ngf, c.ndf) < 1 or (c.max_mult is not None and c.max_mult < 1):
            raise ValueError(f"{self.name}: nz, ngf, ndf and max_mult must be ≥ 1, got {c.nz}, {c.ngf}, {c.ndf}, "
                             f"{c.max_mult}")
        bad = {k: w for k, w in self.loss_weights().items() if w < 0}
        if bad:
            raise ValueError(f"{self.name}: loss weights must be ≥ 0, got {bad}")
        if c.d_reinit_below is not None and c.d_reinit_below <= 0:
            raise ValueError(f"{self.name}: d_reinit_below must be > 0 or None, got {c.d_reinit_below}")

    # -- hooks ---------------------------------------------------------------------------------------------
    def make_discriminator(self) -> nn.Module:
        """GANomaly's NetD: the encoder with a one-logit head (``PatchDiscriminator.image``)."""
        c = self.config
        return PatchDiscriminator.image(self.data.channels, self.data.image_size, ndf=c.ndf, max_mult=c.max_mult)

    def adversarial_term(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """GANomaly's l_adv: mean squared distance of D's pre-head features of x and x̂ (D frozen by the caller)."""
        f_real = self.discriminator(x, return_features=True)[1][-1]
        f_fake = self.discriminator(fake, return_features=True)[1][-1]
        return feature_matching_loss(f_real, f_fake, norm="l2")

    def loss_weights(self) -> dict[str, float]:
        c = self.config
        return {"adv": c.w_adv, "con": c.w_con, "enc": c.w_enc}

    def generator_terms(self, x: torch.Tensor, fake: torch.Tensor, z: torch.Tensor, z_hat: torch.Tensor,
                        adversarial: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted G terms, each a mean (lib/loss.py l2_loss, nn.L1Loss), in fp32; keys = ``loss_weights``."""
        return {"adv": adversarial, "con": (x - fake).abs().mean(), "enc": (z - z_hat).square().mean()}

    def native_score(self, z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """Mean over latent dims of (z − ẑ)² per slice (lib/model.py ``test``, before its test-set min–max)."""
        return (z - z_hat).square().mean(dim=1)

    # -- training ------------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dcgan_optimizers(self.generator, self.discriminator, self.config.lr, self.config.beta1)

    def latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x̂ in [−1, 1], z, ẑ as [B, nz]) in fp32 for ``x`` in [−1, 1] (bf16 autocast on CUDA, training and scoring)."""
        with autocast(self.device, self.config.amp):
            fake, z, z_hat = self.generator(x)
        return fake.float(), z.float().flatten(1), z_hat.float().flatten(1)

    def generator_loss(self, x: torch.Tensor, step: StepContext) -> tuple[torch.Tensor, torch.Tensor,
                                                                          dict[str, torch.Tensor]]:
        """(Σ weight·term, x̂, unweighted terms) for a batch ``x`` in [−1, 1]."""
        fake, z, z_hat = self.latents(x)
        with frozen(self.discriminator), step.autocast():
            adversarial = self.adversarial_term(x, fake).float()
        terms = self.generator_terms(x, fake, z, z_hat, adversarial)
        weights = self.loss_weights()
        return sum(weights[k] * t for k, t in terms.items()), fake, terms

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        x = to_tanh(batch.image)
        loss_g, fake, terms = self.generator_loss(x, step)
        logs = {"loss_g": step.optimize("g", loss_g), **{f"g_{k}": float(t.detach()) for k, t in terms.items()}}
        with step.autocast():
            real_logits = self.discriminator(x)
            fake_logits = self.discriminator(fake.detach())
        logs["loss_d"] = step.optimize("d", self.gan_loss.discriminator_loss(real_logits, fake_logits))
        limit = self.config.d_reinit_below
        logs["d_reinit"] = float(limit is not None and logs["loss_d"] < limit)
        if logs["d_reinit"]:
            init_normal_(self.discriminator)  # the code's reinit_d: weights only (running stats, Adam state kept)
        return logs

    # -- scoring -------------------------------------------------------------------------------------------
    def _score(self, batch: SliceBatch) -> ScoreOutput:
        fake, z, z_hat = self.latents(to_tanh(batch.image))
        if self.config.image_score == "native":
            score = self.native_score(z, z_hat)
        else:  # ProxyAno eq. 13: Frobenius norm over the whole latent, not squared, not averaged
            score = (z - z_hat).norm(dim=1)
        out = residual_output(batch.image.float(), from_tanh(fake))
        return ScoreOutput(out.anomaly_map, score, out.reconstruction)


GANOMALY_DEVIATIONS = (
    "Image size from the store (256 px for ProxyAno) [assumption, baselines.md §10: 001 resizes everything to 256]: "
    "the encoders double their width per stride-2 stage until 4×4 as in lib/networks.py (64…2048 at 256 px).",
    "G = E1 → decoder → E2 from the suite's DCGAN stacks (methods/blocks/dcgan.py), layer for layer the code's NetG "
    "(no biases, BN after every stage but the first encoder conv, LeakyReLU 0.2 / ReLU, tanh). D = "
    "PatchDiscriminator.image: the code's NetD layout with two biases it lacks (first conv and the one-logit head) "
    "and logits + BCE-with-logits instead of sigmoid + BCELoss; D is built from ndf (the code builds NetD and NetG "
    "from ngf; both are 64).",
    "The stores' [0, 1] are mapped to [−1, 1] for the tanh decoder (to_tanh); x̂ comes back to [0, 1] for the map "
    "|x − x̂| and the reconstruction [assumption: ProxyAno eq. 14 convention]; latent scores are in the networks' "
    "units.",
    "Native image score = mean over latent dims of (z − ẑ)², unscaled: the code min–max scales the scores over the "
    "whole test set, which is monotone (same AUROC) but would make a slice's score depend on the other slices.",
    "Scoring in eval mode (BatchNorm running statistics); the code's test() leaves NetG in training mode, so its "
    "scores use each test batch's statistics and depend on the batch.",
    "Final weights after the fixed epochs; the code keeps the epoch with the best test AUC (selection on the test "
    "set), which phbench does not do.",
    "image_score='latent' (scoring-only) = ProxyAno eq. 13 with GANomaly's own encoders, ‖E1(x) − E2(x̂)‖_F "
    "(= √(nz · native): the same ranking).",
    "D re-initialisation when its loss (0.5·(BCE real + BCE fake), the code's err_d) falls below 1e-5: weights and "
    "biases re-drawn with the suite's init_normal_ (the code's weights_init); like the code, BN running statistics "
    "and D's Adam state are kept.",
    "bf16 autocast on CUDA for G and D; losses and scores in fp32.",
    "CPU profiles only: 'default' narrows ngf = ndf to 8 with the doubling capped at ×16 (8…128 at 256 px instead "
    "of 64…2048), nz 100, batch 16 (25 steps per epoch on ~400 slices instead of 6), 15 epochs; 'smoke' ngf = ndf "
    "= 4 capped at ×8, nz 8, batch 8, 1 epoch. 'paper' keeps the config.",
)


@register_method
class GANomaly(EncoderDecoderEncoderGAN):
    name = "ganomaly"
    Config = GANomalyConfig
    version = 1
    info = MethodInfo(
        paper="Akcay, Atapour-Abarghouei, Breckon, ACCV 2018 (GANomaly)",
        summary="Encoder–decoder–encoder G with an image-level discriminator, trained on healthy slices with "
                "1·‖f(x) − f(x̂)‖² + 50·|x − x̂|₁ + 1·‖z − ẑ‖²; image score = mean (z − ẑ)² (or ProxyAno's "
                "‖E1(x) − E2(x̂)‖_F), map = |x − x̂|.",
        deviations=GANOMALY_DEVIATIONS,
        code="github.com/samet-akcay/ganomaly @78da4ea",
    )
    # CPU budgets, 256-px toy store, one torch thread on the 2 shared cores (load ≈ 5 from other jobs): 'default'
    # trains at 20 slices/s wall (29 slices per CPU-second; the full widths cost ~70× more FLOPs) → 15 epochs × ~400
    # ProxyAno slices ≈ 3.5–5 min; scores ~100 slices/s (400 test slices in ~5 s). 'smoke': 26 slices/s training,
    # ~100 slices/s scoring. Trained 8 epochs on 96 toy slices: pixel AUROC 0.94, healthy |x − x̂| 0.27.
    profile_overrides = {
        "smoke": {"epochs": 1, "batch_size": 8, "ngf": 4, "ndf": 4, "max_mult": 8, "nz": 8},
        "default": {"batch_size": 16, "ngf": 8, "ndf": 8, "max_mult": 16},
    }
