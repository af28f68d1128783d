"""AE-S: Baur et al.'s spatial-bottleneck convolutional autoencoder (``ae-s``, specs/baselines.md §2).

AE-D's encoder and decoder (methods/blocks/baur.py) with the 8×8×128 feature map itself as the latent (dropout 0.2
on it while training) instead of the dense bottleneck. Trained like AE-D (L1 summed over pixels, Adam 5e-4, batch 8,
patience 500 on validation L1) plus the RA/PHANES augmentation; map |x − x̂|, image score = mean. RA Table 2(a)
prints it as "AE", 2(b) and Table 1 as "AE-S".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.contract import Method, MethodInfo, ScoreOutput, SliceBatch
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import StepContext
from methods.ae import AE
from methods.blocks.configs import RAAppendixAConfig
from methods.blocks.augment import random_affine
from methods.blocks.baur import BaurDecoder, BaurEncoder
from methods.blocks.dcgan import fit_widths, stage_count
from methods.blocks.reconstruction import residual_output

BAUR_WIDTHS = (32, 64, 128, 128)  # min(128, 32·2^i): the encoder at 128 px


def baur_widths(widths: tuple[int, ...], stages: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(encoder, decoder) widths for ``stages`` stride-2 stages: the encoder's last width repeats for extra stages,
    the decoder mirrors the encoder (each up-stage returns to the width of the matching down-stage's input) and
    keeps the first width for its last stage. At 4 stages: (32, 64, 128, 128) and (128, 64, 32, 32), AE-D's."""
    enc = fit_widths(widths, stages)
    return enc, enc[-2::-1] + (enc[0],)


class SpatialAutoencoder(nn.Module):
    """[B, C, S, S] → Baur encoder to a [B, w, latent, latent] map → dropout → Baur decoder → [B, C, S, S] in [0, 1]."""

    def __init__(self, channels: int, image_size: int, widths: tuple[int, ...] = BAUR_WIDTHS, latent_size: int = 8,
                 dropout: float = 0.2):
        super().__init__()
        enc, dec = baur_widths(widths, stage_count(image_size, latent_size))
        self.encoder = BaurEncoder(channels, enc)
        self.dropout = nn.Dropout(dropout)  # element-wise on the latent map, train mode only
        self.decoder = BaurDecoder(channels, enc[-1], dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.dropout(self.encoder(x)))


@dataclass
class AESConfig(RAAppendixAConfig):
    """Defaults: baselines.md §2 / RA App. A — Adam 5e-4 (paper; official main 1e-4), batch 8, L1, ≤ 1500 epochs,
    patience 500, RA/PHANES augmentation, 8×8 latent of 128 channels, dropout 0.2 on it."""

    lr: float = 5e-4
    widths: tuple[int, ...] = BAUR_WIDTHS  # encoder widths, first stages first (decoder: mirrored)
    latent_size: int = 8  # spatial side of the latent map (Baur's intermediateResolutions)
    dropout: float = 0.2


AES_DEVIATIONS = (
    "ci-ber PyTorch port of Baur's layers (5×5 stride-2 convs + BN + LeakyReLU 0.2, ConvTranspose padding 2 / "
    "output_padding 1, 1×1 head, sigmoid output) shared with AE-D; official dropout 0.2 on the latent map kept "
    "(element-wise) [baselines.md §2].",
    "Latent side fixed at 8 (Baur's intermediateResolutions): one stride-2 stage per halving, so 256 px gets a fifth "
    "stage (encoder widths (32, 64, 128, 128, 128), decoder mirrored (128, 128, 64, 32, 32)) [assumption].",
    "Adam 5e-4 as the paper states (official main: 1e-4), batch 8, L1 summed over pixels and averaged over the "
    "batch, ≤ 1500 epochs, early stopping with patience 500 on validation L1 and best-weight restore; PyTorch "
    "default initialisation.",
    "Training augmentation of the RA/PHANES loaders (RandomAffine 10°/0.1/0.9–1.1 + h-flip 0.5) on the device "
    "(shared random_affine, nearest sampling, no 8-bit PIL round trip) [assumption, as for RA].",
    "Map |x − clamp(x̂, 0, 1)| unsmoothed and unmasked, image score = mean (RA/PHANES default residual branch); "
    "per-paper scoring is applied by the protocols from the reconstruction.",
    "bf16 autocast on CUDA for the network; the L1 in fp32.",
    "CPU profiles only: 'default' trains the full network for 8 epochs with augmentation and no early stopping "
    "(≈ 3.1 min for the phantom's 576 training slices, measured on one free core); 'smoke' widths (4, 8, 16, 16), "
    "1 epoch. 'paper' keeps the config.",
)


@register_method
class AES(AE):
    """AE-D's optimiser, L1 loss, validation loss and residual map (methods/ae.py) on the spatial network, with
    augmented training batches."""

    name = "ae-s"
    Config = AESConfig
    variants: dict = {}  # AE's AFSC-table row is AE-D's only
    version = 2  # v2: channels_last networks via AE (float rounding; issue 21)
    min_size_multiple = 16  # ≥ 1 stage down to the 8×8 latent; the size must be 8·2^k (checked at build)
    info = MethodInfo(
        paper="Baur et al., MedIA 69:101952, 2021 (AE-S), as configured in Bercea et al. MIDL 2023 App. A",
        summary="Spatial-bottleneck convolutional AE (8×8×128 latent); anomaly map |x − x̂|, image score = mean.",
        deviations=AES_DEVIATIONS,
        code="github.com/StefanDenn3r/Unsupervised_Anomaly_Detection_Brain_MRI @3e413c0 "
             "(models/autoencoder_spatial.py); ci-ber/MorphAEus @d314eb3 (ConvAutoEncoder, configs/cxr/ae-s.yaml)",
    )
    # "default": one full-width epoch of the 576 phantom slices (with validation) takes ~23 s on one core, so 8 epochs
    # (3.1 min measured; validation L1 still improving at epoch 8, pixel AUROC 0.78 on the FLAIR phantom) fit the
    # few-minute CPU budget.
    profile_overrides = {
        "smoke": {"epochs": 1, "widths": (4, 8, 16, 16)},
        "default": {"epochs": 8, "early_stop_patience": None},
    }

    def __init__(self, config: AESConfig | None = None, **kw: Any):
        Method.__init__(self, config, **kw)  # AE.__init__ would build the dense network
        c = self.config
        self.net = self.place(SpatialAutoencoder(self.data.channels, self.data.image_size, tuple(c.widths),
                                                 c.latent_size, c.dropout))

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        x = random_affine(batch.image, generator=step.generator) if self.config.augment else batch.image
        with step.autocast():
            loss = self._l1(x, self.net(x).float())
        return {"l1": step.optimize("net", loss)}

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        with autocast(self.device, self.config.amp):
            x_hat = self.net(batch.image).float()
        return residual_output(batch.image, x_hat.clamp(0, 1))
