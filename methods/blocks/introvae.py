"""Soft-IntroVAE residual encoder/decoder (Daniel & Tamar 2021, image variant), shared by ``si-vae`` and ``ra``.

Layout follows specs/ra.md §2 and baselines.md §6: a 5×5 stem, residual blocks separated by 2× average pooling
down to H/32, a linear layer to (μ, log σ²), and the mirrored nearest-upsampling decoder with a sigmoid head.
The encoder also returns the output of every AvgPool (5 maps at 128 px), which RA's reversed embedding loss
compares. Module names mirror the official ``model_zoo/ra.py`` (``main.res_in_64`` …) so that an official
checkpoint can be loaded with ``official_projections=True``.
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS = (64, 128, 256, 512, 512)


class ResBlock(nn.Module):
    """3×3 conv → BN → LReLU → 3×3 conv → BN, plus a (1×1-projected when needed) skip, then LReLU.

    ``project`` forces the 1×1 skip even when the widths agree: the official code tests ``in is not out`` on
    Python ints, which adds projections to two 512→512 blocks (spec §2 quirk); only needed for its checkpoints.
    """

    def __init__(self, cin: int, cout: int, project: bool = False):
        super().__init__()
        self.conv_expand = nn.Conv2d(cin, cout, 1, bias=False) if (cin != cout or project) else None
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.conv_expand is None else self.conv_expand(x)
        h = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(h + skip)


def _check_size(image_size: int, n_down: int) -> int:
    factor = 2 ** n_down
    if image_size % factor:
        raise ValueError(f"image_size {image_size} must be a multiple of {factor} (one 2× pooling per width)")
    return image_size // factor


class IntroResEncoder(nn.Module):
    """[B, C, S, S] → (μ [B, z], log σ² [B, z], embeddings: list of the AvgPool outputs, finest first).

    At S = 128 the embeddings are 64×64×64, 128×32², 256×16², 512×8², 512×4² (RA's e0…e4).
    """

    def __init__(self, in_channels: int = 1, z_dim: int = 128, channels: tuple[int, ...] = CHANNELS,
                 image_size: int = 128, official_projections: bool = False):
        super().__init__()
        self.z_dim = z_dim
        self.bottom = _check_size(image_size, len(channels))
        cc, sz = channels[0], image_size // 2
        self.main = nn.Sequential()
        self.main.add_module("0", nn.Conv2d(in_channels, cc, 5, padding=2, bias=False))
        self.main.add_module("1", nn.BatchNorm2d(cc))
        self.main.add_module("2", nn.LeakyReLU(0.2))
        self.main.add_module("3", nn.AvgPool2d(2))
        for ch in channels[1:]:  # consecutive list entries: the official quirk projects even 512→512
            self.main.add_module(f"res_in_{sz}", ResBlock(cc, ch, project=official_projections))
            self.main.add_module(f"down_to_{sz // 2}", nn.AvgPool2d(2))
            cc, sz = ch, sz // 2
        self.main.add_module(f"res_in_{sz}", ResBlock(cc, cc))
        self.out_channels = cc
        self.fc = nn.Linear(cc * self.bottom * self.bottom, 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        embeddings: list[torch.Tensor] = []
        h = x
        for layer in self.main:
            h = layer(h)
            if isinstance(layer, nn.AvgPool2d):
                embeddings.append(h)
        mu, logvar = self.fc(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar, embeddings


class IntroResDecoder(nn.Module):
    """z [B, z] → [B, C, S, S] in (0, 1): Linear+ReLU to 512×(S/32)², then ResBlock + nearest 2× per width."""

    def __init__(self, out_channels: int = 1, z_dim: int = 128, channels: tuple[int, ...] = CHANNELS,
                 image_size: int = 128, official_projections: bool = False):
        super().__init__()
        self.bottom = _check_size(image_size, len(channels))
        cc = channels[-1]
        self.start_channels = cc
        self.fc = nn.Sequential(nn.Linear(z_dim, cc * self.bottom * self.bottom), nn.ReLU())
        self.main = nn.Sequential()
        sz = self.bottom
        for i, ch in enumerate(channels[::-1]):  # the first block reuses the same list entry: no quirk there
            self.main.add_module(f"res_in_{sz}", ResBlock(cc, ch, project=official_projections and i > 0))
            self.main.add_module(f"up_to_{sz * 2}", nn.Upsample(scale_factor=2, mode="nearest"))
            cc, sz = ch, sz * 2
        self.main.add_module(f"res_in_{sz}", ResBlock(cc, cc))
        self.main.add_module("predict", nn.Conv2d(cc, out_channels, 5, padding=2))
        self.main.add_module("sigmoid", nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z.flatten(1)).view(z.shape[0], self.start_channels, self.bottom, self.bottom)
        return self.main(h)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = μ + exp(½ log σ²)·ε in fp32 (exp is the overflow-prone part under bf16)."""
    mu, logvar = mu.float(), logvar.float()
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + eps.to(mu) * torch.exp(0.5 * logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(q(z|x) ‖ N(0, I)) summed over latent dims, fp32: [B]."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - logvar.exp() - mu.pow(2)).sum(dim=1)


def sse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample sum of squared errors over C·H·W, fp32: [B]."""
    return (a.float() - b.float()).pow(2).flatten(1).sum(dim=1)
