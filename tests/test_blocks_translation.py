"""methods/blocks/translation.py: pix2pix's U-Net (with and without skips) and CycleGAN's ResNet generator against
the reference layouts, per-slice seeded dropout, batch statistics at test time, the image pool and the LR decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods.blocks.translation import (ImagePool, LinearDecay, ResnetBlock, ResnetGenerator, SliceDropout,
                                        UNetGenerator, batch_statistics, latent_distance, linear_decay_schedulers,
                                        seeded_dropout, unet_levels)


def _layers(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# -- U-Net ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,levels", [(128, 7), (256, 8)])
@pytest.mark.parametrize("skips", [True, False])
def test_unet_layout(size, levels, skips):
    """unet_128 / unet_256: 4×4 stride-2 convs to 1×1, widths 64…512, norm on every down conv but the outermost and
    the innermost, dropout after the (levels − 5) 512→512 up blocks next to the innermost one, tanh out."""
    g = UNetGenerator(1, 1, size, skips=skips)
    assert g.levels == levels == unet_levels(size)
    convs = _layers(g, nn.Conv2d)
    assert [c.out_channels for c in convs] == [64, 128, 256, 512] + [512] * (levels - 4)
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.bias is None for c in convs)  # no bias before BN
    deconvs = _layers(g, nn.ConvTranspose2d)  # up[0] (outermost) first
    assert [d.out_channels for d in deconvs] == [1, 64, 128, 256] + [512] * (levels - 4)
    mult = 2 if skips else 1  # with skips every up conv but the innermost one sees [skip, up]
    assert [d.in_channels for d in deconvs] == [mult * c.out_channels for c in convs[:-1]] + [512]
    assert deconvs[0].bias is not None and all(d.bias is None for d in deconvs[1:])
    assert len(_layers(g, nn.BatchNorm2d)) == (levels - 2) + (levels - 1)
    leaky = _layers(g, nn.LeakyReLU)
    assert all(a.negative_slope == 0.2 for a in leaky) and len(leaky) == levels - 1
    drops = [i for i, block in enumerate(g.up) if any(isinstance(m, SliceDropout) for m in block)]
    assert drops == list(range(4, levels - 1)) and len(drops) == levels - 5  # 3 at 256 px, 2 at 128 px
    assert all(m.p == 0.5 for m in _layers(g, SliceDropout))
    g.eval()
    x = torch.rand(2, 1, size, size) * 2 - 1
    with torch.no_grad():
        y, code = g(x), g.encode(x)
    assert y.shape == x.shape and y.abs().max() <= 1 and code.shape == (2, 512, 1, 1)


def test_unet_and_patchgan_parameter_counts_match_the_reference():
    """The reference printed 54.408 M (G, unet_256) and 2.765 M (D, basic on concat(input, output)) for one-channel
    pix2pix at 256 px (junyanz/pytorch-CycleGAN-and-pix2pix issue #1152); 3-channel unet_256 prints 54.414 M."""
    from methods.blocks.gan import PatchDiscriminator

    assert round(_params(UNetGenerator(1, 1, 256)) / 1e6, 3) == 54.408
    assert round(_params(PatchDiscriminator(2)) / 1e6, 3) == 2.765
    assert round(_params(UNetGenerator(3, 3, 256)) / 1e6, 3) == 54.414


def test_unet_without_skips_is_an_encoder_decoder():
    """No skips: the output is a function of the 1×1 code only; with skips the code does not determine it."""
    torch.manual_seed(0)
    plain, unet = UNetGenerator(1, 1, 64, ngf=4, skips=False).eval(), UNetGenerator(1, 1, 64, ngf=4).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain.decode(plain.encode(x)))
    with pytest.raises(RuntimeError, match="skips"):
        unet.decode(unet.encode(x))
    # gradient of the output w.r.t. the input: only through the code without skips, so a rank ≤ code-size map
    x1 = x[:1].clone().requires_grad_(True)
    for net, full in ((plain, False), (unet, True)):
        (g,) = torch.autograd.grad(net(x1)[0, 0, 32, 32], x1)
        near = g[0, 0, 28:37, 28:37].abs().sum() / g.abs().sum()
        assert (near > 0.5) == full  # a skip makes the output pixel depend mostly on nearby input pixels


def test_unet_refuses_sizes_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="power-of-2"):
        UNetGenerator(1, 1, 96)
    with pytest.raises(ValueError, match="levels"):
        UNetGenerator(1, 1, 64, levels=7)


# -- per-slice dropout and batch statistics --------------------------------------------------------------------
def test_slice_dropout_is_seeded_per_slice():
    d = SliceDropout(0.5).eval()
    x = torch.ones(3, 64, 4, 4)
    assert torch.equal(d(x), x)  # eval without generators: off
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    with seeded_dropout(d, gens([1, 2, 3])):
        batch = d(x)
    assert set(batch.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept units scaled by 1 / (1 − p)
    assert 0.35 < float((batch == 0).float().mean()) < 0.65
    with seeded_dropout(d, gens([3])):
        alone = d(x[:1])
    torch.testing.assert_close(alone[0], batch[2])  # a slice's mask does not depend on its batch
    assert not torch.equal(batch[0], batch[1])
    assert d.generators is None  # the context restores
    with seeded_dropout(d, gens([1])), pytest.raises(ValueError, match="generators"):
        d(x)
    d.train()
    torch.manual_seed(0)
    assert 0.35 < float((d(x) == 0).float().mean()) < 0.65


def test_batch_statistics_normalise_each_batch_without_touching_running_stats():
    torch.manual_seed(0)
    g = UNetGenerator(1, 1, 32, ngf=4).eval()
    with torch.no_grad():
        g.train()(torch.rand(4, 1, 32, 32))  # some running statistics
    g.eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad(), batch_statistics(g):
        got = g(x)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert not any(m.training for m in g.modules())  # modes restored
    ref = UNetGenerator(1, 1, 32, ngf=4)
    ref.load_state_dict(before)
    ref.train()
    for m in ref.modules():  # training-mode BN, no dropout: the reference's test-time BN on one image
        if isinstance(m, SliceDropout):
            m.eval()
    with torch.no_grad():
        torch.testing.assert_close(got, ref(x))
        assert not torch.allclose(got, g(x))  # running statistics give another output


# -- ResNet generator ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [128, 256])
def test_resnet_generator_layout(size):
    g = ResnetGenerator(1, 1)
    assert len(_layers(g, ResnetBlock)) == 9 and not _layers(g, nn.Dropout) and not _layers(g, SliceDropout)
    norms = _layers(g, nn.InstanceNorm2d)
    assert norms and all(not n.affine and not n.track_running_stats for n in norms)
    assert len(_layers(g, nn.ReflectionPad2d)) == 2 + 2 * 9
    convs = _layers(g, nn.Conv2d)
    assert convs[0].kernel_size == (7, 7) and convs[-1].kernel_size == (7, 7) and all(c.bias is not None for c in convs)
    assert [c.out_channels for c in convs[:3]] == [64, 128, 256]
    assert [d.out_channels for d in _layers(g, nn.ConvTranspose2d)] == [128, 64]
    x = torch.rand(1, 1, size, size) * 2 - 1
    with torch.no_grad():
        assert g.encode(x).shape == (1, 256, size // 4, size // 4)
        y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    with pytest.raises(ValueError, match="divide by 4"):
        g.encode(torch.rand(1, 1, 30, 30))


def test_resnet_parameter_count_matches_the_reference():
    """The reference prints 11.378 M parameters for resnet_9blocks with 3-channel images."""
    assert round(_params(ResnetGenerator(3, 3)) / 1e6, 3) == 11.378


# -- image pool ----------------------------------------------------------------------------------------------
def _query_all(seed: int, batches: list[torch.Tensor], size: int = 3) -> list[torch.Tensor]:
    pool, gen = ImagePool(size), torch.Generator().manual_seed(seed)
    return [pool.query(b, gen) for b in batches]


def test_image_pool_fills_then_swaps_with_probability_half():
    batches = [torch.full((2, 1, 2, 2), float(i)) for i in range(40)]  # image value = the step it was made at
    out = _query_all(0, batches)
    torch.testing.assert_close(out[0], batches[0])  # filling: the query comes back
    assert torch.equal(out[1][0], batches[1][0])  # the third image still fills the pool of 3
    values = torch.stack([o[:, 0, 0, 0] for o in out[2:]])  # [steps, 2]
    steps = torch.arange(2, 40, dtype=torch.float32)[:, None].expand_as(values)
    old = values < steps
    assert (values <= steps).all()  # never an image from the future
    assert 0.3 < float(old.float().mean()) < 0.7  # about half the images come from the history
    assert all(torch.equal(a, b) for a, b in zip(out, _query_all(0, batches)))  # seeded: same history
    assert any(not torch.equal(a, b) for a, b in zip(out, _query_all(1, batches)))


def test_image_pool_stores_detached_copies_and_size_zero_passes_through():
    fake = torch.rand(2, 1, 4, 4, requires_grad=True) * 1
    out = ImagePool(0).query(fake)
    assert not out.requires_grad and torch.equal(out, fake.detach())
    pool = ImagePool(5)
    out = pool.query(fake, torch.Generator().manual_seed(0))
    assert not out.requires_grad and len(pool) == 2 and all(not t.requires_grad for t in pool.images)
    with pytest.raises(ValueError):
        ImagePool(-1)


# -- LR decay and the latent score -------------------------------------------------------------------------------
def test_linear_decay_matches_the_reference_lambda_rule():
    """niter = niter_decay = 100, epoch_count 1, stepped after each epoch: 100 epochs at lr, then linear to lr/101."""
    f = LinearDecay(100, 100)
    assert [f(e) for e in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert f(100) == pytest.approx(1 - 1 / 101) and f(199) == pytest.approx(1 / 101)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=2e-4)
    (sched,) = linear_decay_schedulers({"g": opt}, epochs=4, decay_epochs=2)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])


def test_latent_distance_is_the_frobenius_norm_per_image():
    a, b = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    b[0] = 1.0  # 12 elements differ by 1 → √12
    b[1, 0, 0, 0] = -2.0
    torch.testing.assert_close(latent_distance(a, b), torch.tensor([12 ** 0.5, 2.0]))
