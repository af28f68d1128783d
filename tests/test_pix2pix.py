"""pix2pix as an anomaly detector (methods/pix2pix.py): the encoder–decoder layout per image size, the training
step and its loss weights, the per-slice test mode (batch statistics of the slice alone, seeded dropout), the
scoring-only fields, the profiles, and one behaviour test against the untrained network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.contract import DataSpec, SliceBatch
from benchmark.models import model_spec
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext, Trainer
from methods.anogan import to_tanh
from methods.blocks.translation import LinearDecay, SliceDropout, latent_distance
from methods.pix2pix import Pix2Pix, Pix2PixConfig

SMOKE = dict(configure(Pix2Pix, get_profile("smoke")).to_dict())


def smoke(data: DataSpec = DataSpec(), **kw) -> Pix2Pix:
    torch.manual_seed(0)
    return Pix2Pix(Pix2PixConfig(**{**SMOKE, **kw}), data=data)


def briefly_trained(store, **kw) -> Pix2Pix:
    """Smoke networks after two steps on 8 training slices (batch 4)."""
    m = smoke(DataSpec.of(store), **kw)
    Trainer(seed=0, progress=False).fit(m, store.split("train").take(8))
    return m


def snapshot(m: Pix2Pix) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.clone() for k, net in m.networks().items() for n, t in net.state_dict().items()}


# -- networks -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,levels", [(128, 7), (256, 8)])
def test_paper_layout_per_image_size(size, levels):
    """G: the U-Net-256 (128: U-Net-128) layout without skips, 1×1×512 code; D: the 70×70 PatchGAN on
    concat(input, output) with batch norm."""
    m = Pix2Pix(data=DataSpec(size, 1))
    g, d = m.generator, m.discriminator
    assert not g.skips and g.levels == levels and g.widths[-1] == 512
    assert [c.in_channels for c in g.modules() if isinstance(c, nn.ConvTranspose2d)][1:] == list(g.widths[1:])
    assert sum(isinstance(x, SliceDropout) for x in g.modules()) == levels - 5
    assert d.blocks[0][0].in_channels == 2 and len(d.blocks) == 4 and d.head.out_channels == 1
    assert any(isinstance(x, nn.BatchNorm2d) for x in d.modules())
    with torch.no_grad():
        m.train_mode(False)
        x = torch.rand(2, 1, size, size) * 2 - 1
        assert g(x).shape == x.shape and g.encode(x).shape == (2, 512, 1, 1)
        patches = d(torch.cat([x, x], 1)).shape[-1]
    assert patches == size // 8 - 2  # 70×70 receptive fields: 30×30 logits at 256 px


def test_bad_settings_are_refused():
    for kw, match in (({"image_score": "max"}, "image_score"), ({"test_norm": "batch"}, "test_norm"),
                      ({"decay_epochs": 5}, "decay_epochs"), ({"lambda_l1": -1.0}, "lambda_l1")):
        with pytest.raises(ValueError, match=match):
            smoke(**kw)
    with pytest.raises(ValueError, match="power-of-2"):
        Pix2Pix(data=DataSpec(96, 1))
    with pytest.raises(ValueError, match="≥ 5 levels"):
        Pix2Pix(data=DataSpec(16, 1))


# -- training -----------------------------------------------------------------------------------------------
def test_optimisers_and_schedule():
    m = smoke()
    opts = m.configure_optimizers()
    for o in opts.values():
        assert o.defaults["lr"] == 2e-4 and o.defaults["betas"] == (0.5, 0.999)
    paper = Pix2Pix(data=DataSpec(32, 1))
    scheds = paper.schedulers(paper.configure_optimizers())
    assert len(scheds) == 2 and all(isinstance(s.lr_lambdas[0], LinearDecay) for s in scheds)
    f = scheds[0].lr_lambdas[0]
    assert (f.constant, f.decay) == (100, 100)


def test_generator_loss_is_bce_plus_100_l1():
    m = smoke()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    logits = torch.randn(2, 1, 3, 3)
    total, adv, l1 = m.losses(x, x, logits)
    assert float(l1) == 0.0 and torch.equal(total, adv)
    torch.testing.assert_close(adv, nn.functional.softplus(-logits).mean())  # BCE(D(x, G(x)), 1)
    fake = x + 0.25
    total, adv, l1 = m.losses(x, fake, logits)
    torch.testing.assert_close(l1, torch.tensor(0.25))
    torch.testing.assert_close(total, adv + 25.0)


def test_training_step_updates_d_then_g_once(toy_store):
    m = smoke(DataSpec.of(toy_store))
    opts = m.configure_optimizers()
    step = StepContext(opts, torch.device("cpu"), False, generator=torch.Generator().manual_seed(0))
    before = snapshot(m)
    m.train_mode(True)
    logs = m.training_step(toy_store.split("train").batch([0, 1, 2, 3]), step)
    assert {"loss_d", "loss_g", "g_adv", "g_l1"} <= set(logs) and all(math.isfinite(v) for v in logs.values())
    assert logs["loss_g"] == pytest.approx(logs["g_adv"] + 100 * logs["g_l1"], rel=1e-5)
    assert {k: {int(s["step"]) for s in o.state.values()} for k, o in opts.items()} == {"d": {1}, "g": {1}}
    after = snapshot(m)
    for net in ("discriminator.", "generator."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(net)), net


# -- scoring ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["toy_store", "toy_store_256"])
def test_smoke_trains_and_scores(fixture, request):
    store = request.getfixturevalue(fixture)
    size = DataSpec.of(store).image_size
    m = briefly_trained(store)
    batch = store.split("test").batch([0, 1, 2])
    out = m.score(batch)
    assert out.anomaly_map.shape == (3, 1, size, size) and out.image_score.shape == (3,)
    torch.testing.assert_close(out.anomaly_map, (batch.image - out.reconstruction).abs())
    torch.testing.assert_close(out.image_score, out.anomaly_map.flatten(1).mean(1))  # native: mean |x − x̂|
    assert 0 <= float(out.reconstruction.min()) and float(out.reconstruction.max()) <= 1
    latent = m.build(m.config.replace(image_score="latent"), data=m.data)
    latent.load_state_dict(m.state_dict())
    lat = latent.score(batch)
    torch.testing.assert_close(lat.image_score, out.extras["latent_score"])
    torch.testing.assert_close(lat.extras["residual_score"], out.image_score)
    torch.testing.assert_close(lat.anomaly_map, out.anomaly_map)
    # eq. 13 by hand in the reference's --eval mode: ‖E(x) − E(G(x))‖_F
    m.config = m.config.replace(test_norm="running", test_dropout=False, image_score="latent")
    with torch.no_grad():
        x = to_tanh(batch.image)
        ref = latent_distance(m.generator.encode(x), m.generator.encode(m.generator(x)))
    torch.testing.assert_close(m.score(batch).image_score, ref, rtol=1e-4, atol=1e-5)


def test_test_mode_is_per_slice_and_seeded(toy_store):
    """Default test mode = the reference's test.py (G in training mode on one image): each slice with its own batch
    statistics and its own seeded dropout masks; scores repeat, do not depend on the batch, and leave G untouched."""
    m = briefly_trained(toy_store, ngf=8)
    test = toy_store.split("test")
    before = snapshot(m)
    together = m.score(test.batch([0, 1, 2, 3]))
    again = m.score(test.batch([0, 1, 2, 3]))
    assert torch.equal(together.anomaly_map, again.anomaly_map)
    alone = m.score(test.batch([2]))
    torch.testing.assert_close(alone.anomaly_map[0], together.anomaly_map[2], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in snapshot(m).items())  # running statistics untouched
    b = test.batch([2])
    moved = m.score(SliceBatch(b.image, b.brain_mask, index=b.index + 1))  # another row id: other dropout masks
    assert not torch.equal(moved.anomaly_map, alone.anomaly_map)
    # --eval mode: the plain eval-mode network
    m.config = m.config.replace(test_norm="running", test_dropout=False)
    m.train_mode(False)
    with torch.no_grad():
        ref = (m.generator(to_tanh(b.image)).float() + 1) / 2
    torch.testing.assert_close(m.score(b).reconstruction, ref)
    assert not torch.allclose(m.score(b).reconstruction, alone.reconstruction)


def test_scoring_fields_are_scoring_only(toy_store):
    train, val = toy_store.split("train"), toy_store.split("val")
    smoke_cfg = lambda cls: configure(cls, get_profile("smoke"))  # noqa: E731
    base = model_spec("pix2pix", "", smoke_cfg, train, val, 0)
    for change in ({"image_score": "latent"}, {"test_norm": "running"}, {"test_dropout": False},
                   {"dropout_seed": 3}):
        spec = model_spec("pix2pix", "", lambda c, ch=change: smoke_cfg(c).replace(**ch), train, val, 0)
        assert spec.train_key == base.train_key and spec.score_key != base.score_key, change
    for change in ({"skips": True}, {"lambda_l1": 10.0}, {"ngf": 8}, {"decay_epochs": 1}):
        spec = model_spec("pix2pix", "", lambda c, ch=change: smoke_cfg(c).replace(**ch), train, val, 0)
        assert spec.train_key != base.train_key, change


def test_profiles():
    paper, default, smk = (configure(Pix2Pix, get_profile(p)) for p in ("paper", "default", "smoke"))
    assert (paper.epochs, paper.decay_epochs, paper.batch_size, paper.ngf, paper.ndf) == (200, 100, 1, 64, 64)
    assert (paper.lambda_l1, paper.dropout, paper.skips, paper.image_score) == (100.0, 0.5, False, "native")
    assert (paper.test_norm, paper.test_dropout) == ("per_image", True)
    assert default.decay_epochs <= default.epochs and smk.epochs == 1


# -- behaviour ----------------------------------------------------------------------------------------------
def test_training_makes_g_reproduce_healthy_slices(toy_store):
    """~5 s of CPU training (80 steps) on the 128-px toy store: the encoder–decoder reproduces healthy test slices
    better than the untrained network and its map singles out the bright lesions.

    Bar: healthy mean |x − x̂| ≤ 0.85 × the untrained one's, and pooled pixel AUROC ≥ 0.9 and ≥ 0.3 above the
    untrained one's. Why the untrained network cannot meet it: G starts with N(0, 0.02) weights, so x̂ ≈ mid grey
    whatever the input; its map is about |x − 0.5|, blind to lesions at 0.95 next to tissue at ~0.4 and background
    at 0. Measured (seeds 0, 1): healthy error 0.338 → 0.246–0.252, pixel AUROC 0.53–0.55 → 0.999–1.0.
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    m = Pix2Pix(Pix2PixConfig(ngf=8, ndf=8, batch_size=4, epochs=20, decay_epochs=10), data=DataSpec.of(toy_store))
    batch = toy_store.split("test").batch()
    healthy, lesions = batch.label == 0, batch.lesion_mask.flatten().numpy()

    def evaluate() -> tuple[float, float]:
        amap = m.score(batch).anomaly_map
        return float(amap[healthy].mean()), float(roc_auc_score(lesions, amap.flatten().numpy()))

    before, auroc_before = evaluate()
    Trainer(seed=0, progress=False).fit(m, toy_store.split("train"))
    after, auroc_after = evaluate()
    assert after <= 0.85 * before, (before, after)
    assert auroc_after >= 0.9 and auroc_after - auroc_before >= 0.3, (auroc_before, auroc_after)
