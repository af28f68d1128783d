"""Cycle-GAN as an anomaly detector (methods/cyclegan.py): the four networks, the superpixel-image domain built when
training starts and sampled unpaired, the generator loss weights (LSGAN, cycle 10, identity 0.5), the image pools,
the cycle-error scores and their scoring-only field, the profiles, and one behaviour test against the untrained
networks. The superpixel images are the real ones (methods/blocks/proxies.py, SLIC), cached in the toy stores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import DataSpec
from benchmark.models import model_spec
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext, Trainer
from methods.anogan import to_tanh
from methods.blocks.proxies import cached_proxies
from methods.blocks.translation import LinearDecay, ResnetBlock, latent_distance
from methods.cyclegan import CycleGAN, CycleGANConfig

SMOKE = dict(configure(CycleGAN, get_profile("smoke")).to_dict())


def smoke(data: DataSpec = DataSpec(), **kw) -> CycleGAN:
    torch.manual_seed(0)
    return CycleGAN(CycleGANConfig(**{**SMOKE, **kw}), data=data)


def with_step(m: CycleGAN, train, seed: int = 0) -> StepContext:
    """What the trainer does before the first step: the SI table, the optimisers (and fresh pools)."""
    m.on_fit_start(train, None)
    return StepContext(m.configure_optimizers(), torch.device("cpu"), False,
                       generator=torch.Generator().manual_seed(seed))


def snapshot(m: CycleGAN) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.clone() for k, net in m.networks().items() for n, t in net.state_dict().items()}


# -- networks -----------------------------------------------------------------------------------------------
def test_paper_networks():
    m = CycleGAN(data=DataSpec(256, 1))
    assert set(m.networks()) == {"g_ab", "g_ba", "d_a", "d_b"}
    for g in (m.g_ab, m.g_ba):
        assert sum(isinstance(x, ResnetBlock) for x in g.modules()) == 9 and g.latent_channels == 256
        assert not any(isinstance(x, (nn.Dropout, nn.BatchNorm2d)) for x in g.modules())
    for d in (m.d_a, m.d_b):
        assert d.blocks[0][0].in_channels == 1 and len(d.blocks) == 4 and d.feature_channels == 512
        norms = [x for x in d.modules() if isinstance(x, nn.InstanceNorm2d)]
        assert len(norms) == 3 and not any(isinstance(x, nn.BatchNorm2d) for x in d.modules())
    assert m.gan.mode == "lsgan" and m.gan.d_factor == 0.5
    assert (m.pools["a"].size, m.pools["b"].size) == (50, 50)


def test_bad_settings_are_refused():
    for kw, match in (({"image_score": "max"}, "image_score"), ({"decay_epochs": 2}, "decay_epochs"),
                      ({"lambda_identity": -0.5}, "lambda"), ({"pool_size": -1}, "pool_size")):
        with pytest.raises(ValueError, match=match):
            smoke(**kw)
    with pytest.raises(ValueError, match="multiple of 4"):
        CycleGAN(data=DataSpec(130, 1))


def test_optimisers_and_schedule():
    m = smoke()
    opts = m.configure_optimizers()
    assert set(opts) == {"g", "d"}
    n_g = sum(p.numel() for p in [*m.g_ab.parameters(), *m.g_ba.parameters()])
    assert sum(p.numel() for g in opts["g"].param_groups for p in g["params"]) == n_g  # one Adam for both Gs
    assert all(o.defaults["lr"] == 2e-4 and o.defaults["betas"] == (0.5, 0.999) for o in opts.values())
    paper = CycleGAN(data=DataSpec(32, 1))
    f = paper.schedulers(paper.configure_optimizers())[0].lr_lambdas[0]
    assert isinstance(f, LinearDecay) and (f.constant, f.decay) == (100, 100)


# -- the superpixel domain ----------------------------------------------------------------------------------
def test_domain_b_is_the_sis_of_random_training_slices(toy_store):
    train = toy_store.split("train")
    m = smoke(DataSpec.of(toy_store))
    batch = train.batch([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="on_fit_start"):
        m.domain_b(batch, StepContext({}, torch.device("cpu"), False))
    step = with_step(m, train)
    sis = torch.from_numpy(cached_proxies(train, "SI", m.proxy_settings))
    draws = [m.domain_b(batch, step) for _ in range(4)]
    picked = []
    for b in draws:
        assert b.shape == batch.image.shape and 0 <= float(b.min()) and float(b.max()) <= 1
        # each is the SI of a training slice (position k in the training set)
        picked += [int(torch.nonzero((sis == b[i]).flatten(1).all(1))[0]) for i in range(len(b))]
    assert len(set(picked)) > 4 and picked[:4] != [0, 1, 2, 3]  # drawn over the set, not the batch's own SIs
    again = with_step(m, train)
    torch.testing.assert_close(m.domain_b(batch, again), draws[0])  # drawn with the trainer's generator
    si = sis[0, 0].numpy()  # a superpixel image: piecewise constant, far fewer values than pixels
    assert len(np.unique(si)) <= 800 and len(np.unique(si)) < len(np.unique(train.batch([0]).image.numpy())) / 4
    m.on_stage_end(again)
    assert m.proxies is None and m.b_rows is None


# -- training -----------------------------------------------------------------------------------------------
def test_generator_loss_weights(toy_store):
    """L_G = LSGAN(D_B(G_AB(a))) + LSGAN(D_A(G_BA(b))) + 10·|G_BA(G_AB(a)) − a| + 10·|G_AB(G_BA(b)) − b|
    + 0.5·10·|G_AB(b) − b| + 0.5·10·|G_BA(a) − a| (the reference's backward_G)."""
    m = smoke(DataSpec.of(toy_store))
    m.train_mode(False)  # instance norm only: the same outputs in both modes
    a = to_tanh(toy_store.split("train").batch([0, 1]).image)
    b = to_tanh(toy_store.split("train").batch([2, 3]).image).flip(-1)
    with torch.no_grad():
        got = m.generator_losses(a, b)
        rec_a, rec_b = m.g_ba(m.g_ab(a)), m.g_ab(m.g_ba(b))
        torch.testing.assert_close(got["cycle_a"], 10 * F.l1_loss(rec_a, a))
        torch.testing.assert_close(got["cycle_b"], 10 * F.l1_loss(rec_b, b))
        torch.testing.assert_close(got["idt_b"], 5 * F.l1_loss(m.g_ab(b), b))
        torch.testing.assert_close(got["idt_a"], 5 * F.l1_loss(m.g_ba(a), a))
        torch.testing.assert_close(got["adv_ab"], (m.d_b(m.g_ab(a)) - 1).square().mean())
        torch.testing.assert_close(got["adv_ba"], (m.d_a(m.g_ba(b)) - 1).square().mean())
        parts = sum(got[k] for k in ("adv_ab", "adv_ba", "cycle_a", "cycle_b", "idt_a", "idt_b"))
        torch.testing.assert_close(got["total"], parts)
        m.config = m.config.replace(lambda_identity=0.0)
        none = m.generator_losses(a, b)
    assert float(none["idt_a"]) == float(none["idt_b"]) == 0.0


def test_training_step_updates_gs_then_ds_and_fills_the_pools(toy_store):
    train = toy_store.split("train")
    m = smoke(DataSpec.of(toy_store))
    step = with_step(m, train)
    before = snapshot(m)
    m.train_mode(True)
    logs = m.training_step(train.batch([0, 1, 2, 3]), step)
    assert {"loss_g", "loss_d", "cycle_a", "cycle_b", "idt_a", "idt_b", "adv_ab", "adv_ba"} <= set(logs)
    assert all(math.isfinite(v) for v in logs.values())
    opts = step.optimizers
    assert {k: {int(s["step"]) for s in o.state.values()} for k, o in opts.items()} == {"g": {1}, "d": {1}}
    after = snapshot(m)
    for net in m.networks():
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(net + ".")), net
    assert len(m.pools["a"]) == len(m.pools["b"]) == 4
    with_step(m, train)  # a new fit starts with empty pools
    assert len(m.pools["a"]) == 0


def test_training_is_seeded(toy_store):
    """Unpaired draws and pool swaps come from the trainer's generator: two fits with one seed agree exactly."""
    train = toy_store.split("train").take(8)
    runs = []
    for _ in range(2):
        m = smoke(DataSpec.of(toy_store), batch_size=2, pool_size=2)  # 4 steps: the pools fill and then swap
        Trainer(seed=3, progress=False).fit(m, train)
        runs.append(m.score(toy_store.split("test").batch([0, 1])).anomaly_map)
    assert torch.equal(*runs)


# -- scoring ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["toy_store", "toy_store_256"])
def test_smoke_trains_and_scores(fixture, request):
    store = request.getfixturevalue(fixture)
    size = DataSpec.of(store).image_size
    m = smoke(DataSpec.of(store))
    report = Trainer(seed=0, progress=False).fit(m, store.split("train").take(8))
    assert report["steps"] >= 1 and m.proxies is None  # the SI table is released after training
    batch = store.split("test").batch([0, 1, 2])
    out = m.score(batch)
    assert out.anomaly_map.shape == (3, 1, size, size) and out.image_score.shape == (3,)
    torch.testing.assert_close(out.anomaly_map, (batch.image - out.reconstruction).abs())
    torch.testing.assert_close(out.image_score, out.anomaly_map.flatten(1).mean(1))
    with torch.no_grad():  # the cycle I → G_AB(I) → G_BA(G_AB(I)) and eq. 13 with G_AB's encoder, by hand
        x = to_tanh(batch.image)
        rec = m.g_ba(m.g_ab(x))
        torch.testing.assert_close(out.reconstruction, (rec + 1) / 2)
        ref = latent_distance(m.g_ab.encode(x), m.g_ab.encode(rec))
    torch.testing.assert_close(out.extras["latent_score"], ref, rtol=1e-4, atol=1e-5)
    latent = CycleGAN.build(m.config.replace(image_score="latent"), data=m.data)
    latent.load_state_dict(m.state_dict())
    lat = latent.score(batch)
    torch.testing.assert_close(lat.image_score, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lat.extras["residual_score"], out.image_score)


def test_scoring_field_is_scoring_only(toy_store):
    train, val = toy_store.split("train"), toy_store.split("val")
    smoke_cfg = lambda cls: configure(cls, get_profile("smoke"))  # noqa: E731
    base = model_spec("cycle-gan", "", smoke_cfg, train, val, 0)
    spec = model_spec("cycle-gan", "", lambda c: smoke_cfg(c).replace(image_score="latent"), train, val, 0)
    assert spec.train_key == base.train_key and spec.score_key != base.score_key
    for change in ({"lambda_identity": 0.0}, {"pool_size": 0}, {"n_blocks": 3}, {"slic_segments": 400}):
        spec = model_spec("cycle-gan", "", lambda c, ch=change: smoke_cfg(c).replace(**ch), train, val, 0)
        assert spec.train_key != base.train_key, change


def test_profiles():
    paper, default, smk = (configure(CycleGAN, get_profile(p)) for p in ("paper", "default", "smoke"))
    assert (paper.epochs, paper.decay_epochs, paper.batch_size, paper.ngf, paper.ndf, paper.n_blocks) == (
        200, 100, 1, 64, 64, 9)
    assert (paper.lambda_a, paper.lambda_b, paper.lambda_identity, paper.pool_size) == (10.0, 10.0, 0.5, 50)
    assert (paper.slic_segments, paper.slic_compactness, paper.image_score) == (800, 0.1, "native")
    assert default.decay_epochs <= default.epochs and smk.epochs == 1


# -- behaviour ----------------------------------------------------------------------------------------------
def test_training_makes_the_cycle_reproduce_healthy_slices(toy_store):
    """~12 s of CPU training (32 steps) on the 128-px toy store: the cycle image → SI → image reproduces healthy
    test slices far better than the untrained networks, and its map singles out the bright lesions.

    Bar: healthy mean |I − Î| ≤ 0.5 × the untrained one's, and pooled pixel AUROC ≥ 0.95. Why the untrained networks
    cannot meet the first: with N(0, 0.02) weights G_BA(G_AB(I)) is about mid grey whatever I is, so the healthy
    error is about mean |I − 0.5| (~0.3). Measured (seeds 0, 1; 40 steps): healthy error 0.29–0.33 → 0.085–0.13,
    pixel AUROC 0.65–0.96 → 1.0.
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    m = CycleGAN(CycleGANConfig(ngf=4, ndf=8, n_blocks=2, batch_size=4, epochs=8, decay_epochs=4),
                 data=DataSpec.of(toy_store))
    batch = toy_store.split("test").batch()
    healthy, lesions = batch.label == 0, batch.lesion_mask.flatten().numpy()

    def evaluate() -> tuple[float, float]:
        amap = m.score(batch).anomaly_map
        return float(amap[healthy].mean()), float(roc_auc_score(lesions, amap.flatten().numpy()))

    before, _ = evaluate()
    Trainer(seed=0, progress=False).fit(m, toy_store.split("train"))
    after, auroc_after = evaluate()
    assert after <= 0.5 * before and auroc_after >= 0.95, (before, after, auroc_after)
