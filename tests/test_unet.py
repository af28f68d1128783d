"""The shared guided-diffusion-style UNet: layout facts from the official code and the reuse options."""

import pytest
import torch
import torch.nn.functional as F

from methods.blocks.unet import (AttentionBlock, BatchNorm32, ResBlock, UNet, _ChannelAffine, _PointwiseConv,
                                 _UpsampledConv3x3, inference_copy)

TINY = dict(model_channels=8, channel_mult=(1, 2, 4), num_res_blocks=1, attention_ds=(2,))


def test_paper_layout():
    net = UNet(in_channels=2)
    # levels 32, 32, 64, 96, 128 (base 32, mult 1,1,2,3,4): 4 down + 4 up resampling ResBlocks
    assert sum(isinstance(m, ResBlock) and m.down for m in net.modules()) == 4
    assert sum(isinstance(m, ResBlock) and m.up for m in net.modules()) == 4
    # attention after every ResBlock at ×4, ×8, ×16: encoder 2 per level, decoder 3 per level, plus the middle
    assert sum(isinstance(m, AttentionBlock) for m in net.modules()) == 3 * 2 + 3 * 3 + 1
    assert all(not isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert any(isinstance(m, BatchNorm32) for m in net.modules())
    assert net.stem.in_channels == 2 and net.out[-1].out_channels == 1
    # zero-initialised head: an untrained network predicts exactly 0
    x = torch.randn(2, 2, 128, 128)
    net.eval()
    with torch.no_grad():
        assert torch.count_nonzero(net(x)) == 0


def test_shapes_and_gradients_flow():
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=1, **TINY)
    torch.nn.init.normal_(net.out[-1].weight, std=0.01)  # undo the zero init so every layer gets a gradient
    x = torch.randn(3, 1, 64, 64)
    y = net(x)
    assert y.shape == (3, 1, 64, 64)
    y.square().mean().backward()
    assert net.stem.weight.grad is not None and net.stem.weight.grad.abs().sum() > 0


def test_time_embedding_hook():
    net = UNet(in_channels=1, norm="group", time_embedding=True, **TINY)
    x = torch.randn(2, 1, 32, 32)
    assert net(x, torch.tensor([1.0, 500.0])).shape == x.shape
    with pytest.raises(ValueError, match="time_embedding"):
        net(x)


def test_bf16_autocast_keeps_batchnorm_fp32():
    net = UNet(in_channels=1, **TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------------
# the inference copy's rewritten layers (issue 17): the same maps up to float rounding


def randomise_unet(net: UNet, g: torch.Generator, weight_std: float = 0.3, mean_std: float = 0.2) -> UNet:
    """Every weight and BatchNorm statistic drawn from ``g`` (zero-initialised convs too), so that each layer
    matters: weights N(0, weight_std²), running means N(0, mean_std²), running variances U(0.5, 1.5)."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(weight_std * torch.randn(p.shape, generator=g))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(mean_std * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return net


@pytest.mark.parametrize("size", [(5, 7), (8, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_upsampled_conv_is_the_conv_of_the_nearest_upsampled_input(size, bias):
    """conv3×3(up2(h)) as one stride-2 transposed conv, borders and odd sizes included."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=bias)
    h = torch.randn(2, 3, *size)
    want = conv(F.interpolate(h, scale_factor=2, mode="nearest"))
    got = _UpsampledConv3x3(conv)(h)
    assert got.shape == want.shape == (2, 4, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="3×3, padding-1"):
        _UpsampledConv3x3(torch.nn.Conv2d(3, 4, 3, padding=0))


def test_channel_affine_is_eval_batchnorm_and_keeps_the_dtype():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.normal_(), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    affine = _ChannelAffine(bn)
    with torch.no_grad():
        torch.testing.assert_close(affine(x), bn(x), atol=1e-6, rtol=1e-6)
        assert affine(x).is_contiguous(memory_format=torch.channels_last)
        assert affine(x.bfloat16()).dtype == torch.bfloat16


def test_pointwise_conv_is_the_1x1_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24, 8, 1)
    x = torch.randn(2, 24, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(_PointwiseConv(conv)(x), conv(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_PointwiseConv(conv)(x.contiguous()), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_inference_copy_equals_the_eval_network(norm):
    """Every rewrite at once (folded norms, affine norms, transposed up-convs, oneDNN 1×1 skips, 4-D attention,
    in-place activations) on a network with up and down blocks, concatenation skips and attention."""
    net = randomise_unet(UNet(in_channels=2, norm=norm, **TINY), torch.Generator().manual_seed(0)).eval()
    fast = inference_copy(net)
    kinds = {type(m).__name__ for m in fast.modules()}
    if norm == "batch":
        assert {"_UpsampledConv3x3", "_ChannelAffine", "_PointwiseConv"} <= kinds
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        want, got = net(x), fast(x)
    scale = float(want.abs().max())  # random weights give outputs of ~100: rounding is relative to that
    assert scale > 1.0 and float((got - want).abs().max()) <= 1e-4 * scale
    assert all(not p.requires_grad for p in fast.parameters())
