"""AnoGAN (methods/anogan.py): the DCGAN layout per image size, the training step, the latent search (it lowers
each image's loss, leaves G and D untouched, does not depend on the batch), its scoring-only fields, smoke runs at
128 and 256 px, and one behaviour test against the untrained network on the phantom."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from benchmark.contract import DataSpec, SliceBatch
from benchmark.models import model_spec
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext, Trainer
from methods.anogan import AnoGAN, AnoGANConfig, from_tanh, to_tanh
from tests.behaviour import behaviour_phantom, before_and_after_training

SMOKE = dict(configure(AnoGAN, get_profile("smoke")).to_dict())


def smoke(data: DataSpec = DataSpec(), **kw) -> AnoGAN:
    torch.manual_seed(0)
    return AnoGAN(AnoGANConfig(**{**SMOKE, **kw}), data=data)


def briefly_trained(store, steps: int = 6, **kw) -> AnoGAN:
    """Smoke networks after a few GAN steps: G's output depends on z, so the search has something to move."""
    m = smoke(DataSpec.of(store), batch_size=4, epochs=steps // 4 + 1, max_steps=steps, **kw)
    Trainer(seed=0, progress=False).fit(m, store.split("train"))
    return m


def snapshot(m: AnoGAN) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.clone() for k, net in m.networks().items() for n, t in net.state_dict().items()}


# -- networks -----------------------------------------------------------------------------------------------
def _layers(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("size,stages", [(64, 4), (128, 5), (256, 6)])
def test_dcgan_layout_per_image_size(size, stages):
    """64 px is the reference DCGAN (4 stages, 64→512 in D, 512→64 in G); 128 / 256 px repeat the 512 stage."""
    m = AnoGAN(data=DataSpec(size, 1))
    g, d = m.generator, m.discriminator
    convs = _layers(d, nn.Conv2d)
    assert [c.out_channels for c in convs] == [64, 128, 256, 512] + [512] * (stages - 4) + [1]
    assert convs[-1].kernel_size == (4, 4) and all(c.bias is not None for c in convs)
    assert len(_layers(d, nn.BatchNorm2d)) == stages - 1  # every stage but the first
    assert all(a.negative_slope == 0.2 for a in _layers(d, nn.LeakyReLU)) and len(_layers(d, nn.LeakyReLU)) == stages
    deconvs = _layers(g, nn.ConvTranspose2d)
    assert deconvs[0].in_channels == 100 and deconvs[0].kernel_size == (4, 4)  # z → 4×4×512 (the Linear)
    assert [c.out_channels for c in deconvs] == [512] * (stages - 3) + [256, 128, 64, 1]
    assert len(_layers(g, nn.BatchNorm2d)) == stages and len(_layers(g, nn.ReLU)) == stages
    assert isinstance(g.out_activation, nn.Tanh)
    with torch.no_grad():
        m.train_mode(False)
        img = g(torch.rand(2, 100) * 2 - 1)
        assert img.shape == (2, 1, size, size) and img.abs().max() <= 1
        assert d(img).shape == (2, 1, 1, 1) and m.features(img).shape == (2, 512, 4, 4)


def test_bad_settings_are_refused():
    for kw, match in (({"feature_norm": "batch"}, "feature_norm"), ({"search_steps": -1}, "search_steps"),
                      ({"g_steps": 0}, "g_steps")):
        with pytest.raises(ValueError, match=match):
            smoke(**kw)
    with pytest.raises(ValueError, match="not 4·2"):
        AnoGAN(data=DataSpec(48, 1))


def test_intensity_maps_round_trip():
    x = torch.rand(2, 1, 8, 8)
    assert to_tanh(x).min() >= -1 and to_tanh(x).max() <= 1
    torch.testing.assert_close(from_tanh(to_tanh(x)), x)


# -- training -----------------------------------------------------------------------------------------------
def test_training_step_updates_d_once_and_g_twice(toy_store):
    m = smoke(DataSpec.of(toy_store))
    opts = m.configure_optimizers()
    assert opts["g"].defaults["lr"] == 2e-4 and opts["d"].defaults["betas"] == (0.5, 0.999)
    step = StepContext(opts, torch.device("cpu"), False, generator=torch.Generator().manual_seed(0))
    before = snapshot(m)
    logs = m.training_step(toy_store.split("train").batch([0, 1, 2, 3]), step)
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(logs) and all(math.isfinite(v) for v in logs.values())
    steps = {k: {int(s["step"]) for s in o.state.values()} for k, o in opts.items()}
    assert steps == {"d": {1}, "g": {2}}  # one D update, then two G updates (AnoGAN-tf model.py)
    after = snapshot(m)
    for net in ("discriminator.", "generator."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(net)), net


@pytest.mark.parametrize("fixture", ["toy_store", "toy_store_256"])
def test_smoke_trains_and_scores(fixture, request):
    store = request.getfixturevalue(fixture)
    size = DataSpec.of(store).image_size
    m = smoke(DataSpec.of(store))
    report = Trainer(seed=0, progress=False).fit(m, store.split("train"))
    assert report["steps"] >= 1
    batch = store.split("test").batch([0, 1, 2])
    out = m.score(batch)
    assert out.anomaly_map.shape == (3, 1, size, size) and out.image_score.shape == (3,)
    assert 0 <= float(out.reconstruction.min()) and float(out.reconstruction.max()) <= 1
    torch.testing.assert_close(out.anomaly_map, (batch.image - out.reconstruction).abs())
    lam = m.config.lam  # the image score is L(z*) = (1 − λ)·residual + λ·feature, in the networks' [−1, 1] units
    parts = out.extras["residual_loss"], out.extras["feature_loss"]
    torch.testing.assert_close(out.image_score, (1 - lam) * parts[0] + lam * parts[1])
    torch.testing.assert_close(out.extras["residual_loss"], 2 * out.anomaly_map.flatten(1).sum(1), rtol=1e-4, atol=1e-2)


# -- latent search ------------------------------------------------------------------------------------------
def test_search_lowers_each_images_loss(toy_store):
    m = briefly_trained(toy_store, search_steps=25, search_lr=0.05)
    batch = toy_store.split("test").batch([0, 1, 2, 3])
    m.train_mode(False)
    s = m.latent_search(batch)
    assert (s.loss < s.initial_loss).all(), (s.initial_loss, s.loss)
    # the returned score is L at the returned z, and z₀ is the seeded start
    again = m.latent_loss(to_tanh(batch.image), m.features(to_tanh(batch.image)), s.z)[0]
    torch.testing.assert_close(again.detach(), s.loss, rtol=1e-5, atol=1e-3)
    assert not torch.equal(s.z, m.initial_z(batch)) and s.z.abs().max() > 0
    none = copy.deepcopy(m)
    none.config = none.config.replace(search_steps=0)
    torch.testing.assert_close(none.latent_search(batch).loss, s.initial_loss)


def test_search_leaves_the_networks_untouched(toy_store):
    m = briefly_trained(toy_store, search_steps=5)
    for net in m.networks().values():
        net.zero_grad(set_to_none=True)  # the last training step's gradients
    before = snapshot(m)
    flags = {id(p): p.requires_grad for net in m.networks().values() for p in net.parameters()}
    m.score(toy_store.split("test").batch([0, 1]))
    after = snapshot(m)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    for net in m.networks().values():
        for p in net.parameters():
            assert p.grad is None and p.requires_grad == flags[id(p)]


def test_scores_do_not_depend_on_the_batch(toy_store):
    m = briefly_trained(toy_store, search_steps=10, search_lr=0.05)
    test = toy_store.split("test")
    together = m.score(test.batch([0, 1, 2, 3]))
    shuffled = m.score(test.batch([3, 1, 0]))
    for i, j in ((0, 2), (3, 0)):
        alone = m.score(test.batch([i]))
        for other, k in ((alone, 0), (shuffled, j)):
            torch.testing.assert_close(other.image_score[k], together.image_score[i], rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(other.anomaly_map[k], together.anomaly_map[i], rtol=1e-4, atol=1e-4)
    # z₀ follows the slice's row id: the same image under another row starts (and ends) elsewhere
    b = test.batch([0])
    moved = SliceBatch(b.image, b.brain_mask, index=b.index + 1)
    assert not torch.equal(m.initial_z(moved), m.initial_z(b))


def test_per_image_feature_norm_is_batch_norm_on_one_image(toy_store):
    """``feature_norm='per_image'`` = D's features with batch norm in training mode on a batch of one image (the TF
    code's feature layer), without touching D's running statistics."""
    m = briefly_trained(toy_store, feature_norm="per_image")
    m.train_mode(False)
    x = to_tanh(toy_store.split("test").batch([0, 1, 2]).image)
    before = snapshot(m)
    with torch.no_grad():
        got = m.features(x)
        ref_d = copy.deepcopy(m.discriminator).train()
        ref = torch.cat([ref_d.features(x[i:i + 1]) for i in range(3)])
        running = m.discriminator.features(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, running)
    assert all(torch.equal(before[k], t) for k, t in snapshot(m).items())


def test_search_fields_are_scoring_only(toy_store):
    train, val = toy_store.split("train"), toy_store.split("val")
    smoke_cfg = lambda cls: configure(cls, get_profile("smoke"))  # noqa: E731
    base = model_spec("anogan", "", smoke_cfg, train, val, 0)
    for change in ({"search_steps": 7}, {"search_lr": 0.01}, {"lam": 0.2}, {"search_seed": 1},
                   {"feature_norm": "per_image"}):
        spec = model_spec("anogan", "", lambda c, ch=change: smoke_cfg(c).replace(**ch), train, val, 0)
        assert spec.train_key == base.train_key and spec.score_key != base.score_key, change
    for change in ({"g_steps": 1}, {"z_dim": 8}, {"widths": (4, 8, 16, 16)}):
        spec = model_spec("anogan", "", lambda c, ch=change: smoke_cfg(c).replace(**ch), train, val, 0)
        assert spec.train_key != base.train_key, change


def test_profiles():
    paper, default, smk = (configure(AnoGAN, get_profile(p)) for p in ("paper", "default", "smoke"))
    assert (paper.search_steps, paper.epochs, paper.batch_size, paper.z_dim, paper.lam) == (500, 25, 64, 100, 0.1)
    assert paper.widths == (64, 128, 256, 512) and paper.g_steps == 2
    assert default.search_steps == 50 and smk.search_steps == 3


# -- behaviour ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_makes_g_reconstruct_healthy_slices(tmp_path_factory):
    """After ~3 s of CPU training on the 32-px smoke phantom (T1), the searched G(z*) reproduces the healthy test
    slices far better than the untrained network's, and its map starts to single out the lesions.

    Bar: mean |x − G(z*)| over the 20 healthy test slices ≤ 0.6 × the untrained network's, and pooled pixel AUROC
    over all 36 test slices ≥ 0.3 above the untrained one. Why the untrained network cannot meet it: G starts with
    N(0, 0.02) weights, so G(z) ≈ tanh(0), mid grey, whatever z is (20 search steps do not change that); its map is
    about |x − 0.5|, which is smallest at the T1 lesions (0.22–0.55). Measured over seeds 0–2 (30 epochs, batch 8):
    healthy error 0.355 → 0.158–0.163 (× 0.44–0.46), pixel AUROC 0.07 → 0.50–0.62.
    """
    pytest.importorskip("datasets.phantom")
    store = behaviour_phantom(modality="t1", size=32, cache_dir=tmp_path_factory.mktemp("phantom"))
    torch.manual_seed(0)
    m = AnoGAN(AnoGANConfig(widths=(16, 32, 64), z_dim=32, epochs=30, batch_size=8, search_steps=20,
                            search_lr=1e-2), data=DataSpec.of(store))
    (before, auroc_before), (after, auroc_after) = before_and_after_training(m, store)
    assert after <= 0.6 * before and auroc_after - auroc_before >= 0.3, (before, after, auroc_before, auroc_after)
