"""DRAEM: a discriminatively trained reconstruction embedding (Zavrtanik, Kristan, Skočaj, ICCV 2021; ``draem``,
specs/baselines.md §15, afsc.md §9).

Training (one step, as train_DRAEM.py): DRAEM's synthetic anomalies are pasted on the healthy batch
(methods/blocks/perlin.py); the reconstructive sub-network maps the augmented batch back to the clean one (MSE +
1 − SSIM); the discriminative sub-network segments the pasted region from concat(reconstruction, augmented input)
(focal loss). One Adam over both networks, one summed loss. Scoring: map = softmax channel 1 of the segmentation,
image score = max of the 21×21 mean-filtered map (test_DRAEM.py); the reconstruction is returned as well, which
``draem_g`` reads.

Variant ``w/ AFSCm s=0.5`` (AFSC tables): the AFSC module sits in front of the reconstructive sub-network only; the
discriminative net still sees the un-compressed augmented input (afsc.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import Method, MethodInfo, ScoreOutput, SliceBatch, Trainable, Variant
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext, milestone_schedules
from methods.blocks.afscm import AFSCmConfig, AFSCmHost, with_afscm
from methods.blocks.draem import DiscriminativeUNet, focal_loss, ssim_loss
from methods.blocks.encdec import EncoderDecoder
from methods.blocks.perlin import DraemAnomalies
from methods.blocks.reconstruction import max_of_mean_filtered

AFSCM_VARIANT = "w/ AFSCm s=0.5"


@dataclass
class DraemConfig(AFSCmConfig):
    """Defaults: baselines.md §15 (official code) with AFSC's epoch budget (specs README resolution 4)."""

    epochs: int = 10  # AFSC's budget for the afsc tables (the official README trains 700)
    batch_size: int = 8
    lr: float = 1e-4  # one Adam, both sub-networks
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # MultiStepLR ×0.2 at these fractions of the epochs
    lr_gamma: float = 0.2
    rec_width: int = 128  # reconstructive sub-network base width
    disc_width: int = 64  # discriminative sub-network base width
    focal_gamma: float = 2.0
    ssim_window: int = 11
    texture_dir: str | None = None  # DTD-like texture folder; None: the images bundled with scikit-image
    clean_prob: float = 0.5  # fraction of training samples left without an anomaly
    max_beta: float = 0.8  # opacity β ~ U(0, max_beta) of the original image inside the mask


DRAEM_DEVIATIONS = (
    "C = 1 (greyscale MRI; official C = 3): the reconstructive net maps C → C, the discriminative net 2C → 2 "
    "[assumption, baselines.md §15].",
    "Textures: the natural images bundled in the scikit-image wheel (skimage.data brick, grass, gravel, camera, …; "
    "19 files) instead of DTD, which cannot be fetched here; a DTD-like folder can be given as texture_dir "
    "[specs README resolution 5]. Textures are converted to greyscale before the augmenters, so DRAEM's "
    "hue/saturation augmenter is the identity; the other nine are re-implemented on greyscale tensors "
    "(methods/blocks/perlin.py).",
    "Brain-specific anomalies (afsc.md §5): the Perlin mask is multiplied by the foreground (x > 0) and the base "
    "image is never rotated (DRAEM rotates 30 % of its training images by ±90°).",
    "Epochs: 10 (AFSC's budget, specs README resolution 4) instead of the official 700; MultiStepLR ×0.2 after "
    "epochs ⌊0.8·E⌋ and ⌊0.9·E⌋. The official loader draws training images with replacement; here each epoch "
    "visits every slice once (the shared trainer).",
    "Anomalies are drawn on the fly from the trainer's seeded generator (reproducible, resumable), batched on the "
    "device; Perlin noise and the augmenters are own torch implementations of DRAEM's (imgaug/numpy) ones.",
    "Init: N(0, 0.02) convs and N(1, 0.02) BN weights as the code, with conv biases zeroed (methods/blocks/gan.py).",
    "bf16 autocast on CUDA for both networks; SSIM, focal loss and the softmax in fp32.",
    "w/ AFSCm s=0.5 (AFSC tables): the AFSC module in front of the reconstructive sub-network only, the "
    "discriminative net sees concat(reconstruction, un-compressed augmented input); soft masks + δ·L_M for all "
    "epochs but the last, binarised to 50 % of the coefficients, one epoch with the binary masks; masks tied under "
    "k ↔ −k so the compressed image is real [assumption, afsc.md §9].",
    "CPU profiles: 'default' narrows the sub-networks to widths 16 / 8 (AFSC's default) and trains 3 epochs at lr "
    "1e-3 (at 1e-4 the segmentation does not learn in 216 steps); 'smoke' widths 8 / 8, 1 epoch [assumption: compute "
    "budget]. 'paper' keeps 128 / 64, lr 1e-4 and 10 epochs.",
)


@register_method
class Draem(AFSCmHost, Method, Trainable):
    name = "draem"
    Config = DraemConfig
    version = 1
    min_size_multiple = 32  # the discriminative U-Net pools five times
    variants = {
        AFSCM_VARIANT: Variant({"afscm": "learned", "afscm_keep": 0.5},
                               description="AFSC Tables 1–2: the AFSC module (learned masks keeping 50 %) in front of "
                                           "the reconstructive sub-network only, afsc.md §9"),
    }
    info = MethodInfo(
        paper="Zavrtanik, Kristan, Skočaj, ICCV 2021 (DRAEM)",
        summary="Reconstructive net (no skips) removes pasted Perlin × texture anomalies; a U-Net segments them from "
                "concat(reconstruction, input); loss MSE + (1 − SSIM) + focal; map = segmentation softmax, image "
                "score = max of the 21×21 mean-filtered map.",
        deviations=DRAEM_DEVIATIONS,
        code="github.com/VitjanZ/DRAEM @2dbf673",
    )
    # CPU budgets (the paper profile keeps the config). 'default' = AFSC's default budget (generator 16 / discriminator
    # 8 wide, 3 epochs) so the afsc rows compare like for like, with a 10× lr: on the default T2 phantom (128 px, 576
    # training slices, 216 steps of 8) lr 1e-4 leaves the segmentation untrained (pixel AUROC 0.47) where 1e-3 reaches
    # 0.82 (DRAEM_G 0.91). Measured on 2 cores: 0.56 s per step when idle, 197 s for the whole training (about
    # 3.3 min; 12–17 min on a box shared by 4 processes). 'smoke': widths 8 / 8, 1 epoch (2 with the AFSC module),
    # ~3 s on the 32 smoke slices.
    profile_overrides = {
        "smoke": {"epochs": 1, "rec_width": 8, "disc_width": 8},
        "default": {"epochs": 3, "rec_width": 16, "disc_width": 8, "lr": 1e-3},
    }

    def __init__(self, config: DraemConfig | None = None, **kw):
        super().__init__(config, **kw)
        c, ch = self.config, self.data.channels
        self.rec = with_afscm(EncoderDecoder.draem(ch, ch, c.rec_width).to(self.device), c, self.data)
        self.disc = DiscriminativeUNet(2 * ch, 2, c.disc_width).to(self.device)
        self.anomalies = DraemAnomalies(self.data.image_size, texture_dir=c.texture_dir, clean_prob=c.clean_prob,
                                        max_beta=c.max_beta)

    def networks(self) -> dict[str, nn.Module]:
        return {"rec": self.rec, "disc": self.disc}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        # one optimiser for the summed loss, as train_DRAEM.py (its two parameter groups share the lr)
        params = [*self.rec.parameters(), *self.disc.parameters()]
        return {"net": torch.optim.Adam(params, lr=self.config.lr)}

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list:
        c = self.config
        return milestone_schedules(optimizers, c.epochs, c.lr_milestones, c.lr_gamma)

    def segment(self, reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Segmentation logits [B, 2, H, W] from concat(reconstruction, image) (DRAEM's order)."""
        return self.disc(torch.cat([reconstruction.to(image.dtype), image], dim=1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstructive sub-network's output in fp32 (through the AFSC module in the AFSCm variant)."""
        with autocast(self.device, self.config.amp):
            return self.rec(x).float()

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        c = self.config
        clean = batch.image.float()
        augmented, mask = self.anomalies(clean, generator=step.generator)
        with step.autocast():
            rec = self.rec(augmented)
            logits = self.segment(rec, augmented)
        rec = rec.float()
        l2 = F.mse_loss(rec, clean)
        ssim = ssim_loss(rec, clean, c.ssim_window)
        focal = focal_loss(logits, mask, c.focal_gamma)
        loss = step.optimize("net", l2 + ssim + focal + self.afscm_penalty())
        return {"loss": loss, "l2": float(l2.detach()), "ssim": float(ssim.detach()), "focal": float(focal.detach())}

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = batch.image.float()
        rec = self.reconstruct(x)
        with autocast(self.device, self.config.amp):
            logits = self.segment(rec, x)
        amap = torch.softmax(logits.float(), dim=1)[:, 1:]
        return ScoreOutput(anomaly_map=amap, image_score=max_of_mean_filtered(amap), reconstruction=rec)
