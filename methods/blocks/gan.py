"""GAN losses and the one patch/image discriminator shared by every adversarial method (specs/baselines.md §25).

Users: GANomaly, AnoGAN, f-AnoGAN (WGAN-GP), Sparse-GAN, pix2pix, Cycle-GAN (LSGAN), ProxyAno's IRM (BCE,
spectral-norm PatchGAN, proxyano.md §3) and AFSC (LSGAN). Writing the losses once keeps their conventions (logits,
halved discriminator sum, fp32 penalty) identical across methods, so differences in the tables come from the
methods and not from re-typed loss code.

All losses take **logits** (no sigmoid in the discriminator): BCE-with-logits is numerically stable and is the only
BCE that autocast allows; a paper's "sigmoid + BCELoss" is the same function [assumption: equivalent rewrite].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

GAN_MODES = ("bce", "lsgan", "wgan")


def init_normal_(module: nn.Module, std: float = 0.02) -> nn.Module:
    """DCGAN-family init (pix2pix, CycleGAN, GANomaly, DRAEM): conv ~ N(0, std), norm weight ~ N(1, std), biases 0.

    [assumption] conv biases are zeroed as in pix2pix's ``init_weights``; DRAEM keeps PyTorch's default bias, which
    only matters for its final conv.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # spectral-norm parametrised convs keep the raw weight in ``parametrizations.weight.original``
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


# ---------------------------------------------------------------------------------------------------- losses


def dcgan_optimizers(generator: nn.Module | Sequence[nn.Module], discriminator: nn.Module | Sequence[nn.Module],
                     lr: float, beta1: float) -> dict[str, torch.optim.Optimizer]:
    """{"g", "d"}: the DCGAN-family Adam pair (lr, betas (β1, 0.999)) of AnoGAN, GANomaly, Sparse-GAN, pix2pix and
    CycleGAN (a list of networks shares one optimiser, as CycleGAN's two generators do)."""
    def params(nets: nn.Module | Sequence[nn.Module]) -> list[nn.Parameter]:
        return [p for n in ([nets] if isinstance(nets, nn.Module) else nets) for p in n.parameters()]

    return {"g": torch.optim.Adam(params(generator), lr=lr, betas=(beta1, 0.999)),
            "d": torch.optim.Adam(params(discriminator), lr=lr, betas=(beta1, 0.999))}


def _full(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full_like(x, value)


def _to_targets(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], real_logits: torch.Tensor | None,
                fake_logits: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(criterion(real, 1), criterion(fake, 0)) in fp32: the one shape of every non-Wasserstein GAN loss."""
    r = None if real_logits is None else real_logits.float()
    f = fake_logits.float()
    return (None if r is None else criterion(r, _full(r, 1.0))), criterion(f, _full(f, 0.0))


def bce_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE(real, 1), BCE(fake, 0)), each averaged over every logit (patch or image), computed in fp32."""
    return _to_targets(F.binary_cross_entropy_with_logits, real_logits, fake_logits)  # type: ignore[return-value]


def bce_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss BCE(D(G(z)), 1) = mean softplus(−logit) (Goodfellow et al.; all BCE GANs)."""
    return _to_targets(F.binary_cross_entropy_with_logits, fake_logits, fake_logits)[0]  # type: ignore[return-value]


def lsgan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE(real, 1), MSE(fake, 0)) with the 1/0 targets of CycleGAN and AFSC eq. 8."""
    return _to_targets(F.mse_loss, real_logits, fake_logits)  # type: ignore[return-value]


def lsgan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """MSE(D(G(z)), 1) (CycleGAN; AFSC eq. 7's L_d1)."""
    return _to_targets(F.mse_loss, fake_logits, fake_logits)[0]  # type: ignore[return-value]


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[C(fake)] − E[C(real)]: the critic minimises this (WGAN / f-AnoGAN stage 1); add the gradient penalty."""
    return fake_scores.float().mean() - real_scores.float().mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """−E[C(G(z))]."""
    return -fake_scores.float().mean()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, *,
                     weight: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP term λ·E[(‖∇ C(x̃)‖₂ − 1)²] at x̃ = α·real + (1−α)·fake, α ~ U[0,1] per sample (Gulrajani et al.).

    Why fp32: the penalty differentiates through the critic twice; in bf16 the gradient norm of a near-1-Lipschitz
    critic is off by ~1 %, which the square then amplifies. So the critic is re-run here with autocast disabled.
    ``generator`` makes α reproducible; a generator on another device than ``real`` draws there and is moved.
    ``critic`` must map a batch to scores (wrap a conditional critic in a lambda).
    """
    real, fake = real.detach().float(), fake.detach().float()
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    gen_device = generator.device if generator is not None else real.device
    alpha = torch.rand(shape, generator=generator, device=gen_device).to(real.device)
    x = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = critic(x).float()
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)
    return weight * (norms - 1.0).square().mean()


def feature_matching_loss(real_features: torch.Tensor | Sequence[torch.Tensor],
                          fake_features: torch.Tensor | Sequence[torch.Tensor], *, norm: str = "l2",
                          batch_mean: bool = False, per_sample: bool = False,
                          reduction: str = "mean") -> torch.Tensor:
    """Distance between discriminator features of real and generated images.

    ``norm``: "l2" (squared error: GANomaly's w_adv term, f-AnoGAN's κ term) or "l1" (AnoGAN's Σ|f(x) − f(G(z))|).
    ``batch_mean=True`` compares the batch-mean features (Salimans et al.'s feature matching) instead of per-sample
    features. ``per_sample=True`` returns one value per image [B] (AnoGAN / f-AnoGAN anomaly scores); ``reduction``
    "mean" or "sum" over the feature elements. Lists of layers are summed layer by layer [assumption: pix2pixHD's
    multi-layer convention; every named baseline passes one layer]. Computed in fp32.
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"unknown norm {norm!r} (l1 | l2)")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r} (mean | sum)")
    if batch_mean and per_sample:
        raise ValueError("batch_mean=True has no per-sample value")
    reals = [real_features] if isinstance(real_features, torch.Tensor) else list(real_features)
    fakes = [fake_features] if isinstance(fake_features, torch.Tensor) else list(fake_features)
    if len(reals) != len(fakes):
        raise ValueError(f"{len(reals)} real vs {len(fakes)} fake feature layers")
    total: torch.Tensor | int = 0
    for r, f in zip(reals, fakes):
        r, f = r.float(), f.float()
        if batch_mean:
            r, f = r.mean(0, keepdim=True), f.mean(0, keepdim=True)
        d = (r - f).abs() if norm == "l1" else (r - f).square()
        d = d.flatten(1)
        if per_sample:
            total = total + (d.mean(1) if reduction == "mean" else d.sum(1))
        else:
            total = total + (d.mean() if reduction == "mean" else d.sum())
    return total  # type: ignore[return-value]


@dataclass
class GANLoss:
    """One adversarial objective chosen by ``mode`` so a method states its GAN type in one config value.

    ``d_factor`` scales the discriminator's real+fake sum: 0.5 as in pix2pix, CycleGAN and GANomaly ("slow down D");
    1.0 for the DCGAN/AnoGAN sum [assumption: 0.5 default, the majority of the named baselines]. It does not apply
    to "wgan", whose critic loss is E[C(fake)] − E[C(real)] plus ``gradient_penalty`` weighted by ``gp_weight``.
    """

    mode: str = "bce"
    d_factor: float = 0.5
    gp_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in GAN_MODES:
            raise ValueError(f"unknown GAN mode {self.mode!r} ({' | '.join(GAN_MODES)})")

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Loss the discriminator minimises; pass ``fake_logits`` of a detached G output."""
        if self.mode == "wgan":
            return wgan_critic_loss(real_logits, fake_logits)
        fn = bce_discriminator_loss if self.mode == "bce" else lsgan_discriminator_loss
        loss_real, loss_fake = fn(real_logits, fake_logits)
        return self.d_factor * (loss_real + loss_fake)

    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Adversarial loss the generator minimises."""
        if self.mode == "bce":
            return bce_generator_loss(fake_logits)
        if self.mode == "lsgan":
            return lsgan_generator_loss(fake_logits)
        return wgan_generator_loss(fake_logits)

    def gradient_penalty(self, critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                         fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``gradient_penalty`` with this loss's ``gp_weight`` (only meaningful for mode "wgan")."""
        return gradient_penalty(critic, real, fake, weight=self.gp_weight, generator=generator)


# ---------------------------------------------------------------------------------------------------- discriminator


def _norm_layer(kind: str, channels: int) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # pix2pix/CycleGAN: affine=False, no running stats
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r} (batch | instance | none)")


class PatchDiscriminator(nn.Module):
    """pix2pix ``NLayerDiscriminator``: the one discriminator class of the suite (returns logits, no sigmoid).

    Layout (4×4 convs, padding 1, LeakyReLU 0.2): conv s2 to ``ndf`` without norm, then ``n_layers − 1`` convs s2
    with norm doubling the width (capped at ``ndf·max_mult``), then one conv s1 with norm, then a 1-channel conv s1.
    Defaults = the 70×70 PatchGAN (n_layers 3, ndf 64, batch norm); ``in_channels`` > 1 makes it conditional by
    concatenation (pix2pix: concat(input, output)). ``spectral_norm=True`` with ``norm="none"`` is ProxyAno's P-Net
    discriminator (proxyano.md §3). Biases only where no batch norm follows, as in pix2pix.

    ``image_level=True`` is the DCGAN/GANomaly discriminator from the same class: all ``n_layers`` convs are
    stride 2 and the head is a 4×4 valid conv, so an input of side 4·2^n_layers gives one logit per image;
    ``PatchDiscriminator.image(...)`` picks n_layers from the image size.

    ``forward(x, return_features=True)`` also returns the activations after each LeakyReLU (the last one is
    GANomaly's / AnoGAN's "feature" output) for feature matching.
    """

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3, norm: str = "batch",
                 max_mult: int | None = 8, image_level: bool = False, spectral_norm: bool = False):
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be ≥ 1")
        self.image_level = image_level
        self.n_layers = n_layers

        def conv(cin: int, cout: int, stride: int, padding: int, bias: bool) -> nn.Conv2d:
            c = nn.Conv2d(cin, cout, 4, stride=stride, padding=padding, bias=bias)
            return nn.utils.parametrizations.spectral_norm(c) if spectral_norm else c

        def width(i: int) -> int:
            mult = 2**i if max_mult is None else min(2**i, max_mult)
            return ndf * mult

        blocks: list[nn.Sequential] = [nn.Sequential(conv(in_channels, ndf, 2, 1, True), nn.LeakyReLU(0.2))]
        strides = [2] * (n_layers - 1) + ([] if image_level else [1])
        for i, stride in enumerate(strides, start=1):
            layers: list[nn.Module] = [conv(width(i - 1), width(i), stride, 1, norm != "batch")]
            nl = _norm_layer(norm, width(i))
            if nl is not None:
                layers.append(nl)
            layers.append(nn.LeakyReLU(0.2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        last = width(len(strides))
        self.head = conv(last, 1, 1, 0, True) if image_level else conv(last, 1, 1, 1, True)
        self.feature_channels = last
        init_normal_(self)

    @classmethod
    def image(cls, in_channels: int, image_size: int, ndf: int = 64, norm: str = "batch",
              max_mult: int | None = None) -> "PatchDiscriminator":
        """DCGAN/GANomaly image-level discriminator: one logit per image of side ``image_size`` (a power of 2 ≥ 8).

        [assumption] widths keep doubling (``max_mult=None``) as in GANomaly's encoder, e.g. 64…2048 at 256 px.
        """
        n = int(round(math.log2(image_size))) - 2
        if n < 1 or 4 * 2**n != image_size:
            raise ValueError(f"image_size {image_size} is not a power of 2 ≥ 8")
        return cls(in_channels, ndf=ndf, n_layers=n, norm=norm, max_mult=max_mult, image_level=True)

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        feats: list[torch.Tensor] = []
        h = x
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        logits = self.head(h)
        return (logits, feats) if return_features else logits
