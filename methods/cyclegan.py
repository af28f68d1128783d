"""Cycle-GAN as an anomaly detector (``cycle-gan``, spec id cyclegan_ad, specs/baselines.md §14; ProxyAno Table I).

ProxyAno motivates this baseline as "translation between image and proxy": domain A = the slices, domain B = their
SLIC superpixel images (SIs, ProxyAno's proxy: 800 superpixels, each filled with its mean intensity;
methods/blocks/proxies.py). CycleGAN learns G_AB (image → SI) and G_BA (SI → image) without pairs; a slice is scored
by its cycle error: Î = G_BA(G_AB(I)), image score = mean |I − Î| (native), map = |I − Î|. ``image_score="latent"``
is ProxyAno's eq. 13 with G_AB's downsampling half E: ‖E(I) − E(Î)‖_F (Table II).

Networks and training are the reference CycleGAN's: two ResNet-9-block generators (instance norm, reflection
padding, no dropout), two 70×70 PatchGANs with instance norm, LSGAN, cycle weights λ_A = λ_B = 10, identity weight
0.5 (image and SI are both grey, so G_AB(SI) ≈ SI is defined), a pool of 50 generated images per discriminator,
Adam 2e-4 / β1 0.5, batch 1, 100 constant + 100 linearly decaying epochs.

Unpaired sampling: the reference's unaligned dataset draws the B image at a random index, independent of A. Here the
B batch is the SIs of slices drawn at random (the trainer's generator) from the training set, so a slice is rarely
paired with its own SI. The SIs are computed once per training slice when the trainer starts (``on_fit_start``:
``ProxyTable``, cached beside the store and shared with ProxyAno's) and released when training ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import Method, MethodInfo, ScoreOutput, SliceBatch, Trainable, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext, frozen
from methods.anogan import from_tanh, to_tanh
from methods.blocks.gan import GANLoss, PatchDiscriminator, dcgan_optimizers
from methods.blocks.proxies import ProxySettings, ProxyTable
from methods.blocks.reconstruction import residual_output
from methods.blocks.translation import (IMAGE_SCORES, ImagePool, JunyanzConfig, ResnetGenerator, latent_distance,
                                        linear_decay_schedulers)


@dataclass
class CycleGANConfig(JunyanzConfig):
    """Defaults: junyanz/pytorch-CycleGAN-and-pix2pix @032e884 for CycleGAN (options/base_options.py,
    train_options.py, models/cycle_gan_model.py): batch 1, Adam 2e-4 / β1 0.5, niter 100 + niter_decay 100,
    resnet_9blocks, ngf = ndf = 64, instance norm, no dropout, LSGAN, λ_A = λ_B = 10, λ_identity = 0.5, pool 50."""

    n_blocks: int = 9
    lambda_a: float = 10.0  # cycle A → B → A
    lambda_b: float = 10.0  # cycle B → A → B
    lambda_identity: float = 0.5  # identity loss weight, relative to λ_A / λ_B
    pool_size: int = 50
    slic_segments: int = 800  # the SI proxy (proxyano.md §2): SLIC target count
    slic_compactness: float = 0.1  # on grey [0, 1]
    image_score: str = scoring("native")  # "native": mean |I − Î|; "latent": ‖E_AB(I) − E_AB(Î)‖_F (eq. 13)


CYCLEGAN_DEVIATIONS = (
    "Task [assumption, baselines.md §14]: domain A = slices, domain B = their SLIC superpixel images (ProxyAno's "
    "proxy, methods/blocks/proxies.py); anomaly = cycle error I → G_AB(I) → G_BA(G_AB(I)) (the paper names no "
    "formulation). Image score = mean |I − Î|, map = |I − Î|.",
    "Unpaired sampling: each step's B batch is the SIs of training slices drawn uniformly at random (with "
    "replacement) with the trainer's generator, as the reference's unaligned dataset draws index_B at random; SIs "
    "computed once per slice and cached (ProxyTable, ProxyAno's settings: 800 segments, compactness 0.1 on [0, 1]).",
    "Identity loss kept (weight 0.5): image and SI have the same channel count, as the reference requires.",
    "Image pool of 50 per discriminator as in util/image_pool.py, with its draws from the trainer's generator "
    "(seeded) instead of Python's random; it is not saved in a resumable checkpoint (neither in the reference).",
    "image_score='latent' (scoring-only): ProxyAno eq. 13, ‖E(I) − E(Î)‖_F with E = G_AB's stem and two "
    "downsamplings ([4·ngf, H/4, W/4]), in the network's [−1, 1] units; the other score is returned in extras.",
    "Data: the stores' [0, 1] slices and SIs are mapped to the tanh range [−1, 1] and back; no resize-286 / "
    "random-crop-256 / flip augmentation [assumption: the stores are already 256 px].",
    "Losses from methods/blocks/gan.py (LSGAN: MSE to 1 / 0, D loss ½·(real + fake)); one Adam for both "
    "generators, one for both discriminators, as in the reference.",
    "bf16 autocast on CUDA for the four networks; losses in fp32.",
    "CPU profiles only: 'default' narrows the generators to ngf = 4 with 3 residual blocks and the discriminators "
    "to ndf = 8 (same layouts), trains at batch 2 for 2 epochs (1 constant + 1 at half the rate) [assumption: "
    "compute budget: the full-resolution 7×7 convolutions of the 6 generator passes per step dominate on CPU]; "
    "'smoke' ngf = ndf = 4, 2 residual blocks, 1 epoch. 'paper' keeps the config.",
)


@register_method
class CycleGAN(Method, Trainable):
    name = "cycle-gan"
    budget_fields = (*Method.budget_fields, "decay_epochs")
    Config = CycleGANConfig
    version = 1
    min_size_multiple = 4  # two stride-2 downsamplings, mirrored by stride-2 transposed convolutions
    info = MethodInfo(
        paper="Zhu et al., ICCV 2017 (CycleGAN), as an anomaly detector in ProxyAno (Table I)",
        summary="CycleGAN between slices and their SLIC superpixel images (ResNet-9 generators, PatchGANs, LSGAN, "
                "cycle 10, identity 0.5); image score = mean |I − G_BA(G_AB(I))|, map = the same residual.",
        deviations=CYCLEGAN_DEVIATIONS,
        code="github.com/junyanz/pytorch-CycleGAN-and-pix2pix @032e884 (used by ProxyAno)",
    )
    # CPU budgets at 256 px (toy store of 400 training slices), measured with ONE torch thread while other jobs loaded
    # the 2 cores (load 3–6; two threads then lost 4–10× to OpenMP waits, e.g. 0.43 slices/s; a quiet 2-core run is
    # faster than these): 'default' (ngf 4, ndf 8, 3 blocks, batch 2) trains 1.7–2.9 slices/s → 2 epochs × 400 ≈
    # 4.6–8 min, plus ~20 s of SLIC for the 400 slices once (then cached); scores 11–16 slices/s (≈ 30 s for 400
    # test slices). Wider: ngf = ndf = 8: 1.9 / 8.7 slices/s; ngf 8, 6 blocks, ndf 16: 1.35 / 7.3; ngf = ndf = 16,
    # 9 blocks: 0.5 / 3.8. 'smoke': ~2 slices/s training, ~13 slices/s scoring at 256 px.
    profile_overrides = {
        "smoke": {"epochs": 1, "decay_epochs": 0, "batch_size": 4, "ngf": 4, "ndf": 4, "n_blocks": 2},
        "default": {"epochs": 2, "decay_epochs": 1, "batch_size": 2, "ngf": 4, "ndf": 8, "n_blocks": 3},
    }

    def __init__(self, config: CycleGANConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        self.check_choices(image_score=IMAGE_SCORES)
        if not 0 <= c.decay_epochs <= c.epochs:
            raise ValueError(f"{self.name}: decay_epochs must be in [0, epochs = {c.epochs}], got {c.decay_epochs}")
        if min(c.lambda_a, c.lambda_b, c.lambda_identity) < 0 or c.pool_size < 0:
            raise ValueError(f"{self.name}: lambda_a, lambda_b, lambda_identity and pool_size must be ≥ 0")
        ch = self.data.channels
        make_g = partial(ResnetGenerator, ch, ch, ngf=c.ngf, n_blocks=c.n_blocks, norm="instance")
        make_d = partial(PatchDiscriminator, ch, ndf=c.ndf, n_layers=c.n_layers_d, norm="instance")
        # reference names: G_A = g_ab, G_B = g_ba, D_A = d_b (judges domain B), D_B = d_a (judges domain A)
        self.g_ab, self.g_ba = make_g().to(self.device), make_g().to(self.device)
        self.d_a, self.d_b = make_d().to(self.device), make_d().to(self.device)
        self.gan = GANLoss("lsgan", d_factor=0.5)
        self.pools = {"a": ImagePool(c.pool_size), "b": ImagePool(c.pool_size)}
        self.proxies: ProxyTable | None = None  # the training slices' SIs while the trainer runs
        self.b_rows: torch.Tensor | None = None  # their row ids, which the B batches are drawn from

    def networks(self) -> dict[str, nn.Module]:
        return {"g_ab": self.g_ab, "g_ba": self.g_ba, "d_a": self.d_a, "d_b": self.d_b}

    # -- training --------------------------------------------------------------------------------------
    @property
    def proxy_settings(self) -> ProxySettings:
        return ProxySettings(slic_segments=self.config.slic_segments, slic_compactness=self.config.slic_compactness)

    def on_fit_start(self, train: Any, val: Any) -> None:
        """The SIs of the training slices (computed once, cached beside the store), on the training device."""
        self.proxies = ProxyTable.build([train], "SI", settings=self.proxy_settings, device=self.device)
        self.b_rows = torch.as_tensor(np.asarray(train.rows), dtype=torch.int64)

    def on_stage_end(self, step: StepContext) -> None:
        self.proxies, self.b_rows = None, None  # ~100 MB for 400 slices at 256 px that scoring does not need

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self.pools = {"a": ImagePool(self.config.pool_size), "b": ImagePool(self.config.pool_size)}  # fresh per fit
        return dcgan_optimizers([self.g_ab, self.g_ba], [self.d_a, self.d_b], self.config.lr, self.config.beta1)

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[Any]:
        return linear_decay_schedulers(optimizers, self.config.epochs, self.config.decay_epochs)

    def domain_b(self, batch: SliceBatch, step: StepContext) -> torch.Tensor:
        """The step's unpaired B batch in [0, 1]: the SIs of training slices drawn at random."""
        if self.proxies is None or self.b_rows is None:
            raise RuntimeError(f"{self.name}: no superpixel images; the trainer builds them (on_fit_start)")
        rows = self.b_rows[torch.randint(len(self.b_rows), (len(batch),), generator=step.generator)]
        return self.proxies(rows.to(batch.image.device)).to(batch.image.device).float()

    def generator_losses(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every generator term of the reference's ``backward_G`` (fp32) plus the fakes for the D update."""
        c = self.config
        with autocast(self.device, c.amp):
            fake_b = self.g_ab(real_a)
            rec_a = self.g_ba(fake_b)
            fake_a = self.g_ba(real_b)
            rec_b = self.g_ab(fake_a)
            with frozen(self.d_a, self.d_b):
                adv_ab = self.gan.generator_loss(self.d_b(fake_b))
                adv_ba = self.gan.generator_loss(self.d_a(fake_a))
            if c.lambda_identity > 0:
                idt_b = F.l1_loss(self.g_ab(real_b).float(), real_b) * c.lambda_b * c.lambda_identity
                idt_a = F.l1_loss(self.g_ba(real_a).float(), real_a) * c.lambda_a * c.lambda_identity
            else:
                idt_a = idt_b = torch.zeros((), device=real_a.device)
        cyc_a = F.l1_loss(rec_a.float(), real_a) * c.lambda_a
        cyc_b = F.l1_loss(rec_b.float(), real_b) * c.lambda_b
        total = adv_ab + adv_ba + cyc_a + cyc_b + idt_a + idt_b
        return {"total": total, "adv_ab": adv_ab, "adv_ba": adv_ba, "cycle_a": cyc_a, "cycle_b": cyc_b,
                "idt_a": idt_a, "idt_b": idt_b, "fake_a": fake_a, "fake_b": fake_b}

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        """The reference's order: both generators update (discriminators frozen), then both discriminators on the
        real images of their domain vs pooled fakes."""
        real_a = to_tanh(batch.image)
        real_b = to_tanh(self.domain_b(batch, step))
        g = self.generator_losses(real_a, real_b)
        logs = {"loss_g": step.optimize("g", g["total"])}
        logs.update({k: float(v.detach()) for k, v in g.items() if k not in ("total", "fake_a", "fake_b")})
        fake_b = self.pools["b"].query(g["fake_b"], step.generator)
        fake_a = self.pools["a"].query(g["fake_a"], step.generator)
        with step.autocast():
            loss_d_b = self.gan.discriminator_loss(self.d_b(real_b), self.d_b(fake_b))
            loss_d_a = self.gan.discriminator_loss(self.d_a(real_a), self.d_a(fake_a))
        logs["loss_d"] = step.optimize("d", loss_d_a + loss_d_b)
        logs.update(loss_d_a=float(loss_d_a.detach()), loss_d_b=float(loss_d_b.detach()))
        return logs

    # -- scoring ---------------------------------------------------------------------------------------
    def _score(self, batch: SliceBatch) -> ScoreOutput:
        """Instance norm and no dropout: eval mode is the reference's test mode, and no slice sees its batch."""
        x = to_tanh(batch.image)
        with autocast(self.device, self.config.amp):
            rec = self.g_ba(self.g_ab(x)).float()
            latent = latent_distance(self.g_ab.encode(x), self.g_ab.encode(rec))
        out = residual_output(batch.image, from_tanh(rec))
        if self.config.image_score == "latent":
            return ScoreOutput(out.anomaly_map, latent, out.reconstruction, {"residual_score": out.image_score})
        return ScoreOutput(out.anomaly_map, out.image_score, out.reconstruction, {"latent_score": latent})
