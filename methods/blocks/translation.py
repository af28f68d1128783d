"""Image-to-image translation generators of pix2pix and CycleGAN (specs/baselines.md §13–14), their image pool
and their linear learning-rate decay.

Facts from junyanz/pytorch-CycleGAN-and-pix2pix @032e884 (models/networks.py, util/image_pool.py); written anew here.

- :class:`UNetGenerator`: pix2pix's ``unet_256`` / ``unet_128``. One 4×4 stride-2 conv per halving down to 1×1
  (8 at 256 px, 7 at 128 px), widths ngf·(1, 2, 4, 8, 8, …); every down conv but the first is preceded by
  LeakyReLU(0.2) and every one but the first and the innermost is followed by the norm; the decoder mirrors it with
  ReLU → 4×4 stride-2 ConvTranspose → norm, dropout 0.5 after the norm of the (levels − 5) up blocks that follow
  the innermost one (3 at 256 px), ReLU → ConvTranspose → tanh at the output. ``skips=False`` removes the U-Net's
  concatenations (the encoder–decoder pix2pix_ad uses: with skips the generator can copy its input through the
  first skip). Convs have no bias where a batch norm follows (as ``use_bias`` in the reference).
- :class:`ResnetGenerator`: CycleGAN's ``resnet_9blocks``: reflection-padded 7×7 conv, two 3×3 stride-2 convs
  (ngf → 2ngf → 4ngf), ``n_blocks`` residual blocks (reflection pad, 3×3 conv, norm, ReLU, reflection pad, 3×3
  conv, norm; no dropout), two 3×3 stride-2 ConvTranspose back, reflection-padded 7×7 conv, tanh. Instance norm
  without affine parameters and without running statistics, so convs keep their biases.
- :class:`ImagePool`: the history of 50 generated images CycleGAN's discriminators see; every random draw comes from
  the caller's ``torch.Generator`` (the trainer's), so training stays seeded.
- ``latent_distance``: ProxyAno's eq. 13 score, the ``image_score="latent"`` of both translation baselines.
- :class:`SliceDropout`: dropout that, at scoring, draws each slice's mask from the slice's own generator
  (methods/blocks/noise.slice_generators): pix2pix keeps dropout at test time without making a slice's map depend on
  its batch.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import MethodConfig
from methods.blocks.gan import init_normal_

@dataclass
class JunyanzConfig(MethodConfig):
    """The options pix2pix and CycleGAN share (junyanz/pytorch-CycleGAN-and-pix2pix @032e884 base_options.py,
    train_options.py): batch 1, Adam 2e-4 / β1 0.5, niter 100 + niter_decay 100 (linear decay), ngf = ndf = 64, the
    70×70 PatchGAN ('basic', 3 layers)."""

    epochs: int = 200  # niter + niter_decay
    decay_epochs: int = 100  # the last ``decay_epochs`` epochs decay linearly (niter_decay)
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    early_stop_patience: int | None = None
    ngf: int = 64
    ndf: int = 64
    n_layers_d: int = 3


NORMS = ("batch", "instance", "none")
IMAGE_SCORES = ("native", "latent")  # a translation baseline's image score: its residual, or ProxyAno's eq. 13


def latent_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ProxyAno eq. 13 per image, ‖E(x) − E(x̂)‖_F over the whole code (not squared, not averaged): [B] in fp32."""
    return (a.float() - b.float()).flatten(1).norm(dim=1)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The reference's ``get_norm_layer``: batch norm with affine parameters, instance norm without affine
    parameters and without running statistics, or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} ({' | '.join(NORMS)})")


class SliceDropout(nn.Module):
    """``nn.Dropout(p)`` in training; at scoring off, unless ``generators`` (one per slice of the batch, set by
    :func:`seeded_dropout`) are given: then slice b's mask is drawn from ``generators[b]`` on the data's device."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.generators: Sequence[torch.Generator] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generators is not None:
            if len(self.generators) != x.shape[0]:
                raise ValueError(f"{len(self.generators)} dropout generators for a batch of {x.shape[0]}")
            keep = 1.0 - self.p
            masks = [torch.empty(x.shape[1:], device=x.device, dtype=torch.float32).bernoulli_(keep, generator=g)
                     for g in self.generators]
            return x * (torch.stack(masks) / keep).to(x.dtype)
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@contextlib.contextmanager
def seeded_dropout(net: nn.Module, generators: Sequence[torch.Generator] | None) -> Iterator[None]:
    """Every :class:`SliceDropout` of ``net`` draws from ``generators`` (one per slice) inside the block."""
    layers = [m for m in net.modules() if isinstance(m, SliceDropout)]
    for m in layers:
        m.generators = generators
    try:
        yield
    finally:
        for m in layers:
            m.generators = None


@contextlib.contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Batch norm of ``net`` normalises with the statistics of the batch it sees (pix2pix at test time, where the
    reference runs G in training mode on one image) without touching the running statistics; dropout and every
    other layer keep their mode."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in layers]
    for m in layers:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(layers, saved):
            m.training, m.track_running_stats = training, track


def unet_levels(image_size: int) -> int:
    """Stride-2 levels from ``image_size`` down to 1×1 (8 at 256 px: ``unet_256``; 7 at 128 px: ``unet_128``)."""
    n = int(round(math.log2(image_size))) if image_size > 0 else 0
    if n < 2 or 2**n != image_size:
        raise ValueError(f"the U-Net generator needs a power-of-2 image size ≥ 4, got {image_size}")
    return n


class UNetGenerator(nn.Module):
    """pix2pix's U-Net generator (``skips=True``) or its encoder–decoder twin without skips (``skips=False``).

    ``levels`` stride-2 downsamplings (default: from ``image_size`` to 1×1). Level i (1-based) has width
    ngf·min(2^(i−1), ``max_mult``). ``encode(x)`` returns the innermost 1×1 code (what ProxyAno's eq. 13 compares);
    ``forward(x)`` the tanh image. With skips, up block i receives [LeakyReLU(d_i), u_{i+1}] (the reference's
    in-place LeakyReLU means its skip carries the activated features).
    """

    def __init__(self, in_channels: int, out_channels: int, image_size: int, *, ngf: int = 64, max_mult: int = 8,
                 norm: str = "batch", dropout: float = 0.5, skips: bool = True, levels: int | None = None):
        super().__init__()
        n = unet_levels(image_size) if levels is None else int(levels)
        if n < 2 or image_size % 2**n:
            raise ValueError(f"{n} stride-2 levels do not fit a {image_size}-px image")
        self.levels, self.skips = n, skips
        widths = [ngf * min(2**i, max_mult) for i in range(n)]
        self.widths = tuple(widths)
        bias = norm != "batch"  # the reference's use_bias: only instance norm keeps conv biases

        def down(i: int) -> nn.Sequential:  # level i = 0 … n − 1 (0-based)
            cin = in_channels if i == 0 else widths[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(cin, widths[i], 4, stride=2, padding=1, bias=bias))
            if 0 < i < n - 1:
                layers.append(norm_layer(norm, widths[i]))
            return nn.Sequential(*layers)

        def up(i: int) -> nn.Sequential:  # from level i's resolution to level i − 1's
            cin = widths[i] * (2 if skips and i < n - 1 else 1)
            if i == 0:
                return nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, out_channels, 4, stride=2, padding=1),
                                     nn.Tanh())
            layers: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(cin, widths[i - 1], 4, stride=2, padding=1,
                                                                     bias=bias), norm_layer(norm, widths[i - 1])]
            if dropout > 0 and 4 <= i <= n - 2:  # the reference's (levels − 5) 512→512 blocks
                layers.append(SliceDropout(dropout))
            return nn.Sequential(*layers)

        self.down = nn.ModuleList(down(i) for i in range(n))
        self.up = nn.ModuleList(up(i) for i in range(n))  # up[i] leaves level i; run from n − 1 to 0
        init_normal_(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The innermost code [B, widths[-1], H / 2^levels, W / 2^levels] (1×1 at the default levels)."""
        for block in self.down:
            x = block(x)
        return x

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """The up path from the innermost code alone (only without skips: with them the output needs every level)."""
        if self.skips:
            raise RuntimeError("a U-Net with skips decodes from every level's features: call forward(x)")
        h = code
        for i in range(self.levels - 1, -1, -1):
            h = self.up[i](h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.skips:
            return self.decode(self.encode(x))
        feats = []
        h = x
        for block in self.down:
            h = block(h)
            feats.append(h)
        h = self.up[-1](h)
        for i in range(self.levels - 2, -1, -1):
            h = self.up[i](torch.cat([F.leaky_relu(feats[i], 0.2), h], dim=1))
        return h


class ResnetBlock(nn.Module):
    """x + [reflect-pad, 3×3 conv, norm, ReLU, reflect-pad, 3×3 conv, norm](x)."""

    def __init__(self, dim: int, norm: str = "instance"):
        super().__init__()
        bias = norm != "batch"
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(norm, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ``resnet_9blocks`` generator (no dropout, the CycleGAN default). ``encode`` = the stem and the two
    downsamplings ([B, 4·ngf, H/4, W/4]), ``decode`` = the residual blocks and the upsampling half."""

    def __init__(self, in_channels: int, out_channels: int, *, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", n_down: int = 2):
        super().__init__()
        if n_blocks < 0 or n_down < 0:
            raise ValueError(f"n_blocks and n_down must be ≥ 0, got {n_blocks}, {n_down}")
        bias = norm != "batch"
        self.stride = 2**n_down
        enc: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                norm_layer(norm, ngf), nn.ReLU()]
        for i in range(n_down):
            c = ngf * 2**i
            enc += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_layer(norm, 2 * c), nn.ReLU()]
        dim = ngf * 2**n_down
        dec: list[nn.Module] = [ResnetBlock(dim, norm) for _ in range(n_blocks)]
        for i in range(n_down):
            c = ngf * 2 ** (n_down - i)
            dec += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                    norm_layer(norm, c // 2), nn.ReLU()]
        dec += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.latent_channels = dim
        init_normal_(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"input {tuple(x.shape[-2:])} must divide by {self.stride} (the generator's stride)")
        return self.encoder(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class ImagePool:
    """CycleGAN's history of generated images (Shrivastava et al.): until ``size`` images are stored every query
    image is stored and returned; afterwards each image is, with probability ½, swapped for a stored one at a random
    position (the stored one is returned, the new one takes its place), else returned as it is. ``size`` 0: no pool.

    Every draw uses ``generator`` (a CPU ``torch.Generator``, the trainer's): the same seed gives the same history.
    Stored images are detached fp32 copies on the query's device.
    """

    def __init__(self, size: int = 50):
        if size < 0:
            raise ValueError(f"pool size must be ≥ 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.size == 0:
            return images.detach().float()
        out = []
        for image in images.detach().float():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand((), generator=generator)) > 0.5:
                k = int(torch.randint(self.size, (), generator=generator))
                out.append(self.images[k].to(image.device))
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)


class LinearDecay:
    """LR factor of the reference's ``lambda`` policy: 1 for ``constant`` epochs, then a linear decay over
    ``decay`` epochs; with the scheduler stepped after each epoch, 0-based epoch e trains at
    1 − max(0, e + 1 − constant) / (decay + 1) (the last epoch at 1 / (decay + 1)). An object (not a lambda) so the
    scheduler's state dict pickles."""

    def __init__(self, constant: int, decay: int):
        self.constant, self.decay = max(0, int(constant)), max(0, int(decay))

    def __call__(self, epoch: int) -> float:
        return max(0.0, 1.0 - max(0, epoch + 1 - self.constant) / float(self.decay + 1))


def linear_decay_schedulers(optimizers: dict[str, torch.optim.Optimizer], epochs: int, decay_epochs: int
                            ) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One per-epoch :class:`LinearDecay` schedule per optimiser: ``epochs − decay_epochs`` constant epochs, then
    ``decay_epochs`` decaying ones (the reference's niter / niter_decay)."""
    return [torch.optim.lr_scheduler.LambdaLR(o, LinearDecay(epochs - decay_epochs, decay_epochs))
            for o in optimizers.values()]
