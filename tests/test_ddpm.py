"""DDPM (methods/ddpm.py): the spec's config, Gaussian noise in training and scoring (reproduced draw for draw), the
brain min–max input range (round trip, affine equivariance), the map, anoddpm as the simplex subclass, the smoke
profile end to end, the bf16 path, and one training behaviour test on the phantom.

What ddpm shares with anoddpm (network, respaced chains, per-slice determinism, validation loss) is tested in
tests/test_anoddpm.py; the contract suite (tests/test_method_contract.py -k ddpm) covers every variant at 128/256 px.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.contract import DataSpec, SliceBatch
from benchmark.models import model_spec
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext, Trainer
from methods.anoddpm import AnoDDPM, AnoDDPMConfig
from methods.blocks.diffusion import gaussian_noise
from methods.blocks.noise import generator_from, slice_generators
from methods.blocks.reconstruction import UnitRange
from methods.ddpm import DDPM, DDPMConfig
from tests.test_anoddpm import Spy
from tests.behaviour import behaviour_phantom
from tests.test_dae import _pixel_auroc, gen

TINY = dict(model_channels=4, channel_mult=(1, 2), attention_levels=(False, False), batch_size=2, augment=False)
D16 = DataSpec(16, 1)


def tiny(variant: str = "", data: DataSpec = D16, **kw) -> DDPM:
    torch.manual_seed(0)
    return DDPM.build(DDPMConfig(**{**TINY, **kw}), variant=variant, data=data)


def itermask2_like(n: int = 2, size: int = 16, seed: int = 0, first_row: int = 7) -> SliceBatch:
    """IterMask2-style slices: background −3, a disc of smooth brain in [−2.4, 3.8] (one pixel at 3.8 each)."""
    g = gen(seed)
    low = torch.rand(n, 1, size // 4, size // 4, generator=g) * 6.2 - 2.4
    x = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2).float()[None, None]
    x = torch.where(disc > 0, x, torch.full_like(x, -3.0))
    x[:, :, size // 2, size // 2 - 1] = 3.8  # beyond +3: IterMask2's scaling does not clip
    return SliceBatch(x, disc.expand(n, 1, size, size).clone(), index=torch.arange(n) + first_row)


def lively(m: DDPM, std: float = 0.05) -> DDPM:
    """A non-zero ε̂ that depends on the input (the head is zero-initialised)."""
    torch.nn.init.normal_(m.net.out[-1].weight, std=std, generator=gen(5))
    return m


# -- config, variants, the anoddpm subclass -------------------------------------------------------------------------
def test_defaults_are_the_spec():
    c = DDPMConfig()
    assert (c.num_timesteps, c.beta_start, c.beta_end) == (1000, 1e-4, 2e-2)
    assert (c.model_channels, tuple(c.channel_mult), tuple(c.attention_levels)) == (128, (1, 2, 2), (False, True, True))
    assert (c.num_res_blocks, c.num_heads, c.dropout) == (1, 1, 0.0)
    assert (c.lr, c.batch_size, c.epochs, c.val_every, c.early_stop_patience) == (1e-4, 16, 3000, 50, None)
    assert (c.t_ad, c.score_steps, c.ema_decay, c.augment, c.input_range) == (250, None, None, True, "brain_minmax")
    assert set(c.scoring_dict()) == {"t_ad", "score_steps", "seed"}
    assert "input_range" in c.training_dict()  # what the model saw: a training field
    assert not hasattr(c, "simplex_octaves")
    paper = configure(DDPM, get_profile("paper"))
    assert paper.score_steps is None and paper.t_ad == 250 and paper.model_channels == 128
    for profile in ("smoke", "default"):
        cfg = configure(DDPM, get_profile(profile))
        assert cfg.t_ad == 250 and cfg.score_steps is not None and cfg.score_steps < 251
        assert cfg.input_range == "brain_minmax"


def test_anoddpm_is_ddpm_with_simplex_noise_and_unit_inputs():
    """One implementation: anoddpm only swaps the noise and adds its settings; its data stay as they are."""
    assert issubclass(AnoDDPM, DDPM) and issubclass(AnoDDPMConfig, DDPMConfig)
    for name in ("training_step", "validation_loss", "reconstruct", "inpaint", "chain", "_score", "eps_model",
                 "networks", "configure_optimizers", "__init__"):
        assert name not in vars(AnoDDPM), f"anoddpm overrides {name}"
    assert AnoDDPMConfig().input_range == "unit" and DDPMConfig().input_range == "brain_minmax"
    extra = set(AnoDDPMConfig().to_dict()) - set(DDPMConfig().to_dict())
    assert extra == {"simplex_octaves", "simplex_persistence", "simplex_frequency"}
    assert DDPM.name == "ddpm" and AnoDDPM.name == "anoddpm" and DDPM.variants.keys() == AnoDDPM.variants.keys()
    assert tiny().noise_fn is gaussian_noise and AnoDDPM(AnoDDPMConfig(**TINY), data=D16).noise_fn is not gaussian_noise
    assert UnitRange.of("unit", torch.rand(1, 1, 4, 4), None).identity


def test_t_ad_variant_is_scoring_only_and_the_input_range_retrains(toy_store):
    assert DDPM.resolve(None, "t_AD=200").t_ad == 200
    train, val = toy_store.split("train"), toy_store.split("val")
    smoke = lambda cls: configure(cls, get_profile("smoke"))  # noqa: E731
    base, v200 = (model_spec("ddpm", v, smoke, train, val, 0) for v in ("", "t_AD=200"))
    assert base.train_key == v200.train_key and base.score_key != v200.score_key
    unit = model_spec("ddpm", "", lambda c: smoke(c).replace(input_range="unit"), train, val, 0)
    assert unit.train_key != base.train_key
    assert model_spec("anoddpm", "", smoke, train, val, 0).train_key != base.train_key


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="input_range"):
        tiny(input_range="zscore")
    with pytest.raises(ValueError, match="multiple of 4"):
        DDPM(DDPMConfig(**TINY), data=DataSpec(18, 1))
    with pytest.raises(ValueError, match="attention flags"):
        tiny(attention_levels=(False,))
    with pytest.raises(ValueError, match="t_ad"):
        tiny(t_ad=1000)
    with pytest.raises(ValueError, match="score_steps"):
        tiny(score_steps=0)


# -- the input range ------------------------------------------------------------------------------------------------
def test_brain_minmax_round_trip():
    """Per image: the brain's min → 0 and max → 1, exact round trip inside the brain, the background (−3, below the
    brain) clipped to the brain's minimum; invariant to an affine intensity change; the whole image without a brain."""
    b = itermask2_like(3)
    x, brain = b.image, b.brain_mask > 0.5
    r = UnitRange.of("brain_minmax", x, b.brain_mask)
    u = r.to_unit(x)
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    for i in range(3):
        inside = x[i][brain[i]]
        assert float(r.lo[i]) == float(inside.min()) and float(r.lo[i] + r.span[i]) == pytest.approx(float(inside.max()))
        assert float(u[i][brain[i]].min()) == 0.0 and float(u[i][brain[i]].max()) == pytest.approx(1.0)
        assert float(inside.max()) > 3.0  # the brain goes beyond +3: a [−3, 3] clip would not do
    back = r.from_unit(u)
    torch.testing.assert_close(back[brain.expand_as(x)], x[brain.expand_as(x)], rtol=0, atol=1e-5)
    outside = ~brain.expand_as(x)
    torch.testing.assert_close(back[outside], r.lo.expand_as(x)[outside])  # background → the brain's minimum
    assert (u[outside] == 0).all()
    # a·x + b (a > 0) gives the model the same slice
    torch.testing.assert_close(UnitRange.of("brain_minmax", 2.5 * x - 1.0, b.brain_mask).to_unit(2.5 * x - 1.0), u,
                               rtol=0, atol=1e-6)
    # no brain pixel: the whole image's range; a constant image does not divide by zero
    empty = UnitRange.of("brain_minmax", x, torch.zeros_like(b.brain_mask))
    assert torch.equal(empty.lo.flatten(), x.flatten(1).amin(1)) and float(empty.to_unit(x).min()) == 0.0
    flat = UnitRange.of("brain_minmax", torch.full_like(x, 0.7), b.brain_mask).to_unit(torch.full_like(x, 0.7))
    assert torch.isfinite(flat).all()
    # "unit" leaves the store's values alone, clipping nothing
    unit = UnitRange.of("unit", x, b.brain_mask)
    assert unit.to_unit(x) is x and unit.from_unit(x) is x
    with pytest.raises(ValueError, match="input range"):
        UnitRange.of("zscore", x, b.brain_mask)


def test_brain_minmax_maps_follow_an_affine_intensity_change():
    """A slice rescaled by a·x + b reaches the network unchanged, so the reconstruction is a·x̂ + b and the map a·map
    (the store's units); per-slice noise makes the two scorings draw the same numbers."""
    m = lively(tiny(t_ad=4))
    b = itermask2_like(2)
    a, shift = 2.5, -1.0
    out = m.score(b)
    moved = m.score(SliceBatch(a * b.image + shift, b.brain_mask, index=b.index))
    torch.testing.assert_close(moved.reconstruction, a * out.reconstruction + shift, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(moved.anomaly_map, a * out.anomaly_map, rtol=1e-4, atol=1e-4)
    assert float(out.anomaly_map.amax()) > 0.05  # the network did change the slice


# -- Gaussian noise in training and scoring ----------------------------------------------------------------------------
def test_training_noise_is_gaussian_on_the_rescaled_slice():
    """The network sees x_t = √ᾱ_t u + √(1 − ᾱ_t) ε with u the slice in [0, 1] (brain min–max), t and ε drawn, in that
    order, from a generator seeded by one draw of the trainer's generator, ε standard normal."""
    m = tiny()
    m.net = Spy()
    b = itermask2_like(2)
    ctx = StepContext(m.configure_optimizers(), torch.device("cpu"), False, generator=gen(3))
    logs = m.training_step(b, ctx)
    (x_t, t), = m.net.calls
    g = generator_from(gen(3), "cpu")
    t_want = m.schedule.sample_timesteps(2, g)
    eps = torch.randn(2, 1, 16, 16, generator=g)
    u = UnitRange.of("brain_minmax", b.image, b.brain_mask).to_unit(b.image)
    assert torch.equal(t, t_want)
    torch.testing.assert_close(x_t, m.schedule.q_sample(u, t_want, eps), rtol=0, atol=1e-6)
    assert logs["mse"] == pytest.approx(float(eps.square().mean()), rel=1e-5)  # ε̂ = 0: the loss is E[ε²] ≈ 1


def test_scoring_chain_is_gaussian_from_per_slice_generators():
    """Forward noising of the rescaled slice to t_AD and every ancestral step's noise are the successive Gaussian draws
    of the slice's generator (seed, row id): the chain is rebuilt here by hand, draw for draw, with ε̂ = 0; the
    clamped result returns to the store's intensities."""
    m = tiny(t_ad=3, score_steps=None)
    m.net = Spy()
    b = itermask2_like(2, first_row=11)
    out = m.score(b)
    gens = slice_generators(m.config.seed, [11, 12])
    r = UnitRange.of("brain_minmax", b.image, b.brain_mask)
    s = m.schedule
    x_t = s.q_sample(r.to_unit(b.image), 3, gaussian_noise((2, 1, 16, 16), gens))
    for (seen, t), step in zip(m.net.calls, (3, 2, 1, 0)):
        assert int(t[0]) == step
        torch.testing.assert_close(seen, x_t, rtol=0, atol=1e-6)
        noise = gaussian_noise((2, 1, 16, 16), gens) if step > 0 else None
        x_t = s.p_step(torch.zeros_like(x_t), x_t, step, noise)
    torch.testing.assert_close(out.reconstruction, r.restore(x_t.clamp(0, 1), b.image), rtol=0, atol=1e-5)


def test_map_is_the_residual_to_the_clamped_reconstruction_mapped_back(monkeypatch):
    """Inside the brain's range the reconstruction is the clamped output mapped back; where the rescale clipped the
    input (the −3 background) it is the input itself."""
    m = tiny()
    b = itermask2_like(2)
    x_hat = torch.full_like(b.image, 1.4)
    x_hat[:, :, :8] = -0.3
    monkeypatch.setattr(m, "reconstruct", lambda x, gens: x_hat)
    out = m.score(b)
    r = UnitRange.of("brain_minmax", b.image, b.brain_mask)
    rec = r.from_unit(x_hat.clamp(0, 1))
    clipped = b.image < r.lo  # the background below the brain's range: reconstructed as itself, no residual
    assert bool(clipped.any())
    torch.testing.assert_close(out.reconstruction, torch.where(clipped, b.image, rec))
    torch.testing.assert_close(out.anomaly_map, (b.image - rec).abs() * ~clipped)
    torch.testing.assert_close(out.image_score, ((b.image - rec).abs() * ~clipped).flatten(1).mean(1))
    assert float(out.reconstruction.amax()) > 3.0  # in the store's units, not [0, 1]


# -- smoke profile, bf16 ---------------------------------------------------------------------------------------------
def test_smoke_profile_trains_and_scores(toy_store):
    torch.manual_seed(0)
    m = DDPM(configure(DDPM, get_profile("smoke")), data=DataSpec.of(toy_store))
    report = Trainer(seed=0, progress=False, max_steps_per_epoch=2).fit(m, toy_store.split("train"),
                                                                       toy_store.split("val"))
    assert report["steps"] >= 1
    out = m.score(toy_store.split("test").batch([0, 1, 2]))
    assert out.anomaly_map.shape == (3, 1, 128, 128) and out.reconstruction.shape == (3, 1, 128, 128)
    assert torch.isfinite(out.anomaly_map).all() and float(out.image_score.min()) > 0


def test_bf16_autocast_path_keeps_losses_and_maps_fp32(monkeypatch):
    """The CUDA path on CPU: autocast bf16 around the UNet; losses, the schedule and the maps stay fp32."""
    import methods.ddpm as D

    monkeypatch.setattr(D, "autocast", lambda device, enabled=True: torch.autocast("cpu", dtype=torch.bfloat16,
                                                                                   enabled=enabled))
    m = lively(tiny(t_ad=3))
    ctx = StepContext(m.configure_optimizers(), torch.device("cpu"), True, generator=gen(0))
    m.train_mode(True)
    assert torch.isfinite(torch.tensor(m.training_step(itermask2_like(2), ctx)["mse"]))
    out = m.score(itermask2_like(2))
    assert out.anomaly_map.dtype == torch.float32 and torch.isfinite(out.anomaly_map).all()


# -- behaviour ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_makes_ddpm_localise_lesions(tmp_path_factory):
    """After 180 optimiser steps (≈ 15–25 s of CPU on a shared core) on the 32-px smoke phantom (FLAIR), the DDPM's maps
    at t_AD = 250 (brain min–max input range) localise the inserted lesions clearly better than the same network
    untrained.

    Bar: pooled pixel AUROC (all pixels of the 36 test slices) ≥ 0.2 above the untrained network's, and brain-only
    pixel AUROC ≥ 0.7 and ≥ 0.3 above the untrained network's. Why an untrained network cannot meet it: the UNet's
    output convolution is zero-initialised, so ε̂ ≡ 0 and the reverse chain only rescales x_t: x̂ is the slice plus
    Gaussian residue whose law does not depend on the lesion, and the [0, 1] clamp cuts the residue of the brightest
    pixels, FLAIR lesions among them (measured pooled 0.355, brain-only 0.41, the same for every seed since ε̂ = 0).
    Trained (UNet 8, 16, 16; Adam 2e-3, batch 8, 45 epochs = 180 steps, EMA 0.97; 5 respaced reverse steps) measured
    pooled 0.64–0.71, brain-only 0.79–0.83 over seeds 0–2.
    """
    pytest.importorskip("datasets.phantom")
    store = behaviour_phantom(modality="flair", size=32, cache_dir=tmp_path_factory.mktemp("phantom"))
    torch.manual_seed(0)
    cfg = DDPMConfig(model_channels=8, channel_mult=(1, 2, 2), attention_levels=(False, False, True), epochs=45,
                     batch_size=8, lr=2e-3, ema_decay=0.97, val_every=10**6, augment=False, score_steps=5)
    m = DDPM(cfg, data=DataSpec.of(store))
    test = store.split("test")
    before, before_brain = _pixel_auroc(m, test)
    Trainer(seed=0, progress=False).fit(m, store.split("train", label=0))
    after, after_brain = _pixel_auroc(m, test)
    assert after - before >= 0.2 and after_brain >= 0.7 and after_brain - before_brain >= 0.3, \
        (before, before_brain, after, after_brain)
