"""GANomaly and Sparse-GAN (methods/ganomaly.py, methods/sparse_gan.py): the shared encoder–decoder–encoder GAN's
layouts, its loss terms and weights, one training step (G then D, GANomaly's D re-initialisation), the scoring-only
``image_score`` field (native vs ProxyAno's eq. 13 latent score), batch independence, refused settings, and one
behaviour test per method against its untrained self on the phantom."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import DataSpec
from benchmark.models import model_spec
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext, Trainer
from methods.anogan import from_tanh, to_tanh
from methods.blocks.gan import init_normal_
from methods.ganomaly import GANomaly, GANomalyConfig
from methods.sparse_gan import SparseGAN, SparseGANConfig
from tests.behaviour import behaviour_phantom, before_and_after_training

METHODS = {"ganomaly": GANomaly, "sparse-gan": SparseGAN}
TINY = {"ngf": 4, "ndf": 4, "nz": 8, "batch_size": 4}


def tiny(name: str, data: DataSpec = DataSpec(), seed: int = 0, **kw):
    cls = METHODS[name]
    torch.manual_seed(seed)
    return cls(cls.Config(**{**TINY, **kw}), data=data)


def step_context(m) -> StepContext:
    return StepContext(m.configure_optimizers(), torch.device("cpu"), False, generator=torch.Generator().manual_seed(0))


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: t.clone() for k, t in net.state_dict().items()}


def _layers(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


# -- networks -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 128])
def test_ganomaly_layout_is_the_codes(size):
    """lib/networks.py with ngf = ndf = 64, nz = 100: widths double from 64 until 4×4, a 4×4 valid conv to z, the
    decoder mirrors them, no biases in G, BN everywhere but the first encoder stage, tanh out."""
    m = GANomaly(data=DataSpec(size, 1))
    widths = [64 * 2**i for i in range(int(math.log2(size)) - 2)]
    g = m.generator
    for enc in (g.encoder1, g.encoder2):
        convs = _layers(enc, nn.Conv2d)
        assert [c.out_channels for c in convs] == widths + [100] and convs[-1].kernel_size == (4, 4)
        assert len(_layers(enc, nn.BatchNorm2d)) == len(widths) - 1
        assert all(a.negative_slope == 0.2 for a in _layers(enc, nn.LeakyReLU))
    deconvs = _layers(g.decoder, nn.ConvTranspose2d)
    assert deconvs[0].in_channels == 100 and [c.out_channels for c in deconvs] == widths[::-1] + [1]
    assert all(c.bias is None for c in _layers(g, nn.Conv2d) + deconvs)
    assert isinstance(g.decoder.out_activation, nn.Tanh)
    d_convs = _layers(m.discriminator, nn.Conv2d)
    assert [c.out_channels for c in d_convs] == widths + [1]
    m.train_mode(False)
    with torch.no_grad():
        x = torch.rand(2, 1, size, size) * 2 - 1
        fake, z, z_hat = g(x)
        assert fake.shape == x.shape and fake.abs().max() <= 1 and z.shape == z_hat.shape == (2, 100, 1, 1)
        logits, feats = m.discriminator(x, return_features=True)
        assert logits.shape == (2, 1, 1, 1) and feats[-1].shape == (2, widths[-1], 4, 4)


def test_widths_at_256_px_and_the_pix2pix_cap():
    """GANomaly keeps doubling to 4×4 (×32 at 256 px); Sparse-GAN stops at ×8 (pix2pix's 512) and uses the 70×70
    PatchGAN (3 stride-2 layers, one stride-1, a patch logit map of 30×30 at 256 px)."""
    g = tiny("ganomaly", DataSpec(256, 1))
    assert [c.out_channels for c in _layers(g.generator.encoder1, nn.Conv2d)] == [4, 8, 16, 32, 64, 128, 8]
    s = tiny("sparse-gan", DataSpec(256, 1))
    assert [c.out_channels for c in _layers(s.generator.encoder1, nn.Conv2d)] == [4, 8, 16, 32, 32, 32, 8]
    assert [c.stride for c in _layers(s.discriminator, nn.Conv2d)] == [(2, 2)] * 3 + [(1, 1)] * 2
    with torch.no_grad():
        assert s.discriminator(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)
    full = SparseGANConfig()
    assert (full.nz, full.ngf, full.max_mult, full.batch_size, full.epochs) == (512, 64, 8, 16, 100)


def test_bad_settings_are_refused():
    for name in METHODS:
        for kw, match in (({"image_score": "frobenius"}, "image_score"), ({"nz": 0}, "nz"),
                          ({"w_con": -1.0}, "weights"), ({"d_reinit_below": 0.0}, "d_reinit_below"),
                          ({"max_mult": 0}, "max_mult")):
            with pytest.raises(ValueError, match=match):
                tiny(name, **kw)
        with pytest.raises(ValueError, match="not 4·2"):
            tiny(name, DataSpec(48, 1))
    with pytest.raises(ValueError, match="weights"):
        tiny("sparse-gan", w_sparse=-0.5)
    with pytest.raises(ValueError, match="at least 32 px"):
        tiny("sparse-gan", DataSpec(16, 1))


# -- losses and the training step ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_generator_loss_terms_and_weights(name, toy_store):
    """Each term recomputed by hand from the networks' outputs, and the total is the weighted sum with (1, 50, 1)
    (+ 1 for Sparse-GAN's sparsity); a changed weight changes the total by exactly its term."""
    m = tiny(name, DataSpec.of(toy_store))
    assert m.loss_weights() == ({"adv": 1.0, "con": 50.0, "enc": 1.0} | ({"sparse": 1.0} if name == "sparse-gan"
                                                                         else {}))
    m.train_mode(True)
    x = to_tanh(toy_store.split("train").batch([0, 1, 2, 3]).image)
    step = step_context(m)
    torch.manual_seed(1)
    total, fake, terms = m.generator_loss(x, step)
    assert set(terms) == set(m.loss_weights())
    with torch.no_grad():
        fake_ref, z, z_hat = m.generator(x)  # train-mode BN: same batch, same statistics
        torch.testing.assert_close(fake, fake_ref)
        z, z_hat = z.flatten(1), z_hat.flatten(1)
        torch.testing.assert_close(terms["con"], (x - fake).abs().mean())
        torch.testing.assert_close(terms["enc"], F.mse_loss(z_hat, z))
        if name == "ganomaly":  # ‖f(x) − f(x̂)‖² on D's last features (after the last LeakyReLU)
            f = lambda t: m.discriminator(t, return_features=True)[1][-1]  # noqa: E731
            torch.testing.assert_close(terms["adv"], F.mse_loss(f(fake), f(x)))
        else:  # non-saturating BCE on every patch logit, and mean |z|
            torch.testing.assert_close(terms["adv"], F.softplus(-m.discriminator(fake)).mean())
            torch.testing.assert_close(terms["sparse"], z.abs().mean())
    torch.testing.assert_close(total, sum(w * terms[k] for k, w in m.loss_weights().items()))
    assert all(float(t.detach()) > 0 for t in terms.values())
    m.config = m.config.replace(w_con=10.0)
    total10 = m.generator_loss(x, step)[0]
    torch.testing.assert_close(total - total10, 40.0 * terms["con"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_step_updates_g_then_d_once(name, toy_store):
    m = tiny(name, DataSpec.of(toy_store))
    step = step_context(m)
    assert step.optimizers["g"].defaults["lr"] == 2e-4 and step.optimizers["d"].defaults["betas"] == (0.5, 0.999)
    g0, d0 = snapshot(m.generator), snapshot(m.discriminator)
    logs = m.training_step(toy_store.split("train").batch([0, 1, 2, 3]), step)
    assert all(math.isfinite(v) for v in logs.values()) and logs["d_reinit"] == 0.0
    assert {"loss_g", "loss_d", "g_adv", "g_con", "g_enc"} <= set(logs)
    assert 0.3 < logs["loss_d"] < 1.0  # 0.5·(BCE real + BCE fake) ≈ log 2 at the start
    assert {k: {int(s["step"]) for s in o.state.values()} for k, o in step.optimizers.items()} == {"g": {1}, "d": {1}}
    for net, before in ((m.generator, g0), (m.discriminator, d0)):
        assert any(not torch.equal(before[k], t) for k, t in net.state_dict().items())
    # G's update saw no gradient from D's loss and D's none from G's: each optimiser holds only its own network
    assert {id(p) for p in m.generator.parameters()} == {id(p) for g in step.optimizers["g"].param_groups
                                                          for p in g["params"]}


def test_ganomaly_reinitialises_d_below_the_threshold(toy_store):
    """The code's rule: after D's update, if its loss < 1e-5, re-draw D's weights (weights_init). With the threshold
    above any loss, D ends as a fresh init_normal_ draw; with the code's 1e-5 (loss ≈ 0.69 at the start) it keeps its
    Adam-updated weights."""
    batch = toy_store.split("train").batch([0, 1, 2, 3])
    m = tiny("ganomaly", DataSpec.of(toy_store), d_reinit_below=1e9)
    step = step_context(m)
    torch.manual_seed(7)
    logs = m.training_step(batch, step)
    assert logs["d_reinit"] == 1.0
    ref = tiny("ganomaly", DataSpec.of(toy_store), seed=3).discriminator
    torch.manual_seed(7)  # the step draws nothing else from the global generator before the re-initialisation
    init_normal_(ref)
    got = m.discriminator.state_dict()
    for k, t in ref.state_dict().items():
        if "running" not in k and "num_batches" not in k:  # running statistics are kept, as in the code
            assert torch.equal(got[k], t), k
    kept = tiny("ganomaly", DataSpec.of(toy_store))
    assert kept.config.d_reinit_below == 1e-5
    torch.manual_seed(7)
    assert kept.training_step(batch, step_context(kept))["d_reinit"] == 0.0
    assert not torch.equal(kept.discriminator.head.weight, ref.head.weight)
    assert SparseGANConfig().d_reinit_below is None


# -- scoring ------------------------------------------------------------------------------------------------
def briefly_trained(name: str, store, **kw):
    m = tiny(name, DataSpec.of(store), epochs=2, **kw)
    Trainer(seed=0, progress=False).fit(m, store.split("train"))
    return m


@pytest.mark.parametrize("name", sorted(METHODS))
def test_native_and_latent_scores(name, toy_store):
    """native: GANomaly mean_d (z − ẑ)², Sparse-GAN Σ_d (z − ẑ)²; latent: ‖E1(x) − E2(x̂)‖_F (ProxyAno eq. 13).
    Both from the same networks, the map |x − x̂| in [0, 1] units unchanged by the field."""
    m = briefly_trained(name, toy_store)
    batch = toy_store.split("test").batch([0, 1, 2, 3])
    native = m.score(batch)
    m.config = m.config.replace(image_score="latent")
    latent = m.score(batch)
    m.train_mode(False)
    with torch.no_grad():
        fake, z, z_hat = m.generator(to_tanh(batch.image))
        z, z_hat = z.flatten(1), z_hat.flatten(1)
    frob = (z - z_hat).square().sum(1).sqrt()
    torch.testing.assert_close(latent.image_score, frob)
    expected = (z - z_hat).square().mean(1) if name == "ganomaly" else (z - z_hat).square().sum(1)
    torch.testing.assert_close(native.image_score, expected)
    assert not torch.allclose(native.image_score, latent.image_score)
    torch.testing.assert_close(native.anomaly_map, latent.anomaly_map)
    torch.testing.assert_close(native.reconstruction, from_tanh(fake))
    torch.testing.assert_close(native.anomaly_map, (batch.image - native.reconstruction).abs())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_image_score_is_scoring_only(name, toy_store):
    train, val = toy_store.split("train"), toy_store.split("val")
    smoke = lambda cls: configure(cls, get_profile("smoke"))  # noqa: E731
    base = model_spec(name, "", smoke, train, val, 0)
    latent = model_spec(name, "", lambda c: smoke(c).replace(image_score="latent"), train, val, 0)
    assert latent.train_key == base.train_key and latent.score_key != base.score_key
    for change in ({"w_con": 10.0}, {"nz": 4}, {"d_reinit_below": 1e-3}):
        spec = model_spec(name, "", lambda c, ch=change: smoke(c).replace(**ch), train, val, 0)
        assert spec.train_key != base.train_key, change


@pytest.mark.parametrize("name", sorted(METHODS))
def test_scores_do_not_depend_on_the_batch(name, toy_store):
    m = briefly_trained(name, toy_store)
    test = toy_store.split("test")
    together = m.score(test.batch([0, 1, 2, 3]))
    shuffled = m.score(test.batch([3, 1, 0]))
    for i, j in ((0, 2), (3, 0)):
        for other, k in ((m.score(test.batch([i])), 0), (shuffled, j)):
            torch.testing.assert_close(other.image_score[k], together.image_score[i], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(other.anomaly_map[k], together.anomaly_map[i], rtol=1e-4, atol=1e-5)


def test_profiles():
    for cls in (GANomaly, SparseGAN):
        paper, default, smoke = (configure(cls, get_profile(p)) for p in ("paper", "default", "smoke"))
        assert (paper.lr, paper.beta1, paper.w_adv, paper.w_con, paper.w_enc) == (2e-4, 0.5, 1.0, 50.0, 1.0)
        assert paper.image_score == default.image_score == smoke.image_score == "native"
        assert smoke.epochs == 1 and default.ngf < paper.ngf
    g = GANomalyConfig()
    assert (g.epochs, g.batch_size, g.nz, g.ngf, g.ndf, g.max_mult, g.d_reinit_below) == (15, 64, 100, 64, 64, None,
                                                                                          1e-5)


# -- behaviour ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_makes_g_reconstruct_healthy_slices(name, tmp_path_factory):
    """After ~5 s of CPU training on the 32-px smoke phantom (T1), x̂ reproduces the healthy test slices far better
    than the untrained network's, and |x − x̂| singles out the lesions.

    Bar: mean |x − x̂| over the healthy test slices ≤ 0.5 × the untrained network's, and pooled pixel AUROC over all
    36 test slices ≥ 0.3 above the untrained one. Why the untrained network cannot meet it: its decoder starts with
    N(0, 0.02) weights, so x̂ ≈ tanh(0), mid grey, for every slice; its map is about |x − 0.5|, smallest at the T1
    lesions. Measured (seed 0, 30 epochs of 4–5 steps, lr 2e-3): healthy error 0.355 → 0.09 (GANomaly) / 0.10
    (Sparse-GAN), pixel AUROC 0.07 → 0.95 / 0.95."""
    pytest.importorskip("datasets.phantom")
    store = behaviour_phantom(modality="t1", size=32, cache_dir=tmp_path_factory.mktemp("phantom"))
    m = tiny(name, DataSpec.of(store), ngf=8, ndf=8, nz=16, epochs=30, batch_size=8, lr=2e-3)
    (before, auroc_before), (after, auroc_after) = before_and_after_training(m, store)
    assert after <= 0.5 * before and auroc_after - auroc_before >= 0.3, (before, after, auroc_before, auroc_after)
