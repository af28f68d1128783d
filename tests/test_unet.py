"""The shared guided-diffusion-style UNet: layout facts from the official code and the reuse options."""

import pytest
import torch

from methods.blocks.unet import AttentionBlock, BatchNorm32, ResBlock, UNet

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
