"""The one convolutional encoder–decoder without skip connections (DRAEM rec. net, AFSC's G, ProxyAno's EncDec).

No skips on purpose: a skip lets the input (and its lesion) bypass the bottleneck or the memory, which is what all
three methods rely on blocking (proxyano.md §3 calls it critical). Building blocks: [Conv3×3 + BN + ReLU] × 2 per
encoder level, max-pool 2 between levels, bilinear ×2 up (align_corners=True) in the decoder, a final conv with no
or a sigmoid activation. Fully convolutional: the image size is whatever the data store gives, as long as each side
divides by 2^(levels − 1).

Presets: ``EncoderDecoder.draem`` (baselines.md §15; also AFSC's generator and AFSC's "AE", afsc.md §4.1/§9) and
``EncoderDecoder.proxyano`` (proxyano.md §3; ``ae_proxy``, MemAE and both ProxyAno modules). ProxyAno puts its
memory between ``encode`` and ``decode``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from methods.blocks.gan import init_normal_

DECODER_STAGES = ("double", "draem")


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """[Conv3×3 + BN + ReLU] × 2, width changing at the first conv (U-Net / P-Net ``DoubleConv``)."""
    return nn.Sequential(*conv_bn_relu(cin, cout), *conv_bn_relu(cout, cout))


class Encoder(nn.Module):
    """Levels of ``double_conv`` at widths ``widths`` with max-pool 2 between them; optional 1×1 conv to
    ``latent_channels`` with no activation (ProxyAno's z, d = 64). Output stride 2^(len(widths) − 1)."""

    def __init__(self, in_channels: int, widths: Sequence[int], latent_channels: int | None = None):
        super().__init__()
        chans = (in_channels, *widths)
        self.levels = nn.ModuleList(double_conv(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.MaxPool2d(2)
        self.to_latent = None if latent_channels is None else nn.Conv2d(widths[-1], latent_channels, 1)
        self.out_channels = widths[-1] if latent_channels is None else latent_channels
        self.stride = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"input {tuple(x.shape[-2:])} must divide by {self.stride} (the encoder's stride)")
        h = self.levels[0](x)
        for level in self.levels[1:]:
            h = level(self.pool(h))
        return h if self.to_latent is None else self.to_latent(h)


class Decoder(nn.Module):
    """Latent → image: optional ``in_width`` ``double_conv`` at the bottleneck, then one ×2 stage per entry of
    ``widths`` and a ``head_kernel`` conv to ``out_channels``.

    ``stage``: "double" = bilinear up → double_conv(c_in → c_out) (ProxyAno §3 ``Up``); "draem" = bilinear up →
    conv(c_in → c_in) → conv(c_in → c_in) → conv(c_in → c_out), all with BN + ReLU (DRAEM's ``up_k`` + ``db_k``).
    ``output_activation``: None (linear, DRAEM and P-Net) or "sigmoid" (ProxyAno O12).
    """

    def __init__(self, out_channels: int, in_channels: int, widths: Sequence[int], *, in_width: int | None = None,
                 stage: str = "double", head_kernel: int = 1, output_activation: str | None = None):
        super().__init__()
        if stage not in DECODER_STAGES:
            raise ValueError(f"unknown decoder stage {stage!r} ({' | '.join(DECODER_STAGES)})")
        if output_activation not in (None, "sigmoid"):
            raise ValueError(f"unknown output activation {output_activation!r} (None | sigmoid)")
        self.inp = nn.Identity() if in_width is None else double_conv(in_channels, in_width)
        c = in_channels if in_width is None else in_width
        stages = []
        for w in widths:
            up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            if stage == "double":
                stages.append(nn.Sequential(up, double_conv(c, w)))
            else:
                stages.append(nn.Sequential(up, *conv_bn_relu(c, c), *conv_bn_relu(c, c), *conv_bn_relu(c, w)))
            c = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(c, out_channels, head_kernel, padding=head_kernel // 2)
        self.sigmoid = output_activation == "sigmoid"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.head(self.stages(self.inp(z)))
        return torch.sigmoid(y) if self.sigmoid else y


class EncoderDecoder(nn.Module):
    """Encoder (widths ``base_width``·``width_mults``) → Decoder (widths ``base_width``·``decoder_mults``).

    ``decoder_mults`` defaults to the encoder's mults reversed without the deepest one (one stage per pooling, each
    back to the encoder's width at that resolution). ``decoder_in_mult`` adds ProxyAno's bottleneck double_conv.
    ``forward(x, return_latent=True)`` gives (output, latent); ``encode``/``decode`` let a memory sit between.
    """

    def __init__(self, in_channels: int, out_channels: int, base_width: int, width_mults: Sequence[int], *,
                 decoder_mults: Sequence[int] | None = None, latent_channels: int | None = None,
                 decoder_in_mult: int | None = None, decoder_stage: str = "double", head_kernel: int = 1,
                 output_activation: str | None = None):
        super().__init__()
        n_up = len(width_mults) - 1
        if decoder_mults is None:
            decoder_mults = tuple(width_mults[:-1])[::-1]
        if len(decoder_mults) != n_up:
            raise ValueError(f"{len(decoder_mults)} decoder stages for {n_up} poolings")
        self.encoder = Encoder(in_channels, [base_width * m for m in width_mults], latent_channels)
        self.decoder = Decoder(out_channels, self.encoder.out_channels, [base_width * m for m in decoder_mults],
                               in_width=None if decoder_in_mult is None else base_width * decoder_in_mult,
                               stage=decoder_stage, head_kernel=head_kernel, output_activation=output_activation)
        self.latent_channels = self.encoder.out_channels
        self.stride = self.encoder.stride

    @classmethod
    def draem(cls, in_channels: int = 1, out_channels: int | None = None, base_width: int = 128
              ) -> "EncoderDecoder":
        """DRAEM reconstructive sub-network (``ReconstructiveSubNetwork``, baselines.md §15, afsc.md §4.1):
        encoder b·(1, 2, 4, 8, 8), decoder stages to b·(4, 2, 1, 1), final 3×3 conv, no activation, DRAEM's
        N(0, 0.02) init. ``out_channels`` defaults to ``in_channels`` (C = 1 for MRI)."""
        net = cls(in_channels, out_channels or in_channels, base_width, (1, 2, 4, 8, 8), decoder_mults=(4, 2, 1, 1),
                  decoder_stage="draem", head_kernel=3)
        return init_normal_(net)  # type: ignore[return-value]

    @classmethod
    def proxyano(cls, in_channels: int = 1, out_channels: int | None = None, base_width: int = 64,
                 width_mults: Sequence[int] = (1, 2, 4, 8), latent_channels: int = 64,
                 output_activation: str | None = None) -> "EncoderDecoder":
        """ProxyAno EncDec (proxyano.md §3, all [assumption] there since Fig. 5 is missing): double_conv levels
        64-128-256-512 with 3 poolings, 1×1 conv to z (d = 64; 64×32×32 at 256 px), decoder double_conv(64 → 512)
        then ×2 stages 256-128-64, 1×1 head, linear output by default (O12: "sigmoid"). ``width_mults`` is the
        O1 knob (e.g. (1, 2, 4, 8, 8) for a 16×16 latent [assumption: width capped at 8·b]); PyTorch default init."""
        return cls(in_channels, out_channels or in_channels, base_width, width_mults, latent_channels=latent_channels,
                   decoder_in_mult=width_mults[-1], decoder_stage="double", head_kernel=1,
                   output_activation=output_activation)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, return_latent: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        y = self.decoder(z)
        return (y, z) if return_latent else y
