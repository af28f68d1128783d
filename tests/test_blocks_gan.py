"""Shared GAN losses (hand-computed values) and the one PatchDiscriminator (70 px receptive field, shapes)."""

import math

import pytest
import torch

from methods.blocks.gan import (GANLoss, PatchDiscriminator, feature_matching_loss, gradient_penalty,
                                init_normal_)


def sp(x: float) -> float:
    return math.log1p(math.exp(x))  # softplus


def test_bce_values():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -1.0])
    d_real = (sp(0.0) + sp(-2.0)) / 2  # BCE(real, 1) = softplus(−x)
    d_fake = (sp(0.0) + sp(-1.0)) / 2  # BCE(fake, 0) = softplus(x)
    assert GANLoss("bce").discriminator_loss(real, fake).item() == pytest.approx(0.5 * (d_real + d_fake), rel=1e-6)
    assert GANLoss("bce", d_factor=1.0).discriminator_loss(real, fake).item() == pytest.approx(d_real + d_fake,
                                                                                                  rel=1e-6)
    # non-saturating G loss: softplus(−D(G(z)))
    assert GANLoss("bce").generator_loss(fake).item() == pytest.approx((sp(0.0) + sp(1.0)) / 2, rel=1e-6)


def test_lsgan_values():
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5])
    loss = GANLoss("lsgan")
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.125 + 0.125))
    assert loss.generator_loss(fake).item() == pytest.approx((1.0 + 0.25) / 2)


def test_wgan_values_ignore_d_factor():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    loss = GANLoss("wgan", d_factor=0.5)
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(-1.0 - 2.0)
    assert loss.generator_loss(fake).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown GAN mode"):
        GANLoss("hinge")


def test_losses_are_fp32_under_bf16():
    x = torch.randn(2, 1, 4, 4).bfloat16()
    for mode in ("bce", "lsgan", "wgan"):
        assert GANLoss(mode).discriminator_loss(x, x).dtype == torch.float32
        assert GANLoss(mode).generator_loss(x).dtype == torch.float32


def _linear_critic(scale: float):
    w = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    w = scale * w / w.norm()
    return lambda x: (x * w).flatten(1).sum(1)


def test_gradient_penalty_linear_critics():
    real, fake = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    # unit-norm gradient everywhere: no penalty; gradient norm 3: λ (3 − 1)² = 40 whatever α is
    assert gradient_penalty(_linear_critic(1.0), real, fake).item() == pytest.approx(0.0, abs=1e-8)
    assert gradient_penalty(_linear_critic(3.0), real, fake).item() == pytest.approx(40.0, rel=1e-5)
    assert GANLoss("wgan", gp_weight=1.0).gradient_penalty(_linear_critic(3.0), real, fake).item() == pytest.approx(
        4.0, rel=1e-5)


def test_gradient_penalty_seeded_fp32_and_differentiable():
    torch.manual_seed(0)
    critic = PatchDiscriminator(1, ndf=4, n_layers=2, norm="none")
    real, fake = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    # a critic whose gradient norm depends on α (‖∇ Σx²‖ = 2‖x̃‖): the penalty is a function of the seed
    quad = lambda x: x.square().flatten(1).sum(1)  # noqa: E731
    a = gradient_penalty(quad, real, fake, generator=torch.Generator().manual_seed(5))
    b = gradient_penalty(quad, real, fake, generator=torch.Generator().manual_seed(5))
    c = gradient_penalty(quad, real, fake, generator=torch.Generator().manual_seed(6))
    assert a.item() == b.item() and a.item() != c.item()
    # computed in fp32 even inside bf16 autocast: identical to the plain fp32 value
    ref = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(2))
    assert gp.dtype == torch.float32 and gp.item() == pytest.approx(ref.item(), rel=1e-6)
    gp.backward()  # create_graph=True: the penalty trains the critic
    assert critic.blocks[0][0].weight.grad.abs().sum() > 0


def test_feature_matching_values():
    real, fake = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    assert feature_matching_loss(real, fake).item() == pytest.approx(7.5)  # (1+4+9+16)/4
    assert feature_matching_loss(real, fake, norm="l1").item() == pytest.approx(2.5)
    assert feature_matching_loss(real, fake, batch_mean=True).item() == pytest.approx(6.5)  # means (2, 3)
    assert feature_matching_loss(real, fake, norm="l1", per_sample=True, reduction="sum").tolist() == [3.0, 7.0]
    assert feature_matching_loss(real, fake, per_sample=True).tolist() == [2.5, 12.5]
    assert feature_matching_loss([real, real], [fake, real]).item() == pytest.approx(7.5)  # layers summed
    with pytest.raises(ValueError):
        feature_matching_loss(real, fake, batch_mean=True, per_sample=True)


def _receptive_extent(net: PatchDiscriminator, size: int) -> tuple[int, int]:
    net = net.double().eval()
    x = torch.randn(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = net(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    g = x.grad[0, 0].abs()
    rows, cols = torch.nonzero(g.sum(1)).flatten(), torch.nonzero(g.sum(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_patchgan_receptive_field():
    torch.manual_seed(0)
    assert _receptive_extent(PatchDiscriminator(1, ndf=8, n_layers=3), 256) == (70, 70)
    assert _receptive_extent(PatchDiscriminator(1, ndf=8, n_layers=2), 128) == (34, 34)
    assert _receptive_extent(PatchDiscriminator(1, ndf=8, n_layers=1), 64) == (16, 16)


def test_patchgan_layout_shapes_and_features():
    d = PatchDiscriminator(2)  # conditional pix2pix D: concat(input, output)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (2, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1), (512, 1, 1)]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert d(torch.randn(2, 2, 128, 128)).shape == (2, 1, 14, 14)
    logits, feats = d(torch.randn(2, 2, 256, 256), return_features=True)
    assert logits.shape == (2, 1, 30, 30)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 128, 128), (128, 64, 64), (256, 32, 32), (512, 31, 31)]
    inst = PatchDiscriminator(1, ndf=8, norm="instance")
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in inst.modules())
    bare = PatchDiscriminator(1, ndf=8, norm="none", spectral_norm=True)  # ProxyAno's P-Net D
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in bare.modules())
    assert all(hasattr(m, "parametrizations") for m in bare.modules() if isinstance(m, torch.nn.Conv2d))
    assert bare(torch.randn(1, 1, 64, 64)).shape == (1, 1, 6, 6)


def test_image_level_configuration():
    for size in (128, 256):
        d = PatchDiscriminator.image(1, size, ndf=8)
        logits, feats = d(torch.randn(2, 1, size, size), return_features=True)
        assert logits.shape == (2, 1, 1, 1)
        assert feats[-1].shape[1:] == (d.feature_channels, 4, 4)
        assert d.feature_channels == 8 * 2 ** (d.n_layers - 1)  # GANomaly: widths keep doubling
    with pytest.raises(ValueError):
        PatchDiscriminator.image(1, 100)


def test_init_normal_and_bf16_forward():
    d = init_normal_(PatchDiscriminator(1))
    w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, torch.nn.Conv2d)])
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    bn = torch.cat([m.weight for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01)
    small = PatchDiscriminator(1, ndf=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = small(torch.randn(2, 1, 64, 64), return_features=True)
        loss = GANLoss("lsgan").generator_loss(logits)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all() and torch.isfinite(loss)
