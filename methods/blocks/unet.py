"""Guided-diffusion-style UNet (Dhariwal & Nichol 2021 layout), as used by IterMask2 and MMCCD/Cyclic-UNet.

Facts from specs/itermask2.md §3 (official ``models/unet.py``, ``models/nn.py``): residual blocks with
BatchNorm (computed in fp32) → SiLU → conv3×3, second conv zero-initialised; resampling *inside* residual
blocks (2×2 average pooling down, ×2 nearest up) between the first norm+activation and the first conv;
single-head self-attention (1×1-conv qkv, zero-initialised output projection) after every residual block at
the listed downsampling factors; encoder ``num_res_blocks`` blocks per level, decoder ``num_res_blocks + 1``
with skip concatenation; output head norm → SiLU → zero-initialised conv3×3. The output is a direct image
prediction (no activation).

Reuse: width (``model_channels``), ``channel_mult``, in/out channels, norm (``batch`` for IterMask2,
``group`` for DDPM-style models, with ``norm_groups`` groups: 32 as in guided diffusion, 16 in MMCCD's
``models/nn.py``) and an optional timestep embedding (``time_embedding=True``: sinusoidal embedding → MLP →
scale-shift of the second norm) are configurable, so DDPM, DAE and Cyclic-UNet can share it. Without a
timestep embedding, guided diffusion's ``use_scale_shift_norm`` changes nothing (its out-layers are then
norm → SiLU → dropout → zero conv either way), which is what this block does.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: the residual branch starts as identity (guided-diffusion init)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class BatchNorm32(nn.BatchNorm2d):
    """BatchNorm2d that normalises in fp32 and returns the input dtype (official ``BatchNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm in fp32 (guided diffusion's ``normalization``), for DDPM-style reuse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def make_norm(kind: str, channels: int, groups: int = 32) -> nn.Module:
    if kind == "batch":
        return BatchNorm32(channels, eps=1e-5)
    if kind == "group":
        groups = math.gcd(groups, channels)  # `groups` (guided diffusion: 32), fewer for narrow test widths
        return GroupNorm32(groups, channels)
    raise ValueError(f"unknown norm {kind!r} (batch | group)")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps [B] (guided diffusion's recipe)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    """[norm → SiLU → resample → conv3×3] → [norm (± emb scale-shift) → SiLU → dropout → zero conv3×3] + skip."""

    def __init__(self, channels: int, out_channels: int | None = None, *, dropout: float = 0.0, norm: str = "batch",
                 emb_channels: int | None = None, up: bool = False, down: bool = False, norm_groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.in_norm = make_norm(norm, channels, norm_groups)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.up, self.down = up, down
        self.emb = None if emb_channels is None else nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_norm = make_norm(norm, out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.inplace = False  # set by ``inference_copy`` (no autograd): activations are overwritten, not copied
        self.in_conv_upsamples = False  # set by ``inference_copy``: in_conv is an _UpsampledConv3x3 (up blocks)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.in_norm(x), inplace=self.inplace)  # a norm's output is a new tensor
        if not self.in_conv_upsamples:
            h = self._resample(h)
        x = self._resample(x)
        h = self.in_conv(h)
        h = self.out_norm(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h, inplace=self.inplace)))  # a new tensor here too
        skip = self.skip(x)
        return h.add_(skip) if self.inplace and h.dtype == skip.dtype else skip + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual; qkv split per head as in the official (legacy) ordering."""

    def __init__(self, channels: int, num_heads: int = 1, norm: str = "batch", norm_groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = make_norm(norm, channels, norm_groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        self.spatial = False  # the 4-D path of ``inference_copy`` (same maths, other rounding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            return self._forward_spatial(x)
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # [B, 3C, T]
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, -1).split(ch, dim=1)  # legacy head-major layout
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # 1/sqrt(ch)
        a = a.transpose(1, 2).reshape(b, c, -1)
        return x + self.proj_out(a).reshape(b, c, hh, ww)

    def _forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """The same attention without flattening to [B, C, T]: on channels-last activations every reshape is a
        view (no layout copies), and SDPA gets the 4-D [B, heads, T, ch] inputs of its fused CPU kernel."""
        b, c, hh, ww = x.shape
        ch = c // self.num_heads
        qkv = F.conv2d(self.norm(x), self.qkv.weight[..., None], self.qkv.bias)  # [B, 3C, H, W]
        t = qkv.permute(0, 2, 3, 1).reshape(b, hh * ww, self.num_heads, 3, ch)  # legacy head-major channels
        q, k, v = (t[:, :, :, i].transpose(1, 2) for i in range(3))  # [B, heads, T, ch]
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return x + F.conv2d(a, self.proj_out.weight[..., None], self.proj_out.bias)


class _Stage(nn.ModuleList):
    """A sequence of ResBlocks / AttentionBlocks; ResBlocks get the optional embedding."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class UNet(nn.Module):
    """Guided-diffusion UNet; IterMask2 defaults (base 32, mult 1,1,2,3,4, attention at ×4, ×8, ×16, BatchNorm).

    ``attention_ds``: downsampling factors with attention (IterMask2: resolutions 32,16,8 at 128 px → 4, 8, 16).
    ``forward(x, t=None)``: ``t`` is only used when ``time_embedding=True``. ``norm_groups``: groups of
    ``norm="group"`` (at most; fewer where a width is not divisible), 32 by default, 16 for MMCCD/Cyclic-UNet.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, model_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 1, 2, 3, 4), num_res_blocks: int = 2,
                 attention_ds: Sequence[int] = (4, 8, 16), dropout: float = 0.1, num_heads: int = 1,
                 norm: str = "batch", time_embedding: bool = False, norm_groups: int = 32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.model_channels = model_channels
        self.time_embed = None
        emb_ch = None
        if time_embedding:
            emb_ch = 4 * model_channels
            self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        rb = dict(dropout=dropout, norm=norm, emb_channels=emb_ch, norm_groups=norm_groups)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.input_blocks = nn.ModuleList()
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, int(mult * model_channels), **rb)]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads, norm, norm_groups))
                self.input_blocks.append(_Stage(layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_Stage([ResBlock(ch, ch, down=True, **rb)]))
                skip_chans.append(ch)
                ds *= 2
        self.middle = _Stage([ResBlock(ch, ch, **rb), AttentionBlock(ch, num_heads, norm, norm_groups),
                              ResBlock(ch, ch, **rb)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), int(mult * model_channels), **rb)]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads, norm, norm_groups))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, ch, up=True, **rb))
                    ds //= 2
                self.output_blocks.append(_Stage(layers))
        self.out = nn.Sequential(make_norm(norm, ch, norm_groups), nn.SiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        emb = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this UNet was built with time_embedding=True: pass t")
            emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        h = self.stem(x)
        skips = [h]
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class _ChannelsLast(nn.Module):
    """Feeds the wrapped network channels-last input (its weights are channels-last too)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


def _foldable(norm: nn.Module) -> bool:
    """An eval-mode BatchNorm with running statistics and an affine part is a per-channel map ``a·x + s``."""
    return isinstance(norm, nn.BatchNorm2d) and norm.affine and norm.running_var is not None


def _batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``a·x + s`` per channel (running statistics, fp32)."""
    a = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    return a, bn.bias.float() - bn.running_mean.float() * a


class _UpsampledConv3x3(nn.Module):
    """``conv(nearest_upsample_2x(h))`` of a 3×3, padding-1 ``conv``, as one stride-2 transposed conv of ``h``.

    Why: an up block's first conv ran on the ×2-upsampled activation, whose 2×2 pixel blocks are copies, so
    most of its products were repeats. Output row 2i sees rows i−1 (kernel row 0) and i (rows 1+2) of ``h``,
    row 2i+1 sees rows i (rows 0+1) and i+1 (row 2), and the same for columns: that is a 4×4, stride-2,
    padding-1 transposed conv whose taps are those row/column sums (2.25× fewer products, no 4×-size
    upsampled tensor; same maths, other float rounding). Zero padding of the upsampled image is zero padding
    of ``h``.
    """

    # row k of the 4×4 kernel (input row r → output row 2r + k − 1) sums these rows of the 3×3 kernel
    _TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError(f"_UpsampledConv3x3 needs a 3×3, padding-1, stride-1 conv, got {conv}")
        w = conv.weight.detach()
        taps = self._TAPS.to(w)
        weight = torch.einsum("ka,oiab,lb->iokl", taps, w, taps)  # [in, out, 4, 4], conv_transpose2d's layout
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(h, self.weight, self.bias, stride=2, padding=1)


class _ChannelAffine(nn.Module):
    """An eval-mode BatchNorm that no linear layer could absorb, as one ``shift + x·scale`` (``torch.addcmul``).

    Why: PyTorch's CPU batch-norm kernel on channels-last activations whose width is not a multiple of 16 (the
    decoder's concatenations) takes ~2× the time of one fused multiply-add pass. Computed in fp32 and returned
    in the input's dtype, as ``BatchNorm32`` does (same maths, other float rounding).
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        a, s = _batchnorm_affine(bn)
        self.scale = nn.Parameter(a.view(1, -1, 1, 1), requires_grad=False)
        self.shift = nn.Parameter(s.view(1, -1, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale).to(x.dtype)


class _PointwiseConv(nn.Module):
    """A 1×1 conv through oneDNN on the CPU (``torch.mkldnn_convolution``), elsewhere ``F.conv2d``.

    Why: for float32 1×1 convs PyTorch's CPU dispatch skips oneDNN for a generic GEMM, which on the narrow
    channels-last 128-px activations of the CPU profiles is ~3× slower (the same sums, other float rounding).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            return torch.mkldnn_convolution(x, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1)
        return F.conv2d(x, self.weight, self.bias)


@torch.no_grad()
def inference_copy(net: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``net`` for many scoring passes; ``copy(x)`` equals ``net.eval()(x)`` up to
    float rounding.

    Why: the narrow CPU-profile UNets spent most of an NCHW forward in oneDNN reordering activations to and from
    its own layouts, and in the unfused 3-D attention. The copy keeps weights and activations channels-last
    (oneDNN's native layout, cuDNN's preferred one under bf16), runs every :class:`AttentionBlock` on its 4-D
    path (fused SDPA kernel) and folds each BatchNorm that directly follows or precedes a linear layer (a
    ResBlock's norm after its first conv, an attention block's norm before qkv) into that layer, since eval-mode
    BatchNorm is a per-channel affine map; the other BatchNorms become one multiply-add (:class:`_ChannelAffine`);
    GroupNorm depends on the sample and stays. ResBlocks apply SiLU and the residual sum in place: fewer fresh
    multi-MB activations, whose page faults cost a CPU forward ~10 %. An up block's first conv runs at the low
    resolution (:class:`_UpsampledConv3x3`) and 1×1 skip convs go through oneDNN (:class:`_PointwiseConv`):
    together with the affine norms, 1.09× per CPU forward of the narrow 128-px UNet (issue 17).
    """
    out = copy.deepcopy(net).eval().requires_grad_(False)
    for module in out.modules():
        if isinstance(module, UNet) and _foldable(module.out[0]):  # the head: norm → SiLU → conv
            module.out[0], module.out[1] = _ChannelAffine(module.out[0]), nn.SiLU(inplace=True)
        if isinstance(module, ResBlock):
            module.inplace = True
            if _foldable(module.out_norm):
                a, s = _batchnorm_affine(module.out_norm)  # norm(conv(h)) = (a·W) h + (a·b + s)
                conv = module.in_conv
                conv.bias.copy_(conv.bias * a + s)
                conv.weight.mul_(a.view(-1, 1, 1, 1))
                module.out_norm = nn.Identity()
            if _foldable(module.in_norm):
                module.in_norm = _ChannelAffine(module.in_norm)
            if module.up:
                module.in_conv, module.in_conv_upsamples = _UpsampledConv3x3(module.in_conv), True
            if isinstance(module.skip, nn.Conv2d):
                module.skip = _PointwiseConv(module.skip)
        if isinstance(module, AttentionBlock):
            module.spatial = True
            if _foldable(module.norm):
                a, s = _batchnorm_affine(module.norm)  # qkv(a·x + s) = (W·diag(a)) x + (W s + b)
                module.qkv.bias.add_(module.qkv.weight[..., 0] @ s)
                module.qkv.weight.mul_(a.view(1, -1, 1))
                module.norm = nn.Identity()
    return _ChannelsLast(out.to(memory_format=torch.channels_last))
