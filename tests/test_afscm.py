"""The AFSC module (methods/blocks/afscm.py): identity with all-ones masks, keep ratio after binarisation,
conjugate symmetry (real output), save / load of the binary masks, the sparsity term and the two-stage schedule."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from methods.blocks.afscm import (BINARY_STAGE, SOFT_STAGE, AFSCmConfig, AFSCmHost, CompressedInput,
                                  FourierCompression, conjugate_pairs, with_afscm)


def _image(h=16, w=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, h, w, generator=g, dtype=dtype)


@pytest.mark.parametrize("h,w", [(16, 16), (8, 12), (7, 9)])
def test_pairs_tie_each_frequency_to_its_negative(h, w):
    index, mult = conjugate_pairs(h, w)
    grid = index.view(h, w)
    for i in range(h):
        for j in range(w):
            assert grid[i, j] == grid[(-i) % h, (-j) % w]
    assert int(mult.sum()) == h * w
    self_conjugate = sum(1 for i in range(h) for j in range(w) if (i, j) == ((-i) % h, (-j) % w))
    assert int((mult == 1).sum()) == self_conjugate


def test_all_ones_masks_return_the_input():
    m = FourierCompression(16, 16, mode="learned")
    m._freeze(torch.ones_like(m.binary))
    m.binary.fill_(1.0)  # every coefficient, beyond the keep ratio
    m.eval()
    x = _image()
    assert torch.allclose(m(x), x, atol=1e-6)
    x64 = _image(dtype=torch.float64)
    spectrum = torch.fft.fft2(x64)
    back = torch.fft.ifft2(torch.polar(spectrum.abs(), spectrum.angle())).real
    assert torch.allclose(back, x64, atol=1e-12)  # the recombination convention (+i, atan2) itself is exact


def test_phase_mask_zero_keeps_amplitude_and_amplitude_mask_zero_removes():
    m = FourierCompression(8, 8, mode="learned").eval()
    m.frozen.fill_(True)
    m.binary[0].fill_(1.0)
    m.binary[1].fill_(0.0)  # all phases set to 0: every coefficient real and positive
    x = _image(8, 8)
    out = m(x)
    expected = torch.fft.ifft2(torch.fft.fft2(x).abs()).real
    assert torch.allclose(out, expected, atol=1e-6)
    m.binary[0].fill_(0.0)
    assert torch.count_nonzero(m(x)) == 0


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.123])
def test_binarised_masks_keep_s_of_the_coefficients_within_one(keep):
    torch.manual_seed(1)
    m = FourierCompression(16, 16, mode="learned", keep=keep)
    m.binarise()
    target = math.floor(keep * 256)
    kept = (m.full_masks(m.binary) > 0).flatten(1).sum(1)
    assert all(target - 1 <= int(k) <= target for k in kept)
    assert torch.allclose(m.kept_fraction(), kept.float() / 256)
    # the kept pairs are those of highest probability
    p = m.probabilities().detach()
    for row in range(2):
        assert p[row][m.binary[row] > 0].min() >= p[row][m.binary[row] == 0].max()


def test_random_mode_is_frozen_at_the_same_sparsity():
    torch.manual_seed(3)
    m = FourierCompression(16, 16, mode="random", keep=0.5)
    assert bool(m.frozen) and m.logits is None
    assert all(127 <= int(k) <= 128 for k in (m.full_masks(m.binary) > 0).flatten(1).sum(1))
    torch.manual_seed(4)
    other = FourierCompression(16, 16, mode="random", keep=0.5)
    assert not torch.equal(m.binary, other.binary)


def test_masks_are_conjugate_symmetric_so_the_output_is_real():
    torch.manual_seed(0)
    m = FourierCompression(16, 16, mode="learned")
    full = m.full_masks()  # a relaxed sample
    assert torch.equal(full, torch.roll(torch.flip(full, (-2, -1)), shifts=(1, 1), dims=(-2, -1)))
    x = _image(dtype=torch.float64)
    spectrum = torch.fft.fft2(x)
    masked = torch.polar(full[0].double() * spectrum.abs(), full[1].double() * spectrum.angle()).detach()
    partner = torch.roll(torch.flip(masked, (-2, -1)), shifts=(1, 1), dims=(-2, -1))
    _, mult = conjugate_pairs(16, 16)
    self_conjugate = (mult[conjugate_pairs(16, 16)[0]] == 1).view(16, 16)
    assert torch.allclose(masked[..., ~self_conjugate], partner[..., ~self_conjugate].conj(), atol=1e-12)
    # the phase of a real negative self-conjugate bin (π) times a mask value is not real: Re drops exactly that
    masked[..., self_conjugate] = masked[..., self_conjugate].real.to(masked.dtype)
    out = torch.fft.ifft2(masked)
    assert out.imag.abs().max() < 1e-12
    assert torch.allclose(out.real, torch.fft.ifft2(torch.polar(full[0].double() * spectrum.abs(),
                                                                full[1].double() * spectrum.angle())).real)


def test_relaxed_masks_carry_gradients_and_the_sparsity_term():
    torch.manual_seed(0)
    m = FourierCompression(16, 16, mode="learned", delta=1e-3).train()
    y = m(_image())
    assert m.logits.grad is None
    (y.square().mean() + m.penalty()).backward()
    assert m.logits.grad is not None and torch.isfinite(m.logits.grad).all()
    full = m.full_masks(m.masks()).detach()
    assert 0.3 < float(full.mean()) < 0.7  # p ~ U(0, 1) at init: the relaxed masks average about one half
    assert float(m.penalty().detach()) == pytest.approx(1e-3 * float(m.last_sparsity.detach()), rel=1e-6)


def test_eval_before_binarisation_uses_the_current_top_pairs_without_freezing():
    torch.manual_seed(0)
    m = FourierCompression(8, 8, mode="learned").eval()
    x = _image(8, 8)
    y = m(x)
    assert not bool(m.frozen) and m.last_sparsity is not None
    m.binarise()
    assert torch.equal(m(x), y)


def test_binary_masks_survive_save_and_load():
    torch.manual_seed(0)
    net = CompressedInput(FourierCompression(16, 16, mode="learned", keep=0.5), nn.Identity())
    net.compression.binarise()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    torch.manual_seed(99)
    fresh = CompressedInput(FourierCompression(16, 16, mode="learned", keep=0.5), nn.Identity())
    assert not bool(fresh.compression.frozen)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert bool(fresh.compression.frozen)
    assert torch.equal(fresh.compression.binary, net.compression.binary)
    x = _image()
    assert torch.equal(fresh.eval()(x), net.eval()(x))


def test_fft_stays_fp32_under_bf16_autocast():
    m = FourierCompression(8, 8, mode="random")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(_image(8, 8).bfloat16())
    assert y.dtype == torch.float32


def test_with_afscm_is_the_identity_when_off():
    from benchmark.contract import DataSpec

    net = nn.Conv2d(1, 1, 3, padding=1)
    data = DataSpec(image_size=16, channels=1)
    assert with_afscm(net, AFSCmConfig(), data) is net
    wrapped = with_afscm(net, AFSCmConfig(afscm="learned", afscm_keep=0.9), data)
    assert isinstance(wrapped, CompressedInput) and wrapped.compression.keep == 0.9
    names = {n for n, _ in wrapped.named_parameters()}
    assert "compression.logits" in names and "net.weight" in names  # one optimiser trains both
    with pytest.raises(ValueError, match="afscm must be one of"):
        with_afscm(net, AFSCmConfig(afscm="sometimes"), data)


class _Base:
    def stages(self):
        from benchmark.trainer import Stage
        return [Stage("train")]

    def on_stage_end(self, step):
        self.ended = getattr(self, "ended", []) + [step.stage]


class _Host(AFSCmHost, _Base):
    name = "host"

    def __init__(self, mode, epochs):
        self.config = AFSCmConfig(afscm=mode, epochs=epochs)
        self.net = with_afscm(nn.Identity(), self.config, type("D", (), {"image_size": 8})()) \
            if mode != "off" else nn.Identity()

    def networks(self):
        return {"net": self.net}


def test_host_mixin_splits_the_stage_and_binarises_between():
    class Step:
        stage = SOFT_STAGE

    # nn.Identity has no parameters: with_afscm needs one to find the device
    host = _Host.__new__(_Host)
    host.config = AFSCmConfig(afscm="learned", epochs=10)
    host.net = CompressedInput(FourierCompression(8, 8), nn.Conv2d(1, 1, 1))
    stages = host.stages()
    assert [(s.name, s.epochs) for s in stages] == [(SOFT_STAGE, 9), (BINARY_STAGE, 1)]
    host.config = AFSCmConfig(afscm="learned", epochs=1)
    assert [s.epochs for s in host.stages()] == [1, 1]
    assert float(host.afscm_penalty()) == 0.0
    host.on_stage_end(Step())
    assert bool(host.net.compression.frozen) and host.ended == [SOFT_STAGE]
    host.config = AFSCmConfig(afscm="random", epochs=10)
    assert [s.name for s in host.stages()] == ["train"]
    assert np.isclose(float(host.afscm_penalty()), 0.0)
