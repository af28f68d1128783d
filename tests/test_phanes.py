"""PHANES (methods/phanes.py) and its AOT-GAN blocks (methods/blocks/aotgan.py).

The AOT generator and SM-PatchGAN at the spec's widths (parameter counts, shapes, dilation rates); the mask
pipeline of eq. 3 on hand-made maps (threshold, growth, hole filling); the losses; the training step's quirks
(no adversarial gradient to G unless ``adv_to_G``); the GT variant; the RA upstream trained once and frozen; and a
behaviour test on the phantom. Tiny configs (64 px, narrow widths, random LPIPS/VGG trunks) keep each test at
seconds on a CPU; the contract suite (tests/test_method_contract.py -k phanes) covers every variant at 128/256 px.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from benchmark.contract import DataSpec, SliceBatch
from benchmark.models import ModelStore, model_spec, obtain
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext, Trainer
from methods.blocks import aotgan as A
from methods.phanes import Phanes, PhanesConfig, binarise_and_grow, coarse_residual, synthetic_ellipse_masks
from methods.ra import RA, RAConfig
from tests.behaviour import behaviour_phantom

D64 = DataSpec(64, 1)
CPU = torch.device("cpu")
TINY_RA = dict(channels=(8, 8, 16, 16, 16), z_dim=8, force_random_lpips=True, augment=False)
TINY = dict(gen_widths=(8, 8, 16), aot_blocks=1, disc_widths=(8, 8, 8, 8), force_random_lpips=True,
            force_random_vgg=True, vgg_size=32, batch_size=2, augment=False)


def tiny(variant: str = "", size: int = 64, seed: int = 0, **kw) -> Phanes:
    torch.manual_seed(seed)
    data = DataSpec(size, 1)
    ra = RA(RAConfig(**TINY_RA), data=data)
    return Phanes.build(PhanesConfig(**{**TINY, **kw}), variant=variant, data=data, upstream={"ra": ra})


def images(n: int = 2, size: int = 64, seed: int = 0, lesion: bool = True) -> SliceBatch:
    """Smooth random images; a dark 8×8 square 'lesion' with its mask when ``lesion``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, size // 8, size // 8, generator=g) * 0.5 + 0.3
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    les = torch.zeros_like(x)
    if lesion:
        les[:, :, 20:28, 30:38] = 1
        x = torch.where(les > 0, torch.full_like(x, 0.05), x)
    return SliceBatch(x, torch.ones_like(x), les, (les.flatten(1).amax(1) > 0).long(), torch.arange(n) + 10)


def step_context(m: Phanes, seed: int = 0) -> StepContext:
    return StepContext(m.configure_optimizers(), CPU, False, generator=torch.Generator().manual_seed(seed))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- AOT-GAN blocks -----------------------------------------------------------------------------------------------
def test_full_size_generator_and_discriminator_match_the_spec():
    g = A.AOTGenerator(2, 1)  # §4.1: (64, 128, 256), 8 AOT blocks at dim 256, rates (1, 2, 4, 8)
    conv = lambda cin, cout, k, bias=True: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    block = 4 * conv(256, 64, 3) + 2 * conv(256, 256, 3)
    expected = (conv(2, 64, 7) + conv(64, 128, 4) + conv(128, 256, 4) + 8 * block
                + conv(256, 128, 3) + conv(128, 64, 3) + conv(64, 1, 3))
    assert n_params(g) == expected
    assert len(g.middle) == 8 and all(b.rates == (1, 2, 4, 8) for b in g.middle)
    x = torch.rand(1, 1, 64, 64)  # 64 px keeps this fast; the AOT features are 1/4 of the side (32 at 128 px)
    m = torch.zeros_like(x)
    with torch.no_grad():
        assert g.encoder(torch.cat([x, m], 1)).shape == (1, 256, 16, 16)
        out = g(x, m)
    assert out.shape == (1, 1, 64, 64) and out.abs().max() <= 1  # tanh
    x = torch.rand(2, 1, 128, 128)
    d = A.SMPatchDiscriminator(1)  # §4.3: SN convs without bias 1→64→128→256→512, plain 512→1 head
    assert n_params(d) == (conv(1, 64, 4, False) + conv(64, 128, 4, False) + conv(128, 256, 4, False)
                           + conv(256, 512, 4, False) + conv(512, 1, 4))
    with torch.no_grad():
        assert d(x).shape == (2, 1, 14, 14)  # 14×14 patches at 128 px
    sn = [m for m in d.conv if isinstance(m, torch.nn.Conv2d) and hasattr(m, "parametrizations")]
    assert len(sn) == 4 and not hasattr(d.conv[-1], "parametrizations")


def test_aot_block_branches_use_the_dilation_rates_and_keep_the_shape():
    blk = A.AOTBlock(16, (1, 2, 4, 8))
    for rate, branch in zip((1, 2, 4, 8), blk.branches):
        pad, conv = branch[0], branch[1]
        assert pad.padding == (rate,) * 4 and conv.dilation == (rate, rate) and conv.padding == (0, 0)
        assert (conv.in_channels, conv.out_channels) == (16, 4)
    x = torch.rand(3, 16, 20, 20)
    assert blk(x).shape == x.shape
    # functionally: a branch whose kernel is a one-hot at its top-left tap reads the input r pixels up-left
    conv = blk.branches[2][1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
        out = blk.branches[2](x)
    torch.testing.assert_close(out[:, 0, 4:, 4:], x[:, 0, :-4, :-4].clamp_min(0))
    with pytest.raises(ValueError, match="divisible"):
        A.AOTBlock(18, (1, 2, 4, 8))


def test_gate_standardisation_is_aots_layer_norm():
    g = torch.randn(2, 3, 5, 5)
    mean, std = g.mean((2, 3), keepdim=True), g.std((2, 3), keepdim=True) + 1e-9
    torch.testing.assert_close(A.aot_gate_norm(g), 5 * (2 * (g - mean) / std - 1))


def test_generator_refuses_images_too_small_for_its_rates():
    with pytest.raises(ValueError, match="reflection"):
        A.AOTGenerator(2, 1, (8, 8, 16), 1, (1, 2, 4, 8)).check_size(32)
    A.AOTGenerator(2, 1, (8, 8, 16), 1, (1, 2, 4, 8)).check_size(64)


def test_smgan_target_and_losses():
    m = torch.zeros(1, 1, 40, 40)
    m[..., 10:20, 15:30] = 1
    t1 = torch.arange(71, dtype=torch.float64) - 35
    k = torch.exp(-t1 ** 2 / 200.0)
    k = (k / k.sum()).float()
    ref = F.conv2d(m, (k[:, None] * k[None, :])[None, None], padding=35)  # AOT's 2-D kornia blur, zero padding
    torch.testing.assert_close(A.smgan_target(m), ref, rtol=1e-5, atol=1e-6)
    d_real = torch.zeros(1, 1, 4, 4)
    target = A.smgan_target(m)
    # D that outputs exactly the targets has zero loss (its map is upsampled bilinearly to the mask size)
    assert float(A.smgan_discriminator_loss(target, torch.zeros_like(m), m)) < 1e-12
    loss = A.smgan_discriminator_loss(torch.zeros(1, 1, 4, 4), d_real + 1, m)
    torch.testing.assert_close(loss, F.mse_loss(torch.zeros_like(m), target) + 1.0)
    torch.testing.assert_close(A.smgan_generator_loss(torch.full((1, 1, 4, 4), 0.5), (40, 40)), torch.tensor(0.25))


def test_gram_style_and_perceptual_losses():
    f = torch.randn(2, 3, 4, 5)
    flat = f.reshape(2, 3, 20)
    torch.testing.assert_close(A.gram_matrix(f), flat @ flat.transpose(1, 2) / 60)
    a, b = {"t": f}, {"t": f.flip(0)}
    torch.testing.assert_close(A.style_loss(a, b, ["t"]), F.l1_loss(A.gram_matrix(f), A.gram_matrix(f.flip(0))))
    torch.testing.assert_close(A.perceptual_loss(a, b, ["t"], [2.0]), 2 * F.l1_loss(f, f.flip(0)))
    assert float(A.style_loss(a, a, ["t"])) == 0.0


# -- the mask pipeline (eq. 3, spec §3) -----------------------------------------------------------------------------
def test_binarise_grow_and_fill_on_a_hand_made_map():
    """τ = 0.3: a 6×6 block grows by exactly one pixel on every side (8×8, corners included), an isolated pixel
    stays one pixel (its own blurred value 0.110 > 0.1; its neighbours' 0.078 < 0.1), a one-pixel hole inside a
    block is filled, and values at or below τ never seed the mask. The same as scipy's gaussian_filter(σ 1.2)."""
    a = torch.zeros(1, 1, 40, 40)
    a[0, 0, 5:11, 5:11] = 0.5  # 6×6 block
    a[0, 0, 30, 30] = 0.9  # isolated pixel
    a[0, 0, 20:25, 20:25] = 0.4  # 5×5 block ...
    a[0, 0, 22, 22] = 0.1  # ... with a sub-threshold hole
    a[0, 0, 30, 5:12] = 0.3  # exactly τ: not above it
    m = binarise_and_grow(a, 0.3)
    expected = torch.zeros(40, 40)
    expected[4:12, 4:12] = 1
    expected[30, 30] = 1
    expected[19:26, 19:26] = 1
    torch.testing.assert_close(m[0, 0], expected, rtol=0, atol=0)
    ref = ndimage.gaussian_filter((a[0, 0].numpy() > 0.3).astype(np.float64), 1.2) > 0.1
    assert np.array_equal(m[0, 0].numpy() > 0, ref)
    # one τ per image
    two = torch.cat([a, a])
    per_image = binarise_and_grow(two, torch.tensor([0.3, 0.45]))
    assert torch.equal(per_image[0], m[0])
    assert per_image[1, 0, 4:12, 4:12].sum() == 64 and per_image[1, 0, 19:26, 19:26].sum() == 0


def test_coarse_residual_is_clahe_difference_over_its_95th_percentile_clipped():
    b = images(2, lesion=True)
    x_cph = images(2, lesion=False).image
    out = coarse_residual(b.image, x_cph)
    r = out["residual"]
    assert r.shape == b.image.shape and float(r.min()) >= 0 and float(r.max()) <= 1
    raw = (out["eq_cph"] - out["eq_x"]).abs()
    for i in range(2):
        q = torch.quantile(raw[i].flatten(), 0.95)
        torch.testing.assert_close(r[i], (raw[i] / (q + 1e-8)).clamp(max=1))
        assert float((r[i] == 1).float().mean()) >= 0.045  # the top ~5 % saturate (linear interpolation)
    same = coarse_residual(b.image, b.image)["residual"]
    assert float(same.abs().max()) == 0.0


def test_coarse_map_variants_use_the_clahe_or_the_raw_images(monkeypatch):
    m = tiny()
    seen = []
    import methods.phanes as P

    def spy(model, a, b):
        seen.append((a, b))
        return torch.ones_like(a)

    monkeypatch.setattr(P, "lpips_map", spy)
    b = images(2)
    x_cph = images(2, lesion=False).image
    a_clahe = m.coarse_map(b.image, x_cph, "clahe")
    parts = coarse_residual(b.image, x_cph)
    torch.testing.assert_close(seen[-1][0], parts["eq_x"])
    m.coarse_map(b.image, x_cph, "raw")
    torch.testing.assert_close(seen[-1][0], b.image)
    torch.testing.assert_close(a_clahe, parts["residual"])  # LPIPS ≡ 1 here: the map is the residual


def test_synthetic_training_masks_follow_generate_masks():
    g = torch.Generator().manual_seed(0)
    m = synthetic_ellipse_masks(64, 128, g, CPU)
    assert m.shape == (64, 1, 128, 128) and set(m.unique().tolist()) <= {0.0, 1.0}
    rows, cols = m[:, 0].sum(0).nonzero(as_tuple=True)
    # centres in [32, 96); semi-axes mostly 2–6 px with a tail: nothing far outside the centre box
    assert rows.min() >= 32 - 20 and rows.max() <= 95 + 20 and cols.min() >= 32 - 20 and cols.max() <= 95 + 20
    frac = m.flatten(1).mean(1)
    assert float(frac.min()) > 0 and 0.005 < float(frac.mean()) < 0.06
    again = synthetic_ellipse_masks(64, 128, torch.Generator().manual_seed(0), CPU)
    assert torch.equal(m, again)


# -- training --------------------------------------------------------------------------------------------------
def test_training_step_updates_g_and_d_and_never_ra():
    m = tiny()
    m.fitted["tau_train"] = torch.tensor(0.2)
    ra_before = {k: v.clone() for k, v in m.ra.encoder.state_dict().items()}
    g0 = [p.detach().clone() for p in m.generator.parameters()]
    d0 = [p.detach().clone() for p in m.discriminator.parameters()]
    m.train_mode(True)
    logs = m.training_step(images(2), step_context(m))
    assert {"loss_g", "loss_d", "l1", "style", "perceptual", "mask_fraction"} <= set(logs)
    assert "adv" not in logs and all(np.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, p) for a, p in zip(g0, m.generator.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(d0, m.discriminator.parameters()))
    assert all(torch.equal(v, m.ra.encoder.state_dict()[k]) for k, v in ra_before.items())
    assert not m.ra.encoder.training and not any(p.requires_grad for p in m.ra.encoder.parameters())


@pytest.mark.parametrize("adv", [False, True])
def test_generator_update_ignores_d_unless_adv_to_g(adv):
    """Official PHANES: the SM-PatchGAN term is never back-propagated into G, so G's update does not depend on
    D at all; with adv_to_G (AOT-GAN) it does."""
    def g_after(d_seed: int) -> list[torch.Tensor]:
        m = tiny(adv_to_G=adv)
        m.fitted["tau_train"] = torch.tensor(0.2)
        torch.manual_seed(d_seed)
        for p in m.discriminator.parameters():
            p.data.normal_(0, 0.05)
        m.train_mode(True)
        m.training_step(images(2), step_context(m))
        return [p.detach().clone() for p in m.generator.parameters()]

    a, b = g_after(1), g_after(2)
    same = all(torch.equal(x, y) for x, y in zip(a, b))
    assert same is (not adv)


def test_learn_fixes_tau_train_on_the_healthy_validation_maps(toy_store):
    m = tiny(size=128, epochs=1)
    val = toy_store.split("val")
    report = m.learn(toy_store.split("train").take(2), val, trainer=Trainer(seed=0, progress=False))
    assert report["tau_train"] == pytest.approx(m.pooled_quantile(val, 0.95, "clahe"))
    assert float(m.fitted["tau_train"]) == pytest.approx(report["tau_train"])
    fixed = tiny(size=128, epochs=1, train_threshold=0.1)
    assert fixed.learn(toy_store.split("train").take(2), val, trainer=Trainer(seed=0, progress=False))[
        "tau_train"] == pytest.approx(0.1)


# -- calibration, scoring, variants ------------------------------------------------------------------------------
def test_calibrated_tau_is_the_99th_percentile_of_pooled_healthy_validation_maps(toy_store):
    m = tiny(size=128)
    val = toy_store.split("val")
    m.calibrate(val)
    pooled = []
    with torch.no_grad():
        for b in val.batches(4):
            pooled.append(m.coarse_map(b.image, m.ra.reconstruct(b).clamp(0, 1), "clahe").flatten())
    assert m.calibration["tau"] == pytest.approx(float(np.quantile(torch.cat(pooled).double().numpy(), 0.99)))
    per_image = tiny(size=128, variant="per-image threshold")
    per_image.calibrate(val)
    assert per_image.calibration == {}
    with pytest.raises(RuntimeError, match="not calibrated"):
        tiny(size=128).score(toy_store.split("test").batch([0]))


def test_map_is_zero_outside_the_mask_and_per_image_rule_masks_about_five_percent(toy_store):
    m = tiny(size=128, variant="per-image threshold")
    out = m.score(toy_store.split("test").batch([0, 1, 2]))
    mask = out.extras["mask"].bool()
    assert float(out.anomaly_map[~mask].abs().max()) == 0.0
    assert torch.equal(out.reconstruction[~mask], toy_store.split("test").batch([0, 1, 2]).image[~mask])
    pre_growth = (out.extras["coarse_map"] > torch.quantile(out.extras["coarse_map"].flatten(1), 0.95, dim=1)
                  .view(-1, 1, 1, 1)).float().mean()
    assert 0.04 <= float(pre_growth) <= 0.051 and float(mask.float().mean()) > float(pre_growth)
    torch.testing.assert_close(out.image_score, out.anomaly_map.flatten(1).mean(1))


def test_gt_variant_inpaints_under_the_lesion_mask_as_is():
    m = tiny(variant="GT")
    assert m.uses_lesion_mask and Phanes.variants["GT"].protocol["label"] == "oracle"
    m.calibrate(None)
    assert m.calibration == {}
    b = images(2)
    out = m.score(b)
    assert torch.equal(out.extras["mask"].float(), b.lesion_mask)  # no dilation
    les = b.lesion_mask > 0
    assert float(out.anomaly_map[~les].abs().max()) == 0.0 and float(out.anomaly_map[les].min()) > 0
    assert torch.equal(out.reconstruction[~les], b.image[~les])
    # the default variant never sees the mask: its map does not change when the mask does
    default = tiny()
    default.calibration = {"tau": 0.2}
    flipped = images(2)
    flipped.lesion_mask = 1 - flipped.lesion_mask
    assert torch.equal(default.score(b).anomaly_map, default.score(flipped).anomaly_map)


def test_scoring_only_variants_share_the_train_key_and_adv_to_g_retrains(toy_store):
    smoke = lambda c: configure(c, get_profile("smoke"))  # noqa: E731
    train, val = toy_store.split("train").take(8), toy_store.split("val")
    base = model_spec("phanes", "", smoke, train, val, 0)
    for v in ("GT", "per-image threshold", "mask_lpips=raw"):
        spec = model_spec("phanes", v, smoke, train, val, 0)
        assert spec.train_key == base.train_key and spec.score_key != base.score_key, v
    assert model_spec("phanes", "adv_to_G", smoke, train, val, 0).train_key != base.train_key
    # the upstream is the RA of the ra rows: one key for both
    (name, up), = base.upstream
    assert name == "ra" and up.train_key == model_spec("ra", "", smoke, train, val, 0).train_key


def test_ra_upstream_is_trained_once_for_two_phanes_variants_and_stays_frozen(toy_store, tmp_path, monkeypatch):
    calls: Counter = Counter()
    for cls in (RA, Phanes):
        inner = cls.learn

        def counted(self, *a, _inner=inner, **k):
            calls[self.name] += 1
            return _inner(self, *a, **k)

        monkeypatch.setattr(cls, "learn", counted)
    smoke = lambda c: configure(c, get_profile("smoke"))  # noqa: E731
    train, val = toy_store.split("train").take(8), toy_store.split("val")
    store, memo = ModelStore(tmp_path), {}
    spec, spec_gt = (model_spec("phanes", v, smoke, train, val, 0) for v in ("", "GT"))
    got = obtain(spec, train, val, store, CPU, progress=False, _memo=memo)
    got_gt = obtain(spec_gt, train, val, store, CPU, progress=False, _memo=memo)
    assert got.trained == ["ra", "phanes"] and got_gt.trained == [] and calls == {"ra": 1, "phanes": 1}
    assert got.method.upstream["ra"] is got_gt.method.upstream["ra"]
    ra = got.method.upstream["ra"]
    (_, ra_spec), = spec.upstream
    on_disk = torch.load(store.model_path(ra_spec), weights_only=True)["networks"]
    for net in ("encoder", "decoder"):
        assert all(torch.equal(v, on_disk[net][k]) for k, v in ra.networks()[net].state_dict().items())
    assert store.read_training(spec)["model"]["upstream"]["ra"]["train_key"] == ra_spec.train_key
    assert "tau_train" in got.method.fitted and "tau" in got.method.calibration and got_gt.method.calibration == {}
    # a new process: everything loads, nothing trains
    again = obtain(spec_gt, train, val, store, CPU, progress=False, _memo={})
    assert again.trained == [] and calls == {"ra": 1, "phanes": 1}
    batch = toy_store.split("test").batch([0, 1])
    assert torch.equal(again.method.score(batch).anomaly_map, got_gt.method.score(batch).anomaly_map)


def test_bf16_autocast_path_keeps_maps_and_losses_fp32(monkeypatch):
    """The CUDA path on CPU: autocast bf16 around G, D and the VGG convs; losses and maps come back fp32."""
    import benchmark.trainer as T
    import methods.phanes as P
    import methods.ra as R

    def cpu_bf16(device, enabled=True):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)

    for module in (P, T, R):
        monkeypatch.setattr(module, "autocast", cpu_bf16)
    m = tiny()
    m.fitted["tau_train"] = torch.tensor(0.2)
    ctx = StepContext(m.configure_optimizers(), CPU, True, generator=torch.Generator().manual_seed(0))
    m.train_mode(True)
    logs = m.training_step(images(2), ctx)
    assert all(np.isfinite(v) for v in logs.values())
    m.calibration = {"tau": 0.2}
    out = m.score(images(2))
    assert out.anomaly_map.dtype == torch.float32 and torch.isfinite(out.anomaly_map).all()


# -- behaviour -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_the_inpainting_stage_makes_phanes_localise_lesions():
    """On the smoke phantom in **T1** at 64 px, a short training of the inpainting stage makes the PHANES maps rank
    lesion pixels above the healthy pixels that share their mask; the same pipeline with an untrained G cannot.

    Setup: RA (widths 8…64, 10 epochs at lr 3e-3, ≈ 45 steps) is trained once and frozen; PHANES (widths
    (16, 32, 64), 2 AOT blocks, VGG losses at 32 px, spec loss weights, lr 2e-3, 10 epochs of batch 8 = 40 steps)
    on the same 36 healthy slices. τ_train / τ_infer are the default rules (95th / 99th percentile of the healthy
    validation coarse maps). About 1 min of CPU on an idle 2-core machine (≈ 2 min under load).
    Bar, on all 36 test slices: (a) inside the predicted masks, the pixel AUROC of lesion vs healthy pixels is
    < 0.45 untrained and rises by ≥ 0.10 after training; (b) the pooled AUPRC over every pixel (the PHANES Table 2
    metric) rises by ≥ 20 %. Observed (seeds 0/1/2): (a) 0.40 → 0.55/0.61/0.57, (b) 0.0249 → 0.033/0.037/0.037.
    Why an untrained G cannot pass: its tanh head starts near 0, so the clamped inpainting is ≈ 0 and the map inside
    the mask is ≈ x · LPIPS, an intensity map. T1 lesions (tumour, stroke, MS) are darker than white matter, so it
    ranks them *below* the healthy masked tissue (AUROC < 0.5); only an inpainting of healthy tissue turns dark
    lesions into large residuals. Outside the mask both maps are exactly 0 and RA's mask (the same in both runs,
    covering ≈ 50 % of lesion pixels) fixes which lesions can be found at all, hence the in-mask bar.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    store = behaviour_phantom(modality="t1", size=64)
    train, val, test = store.split("train", label=0), store.split("val"), store.split("test")
    torch.manual_seed(0)
    ra = RA(RAConfig(channels=(8, 16, 32, 64, 64), lr=3e-3, epochs=10, batch_size=8, augment=False,
                     early_stop_patience=None), data=D64)
    Trainer(seed=0, progress=False).fit(ra, train)
    torch.manual_seed(0)
    cfg = PhanesConfig(gen_widths=(16, 32, 64), aot_blocks=2, disc_widths=(16, 32, 64, 64), vgg_size=32, lr=2e-3,
                       epochs=10, batch_size=8, augment=False, early_stop_patience=None)
    method = Phanes(cfg, data=D64, upstream={"ra": ra})

    def scores(m: Phanes) -> tuple[float, float]:
        batch = test.batch()
        out = m.score(batch)
        y, s = batch.lesion_mask.flatten().numpy(), out.anomaly_map.flatten().numpy()
        inside = out.extras["mask"].flatten().numpy() > 0
        return roc_auc_score(y[inside], s[inside]), average_precision_score(y, s)

    method.fitted["tau_train"] = torch.tensor(method.pooled_quantile(val, cfg.train_threshold_q, "clahe"))
    method.calibrate(val)
    before_mask, before_ap = scores(method)
    method.fit(train, val, trainer=Trainer(seed=0, progress=False))
    after_mask, after_ap = scores(method)
    assert before_mask < 0.45, before_mask
    assert after_mask - before_mask >= 0.10, (before_mask, after_mask)
    assert after_ap >= 1.2 * before_ap, (before_ap, after_ap)
