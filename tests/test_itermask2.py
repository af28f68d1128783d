"""IterMask2 through the method contract: variants, training step, τ, the iterative loop, determinism, behaviour."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import methods.itermask2 as im
from benchmark.contract import DataSpec, SliceBatch
from benchmark.profiles import configure, get_profile
from benchmark.trainer import Trainer
from methods.blocks.masks import masked_fraction, random_patch_masks
from methods.blocks.unet import AttentionBlock
from methods.itermask2 import IterMask2
from tests.behaviour import behaviour_phantom
from tests.conftest import toy_slices
from tests.test_unet import randomise_unet

REFERENCE = Path(os.environ.get("PHBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "reference"
# Tiny networks so that every contract check runs in seconds on a loaded 2-core CPU.
# 64-px toy slices (conftest's generator) keep the non-slow tests at a few seconds each.
TINY = dict(epochs=1, max_steps=None, batch_size=4, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(), max_iters=6, oracle_max_passes=1, oracle_keep_fracs=(0.6, 0.4),
            mask_native_size=120)
D64 = DataSpec(64, 1)  # the 64-px toy slices


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from datasets.store import write_store

    return write_store(tmp_path_factory.mktemp("im2") / "store", toy_slices(8, 4, 6, size=64),
                       {"recipe": "toy64@v1", "dataset": "toy"})


def tiny(variant: str = "", **kw) -> IterMask2:
    torch.manual_seed(0)
    return IterMask2.build(IterMask2.Config(**{**TINY, **kw}), variant=variant, data=D64)


class Zeros(nn.Module):
    """Stands in for an untrained network: zero-initialised heads predict exactly 0."""

    def forward(self, x):
        return torch.zeros_like(x[:, :1])


class NoisyCopy(nn.Module):
    """'Reconstructs' the masked input channel: masked pixels keep their noise, so the error there is (x − ε)²."""

    def forward(self, x):
        return x[:, :1]


def brain_batch(n: int = 4, size: int = 64, seed: int = 0) -> SliceBatch:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) - size / 2, torch.arange(size) - size / 2, indexing="ij")
    brain = ((yy / (0.4 * size)) ** 2 + (xx / (0.33 * size)) ** 2 < 1).float()[None, None].repeat(n, 1, 1, 1)
    image = torch.rand((n, 1, size, size), generator=g) * brain
    return SliceBatch(image, brain, torch.zeros_like(brain), torch.zeros(n, dtype=torch.long), torch.arange(n))


# ---------------------------------------------------------------------------------------------------
# metadata


def test_variants_are_the_csv_strings():
    path = REFERENCE / "paper_tables.csv"
    if not path.exists():
        pytest.skip(f"{path} absent")
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "itermask2"]
    t3 = {r["variant"] for r in rows if r["table_id"] == "itermask2-table3" and r["variant"] != "oracle"} - {""}
    grey = {r["variant"] for r in rows if r["table_id"] == "itermask2-table1"} - {""}
    assert set(IterMask2.variants) == t3 | grey == {"-freq", "-spat", "oracle"}
    assert IterMask2.variants["oracle"].protocol["threshold"] == "per_image_best"
    assert IterMask2.variants["oracle"].protocol["label"] == "oracle"
    assert IterMask2.variants["oracle"].uses_lesion_mask and not IterMask2.variants["-freq"].uses_lesion_mask


def test_paper_defaults_and_profiles():
    paper = configure(IterMask2, get_profile("paper"))
    assert (paper.lr, paper.weight_decay, paper.batch_size, paper.max_steps) == (1e-4, 0.0, 32, 90_000)
    assert (paper.model_channels, tuple(paper.channel_mult), paper.hf_radius) == (32, (1, 1, 2, 3, 4), 15.0)
    assert (paper.tau_percentile, paper.first_unmask_frac, paper.shrink_stop) == (80.0, 0.4, 0.01)
    assert im.TAU_PERCENTILE_BY_DATASET["atlas2"] == 70.0
    for prof in ("smoke", "default"):
        cfg = configure(IterMask2, get_profile(prof))
        assert cfg.model_channels < paper.model_channels  # reduced width is a documented deviation
    assert any("profile" in d for d in IterMask2.info.deviations)


def test_networks_per_variant():
    assert set(tiny().networks()) == {"f1", "f2"}
    assert set(tiny("-spat").networks()) == {"f1"}
    assert tiny("-freq").f2.stem.in_channels == 1 and tiny().f2.stem.in_channels == 2
    assert tiny().f1.stem.in_channels == 1


# ---------------------------------------------------------------------------------------------------
# contract: train a step, calibrate, score, round-trip, determinism


@pytest.mark.parametrize("variant", ["", "-freq", "-spat", "oracle"])
def test_every_variant_trains_calibrates_scores_and_round_trips(variant, small_store):
    m = tiny(variant)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in m.networks().items()}
    report = m.fit(small_store.split("train").take(4), small_store.split("val").take(2),  # trains, then calibrates
                   trainer=Trainer(seed=0, progress=False, max_steps_per_epoch=1))
    assert report["steps"] == 1
    for k, net in m.networks().items():  # both optimisers stepped
        assert any(not torch.equal(a, p) for a, p in zip(before[k], net.parameters())), k
    if variant == "-spat":
        assert m.calibration == {}
    else:
        assert m.calibration["tau"] > 0 and m.calibration["tau_percentile"] == 80.0
    batch = small_store.split("test").batch([0, 1, 2])
    out = m.score(batch)
    assert out.anomaly_map.shape == (3, 1, 64, 64) and out.reconstruction.shape == (3, 1, 64, 64)
    assert float((out.anomaly_map * (1 - batch.brain_mask)).abs().max()) == 0  # × brain mask
    expected = ((batch.image - out.reconstruction) ** 2 * batch.brain_mask)
    torch.testing.assert_close(out.anomaly_map, expected)
    torch.testing.assert_close(out.image_score, expected.flatten(1).sum(1) / batch.brain_mask.flatten(1).sum(1))
    if variant == "oracle":
        assert {"oracle_mask", "oracle_reconstruction", "oracle_dice"} <= set(out.extras)
        assert float(out.extras["oracle_dice"].min()) >= 0 and float(out.extras["oracle_dice"].max()) <= 1

    clone = tiny(variant)
    clone.load_state_dict(m.state_dict())
    assert clone.calibration == m.calibration
    again = clone.score(batch)
    torch.testing.assert_close(again.anomaly_map, out.anomaly_map)  # same weights + τ + seed → same maps


def test_scoring_is_seeded_per_slice(small_store):
    m = tiny()
    for net in (m.f1, m.f2):  # a non-zero head, so the noise in the mask reaches the reconstruction
        torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    m.calibration = {"tau": 0.01, "tau_percentile": 80.0}
    test = small_store.split("test")
    full = m.score(test.batch([0, 1, 2]))
    assert torch.equal(full.anomaly_map, m.score(test.batch([0, 1, 2])).anomaly_map)
    alone = m.score(test.batch([2]))  # another batch composition: same noise for slice 2 (BN in eval mode)
    torch.testing.assert_close(alone.anomaly_map[0], full.anomaly_map[2], atol=1e-5, rtol=1e-5)
    other = IterMask2(m.config.replace(seed=1), data=D64)
    other.load_state_dict(m.state_dict())
    assert not torch.equal(other.score(test.batch([0, 1, 2])).reconstruction, full.reconstruction)


def test_uncalibrated_scoring_fails_loudly(small_store):
    with pytest.raises(RuntimeError, match="calibrate"):
        tiny().score(small_store.split("test").batch([0]))


def test_training_is_reproducible_from_the_trainer_seed(small_store):
    train = small_store.split("train").take(4)
    weights = []
    for _ in range(2):
        m = tiny()
        Trainer(seed=3, progress=False, max_steps_per_epoch=1).fit(m, train)
        weights.append(torch.cat([p.detach().flatten() for p in m.f2.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_the_trainers_step_budget_ends_training(small_store):
    """max_steps (the official 90k) is the shared trainer's step budget: training stops there, mid-run."""
    train = small_store.split("train").take(4)
    ref, capped = tiny(epochs=1), tiny(epochs=3, max_steps=1)
    Trainer(seed=0, progress=False, max_steps_per_epoch=1).fit(ref, train)
    report = Trainer(seed=0, progress=False, max_steps_per_epoch=1).fit(capped, train)
    assert report["steps"] == 1 and report["epochs_run"] == 1
    for k in ("f1", "f2"):
        for a, b in zip(ref.networks()[k].parameters(), capped.networks()[k].parameters()):
            assert torch.equal(a, b), k


# ---------------------------------------------------------------------------------------------------
# τ and the iterative loop


def test_tau_is_the_codes_kth_value(monkeypatch):
    """τ equals the official rule, recomputed independently from the recorded validation masks and errors."""
    m = tiny(tau_percentile=80.0)
    m.f2 = NoisyCopy()
    seen = {"m": [], "err": []}
    real_masks = im.random_patch_masks

    def record_masks(*a, **k):
        out = (real_masks(*a, **k) > 0.5).float()  # binary, so that "q-th percentile of masked pixels" is exact
        seen["m"].append(out)
        return out

    real_run = m._run

    def record_run(net, inp):
        out = real_run(net, inp)
        seen["err"].append(out)
        return out

    monkeypatch.setattr(im, "random_patch_masks", record_masks)
    monkeypatch.setattr(m, "_run", record_run)

    class Val:
        def __init__(self, batches):
            self._b = batches

        def __len__(self):
            return sum(len(b) for b in self._b)

        def batches(self, batch_size, device="cpu", **_):
            yield from self._b

    batches = [brain_batch(3, seed=1), brain_batch(2, seed=2)]
    m.calibrate(Val(batches))
    mask_all = torch.cat(seen["m"])
    loss_all = torch.cat([(b.image - r) ** 2 for b, r in zip(batches, seen["err"])])
    k = int(mask_all.shape[0] * mask_all.shape[2] * mask_all.shape[3] - mask_all.double().sum() * 0.20)
    official = torch.kthvalue((loss_all * mask_all).flatten().double(), k).values
    assert m.calibration["tau"] == pytest.approx(float(official), rel=1e-6)
    # with binary masks it is the 80th percentile of the error over the masked pixels
    inside = loss_all[mask_all > 0]
    assert float((inside <= m.calibration["tau"]).double().mean()) == pytest.approx(0.8, abs=1e-3)


def _record_passes(monkeypatch, m):
    masks: list[tuple[list[int], torch.Tensor]] = []
    real = m._f2_pass

    def spy(x, x_hf, mask, rows, gens):
        r, err = real(x, x_hf, mask, rows, gens)
        masks.append((list(rows), mask[rows].clone(), err))
        return r, err

    monkeypatch.setattr(m, "_f2_pass", spy)
    return masks


def test_iterative_loop_shrinks_monotonically_and_stops_below_one_percent(monkeypatch):
    m = tiny(max_iters=100)
    m.f1, m.f2 = Zeros(), NoisyCopy()
    m.calibration = {"tau": 0.04}  # (x − ε)² ≤ 0.04 for a minority of noisy pixels: slow, random shrinking
    batch = brain_batch(4)
    passes = _record_passes(monkeypatch, m)
    out = m.score(batch)
    n = out.extras["n_passes"]
    assert float(out.extras["hit_cap"].sum()) == 0 and int(n.min()) >= 2 and int(n.max()) < 100
    # step 1 keeps the worst 60 % of the brain masked
    first_rows, first, _ = passes[0]
    assert first_rows == [0, 1, 2, 3]
    frac = first.flatten(1).sum(1) / batch.brain_mask.flatten(1).sum(1)
    torch.testing.assert_close(frac, torch.full_like(frac, 0.6), atol=2e-3, rtol=0)
    for img in range(4):
        seq = [mk[rows.index(img)] for rows, mk, _ in passes if img in rows]
        last_err = [err[rows.index(img)] for rows, _, err in passes if img in rows][-1]
        assert len(seq) == int(n[img])
        for a, b in zip(seq, seq[1:]):
            assert bool((b <= a).all())  # nested masks
        sums = torch.stack([s.sum() for s in seq])
        shrink = (sums[:-1] - sums[1:]) / sums[:-1]
        assert bool((shrink >= 0.01).all())  # it only went on while the mask shrank by ≥ 1 %
        torch.testing.assert_close(out.extras["final_mask"][img], seq[-1])
        proposal = (last_err > m.calibration["tau"]).float() * batch.brain_mask[img]
        assert float((seq[-1].sum() - proposal.sum()) / seq[-1].sum()) < 0.01  # ... and stopped below 1 %
    assert out.reconstruction is not None


def test_iteration_cap_is_reported(monkeypatch):
    m = tiny(max_iters=2)
    m.f1, m.f2 = Zeros(), NoisyCopy()
    m.calibration = {"tau": 0.04}
    out = m.score(brain_batch(2))
    assert out.extras["n_passes"].tolist() == [2.0, 2.0] and out.extras["hit_cap"].tolist() == [1.0, 1.0]


def test_empty_brain_gives_a_zero_map():
    m = tiny()
    m.f1, m.f2 = Zeros(), NoisyCopy()
    m.calibration = {"tau": 0.04}
    b = brain_batch(2)
    b.brain_mask[1] = 0
    out = m.score(b)
    assert float(out.anomaly_map[1].abs().sum()) == 0 and out.extras["n_passes"][1] == 0


def test_patch_masks_statistics_and_seeding():
    """§4 sanity numbers: masked brain fraction mean ≈ 0.14 (spec's simulation: 0.14, p10–p90 0.03–0.28)."""
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    brain = (((yy - 64) ** 2 / 50**2 + (xx - 64) ** 2 / 42**2) < 1).float()[None, None].repeat(64, 1, 1, 1)
    m1 = random_patch_masks(brain, torch.Generator().manual_seed(1))
    assert torch.equal(m1, random_patch_masks(brain, torch.Generator().manual_seed(1)))
    assert m1.shape == brain.shape and float(m1.min()) >= 0 and float(m1.max()) <= 1
    assert float((m1 * (1 - brain)).abs().max()) == 0  # restricted to the brain
    assert not torch.equal(m1[0], m1[1])  # fresh per sample
    assert 0.07 < float(masked_fraction(m1, brain).mean()) < 0.22
    assert bool(((m1 > 0) & (m1 < 1)).any())  # soft borders from the 240 → 128 area resize
    assert float(random_patch_masks(torch.zeros(1, 1, 128, 128), torch.Generator().manual_seed(0)).sum()) == 0


# ---------------------------------------------------------------------------------------------------
# scoring speed (issue 17): inference copies in chunks change nothing but float rounding


def randomised(m: IterMask2, seed: int = 0) -> IterMask2:
    """Every weight and BatchNorm statistic random (the zero-initialised heads and residual branches too), so
    that every layer -- the folded norms, the 4-D attention and its head order, f2's noise -- reaches the maps."""
    g = torch.Generator().manual_seed(seed)
    for net in m.networks().values():
        randomise_unet(net, g, weight_std=0.2, mean_std=0.1)
        with torch.no_grad():
            for mod in net.modules():
                if isinstance(mod, AttentionBlock):  # sharp attention: q·k logits of order 10, not a plain mean
                    mod.qkv.weight.mul_(10.0)
    return m


@pytest.mark.parametrize("variant", ["", "-freq"])
def test_fast_scoring_equals_the_trained_modules_up_to_rounding(variant):
    """The default scoring (channels-last copies, 4-D two-head attention, BatchNorm folded, 2 slices per network
    call) gives the masks and pass counts of the trained modules run on the whole batch, and their maps up to
    float rounding."""
    kw = dict(num_heads=2, max_iters=12)
    plain = randomised(tiny(variant, score_networks="plain", score_chunk=0, **kw))
    fast = tiny(variant, score_chunk=2, **kw)
    fast.load_state_dict(plain.state_dict())
    batch = brain_batch(5)
    with torch.no_grad():  # a τ that keeps some of the mask each pass (the median error of one noisy f2 pass)
        x_hf = plain._hf(batch.image)
        r = plain.f2.eval()(plain._f2_input(batch.image, batch.brain_mask, torch.randn_like(batch.image), x_hf))
        err = ((batch.image - r) ** 2)[batch.brain_mask > 0]
    for m in (plain, fast):
        m.calibration = {"tau": float(err.median()), "tau_percentile": 80.0}
    ref, out = plain.score(batch), fast.score(batch)
    assert int(ref.extras["n_passes"].max()) >= 3  # several passes, so that f2's output steers the masks
    assert torch.equal(out.extras["n_passes"], ref.extras["n_passes"])
    assert torch.equal(out.extras["final_mask"], ref.extras["final_mask"])
    torch.testing.assert_close(out.anomaly_map, ref.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reconstruction, ref.reconstruction, atol=1e-5, rtol=0)
    assert set(fast._scoring_nets) == {"f1", "f2"} and not plain._scoring_nets  # each ran its own path


def test_scoring_on_two_worker_threads_equals_one_thread():
    """The CPU workers (one per torch thread) change nothing: masks and pass counts equal, maps within rounding."""
    m = randomised(tiny(num_heads=2, max_iters=8, score_chunk=2))
    batch = brain_batch(7)
    m.calibration = {"tau": 0.05, "tau_percentile": 80.0}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = m.score(batch)
        torch.set_num_threads(2)
        two = m.score(batch)
    finally:
        torch.set_num_threads(before)
    assert int(one.extras["n_passes"].max()) >= 2
    assert torch.equal(two.extras["n_passes"], one.extras["n_passes"])
    assert torch.equal(two.extras["final_mask"], one.extras["final_mask"])
    torch.testing.assert_close(two.anomaly_map, one.anomaly_map, atol=1e-6, rtol=0)


def test_the_inference_copy_follows_the_weights():
    """A weight change (optimiser step, load_state_dict) or a new module rebuilds the scoring copy."""
    m = randomised(tiny())
    m.calibration = {"tau": 0.05, "tau_percentile": 80.0}
    batch = brain_batch(2)
    first = m.score(batch).anomaly_map
    copy_f2 = m._scoring_net("f2")
    assert m._scoring_net("f2") is copy_f2  # unchanged weights: built once
    with torch.no_grad():
        m.f2.out[-1].weight.mul_(2.0)
    assert m._scoring_net("f2") is not copy_f2
    again = m.score(batch).anomaly_map
    assert not torch.allclose(again, first)
    m.f2 = NoisyCopy()
    plain = IterMask2(m.config.replace(score_networks="plain"), data=D64)
    plain.f2 = NoisyCopy()
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(m.score(batch).anomaly_map, plain.score(batch).anomaly_map, atol=1e-5, rtol=0)


def test_scoring_speed_fields_are_runtime_only_and_checked():
    cfg = IterMask2.Config()
    for name in ("score_networks", "score_chunk"):
        assert name not in cfg.training_dict() and name not in cfg.scoring_dict()
    with pytest.raises(ValueError, match="score_networks"):
        tiny(score_networks="compiled")
    with pytest.raises(ValueError, match="score_chunk"):
        tiny(score_chunk=-1)


# ---------------------------------------------------------------------------------------------------
# behaviour


@pytest.mark.slow
def test_training_makes_itermask2_localise_lesions():
    """A short training on the phantom makes the maps localise its inserted lesions; untrained networks cannot.

    Data: the smoke phantom in **T1** at 64 px (36 training slices), narrow UNets, 225 steps of batch 4 and a
    cap of 8 f2 passes: about a minute of CPU on an idle 2-core machine. Bar: over all test slices, the pooled
    pixel AUROC inside the brain rises by ≥ 0.15, and over the whole image by ≥ 0.05. Observed: untrained 0.31
    in the brain and 0.66 over the image; trained with seeds 0/1/2, 0.58/0.59/0.72 and 0.79/0.79/0.85. (After
    100 steps of batch 8, one seed in three did not clear the bar.)
    Why untrained networks cannot pass: every UNet head is zero-initialised, so untrained f1 and f2 predict
    exactly 0. The map is then x²·B, a pure intensity map. T1 lesions (tumour, stroke, MS) are darker than
    white matter, so this map ranks them *below* healthy tissue (AUROC < 0.5 in the brain); only a learned
    model of normal appearance ranks them above. FLAIR/T2 would not work: the phantom's lesions are the
    brightest tissue there, x² alone already scores ≈ 0.94–0.96, and no model could beat that by a margin.
    """
    from sklearn.metrics import roc_auc_score

    store = behaviour_phantom(modality="t1", size=64)
    train, val, test = store.split("train"), store.split("val"), store.split("test")
    cfg = IterMask2.Config(epochs=25, max_steps=None, batch_size=4, lr=1e-3, model_channels=8, channel_mult=(1, 2, 4),
                           num_res_blocks=1, attention_resolutions=(), hf_radius=7.5,
                           mask_native_size=120, max_iters=8)  # radius and mask grid scaled with the image size

    def aurocs(method):
        batch = test.batch()
        amap = method.score(batch).anomaly_map.flatten().numpy()
        y, brain = batch.lesion_mask.flatten().numpy(), batch.brain_mask.flatten().numpy() > 0.5
        return roc_auc_score(y[brain], amap[brain]), roc_auc_score(y, amap)

    torch.manual_seed(0)
    method = IterMask2(cfg, data=D64)
    method.calibrate(val)
    before_brain, before_all = aurocs(method)
    method.fit(train, val, trainer=Trainer(seed=0, progress=False))
    after_brain, after_all = aurocs(method)
    assert before_brain < 0.5, before_brain  # the intensity map ranks dark lesions low
    assert after_brain - before_brain >= 0.15, (before_brain, after_brain)
    assert after_all - before_all >= 0.05, (before_all, after_all)
