"""Cyclic-UNet through the method contract: the checks of tests/test_method_contract.py on stores that carry the
intermediate modality, the training step, the map, the paper defaults, the clear error without an intermediate
modality, the run store, and one behaviour test on the phantom."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import DataSpec, ScoreOutput, SliceBatch
from benchmark.profiles import configure, get_profile
from benchmark.registry import get_method
from benchmark.trainer import StepContext, Trainer
from datasets.store import write_store
from methods.blocks.unet import AttentionBlock, GroupNorm32, UNet
from methods.cyclic_unet import CyclicUNet, CyclicUNetConfig, lr_decay_factor, setups_with_aux
from tests.conftest import toy_slices
from tests.test_aux_modality import with_aux

CPU = torch.device("cpu")
TINY = dict(epochs=1, max_steps=None, batch_size=2, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=())
NO_AUX = "cyclic-unet: needs an intermediate modality"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """conftest's toy slices (128 px and 256 px) with a second contrast as the auxiliary modality, and the
    128-px slices without one."""
    base = tmp_path_factory.mktemp("cyc")
    meta = {"recipe": "toy@v1", "dataset": "toy"}
    return {128: write_store(base / "s128", with_aux(toy_slices()), meta),
            256: write_store(base / "s256", with_aux(toy_slices(4, 2, 4, size=256)), meta),
            "plain": write_store(base / "plain", toy_slices(), meta)}


def smoke(store, seed: int = 0, **kw) -> CyclicUNet:
    torch.manual_seed(seed)
    cfg = configure(CyclicUNet, get_profile("smoke")).replace(epochs=1, batch_size=2, max_steps=None, **kw)
    return CyclicUNet.build(cfg, data=DataSpec.of(store))


def trained(store, seed: int = 0) -> CyclicUNet:
    """The contract suite's budget: two optimiser steps on four training slices."""
    m = smoke(store, seed)
    report = Trainer(seed=seed, progress=False, max_steps_per_epoch=2).fit(m, store.split("train").take(4),
                                                                            store.split("val").take(2))
    assert report["steps"] == 2
    return m


_TRAINED: dict = {}


def get_trained(stores, size: int = 128) -> CyclicUNet:
    if size not in _TRAINED:
        _TRAINED[size] = trained(stores[size])
    return _TRAINED[size]


# -- metadata, defaults ----------------------------------------------------------------------------------------


def test_registered_with_metadata_and_the_official_defaults():
    assert get_method("cyclic-unet") is CyclicUNet
    c = CyclicUNetConfig()
    assert (c.max_steps, c.batch_size, c.lr, c.weight_decay, c.lr_decay_steps, c.lr_decay_factor) == \
           (100_000, 32, 1e-4, 0.0, 150_000, 0.5)
    assert (c.model_channels, tuple(c.channel_mult), c.num_res_blocks, tuple(c.attention_resolutions)) == \
           (32, (1, 1, 2, 3, 4), 2, (32, 16, 8))
    assert (c.dropout, c.num_heads, c.norm_groups, c.ema_decay, c.early_stop_patience) == (0.1, 1, 16, None, None)
    info = CyclicUNet.info
    assert info.paper and info.summary and len(info.deviations) >= 5 and "MMCCD" in info.code
    assert not CyclicUNet.variants
    for profile in ("smoke", "default"):
        cfg = configure(CyclicUNet, get_profile(profile))
        assert cfg.max_steps is None and cfg.model_channels == 8
    assert configure(CyclicUNet, get_profile("paper")) == CyclicUNetConfig()


def test_the_paper_unets_are_the_guided_diffusion_layout():
    m = CyclicUNet(data=DataSpec(128, 1, 1))
    for net in (m.forward_net, m.backward_net):
        assert isinstance(net, UNet) and net.time_embed is None
        norms = [mod for mod in net.modules() if isinstance(mod, nn.GroupNorm)]
        assert norms and all(isinstance(n, GroupNorm32) and n.num_groups == 16 and n.eps == 1e-5 for n in norms)
        widths = sorted({mod.out_channels for mod in net.modules() if isinstance(mod, nn.Conv2d)})
        assert widths[-1] == 128 and 96 in widths and 32 in widths
        attn = [mod for mod in net.modules() if isinstance(mod, AttentionBlock)]
        # attention at 32, 16 and 8 px: 2 encoder + 3 decoder blocks per level, plus the middle block
        assert len(attn) == 3 * (2 + 3) + 1 and all(a.num_heads == 1 for a in attn)
        drops = [mod.p for mod in net.modules() if isinstance(mod, nn.Dropout)]
        assert drops and set(drops) == {0.1}
    assert set(m.networks()) == {"forward", "backward"}


def test_lr_halving_every_150k_steps_like_the_official_loop():
    assert lr_decay_factor(0, 150_000, 0.5) == 1.0
    assert lr_decay_factor(150_000, 150_000, 0.5) == 1.0  # step index 149 999 still runs at lr
    assert lr_decay_factor(150_001, 150_000, 0.5) == 0.5
    assert lr_decay_factor(300_001, 150_000, 0.5) == 0.25
    assert lr_decay_factor(10, None, 0.5) == 1.0
    m = CyclicUNet(CyclicUNetConfig(**TINY, lr_decay_steps=2), data=DataSpec(32, 1, 1))
    opts = m.configure_optimizers()
    lrs = []
    scheds = m.schedulers(opts)
    for _ in range(5):
        lrs.append(opts["forward"].param_groups[0]["lr"])
        for opt in opts.values():
            opt.step()  # no gradients: changes nothing, keeps the optimiser-before-scheduler order
        for s in scheds:
            s.scheduler.step()
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4, 5e-5, 5e-5])


# -- the clear error without an intermediate modality ---------------------------------------------------


def test_no_intermediate_modality_fails_with_one_clear_line(stores):
    with pytest.raises(ValueError, match=NO_AUX) as err:
        CyclicUNet(data=DataSpec.of(stores["plain"]))
    line = str(err.value)
    assert "\n" not in line and "itermask2-isles2015-fold0" in line and "itermask2-brats2021-flair" in line
    assert set(setups_with_aux()) <= set(line.replace(",", " ").split())
    m = smoke(stores[128])  # built for aux, then given slices without
    with pytest.raises(ValueError, match=NO_AUX):
        m.fit(stores["plain"].split("train"), trainer=Trainer(progress=False))
    opts = m.configure_optimizers()
    batch = stores[128].split("train").batch([0, 1])
    with pytest.raises(ValueError, match=NO_AUX):
        m.training_step(dataclasses.replace(batch, aux=None), StepContext(opts, CPU, False))
    # scoring needs only the input
    out = m.score(dataclasses.replace(stores[128].split("test").batch([0]), aux=None))
    assert out.anomaly_map.shape == (1, 1, 128, 128)


# -- training step and map --------------------------------------------------------------------------------


class Affine(nn.Module):
    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        return self.a * x + self.b


def test_training_step_fits_forward_to_aux_and_backward_to_the_input(stores):
    m = CyclicUNet(CyclicUNetConfig(**TINY), data=DataSpec(128, 1, 1))
    m.forward_net, m.backward_net = Affine(2.0, 0.1), Affine(0.5, -0.2)
    batch = stores[128].split("train").batch([0, 1, 2])
    x, mid = batch.image, batch.aux
    want = {"mse_forward": float(F.mse_loss(2.0 * x + 0.1, mid)), "mse_backward": float(F.mse_loss(0.5 * mid - 0.2, x))}
    opts = m.configure_optimizers()
    logs = m.training_step(batch, StepContext(opts, CPU, False))
    assert logs == pytest.approx(want)
    assert float(m.forward_net.a.detach()) != 2.0 and float(m.backward_net.a.detach()) != 0.5  # both stepped


def test_map_is_the_squared_cycle_error_inside_the_binarised_brain(stores):
    m = CyclicUNet(CyclicUNetConfig(**TINY), data=DataSpec(128, 1, 1))
    m.forward_net, m.backward_net = Affine(2.0, 0.1), Affine(0.4, 0.0)  # x_cyc = 0.8 x + 0.04
    batch = stores[128].split("test").batch([0, 1])
    out = m.score(batch)
    x, b = batch.image, (batch.brain_mask > 0).float()
    x_cyc = 0.8 * x + 0.04
    torch.testing.assert_close(out.reconstruction, x_cyc)
    torch.testing.assert_close(out.anomaly_map, (x - x_cyc) ** 2 * b)
    torch.testing.assert_close(out.image_score, ((x - x_cyc) ** 2 * b).flatten(1).sum(1) / b.flatten(1).sum(1))
    torch.testing.assert_close(out.extras["intermediate"], 2.0 * x + 0.1)


def test_untrained_networks_predict_zero(stores):
    """Zero-initialised heads: before training x_cyc = 0 and the map is x² inside the brain."""
    m = smoke(stores[128])
    batch = stores[128].split("test").batch([0])
    out = m.score(batch)
    assert torch.equal(out.reconstruction, torch.zeros_like(batch.image))
    torch.testing.assert_close(out.anomaly_map, batch.image**2 * (batch.brain_mask > 0).float())


def test_step_budget_ends_training_and_ema_is_optional(stores):
    train = stores[128].split("train").take(4)
    m = CyclicUNet(CyclicUNetConfig(**{**TINY, "max_steps": 3, "epochs": 1}), data=DataSpec.of(stores[128]))
    report = Trainer(progress=False).fit(m, train)
    assert report["steps"] == 3 and report["epochs_run"] == 2  # the step budget, not epochs, ends training
    assert m.ema_decays() == {}
    ema = CyclicUNet(CyclicUNetConfig(**TINY, ema_decay=0.9999), data=DataSpec.of(stores[128]))
    assert ema.ema_decays() == {"forward": 0.9999, "backward": 0.9999}


# -- the contract suite's checks, on stores with an intermediate modality --------------------------------------


@pytest.mark.parametrize("size", [128, 256])
def test_fit_score_and_round_trip(stores, size):
    m = get_trained(stores, size)
    test = stores[size].split("test")
    out = m.score(test.batch([0, 1, 2]))
    assert isinstance(out, ScoreOutput) and out.anomaly_map.shape == (3, 1, size, size)
    assert out.image_score.shape == (3,) and torch.isfinite(out.anomaly_map).all()
    assert float(out.anomaly_map.abs().sum()) > 0
    clone = CyclicUNet.build(m.config, data=m.data)
    clone.load_state_dict(m.state_dict())
    for key, net in m.networks().items():
        for (pn, a), (_, b) in zip(net.state_dict().items(), clone.networks()[key].state_dict().items()):
            assert torch.equal(a, b), f"{key}.{pn} differs after load_state_dict"
    assert torch.equal(clone.score(test.batch([0, 1, 2])).anomaly_map, out.anomaly_map)


def test_scores_do_not_depend_on_the_batch(stores):
    m = get_trained(stores)
    test = stores[128].split("test")
    together = m.score(test.batch([0, 1, 2, 3]))
    for i in (0, 3):
        alone = m.score(test.batch([i]))
        torch.testing.assert_close(alone.anomaly_map[0], together.anomaly_map[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.image_score[0], together.image_score[i], rtol=1e-3, atol=1e-5)


def test_same_seed_same_maps(stores):
    a, b = get_trained(stores), trained(stores[128])
    batch = stores[128].split("test").batch([0, 1])
    torch.testing.assert_close(a.score(batch).anomaly_map, b.score(batch).anomaly_map, rtol=0, atol=0)


def test_scoring_does_not_mutate_its_input(stores):
    m = get_trained(stores)
    batch = stores[128].split("test").batch([0, 1])
    before = [t.clone() for t in (batch.image, batch.brain_mask, batch.lesion_mask, batch.aux)]
    m.score(batch)
    for was, now in zip(before, (batch.image, batch.brain_mask, batch.lesion_mask, batch.aux)):
        assert torch.equal(was, now)


def test_lesion_mask_never_reaches_scoring(stores, monkeypatch):
    m = get_trained(stores)
    seen: list[tuple[bool, bool]] = []
    inner = CyclicUNet._score

    def spy(self, batch: SliceBatch) -> ScoreOutput:
        seen.append((batch.lesion_mask is not None or batch.label is not None, batch.aux is not None))
        return inner(self, batch)

    monkeypatch.setattr(CyclicUNet, "_score", spy)
    batch = stores[128].split("test").batch([0, 1])
    first = m.score(batch)
    assert seen == [(False, True)]  # no ground truth; the auxiliary modality is an input and stays
    batch.lesion_mask = 1 - batch.lesion_mask
    assert torch.equal(m.score(batch).anomaly_map, first.anomaly_map)


def test_store_of_another_size_is_refused(stores):
    m = get_trained(stores)
    with pytest.raises(ValueError, match="built for 128"):
        m.score(stores[256].split("test").batch([0]))
    with pytest.raises(ValueError, match="built for 128"):
        m.check_slices(stores[256].split("train"))


def test_score_rejects_nothing_silently(stores):
    m = get_trained(stores)
    batch = stores[128].split("test").batch([0])
    batch.image[0, 0, 10, 10] = float("nan")
    with pytest.raises((ValueError, RuntimeError)):
        m.score(batch)


def test_run_store_trains_once_keyed_by_the_intermediate_modality(stores, tmp_path):
    """Through the runner's path (model_spec → obtain): trained, saved, reloaded with the same maps; another
    intermediate modality content is another model."""
    from benchmark.models import ModelStore, model_spec, obtain

    store = stores[128]
    train, val = store.split("train").take(4), store.split("val").take(2)

    def budget(cls):
        return configure(cls, get_profile("smoke")).replace(epochs=1, batch_size=4)

    spec = model_spec("cyclic-unet", "", budget, train, val, 0)
    assert spec.data.aux_channels == 1
    runs = ModelStore(tmp_path)
    got = obtain(spec, train, val, runs, CPU, progress=False)
    again = obtain(spec, train, val, runs, CPU, progress=False)
    assert got.trained == ["cyclic-unet"] and again.trained == []
    batch = store.split("test").batch([0, 1])
    assert torch.equal(again.method.score(batch).anomaly_map, got.method.score(batch).anomaly_map)
    other = write_store(tmp_path / "other", with_aux(toy_slices(), seed=5), {"recipe": "toy@v1", "dataset": "toy"})
    o_train, o_val = other.split("train").take(4), other.split("val").take(2)
    assert model_spec("cyclic-unet", "", budget, o_train, o_val, 0).train_key != spec.train_key


# -- behaviour ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_makes_the_cycle_localise_lesions(tmp_path_factory):
    """After ~15 s of CPU training on the 32-px smoke phantom, T1 input with FLAIR as the intermediate modality
    (the rule for a non-FLAIR input), the cycle's map localises the inserted lesions clearly better than the
    same networks untrained.

    Bar: pooled pixel AUROC ≥ 0.85 and ≥ 0.25 above the untrained networks', brain-only pixel AUROC ≥ 0.80.
    Why untrained networks cannot meet it: their zero-initialised heads predict 0, so the map is x²·B, an
    intensity map; T1 lesions are darker than white matter, so it ranks them low (measured pooled 0.56,
    brain-only 0.12). Trained (narrow UNets, 12 epochs of batch 8 at lr 3e-3, 48 steps of each net): pooled
    0.96-0.97, brain-only 0.92-0.95 over seeds 0-2. T1 rather than FLAIR input: on FLAIR the lesions are the
    brightest tissue and x² alone already scores ≈ 0.98 (test_dae's reasoning).
    """
    from datasets.adapters.phantom import PhantomAdapter
    from datasets.base import prepare
    from datasets.phantom import TIGHT_SCAN, phantom_sizes, write_phantom
    from datasets.recipes import Recipe, rule_every_brain_slice
    from tests.test_dae import _pixel_auroc

    cache = tmp_path_factory.mktemp("phantom")
    root = write_phantom(cache, scan=TIGHT_SCAN, **phantom_sizes("smoke"))
    rec = Recipe("phantom-t1-aux-flair-32", 1, ("t1",), rule_every_brain_slice(0.05), normalise="p98", size=32,
                 aux_channels=("flair",))
    store = prepare(PhantomAdapter(root), rec, cache_dir=cache / "stores")
    torch.manual_seed(0)
    m = CyclicUNet(CyclicUNetConfig(epochs=12, max_steps=None, batch_size=8, lr=3e-3, model_channels=8,
                                    channel_mult=(1, 2, 4), num_res_blocks=1, attention_resolutions=()),
                   data=DataSpec.of(store))
    test = store.split("test")
    before, _ = _pixel_auroc(m, test)
    Trainer(seed=0, progress=False).fit(m, store.split("train", label=0))
    after, after_brain = _pixel_auroc(m, test)
    assert after >= 0.85 and after - before >= 0.25 and after_brain >= 0.80, (before, after, after_brain)
