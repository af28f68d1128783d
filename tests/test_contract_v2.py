"""Contract v2, one test per capability, with small dummy methods defined here.

The dummies are registered only inside the ``registered`` fixture (``monkeypatch.setitem`` on the method
registry), so they never appear in ``all_methods()`` of another test module or in ``phbench list``.

- a two-stage method: stage order, per-stage epoch / step budgets, hooks, ``val_every``, best-weight restore
  within a stage only, a per-step LR schedule, gradient clipping, EMA weights, resume inside stage 2;
- a dependent method: one upstream trained once for two downstream methods, frozen, keyed into their keys;
- a feature-bank method (``learn`` fills ``fitted``): saved, reloaded, the same maps;
- a scoring-only variant: same train key, own score key and calibration, nothing retrained;
- the score cache: a second table is served with no network pass;
- the lesion mask and labels never reach ``_score`` unless the variant declares it;
- the resolved config is what is built and what the run records.

"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import (DataSpec, Method, MethodConfig, MethodInfo, ScoreOutput, Trainable,
                                Upstream, Variant, runtime, scoring)
from benchmark.models import ModelStore, model_spec, obtain
from benchmark.models import scorer as model_scorer
from benchmark.registry import _REGISTRIES, all_methods, get_method, get_table
from benchmark.trainer import Schedule, Stage, Trainer

INFO = MethodInfo(paper="test dummy", summary="a dummy method of tests/test_contract_v2.py")
CPU = torch.device("cpu")
LEARN_CALLS: Counter = Counter()  # method name -> Method.learn calls
TRAIN_STEPS: Counter = Counter()  # method name -> training_step calls
SCORE_CALLS: Counter = Counter()  # method name -> _score calls
METRICS = ("auroc|image", "auroc_pixel|pooled", "dice|fpr@5%_healthy_brain")


class TinyNet(nn.Module):
    """C → 2 → C channels: a few dozen parameters."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.a = nn.Conv2d(channels, 2, 3, padding=1)
        self.b = nn.Conv2d(2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def weights(module: nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().flatten().clone() for v in module.state_dict().values()])


def residual(x: torch.Tensor, x_hat: torch.Tensor, smooth: int = 1) -> ScoreOutput:
    amap = (x - x_hat).abs().mean(dim=1, keepdim=True)
    if smooth > 1:
        amap = F.avg_pool2d(amap, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    return ScoreOutput(amap, amap.flatten(1).mean(dim=1), x_hat)


# ------------------------------------------------------------------------------------------------------
# dummies
# ------------------------------------------------------------------------------------------------------
@dataclass
class StagedConfig(MethodConfig):
    epochs: int = 99  # unused: both stages carry their own budget
    batch_size: int = 2
    lr: float = 0.05
    amp: bool = False
    val_every: int = 2
    grad_clip_norm: float | None = 0.01
    pretrain_epochs: int = 4
    finetune_steps: int = 5
    finetune_val_every: int | None = None  # None: the config's val_every
    ema: float = 0.0  # EMA decay of "net"; 0 = no EMA


class Staged(Method, Trainable):
    """Stage "pretrain" (SGD, per-step decaying lr) for 4 epochs, then "finetune" (Adam) for 5 steps."""

    name = "t-staged"
    Config = StagedConfig
    info = INFO

    def __init__(self, config: StagedConfig | None = None, **kw):
        super().__init__(config, **kw)
        self.net = TinyNet(self.data.channels).to(self.device)
        self.log: list[tuple] = []  # (stage, epoch, stage_step, global_step, lr of "pre") per training_step
        self.before: list[torch.Tensor] = []  # weights at the start of each training_step
        self.raw: list[torch.Tensor] = []  # weights after each optimiser step
        self.events: list[tuple] = []
        self.grad_norms: list[tuple[str, float]] = []  # what each optimiser's step saw
        self.snap: dict[tuple, torch.Tensor] = {}
        self.val_losses = {("pretrain", 1): 1.0, ("pretrain", 3): 2.0, ("finetune", 1): 10.0}
        self.fail_at: tuple[str, int] | None = None
        self._at: tuple = ("", -1)

    def networks(self):
        return {"net": self.net}

    def configure_optimizers(self):
        opts = {"pre": torch.optim.SGD(self.net.parameters(), lr=self.config.lr),
                "fine": torch.optim.Adam(self.net.parameters(), lr=self.config.lr / 10)}
        for k, opt in opts.items():
            def seen(o, args, kwargs, k=k):
                g = [p.grad.flatten() for grp in o.param_groups for p in grp["params"] if p.grad is not None]
                self.grad_norms.append((k, float(torch.cat(g).norm())))
            opt.register_step_pre_hook(seen)
        return opts

    def schedulers(self, optimizers):
        return [Schedule(torch.optim.lr_scheduler.LambdaLR(optimizers["pre"], lambda s: 0.9 ** s), interval="step")]

    def stages(self):
        return [Stage("pretrain", epochs=self.config.pretrain_epochs),
                Stage("finetune", max_steps=self.config.finetune_steps, val_every=self.config.finetune_val_every)]

    def ema_decays(self):
        return {"net": self.config.ema} if self.config.ema else {}

    def training_step(self, batch, step):
        if self.fail_at == (step.stage, step.stage_step):
            raise KeyboardInterrupt
        self.log.append((step.stage, step.epoch, step.stage_step, step.global_step,
                         step.optimizers["pre"].param_groups[0]["lr"]))
        self.before.append(weights(self.net))
        x = batch.image + 0.05 * torch.randn_like(batch.image)  # the global RNG: a resume must restore it
        loss = ((self.net(x) - batch.image) ** 2).sum()  # summed over pixels: gradient norm ≫ the clip
        out = step.optimize("pre" if step.stage == "pretrain" else "fine", loss)
        self.raw.append(weights(self.net))
        return {"loss": out}

    def validation_loss(self, batch):
        self.events.append(("val", *self._at))
        return self.val_losses.get(self._at, 100.0)

    def on_epoch_end(self, step):
        self._at = (step.stage, step.epoch)
        self.events.append(("epoch_end", step.stage, step.epoch))
        self.snap[self._at] = weights(self.net)

    def on_stage_end(self, step):
        self.events.append(("stage_end", step.stage))
        self.snap[(step.stage, "end")] = weights(self.net)

    def _score(self, batch):
        return residual(batch.image, self.net(batch.image))


@dataclass
class TinyConfig(MethodConfig):
    epochs: int = 1
    batch_size: int = 2
    lr: float = 1e-2
    amp: bool = False
    up_lr: float | None = None  # downstreams: an lr override handed to the upstream
    smooth: int = scoring(1)  # box filter of the map: scoring only
    quantile: float = scoring(0.95)  # calibrated threshold: scoring only
    score_batch_size: int = runtime(4)


class Recon(Method, Trainable):
    """A one-stage reconstruction dummy with a scoring-only and a training variant."""

    name = "t-recon"
    Config = TinyConfig
    info = INFO
    variants = {"smoothed": Variant({"smooth": 5}, description="scoring only: same weights"),
                "fast": Variant({"lr": 0.1}, description="retrained"),
                "per-image threshold": Variant(protocol={"threshold": "per_image_best"},
                                               description="same model and maps, another row of the table")}

    def __init__(self, config: TinyConfig | None = None, **kw):
        super().__init__(config, **kw)
        self.net = TinyNet(self.data.channels).to(self.device)

    def networks(self):
        return {"net": self.net}

    def learn(self, train, val, *, trainer):
        LEARN_CALLS[self.name] += 1
        return super().learn(train, val, trainer=trainer)

    def configure_optimizers(self):
        return {"net": torch.optim.Adam(self.net.parameters(), lr=self.config.lr)}

    def training_step(self, batch, step):
        TRAIN_STEPS[self.name] += 1
        loss = F.mse_loss(self.net(self.features_in(batch.image)), batch.image)
        return {"loss": step.optimize("net", loss)}

    def features_in(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calibrate(self, val):
        maps = torch.cat([self.score(b).anomaly_map for b in val.batches(4)])
        self.calibration = {"threshold": float(torch.quantile(maps.flatten()[::7], self.config.quantile))}

    def _score(self, batch):
        SCORE_CALLS[self.name] += 1
        return residual(batch.image, self.net(self.features_in(batch.image)), self.config.smooth)


class Up(Recon):
    name = "t-up"
    variants = {}


class DownA(Recon):
    """Trainable: a head on the frozen upstream's reconstruction."""

    name = "t-down-a"
    variants = {}

    @classmethod
    def upstreams(cls, config):
        return {"base": Upstream("t-up", overrides={"lr": config.up_lr} if config.up_lr else {})}

    def features_in(self, x):
        return self.upstream["base"].net(x)


class DownB(Method):
    """Training-free: scores with the upstream's reconstruction only."""

    name = "t-down-b"
    Config = TinyConfig
    info = INFO

    @classmethod
    def upstreams(cls, config):
        return DownA.upstreams(config)

    def networks(self):
        return {}

    def _score(self, batch):
        return residual(batch.image, self.upstream["base"].net(batch.image))


@dataclass
class BankConfig(MethodConfig):
    patch: int = 8
    keep: float = 0.25  # fraction of the brain patches kept in the bank
    seed: int = 3


class Bank(Method):
    """A memory bank (no gradient training): a random subset of the training slices' brain patches."""

    name = "t-bank"
    Config = BankConfig
    info = INFO

    def networks(self):
        return {}

    def patches(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, N, C·p·p]
        p = self.config.patch
        return F.unfold(x, p, stride=p).transpose(1, 2)

    def learn(self, train, val, *, trainer):
        LEARN_CALLS[self.name] += 1
        self.check_slices(train)
        image, brain, *_ = train.materialize(self.device)
        feats = self.patches(image).flatten(0, 1)
        inside = self.patches(brain).flatten(0, 1).mean(1) > 0.5
        feats = feats[inside]
        g = torch.Generator().manual_seed(self.config.seed)
        n = max(1, int(self.config.keep * len(feats)))
        self.fitted["bank"] = feats[torch.randperm(len(feats), generator=g)[:n]].to(self.device)
        return {"steps": 0, "bank": n}

    def _score(self, batch):
        b, _, h, w = batch.image.shape
        p = self.config.patch
        d = torch.cdist(self.patches(batch.image), self.fitted["bank"][None]).min(dim=2).values  # [B, N]
        amap = F.interpolate(d.view(b, 1, h // p, w // p), size=(h, w), mode="nearest")
        return ScoreOutput(amap, amap.flatten(1).amax(dim=1))


class Blind(Method):
    """Asserts what reaches ``_score``: no lesion mask and no label unless the variant declares it."""

    name = "t-blind"
    Config = MethodConfig
    info = INFO
    variants = {"oracle": Variant(uses_lesion_mask=True, description="the ground truth itself")}

    def networks(self):
        return {}

    def _score(self, batch):
        SCORE_CALLS[(self.name, self.variant)] += 1
        if self.uses_lesion_mask:
            assert batch.lesion_mask is not None and batch.label is not None
            amap = batch.lesion_mask.float()
        else:
            assert batch.lesion_mask is None and batch.label is None, "ground truth reached _score"
            amap = 1 - batch.image.mean(dim=1, keepdim=True)  # dark = anomalous: anything but the mask
        return ScoreOutput(amap, amap.flatten(1).mean(dim=1))


DUMMIES = (Staged, Recon, Up, DownA, DownB, Bank, Blind)


@pytest.fixture
def registered(monkeypatch):
    all_methods()  # the real methods first: registration below only adds to an imported registry
    for cls in DUMMIES:
        monkeypatch.setitem(_REGISTRIES["method"], cls.name, cls)
    LEARN_CALLS.clear()
    TRAIN_STEPS.clear()
    SCORE_CALLS.clear()
    yield


@pytest.fixture
def data(toy_store):
    return toy_store.split("train").take(8), toy_store.split("val"), toy_store.split("test")


def paper(cls):
    return cls.Config()


# ------------------------------------------------------------------------------------------------------
# a. stages
# ------------------------------------------------------------------------------------------------------
def staged(toy_store, seed: int = 0, **cfg) -> Staged:
    torch.manual_seed(seed)
    return Staged.build(Staged.Config(**cfg), data=DataSpec.of(toy_store))


def test_two_stages_budgets_hooks_validation_best_weights_schedule_and_clip(registered, toy_store, data):
    train, val, _ = data  # 8 slices, batch 2: 4 steps per epoch
    m = staged(toy_store)
    report = Trainer(seed=0, progress=False).fit(m, train, val)

    # stage order and budgets: 4 epochs of pretrain, then 5 finetune steps (one epoch and 1 step of the next)
    assert [r[0] for r in m.log] == ["pretrain"] * 16 + ["finetune"] * 5
    assert [r[1:3] for r in m.log if r[0] == "finetune"] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4)]
    assert [r[3] for r in m.log] == list(range(21))
    assert report["steps"] == 21
    assert (report["stages"]["pretrain"]["epochs_run"], report["stages"]["pretrain"]["steps"]) == (4, 16)
    assert (report["stages"]["finetune"]["epochs_run"], report["stages"]["finetune"]["steps"]) == (2, 5)
    # each stage's own optimiser
    assert [k for k, _ in m.grad_norms] == ["pre"] * 16 + ["fine"] * 5

    # hooks in order; val_every=2 validates after epochs 1 and 3 only (the partial epoch 1 of finetune too)
    assert m.events == [
        ("epoch_end", "pretrain", 0), ("epoch_end", "pretrain", 1), ("val", "pretrain", 1),
        ("epoch_end", "pretrain", 2), ("epoch_end", "pretrain", 3), ("val", "pretrain", 3),
        ("stage_end", "pretrain"),
        ("epoch_end", "finetune", 0), ("epoch_end", "finetune", 1), ("val", "finetune", 1),
        ("stage_end", "finetune")]

    # best weights within a stage: pretrain ends with its epoch-1 weights (val 1.0 < 2.0), finetune starts there
    assert torch.equal(m.snap["pretrain", "end"], m.snap["pretrain", 1])
    assert not torch.equal(m.snap["pretrain", "end"], m.snap["pretrain", 3])
    assert torch.equal(m.before[16], m.snap["pretrain", 1])
    assert report["stages"]["pretrain"]["best_epoch"] == 1
    # ...and never across: finetune's only validation (10.0) is worse than pretrain's best, yet its weights stay
    assert torch.equal(m.snap["finetune", "end"], m.snap["finetune", 1])
    assert torch.equal(weights(m.net), m.raw[-1])
    assert not torch.equal(weights(m.net), m.snap["pretrain", 1])

    # a per-step schedule: the lr of "pre" decays by 0.9 at every step
    assert [r[4] for r in m.log] == pytest.approx([0.05 * 0.9 ** k for k in range(21)], rel=1e-6)

    # grad_clip_norm: every optimiser step sees a gradient norm ≤ 0.01, and clipping was active
    norms = [n for _, n in m.grad_norms]
    assert max(norms) <= 0.01 * (1 + 1e-4) and min(norms) > 0.0099


def test_a_stage_selects_its_best_weights_among_its_own_validations(registered, toy_store, data):
    train, val, _ = data
    m = staged(toy_store, finetune_val_every=1)
    # both finetune validations are worse than pretrain's best; finetune's own best is its epoch 0
    m.val_losses = {("pretrain", 1): 1.0, ("pretrain", 3): 2.0, ("finetune", 0): 5.0, ("finetune", 1): 10.0}
    report = Trainer(seed=0, progress=False).fit(m, train, val)
    assert [e[1:] for e in m.events if e[0] == "val"] == [("pretrain", 1), ("pretrain", 3), ("finetune", 0),
                                                            ("finetune", 1)]
    finetune = report["stages"]["finetune"]
    assert (finetune["best_epoch"], finetune["best_val"]) == (0, 5.0)
    assert torch.equal(weights(m.net), m.snap["finetune", 0])  # stage 2's best: not its last, not stage 1's


def _ema(start: torch.Tensor, steps: list[torch.Tensor], decay: float) -> torch.Tensor:
    s = start.clone().double()
    for w in steps:
        s = decay * s + (1 - decay) * w.double()
    return s


def test_ema_weights_are_left_in_the_network(registered, toy_store, data):
    """EMA over every optimiser step (both stages, ``ema_decays``); the averaged weights are in the network
    at each stage end and at the end. Stage 1's best validation is its last one, so selection agrees."""
    train, val, _ = data
    m = staged(toy_store, ema=0.8)
    m.val_losses = {("pretrain", 1): 2.0, ("pretrain", 3): 1.0, ("finetune", 1): 10.0}
    start = weights(m.net)
    Trainer(seed=0, progress=False).fit(m, train, val)
    assert len(m.raw) == 21
    s16 = _ema(start, m.raw[:16], 0.8)
    torch.testing.assert_close(m.snap["pretrain", "end"].double(), s16, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.before[16].double(), s16, rtol=1e-5, atol=1e-6)  # stage 2 trains from it
    final = _ema(start, m.raw, 0.8)
    torch.testing.assert_close(weights(m.net).double(), final, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(weights(m.net), m.raw[-1], atol=1e-6)  # not the raw weights


def test_ema_of_the_next_stage_starts_from_the_restored_weights(registered, toy_store, data):
    train, val, _ = data
    m = staged(toy_store, ema=0.8)  # stage 1: best at epoch 1 (1.0), worse at epoch 3 (2.0)
    Trainer(seed=0, progress=False).fit(m, train, val)
    restored = m.snap["pretrain", "end"]
    assert torch.equal(m.before[16], restored)
    # stage 2's average of its own steps, from where stage 2 started; not the rejected epochs 2-3 of stage 1
    torch.testing.assert_close(weights(m.net).double(), _ema(restored, m.raw[16:], 0.8), rtol=1e-5, atol=1e-6)


def test_interrupted_two_stage_fit_resumes_in_stage_two_to_the_same_weights(registered, toy_store, data, tmp_path):
    train, val, _ = data
    ref = staged(toy_store, ema=0.8)  # every feature on: 2 optimisers, step schedule, clip, EMA, best restore
    Trainer(seed=0, progress=False).fit(ref, train, val)

    ckpt = tmp_path / "checkpoint.pt"
    first = staged(toy_store, ema=0.8)
    first.fail_at = ("finetune", 4)  # the first step of finetune's epoch 1
    with pytest.raises(KeyboardInterrupt):
        Trainer(seed=0, checkpoint=ckpt, progress=False).fit(first, train, val)
    assert ckpt.exists() and len(first.log) == 20

    resumed = staged(toy_store, seed=123, ema=0.8)  # a new process: other initial weights
    report = Trainer(seed=0, checkpoint=ckpt, progress=False).fit(resumed, train, val)
    assert (report["resumed_from_stage"], report["resumed_from_epoch"]) == ("finetune", 1)
    assert [r[:4] for r in resumed.log] == [("finetune", 1, 4, 20)]
    assert resumed.events == [("epoch_end", "finetune", 1), ("val", "finetune", 1), ("stage_end", "finetune")]
    assert resumed.log[0][4] == pytest.approx(ref.log[20][4])  # the step schedule's state came back
    torch.testing.assert_close(weights(resumed.net), weights(ref.net), rtol=0, atol=1e-7)
    assert report["steps"] == 21 and report["stages"]["pretrain"]["steps"] == 16


# ------------------------------------------------------------------------------------------------------
# b. dependent methods
# ------------------------------------------------------------------------------------------------------
def test_upstream_trains_once_for_two_downstreams_and_is_frozen(registered, data, tmp_path):
    train, val, _ = data
    store, memo = ModelStore(tmp_path), {}
    spec_a = model_spec("t-down-a", "", paper, train, val, 0)
    spec_b = model_spec("t-down-b", "", paper, train, val, 0)
    (_, up_a), = spec_a.upstream
    (_, up_b), = spec_b.upstream
    assert up_a.method == "t-up" and up_a.train_key == up_b.train_key
    # the upstream's training config is part of the downstream's train key (the downstream's own is unchanged)
    other_up = model_spec("t-down-a", "", lambda c: c.Config(lr=0.02) if c is Up else c.Config(), train, val, 0)
    assert other_up.config == spec_a.config and other_up.train_key != spec_a.train_key
    overridden = model_spec("t-down-a", "", lambda c: c.Config(up_lr=0.3) if c is DownA else c.Config(), train, val, 0)
    assert overridden.upstream[0][1].config.lr == 0.3 and overridden.upstream[0][1].train_key != up_a.train_key

    got_a = obtain(spec_a, train, val, store, CPU, progress=False, _memo=memo)
    got_b = obtain(spec_b, train, val, store, CPU, progress=False, _memo=memo)
    # t-down-b learns nothing (no learn override, not Trainable): it gets its own model file like any method
    # but is not reported as trained
    assert got_a.trained == ["t-up", "t-down-a"] and got_b.trained == []
    assert store.model_path(spec_b).is_file()
    assert LEARN_CALLS == {"t-up": 1, "t-down-a": 1}
    assert got_a.method.upstream["base"] is got_b.method.upstream["base"]

    up = got_a.method.upstream["base"]
    on_disk = torch.load(store.model_path(up_a), weights_only=True)["networks"]["net"]
    assert all(torch.equal(v, on_disk[k]) for k, v in up.net.state_dict().items())  # trained, and untouched since
    assert not any(p.requires_grad for p in up.net.parameters()) and not up.net.training
    assert TRAIN_STEPS["t-up"] > 0 and TRAIN_STEPS["t-down-a"] > 0
    assert store.read_training(spec_a)["model"]["upstream"]["base"]["train_key"] == up_a.train_key

    # a new process (new memo, same store): everything loads from disk, nothing trains
    fresh = {}
    again_a = obtain(spec_a, train, val, store, CPU, progress=False, _memo=fresh)
    again_b = obtain(spec_b, train, val, store, CPU, progress=False, _memo=fresh)
    assert again_a.trained == again_b.trained == [] and LEARN_CALLS == {"t-up": 1, "t-down-a": 1}
    batch = data[2].batch([0, 1])
    for old, new in ((got_a, again_a), (got_b, again_b)):
        assert torch.equal(old.method.score(batch).anomaly_map, new.method.score(batch).anomaly_map)


def test_contract_suite_round_trip_accepts_a_dependent_method(registered, toy_store, toy_store_256, monkeypatch):
    import tests.test_method_contract as suite

    monkeypatch.setitem(suite.METHODS, "t-down-a", DownA)
    monkeypatch.setitem(suite.METHODS, "t-up", Up)
    monkeypatch.setattr(suite, "_TRAINED", {})
    monkeypatch.setattr(suite, "_BY_WEIGHTS", {}, raising=False)
    suite.test_fit_score_and_round_trip("t-down-a", "", 128, {128: toy_store, 256: toy_store_256})


# ------------------------------------------------------------------------------------------------------
# c. feature bank
# ------------------------------------------------------------------------------------------------------
def test_feature_bank_is_saved_and_reloaded(registered, data, toy_store, tmp_path):
    train, val, test = data
    store = ModelStore(tmp_path)
    spec = model_spec("t-bank", "", paper, train, val, 0)
    got = obtain(spec, train, val, store, CPU, progress=False, _memo={})
    bank = got.method.fitted["bank"]
    assert got.trained == ["t-bank"] and LEARN_CALLS["t-bank"] == 1
    assert bank.ndim == 2 and bank.shape[1] == 64 and bank.shape[0] == got.training["fit"]["bank"]
    assert torch.equal(torch.load(store.model_path(spec), weights_only=True)["fitted"]["bank"], bank)

    again = obtain(spec, train, val, store, CPU, progress=False, _memo={})
    assert again.trained == [] and LEARN_CALLS["t-bank"] == 1
    assert torch.equal(again.method.fitted["bank"], bank)
    batch = test.batch([0, 1, 2])
    assert torch.equal(again.method.score(batch).anomaly_map, got.method.score(batch).anomaly_map)

    # its size comes from the data: another training set is another model with another bank size
    fewer = toy_store.split("train").take(3)
    small = obtain(model_spec("t-bank", "", paper, fewer, val, 0), fewer, val, store, CPU, progress=False, _memo={})
    assert small.method.fitted["bank"].shape[0] < bank.shape[0] and LEARN_CALLS["t-bank"] == 2


# ------------------------------------------------------------------------------------------------------
# d. scoring-only variant
# ------------------------------------------------------------------------------------------------------
def test_scoring_only_variant_reuses_the_weights_with_its_own_calibration(registered, data, tmp_path):
    train, val, _ = data
    store = ModelStore(tmp_path)
    base = model_spec("t-recon", "", paper, train, val, 0)
    smoothed = model_spec("t-recon", "smoothed", paper, train, val, 0)
    assert smoothed.config.smooth == 5
    assert smoothed.train_key == base.train_key and smoothed.score_key != base.score_key
    assert model_spec("t-recon", "fast", paper, train, val, 0).train_key != base.train_key  # a training field
    # a runtime field changes neither key
    rt = model_spec("t-recon", "", lambda c: c.Config(score_batch_size=1), train, val, 0)
    assert (rt.train_key, rt.score_key) == (base.train_key, base.score_key)

    got = obtain(base, train, val, store, CPU, progress=False)
    var = obtain(smoothed, train, val, store, CPU, progress=False)
    assert got.trained == ["t-recon"] and var.trained == [] and LEARN_CALLS["t-recon"] == 1
    assert torch.equal(weights(var.method.net), weights(got.method.net))
    cal_base = store.score_cache(base).load_calibration()
    cal_var = store.score_cache(smoothed).load_calibration()
    assert cal_base == got.method.calibration and cal_var == var.method.calibration
    assert cal_base["threshold"] != cal_var["threshold"]
    # read back, not refitted: a stored calibration is what the next obtain gets
    store.score_cache(smoothed).save_calibration({"threshold": 123.0})
    assert obtain(smoothed, train, val, store, CPU, progress=False).method.calibration == {"threshold": 123.0}


# ------------------------------------------------------------------------------------------------------
# e. score cache
# ------------------------------------------------------------------------------------------------------
def test_second_table_is_served_from_the_score_cache(registered, data, tmp_path):
    from protocols.suites import run_standard

    train, val, test = data
    store = ModelStore(tmp_path)
    spec = model_spec("t-recon", "", paper, train, val, 0)

    def table(s):
        method = obtain(s, train, val, store, CPU, progress=False).method
        sc = model_scorer(s, method, store, progress=False)
        before = SCORE_CALLS["t-recon"]
        ev = run_standard(sc, test, val, METRICS, {}, progress=False, n_boot=20)
        return ev, sc, SCORE_CALLS["t-recon"] - before

    first, sc1, calls1 = table(spec)
    assert calls1 == math.ceil(len(test) / 4) + math.ceil(len(val) / 4) and sc1.passes == 2
    second, sc2, calls2 = table(spec)
    assert calls2 == 0 and sc2.passes == 0
    pd.testing.assert_frame_equal(pd.DataFrame(second.rows), pd.DataFrame(first.rows))
    assert second.eval_wall_s == first.eval_wall_s  # the wall time of the pass that ran, read back

    changed = model_spec("t-recon", "", lambda c: c.Config(smooth=3), train, val, 0)
    assert changed.score_key != spec.score_key
    third, sc3, calls3 = table(changed)
    assert calls3 == calls1 and sc3.passes == 2 and LEARN_CALLS["t-recon"] == 1


# ------------------------------------------------------------------------------------------------------
# f. no ground truth at scoring
# ------------------------------------------------------------------------------------------------------
def test_scoring_never_sees_the_lesion_mask_unless_the_variant_declares_it(registered, data, toy_store):
    from protocols.suites import run_standard

    _, val, test = data
    assert test.materialize()[2].sum() > 0  # the test split has lesions
    spec = DataSpec.of(toy_store)
    blind = run_standard(Blind.build(data=spec), test, val, METRICS, {}, progress=False, n_boot=20)
    assert SCORE_CALLS[("t-blind", "")] > 0
    oracle = run_standard(Blind.build(variant="oracle", data=spec), test, val, METRICS, {}, progress=False,
                          n_boot=20)
    assert SCORE_CALLS[("t-blind", "oracle")] > 0
    auroc = [{r["metric_id"]: r["value"] for r in ev.rows}["auroc_pixel|pooled"] for ev in (blind, oracle)]
    assert auroc[1] == 1.0 and auroc[0] < 1.0  # the oracle's map is the very mask it was given


# ------------------------------------------------------------------------------------------------------
# g. what runs is what is recorded
# ------------------------------------------------------------------------------------------------------
def test_the_resolved_config_is_built_and_recorded(toy_store):
    from benchmark.profiles import configure, get_profile
    from benchmark.runner import plan_run

    ra, variant = get_method("ra"), "w/o reverse loss"
    smoke = get_profile("smoke")
    base = configure(ra, smoke)
    assert base.reverse_weight > 0
    built = ra.build(base, variant=variant, data=DataSpec.of(toy_store))
    assert built.config.reverse_weight == 0.0 and built.config.channels == base.channels  # profile kept
    with pytest.raises(ValueError, match="variant sets"):
        ra(base, variant=variant)  # an unresolved config would record what did not run

    plan = plan_run(get_table("table1"), "ra", variant, 0, smoke, toy_store)
    assert plan.config == built.config
    assert plan.spec.config == built.config.to_dict() and plan.spec.config["reverse_weight"] == 0.0
    assert (plan.spec.train_key, plan.spec.score_key) == (plan.model.train_key, plan.model.score_key)
    default = plan_run(get_table("table1"), "ra", "", 0, smoke, toy_store)
    assert default.spec.key != plan.spec.key and default.model.train_key != plan.model.train_key


def test_two_variants_of_one_model_are_two_runs(registered, toy_store):
    from benchmark.profiles import get_profile
    from benchmark.runner import plan_run

    table, smoke = get_table("table1"), get_profile("smoke")
    default = plan_run(table, "t-recon", "", 0, smoke, toy_store)
    hinted = plan_run(table, "t-recon", "per-image threshold", 0, smoke, toy_store)
    assert hinted.model.score_key == default.model.score_key  # one model, one set of maps: reused, rightly
    assert hinted.spec.key != default.spec.key  # but two rows of the table, recorded apart


def test_dummies_stay_out_of_the_registry():
    """Runs after the tests above: the fixture's registrations were undone."""
    assert not {c.name for c in DUMMIES} & set(all_methods())


# ------------------------------------------------------------------------------------------------------
# per-stage schedules, scoring with gradients, scoring-code version
# ------------------------------------------------------------------------------------------------------
def test_a_stage_bound_schedule_steps_only_in_its_stage(registered, toy_store, data, monkeypatch):
    train, val, _ = data
    m = staged(toy_store)
    fine_lrs: list[float] = []
    monkeypatch.setattr(Staged, "schedulers", lambda self, opts: [
        Schedule(torch.optim.lr_scheduler.LambdaLR(opts["fine"], lambda s: 0.5 ** s), "step", stage="finetune")])
    inner = Staged.training_step

    def record(self, batch, step):
        fine_lrs.append((step.stage, step.optimizers["fine"].param_groups[0]["lr"]))
        return inner(self, batch, step)

    monkeypatch.setattr(Staged, "training_step", record)
    Trainer(seed=0, progress=False).fit(m, train, val)
    base = m.config.lr / 10
    assert {lr for st, lr in fine_lrs if st == "pretrain"} == {base}  # untouched during stage 1
    assert [lr for st, lr in fine_lrs if st == "finetune"] == pytest.approx([base * 0.5 ** k for k in range(5)])
    monkeypatch.setattr(Staged, "schedulers", lambda self, opts: [
        Schedule(torch.optim.lr_scheduler.LambdaLR(opts["fine"], lambda s: 1.0), "step", stage="no-such-stage")])
    with pytest.raises(ValueError, match="no-such-stage"):
        Trainer(seed=0, progress=False).fit(staged(toy_store), train, val)


class ZSearch(Method):
    """Scores by gradient descent on its input (AnoGAN-style search): needs autograd at scoring time."""

    name = "t-zsearch"
    Config = TinyConfig
    info = INFO
    score_with_grad = True

    def __init__(self, config: TinyConfig | None = None, **kw):
        super().__init__(config, **kw)
        self.net = TinyNet(self.data.channels).to(self.device)

    def networks(self):
        return {"net": self.net}

    def _score(self, batch):
        assert torch.is_grad_enabled() and not any(p.requires_grad for p in self.net.parameters())
        z = batch.image.detach().clone().requires_grad_(True)
        for _ in range(3):
            loss = F.mse_loss(self.net(z), batch.image)
            (grad,) = torch.autograd.grad(loss, z)
            z = (z - 0.5 * grad).detach().requires_grad_(True)
        return residual(batch.image, self.net(z))


def test_scoring_with_gradients_keeps_parameters_frozen(toy_store):
    torch.manual_seed(0)
    m = ZSearch(data=DataSpec.of(toy_store))
    before = weights(m.net)
    out = m.score(toy_store.split("test").batch([0, 1]))
    assert not out.anomaly_map.requires_grad and torch.equal(weights(m.net), before)
    assert all(p.requires_grad for p in m.net.parameters())  # restored for training after scoring
    assert all(p.grad is None for p in m.net.parameters())


def test_scoring_code_version_is_in_the_score_key_only(registered, data, monkeypatch):
    train, val, _ = data
    spec = model_spec("t-recon", "", paper, train, val, 0)
    train_key, score_key = spec.train_key, spec.score_key  # keys are computed from the class when read
    monkeypatch.setattr(Recon, "score_version", 2)
    assert spec.train_key == train_key and spec.score_key != score_key
    monkeypatch.setattr(Recon, "version", 2)
    assert spec.train_key != train_key
