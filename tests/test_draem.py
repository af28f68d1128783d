"""DRAEM and DRAEM_G (methods/draem.py, methods/draem_g.py) and their blocks (methods/blocks/draem.py): the
discriminative U-Net, the focal and SSIM losses checked by hand, the spec's settings, where the AFSC module sits, the
maps, the run store training DRAEM once for both methods, and one behaviour test on the phantom.

Tiny configs (32 px, widths 4–8) keep each test at seconds on a CPU; the contract suite
(tests/test_method_contract.py -k draem) covers every variant at 128/256 px.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from benchmark.contract import DataSpec, SliceBatch
from benchmark.models import ModelStore, model_spec, obtain
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext, Trainer
from datasets.store import write_store
from methods.blocks.afscm import CompressedInput, FourierCompression
from methods.blocks.draem import DiscriminativeUNet, focal_loss, gaussian_window, ssim_loss, ssim_map
from methods.blocks.encdec import EncoderDecoder
from methods.blocks.reconstruction import max_of_mean_filtered
from methods.draem import AFSCM_VARIANT, Draem, DraemConfig
from methods.draem_g import DraemG, DraemGConfig
from tests.behaviour import behaviour_phantom
from tests.conftest import toy_slices

D32 = DataSpec(32, 1)
CPU = torch.device("cpu")
TINY = dict(rec_width=4, disc_width=4, batch_size=4)


def tiny(variant: str = "", **kw) -> Draem:
    torch.manual_seed(0)
    return Draem.build(DraemConfig(**{**TINY, **kw}), variant=variant, data=D32)


def brains(n: int = 4, size: int = 32, seed: int = 0) -> SliceBatch:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2).float()[None, None]
    x = (0.3 + 0.4 * torch.rand(n, 1, size, size, generator=g)) * disc
    return SliceBatch(x, disc.expand(n, 1, size, size).clone(), index=torch.arange(n))


@pytest.fixture(scope="module")
def store32(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("toy32") / "store", toy_slices(8, 4, 4, size=32),
                       {"recipe": "toy@v1", "dataset": "toy32"})


# -- discriminative U-Net -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,cin,cout", [(32, 2, 2), (128, 2, 2), (64, 2, 1)])
def test_discriminative_unet_shapes(size, cin, cout):
    net = DiscriminativeUNet(cin, cout, base_width=4)
    assert net(torch.rand(2, cin, size, size)).shape == (2, cout, size, size)


def test_discriminative_unet_layout_init_and_refused_size():
    b = 4
    net = DiscriminativeUNet(2, 2, base_width=b)
    enc = [lvl[0].out_channels for lvl in net.encoder.levels]
    assert enc == [b * m for m in (1, 2, 4, 8, 8, 8)] and net.stride == 32
    ups = [up[1].out_channels for up in net.ups]
    merges = [(m[0].in_channels, m[3].out_channels) for m in net.merges]
    assert ups == [b * m for m in (8, 4, 2, 1, 1)]
    # concat with the skip of the same resolution: b5 (8b), b4 (8b), b3 (4b), b2 (2b), b1 (b)
    assert merges == [(16 * b, 8 * b), (12 * b, 4 * b), (6 * b, 2 * b), (3 * b, b), (2 * b, b)]
    assert net.head.kernel_size == (3, 3) and net.head.out_channels == 2
    w = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert w.std().item() == pytest.approx(0.02, rel=0.05)  # DRAEM's N(0, 0.02)
    with pytest.raises(ValueError, match="must divide by 32"):
        net(torch.rand(1, 2, 48, 48))


# -- losses ---------------------------------------------------------------------------------------------------------
def test_focal_loss_by_hand():
    eps = 1e-5
    # one pixel per case: logits (0, 0) → p = 0.5; (0, ln 3) → p1 = 0.75
    logits = torch.tensor([0.0, 0.0, 0.0, math.log(3.0)]).view(1, 2, 1, 2)  # pixel 0: (0, 0); pixel 1: (0, ln 3)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)

    def term(p_true: float, p_other: float) -> float:
        pt = (1 - eps) * p_true + eps * p_other + eps
        return -((1 - pt) ** 2) * math.log(pt)

    expected = (term(0.5, 0.5) + term(0.25, 0.75)) / 2  # pixel 0 is class 1 (p 0.5), pixel 1 class 0 (p0 0.25)
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert term(0.5, 0.5) == pytest.approx(0.25 * math.log(2), rel=1e-3)
    sure = torch.tensor([-20.0, 20.0]).view(1, 2, 1, 1)
    assert focal_loss(sure, torch.ones(1, 1, 1, 1)).item() < 1e-9
    assert focal_loss(sure, torch.zeros(1, 1, 1, 1)).item() > 1.0
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(
        -(math.log((1 - eps) * 0.5 + 1.5 * eps) + math.log((1 - eps) * 0.25 + eps * 0.75 + eps)) / 2, rel=1e-5)


def test_ssim_of_identical_images_is_one_and_constants_by_hand():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 32, 32, generator=g)
    assert ssim_loss(a, a.clone()).abs().item() < 1e-6
    # two constant images: inside (window away from the zero padding) σ = 0, so SSIM = (2cd + C1)/(c² + d² + C1)
    c, d, c1 = 0.5, 0.25, (0.01 * 1.0) ** 2
    m = ssim_map(torch.full((1, 1, 32, 32), c), torch.full((1, 1, 32, 32), d))
    assert m[..., 5:-5, 5:-5].flatten().allclose(torch.tensor((2 * c * d + c1) / (c * c + d * d + c1)), atol=1e-5)
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and w.sum().item() == pytest.approx(1.0) and w.argmax().item() == 5 * 11 + 5


def test_ssim_map_matches_scikit_image_away_from_the_border():
    """skimage's Gaussian SSIM (σ 1.5, truncate 3.5 → the same 11 taps, population covariance) equals DRAEM's away
    from the border, where DRAEM zero-pads and skimage reflects."""
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 1, 40, 40, generator=g)
    b = (a + 0.2 * torch.rand(1, 1, 40, 40, generator=g)).clamp(0, 1)
    _, ref = structural_similarity(a[0, 0].double().numpy(), b[0, 0].double().numpy(), gaussian_weights=True,
                                   sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True)
    ours = ssim_map(a, b)[0, 0].double().numpy()
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-5)


def test_ssim_loss_is_differentiable_and_takes_the_range_from_its_first_argument():
    a = torch.rand(1, 1, 16, 16, requires_grad=True)
    b = torch.rand(1, 1, 16, 16)
    ssim_loss(a, b).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    # DRAEM's rule: L = 255 when the first image exceeds 128 (8-bit data), so C1, C2 grow 255²-fold
    # (with a constant 130 against 0 the interior SSIM is C1 / (130² + C1): 3.8e-4 at L = 255, 6e-9 at L = 1)
    m = ssim_map(torch.full((1, 1, 32, 32), 130.0), torch.zeros(1, 1, 32, 32))[..., 16, 16].item()
    c1 = (0.01 * 255) ** 2
    assert m == pytest.approx(c1 / (130.0**2 + c1), rel=1e-3)


# -- settings, networks, variant ------------------------------------------------------------------------------------
def test_defaults_are_the_spec_and_profiles_shrink_them():
    c = DraemConfig()
    assert (c.lr, c.batch_size, c.epochs, c.rec_width, c.disc_width) == (1e-4, 8, 10, 128, 64)
    assert (c.lr_milestones, c.lr_gamma, c.focal_gamma, c.ssim_window, c.clean_prob, c.max_beta) == (
        (0.8, 0.9), 0.2, 2.0, 11, 0.5, 0.8)
    assert c.afscm == "off" and c.texture_dir is None
    assert Draem.variants[AFSCM_VARIANT].overrides == {"afscm": "learned", "afscm_keep": 0.5}
    assert DraemG.variants[AFSCM_VARIANT].overrides == Draem.variants[AFSCM_VARIANT].overrides
    paper = configure(Draem, get_profile("paper"))
    assert (paper.rec_width, paper.disc_width, paper.epochs) == (128, 64, 10)
    smoke = configure(Draem, get_profile("smoke"))
    assert smoke.rec_width <= 8 and smoke.disc_width <= 8 and smoke.epochs <= 2
    m = tiny(epochs=10)
    (sched,) = m.schedulers(m.configure_optimizers())
    assert sorted(sched.milestones) == [8, 9] and sched.gamma == 0.2
    assert "texture_dir" in c.training_dict() and "clean_prob" in c.training_dict()


def test_networks_and_where_the_afsc_module_sits():
    plain = tiny()
    assert isinstance(plain.rec, EncoderDecoder) and isinstance(plain.disc, DiscriminativeUNet)
    assert plain.disc.encoder.levels[0][0].in_channels == 2 and plain.disc.head.out_channels == 2
    with_m = tiny(AFSCM_VARIANT)
    assert isinstance(with_m.rec, CompressedInput) and isinstance(with_m.rec.compression, FourierCompression)
    assert not any(isinstance(mod, FourierCompression) for mod in with_m.disc.modules())
    assert with_m.rec.compression.keep == 0.5 and [s.name for s in with_m.stages()] == ["soft masks",
                                                                                         "binary masks"]
    # the optimiser trains both networks and the mask logits
    (opt,) = with_m.configure_optimizers().values()
    params = {id(p) for grp in opt.param_groups for p in grp["params"]}
    assert id(with_m.rec.compression.logits) in params
    assert all(id(p) in params for p in with_m.disc.parameters())


def test_training_step_feeds_the_segmenter_the_uncompressed_augmented_input():
    m = tiny(AFSCM_VARIANT)
    m.train_mode(True)
    seen = {}
    m.disc.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0].detach().clone()))
    compressed = {}
    m.rec.net.register_forward_hook(lambda mod, inp, out: compressed.setdefault("x", inp[0].detach().clone()))
    batch = brains(4)
    gen = torch.Generator().manual_seed(7)
    expected_aug, mask = m.anomalies(batch.image, torch.Generator().manual_seed(7))
    ctx = StepContext(m.configure_optimizers(), CPU, False, generator=gen)
    logs = m.training_step(batch, ctx)
    assert set(logs) == {"loss", "l2", "ssim", "focal"} and all(math.isfinite(v) for v in logs.values())
    assert torch.equal(seen["x"][:, 1:], expected_aug)  # channel order (reconstruction, augmented input)
    assert not torch.allclose(compressed["x"], expected_aug, atol=1e-3)  # the reconstructive net saw x̂
    assert m.rec.compression.last_sparsity is not None  # δ·L_M was part of the loss


def test_score_map_is_the_segmentation_softmax_and_the_image_score_its_21x21_max():
    m = tiny()
    batch = brains(3)
    out = m.score(batch)
    m.train_mode(False)
    with torch.no_grad():
        rec = m.rec(batch.image)
        probs = torch.softmax(m.disc(torch.cat([rec, batch.image], 1)), dim=1)
    assert torch.allclose(out.anomaly_map, probs[:, 1:], atol=1e-6)
    assert torch.allclose(out.reconstruction, rec, atol=1e-6)
    pooled = F.avg_pool2d(out.anomaly_map, 21, stride=1, padding=10, count_include_pad=True)
    assert torch.allclose(out.image_score, pooled.flatten(1).amax(1), atol=1e-6)
    assert torch.allclose(out.image_score, max_of_mean_filtered(out.anomaly_map))


def test_draem_g_map_is_the_residual_of_the_upstream_reconstruction():
    draem = tiny(AFSCM_VARIANT)
    draem.rec.compression.binarise()  # as at the end of the soft-mask stage
    g = DraemG.build(DraemGConfig(), variant=AFSCM_VARIANT, data=D32, upstream={"draem": draem})
    assert g.networks() == {} and not any(p.requires_grad for p in draem.rec.parameters())
    batch = brains(2)
    out = g.score(batch)
    with torch.no_grad():
        rec = draem.rec.net(draem.rec.compression(batch.image))  # through the frozen binary masks
    assert torch.allclose(out.reconstruction, rec, atol=1e-6)
    assert torch.allclose(out.anomaly_map, (batch.image - rec).abs(), atol=1e-6)  # against the raw input
    assert torch.allclose(out.image_score, max_of_mean_filtered(out.anomaly_map))
    with pytest.raises(RuntimeError, match="no draem upstream"):
        DraemG(DraemGConfig(), data=D32).score(batch)


def test_draem_g_upstream_is_the_draem_of_the_same_rows(store32):
    smoke = lambda c: configure(c, get_profile("smoke"))  # noqa: E731
    train, val = store32.split("train"), store32.split("val")
    for variant in ("", AFSCM_VARIANT):
        spec = model_spec("draem_g", variant, smoke, train, val, 0)
        (name, up), = spec.upstream
        row = model_spec("draem", variant, smoke, train, val, 0)
        assert name == "draem" and up.variant == variant and up.train_key == row.train_key
    plain = model_spec("draem_g", "", smoke, train, val, 0).upstream[0][1]
    assert plain.train_key != model_spec("draem", AFSCM_VARIANT, smoke, train, val, 0).train_key


# -- the run store: DRAEM trained once, DRAEM_G trains nothing --------------------------------------------------------
def test_smoke_runs_train_draem_once_per_variant_and_draem_g_reuses_it(store32, tmp_path, monkeypatch):
    calls: Counter = Counter()
    inner = Draem.learn

    def counted(self, *a, **k):
        calls[self.config.afscm] += 1
        return inner(self, *a, **k)

    monkeypatch.setattr(Draem, "learn", counted)
    smoke = lambda c: configure(c, get_profile("smoke"))  # noqa: E731
    train, val, test = store32.split("train"), store32.split("val"), store32.split("test")
    store, memo = ModelStore(tmp_path), {}
    batch = test.batch([0, 1, 2])
    for variant in ("", AFSCM_VARIANT):
        label = "draem" + (f"/{variant}" if variant else "")
        g_spec = model_spec("draem_g", variant, smoke, train, val, 0)
        got_g = obtain(g_spec, train, val, store, CPU, progress=False, _memo=memo)
        got_d = obtain(model_spec("draem", variant, smoke, train, val, 0), train, val, store, CPU, progress=False,
                       _memo=memo)
        assert got_g.trained == [label] and got_d.trained == []
        draem = got_g.method.upstream["draem"]
        assert not any(p.requires_grad for net in draem.networks().values() for p in net.parameters())
        assert all(torch.equal(v, got_d.method.rec.state_dict()[k]) for k, v in draem.rec.state_dict().items())
        out_d, out_g = got_d.method.score(batch), got_g.method.score(batch)
        assert out_d.anomaly_map.shape == out_g.anomaly_map.shape == (3, 1, 32, 32)
        assert out_d.anomaly_map.min() >= 0 and out_d.anomaly_map.max() <= 1
        assert torch.allclose(out_g.reconstruction, out_d.reconstruction, atol=1e-6)
        assert torch.allclose(out_g.anomaly_map, (batch.image - out_d.reconstruction).abs(), atol=1e-6)
        if variant:
            assert bool(draem.rec.compression.frozen)
    assert calls == {"off": 1, "learned": 1}
    # a new process: everything loads, nothing trains
    again = obtain(model_spec("draem_g", AFSCM_VARIANT, smoke, train, val, 0), train, val, store, CPU,
                   progress=False, _memo={})
    assert again.trained == [] and sum(calls.values()) == 2


# -- behaviour -------------------------------------------------------------------------------------------------------
def _pixel_aurocs(method: Draem, test) -> tuple[float, float, float]:
    """Pooled pixel AUROC of DRAEM's map, and brain-only pixel AUROC of DRAEM's map and of DRAEM_G's residual."""
    batch = test.batch()
    out = method.score(batch)
    y = batch.lesion_mask.flatten().numpy()
    brain = (batch.brain_mask.flatten() > 0.5).numpy()
    seg = out.anomaly_map.flatten().numpy()
    residual = (batch.image - out.reconstruction).abs().flatten().numpy()
    return (float(roc_auc_score(y, seg)), float(roc_auc_score(y[brain], seg[brain])),
            float(roc_auc_score(y[brain], residual[brain])))


@pytest.mark.slow
def test_training_makes_draem_and_draem_g_localise_lesions(tmp_path_factory):
    """After ~10 s of CPU training (100 steps) on the 32-px smoke phantom (T1), both of DRAEM's maps find the
    phantom's lesions, which neither the segmentation nor the residual of the untrained networks does.

    Bars: DRAEM's segmentation map, pooled pixel AUROC ≥ 0.8 and ≥ 0.3 above the untrained map; DRAEM_G's
    residual, brain-only pixel AUROC ≥ 0.75 and ≥ 0.5 above the untrained one. Untrained, the segmentation softmax
    follows the input's structure (pooled 0.36–0.49 over seeds 0–2) and the residual is about the input intensity,
    which on T1 ranks white matter above the darker lesions (brain-only 0.12). Trained (widths 8, lr 1e-3, 25
    epochs of 4 steps): segmentation pooled 0.84–0.94, residual brain-only 0.81–0.92 over seeds 0–2. T1 for the
    same reason as the DAE test: on FLAIR/T2 the lesions are bright, and an intensity-like residual is already good.
    """
    pytest.importorskip("datasets.phantom")
    store = behaviour_phantom(modality="t1", size=32, cache_dir=tmp_path_factory.mktemp("phantom"))
    torch.manual_seed(0)
    m = Draem(DraemConfig(rec_width=8, disc_width=8, lr=1e-3, epochs=25), data=DataSpec.of(store))
    test = store.split("test")
    seg_before, _, res_before = _pixel_aurocs(m, test)
    Trainer(seed=0, progress=False).fit(m, store.split("train", label=0))
    seg_after, _, res_after = _pixel_aurocs(m, test)
    assert seg_after >= 0.8 and seg_after - seg_before >= 0.3, (seg_before, seg_after)
    assert res_after >= 0.75 and res_after - res_before >= 0.5, (res_before, res_after)
    g = DraemG(DraemGConfig(), data=m.data, upstream={"draem": m})  # the same numbers through the method
    batch = test.batch([0, 1])
    assert torch.allclose(g.score(batch).anomaly_map, (batch.image - m.score(batch).reconstruction).abs(), atol=1e-6)
