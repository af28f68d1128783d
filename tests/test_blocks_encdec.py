"""The one skip-free encoder–decoder: documented DRAEM / ProxyAno layouts, shapes, no skip path, bf16 autocast."""

import inspect

import pytest
import torch
from torch import nn

from methods.blocks.encdec import EncoderDecoder


def _convs(module: nn.Module) -> list[tuple[int, int, int]]:
    return [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_draem_preset_widths_and_init():
    # the layout is linear in b: check it at b = 4 and that the preset's default b is DRAEM's 128 (a full-width
    # build allocates 69 M parameters for nothing)
    assert inspect.signature(EncoderDecoder.draem).parameters["base_width"].default == 128
    b = 4
    net = EncoderDecoder.draem(1, base_width=b)
    enc = [(1, b), (b, b), (b, 2 * b), (2 * b, 2 * b), (2 * b, 4 * b), (4 * b, 4 * b), (4 * b, 8 * b), (8 * b, 8 * b),
           (8 * b, 8 * b), (8 * b, 8 * b)]
    assert _convs(net.encoder) == [(i, o, 3) for i, o in enc]
    dec = []
    for cin, cout in ((8 * b, 4 * b), (4 * b, 2 * b), (2 * b, b), (b, b)):  # up_k conv + db_k (2 convs)
        dec += [(cin, cin, 3), (cin, cin, 3), (cin, cout, 3)]
    assert _convs(net.decoder) == dec + [(b, 1, 3)]  # final 3×3 conv to C
    assert net.stride == 16 and net.encode(torch.randn(1, 1, 32, 32)).shape == (1, 8 * b, 2, 2)  # 4 max-pools
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 4 and all(u.mode == "bilinear" and u.align_corners for u in ups)
    assert not net.decoder.sigmoid and net.latent_channels == 8 * b
    small = EncoderDecoder.draem(1, base_width=16)
    w = torch.cat([m.weight.flatten() for m in small.modules() if isinstance(m, nn.Conv2d)])
    assert w.std().item() == pytest.approx(0.02, rel=0.02)  # DRAEM's N(0, 0.02) init


def test_proxyano_preset_layout():
    assert inspect.signature(EncoderDecoder.proxyano).parameters["base_width"].default == 64
    net = EncoderDecoder.proxyano(1, base_width=4)  # widths 64-128-256-512 at the default b = 64, 1/16 here
    assert _convs(net.encoder) == [(1, 4, 3), (4, 4, 3), (4, 8, 3), (8, 8, 3), (8, 16, 3),
                                   (16, 16, 3), (16, 32, 3), (32, 32, 3), (32, 64, 1)]  # 1×1 conv to d = 64
    assert _convs(net.decoder) == [(64, 32, 3), (32, 32, 3), (32, 16, 3), (16, 16, 3), (16, 8, 3),
                                   (8, 8, 3), (8, 4, 3), (4, 4, 3), (4, 1, 1)]
    assert net.stride == 8 and net.latent_channels == 64
    deeper = EncoderDecoder.proxyano(1, base_width=4, width_mults=(1, 2, 4, 8, 8))  # O1: 16×16 latent at 256 px
    assert deeper.stride == 16 and deeper.encode(torch.randn(1, 1, 128, 128)).shape == (1, 64, 8, 8)


@pytest.mark.parametrize("preset", ["draem", "proxyano"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(preset, channels):
    net = getattr(EncoderDecoder, preset)(channels, base_width=4)
    stride, lat = (16, 32) if preset == "draem" else (8, 64)
    for size in (128, 256):
        y, z = net(torch.randn(1, channels, size, size), return_latent=True)
        assert y.shape == (1, channels, size, size)
        assert z.shape == (1, lat, size // stride, size // stride)
    assert getattr(EncoderDecoder, preset)(channels, 2, base_width=4)(torch.randn(1, channels, 128, 128)).shape[1] == 2


def test_no_skip_path_and_latent_hooks():
    torch.manual_seed(0)
    net = EncoderDecoder.proxyano(1, base_width=4).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        z = net.encode(x)
        # the output is a function of z alone, so a memory that replaces z between encode and decode sees everything
        assert torch.equal(net.decode(z), net(x))
    sig = EncoderDecoder.proxyano(1, base_width=4, output_activation="sigmoid")
    y = sig(x)
    assert ((y > 0) & (y < 1)).all()
    with pytest.raises(ValueError, match="divide"):
        net(torch.randn(1, 1, 60, 60))


def test_gradients_and_bf16_autocast():
    for net in (EncoderDecoder.draem(1, base_width=4), EncoderDecoder.proxyano(1, base_width=4)):
        x = torch.randn(2, 1, 32, 32)
        net(x).square().mean().backward()
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        assert first.weight.grad.abs().sum() > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, z = net(x, return_latent=True)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all() and torch.isfinite(z.float()).all()
