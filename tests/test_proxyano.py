"""ProxyAno (methods/proxyano.py), its proxies (methods/blocks/proxies.py), ``ae-proxy`` and ``memae``.

The unit checks of proxyano.md §9: the straight-through estimator passes gradients to Enc_p; with memory off the
quantiser is the identity; the latent score uses the pre-memory codes; the PEM is frozen during IRM training; the
pseudo-abnormal mask lies in the expected range. Plus the proxies, their cache and the variant bookkeeping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.contract import DataSpec, SliceBatch
from benchmark.profiles import configure, get_profile
from benchmark.trainer import StepContext
from methods.blocks.memory import EMAMemory
from methods.blocks.proxies import (PROXY_KINDS, ProxySettings, ProxyTable, cached_proxies, compute_proxy,
                                    paste_patches, proxy_cache_file, proxy_channels, smooth_patches,
                                    superpixel_image)
from methods.proxyano import AEProxy, MemAE, ProxyAno
from tests.behaviour import behaviour_phantom, before_and_after_training


def smoke(cls=ProxyAno, variant: str = "", size: int = 128, **changes):
    torch.manual_seed(0)
    cfg = configure(cls, get_profile("smoke"), **changes)
    return cls.build(cfg, variant=variant, device="cpu", data=DataSpec(image_size=size, channels=1))


def blob_image(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = 0.3 + 0.4 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1) + 0.05 * rng.standard_normal((size, size))
    return np.clip(img, 0, 1).astype(np.float32)


def ctx_for(method, stage: str) -> StepContext:
    g = torch.Generator()
    g.manual_seed(0)
    return StepContext(method.configure_optimizers(), torch.device("cpu"), False, stage=stage, generator=g)


def batch_of(store, n: int = 4) -> SliceBatch:
    return store.split("train").take(n).batch()


# -- proxies ---------------------------------------------------------------------------------------------------
def test_superpixel_image_is_piecewise_mean():
    img = blob_image(64)
    si = superpixel_image(img, n_segments=50, compactness=0.1)
    values = np.unique(si)
    assert 10 <= len(values) <= 80  # one value per superpixel (SLIC's count is near, not at, the target)
    assert abs(si.mean() - img.mean()) < 1e-3  # means fill each segment: the total intensity is kept
    assert np.abs(si - img).mean() < np.abs(img.mean() - img).mean()  # closer to the image than a flat fill


def test_table_iii_proxies():
    img = blob_image(64)[None]
    s = ProxySettings(slic_segments=50)
    edge = compute_proxy(img, "edge", s)
    assert set(np.unique(edge)) <= {0.0, 1.0} and edge.sum() > 0
    sp = smooth_patches(img[0], 8)
    blocks = sp.reshape(8, 8, 8, 8)
    assert (blocks.max(axis=(1, 3)) == blocks.min(axis=(1, 3))).all()  # constant on each 8×8 patch
    assert compute_proxy(img, "smooth", s).std() < img.std()
    both = compute_proxy(img, "edge+smooth_patches", s)
    assert both.shape == (2, 64, 64) and np.array_equal(both[0], edge[0])
    assert [proxy_channels(k) for k in PROXY_KINDS] == [1, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown proxy"):
        proxy_channels("sketch")


def test_proxy_cache_is_written_once_and_checked(toy_store):
    ss = toy_store.split("train").take(3)
    s = ProxySettings(slic_segments=30)
    first = cached_proxies(ss, "SI", s)
    path = proxy_cache_file(ss, "SI", s)
    assert path.exists() and first.shape == (3, 1, 128, 128)
    stamp = path.stat().st_mtime_ns
    assert np.array_equal(cached_proxies(ss, "SI", s), first) and path.stat().st_mtime_ns == stamp
    assert proxy_cache_file(ss, "SI", ProxySettings(slic_segments=31)) != path  # settings are part of the key
    np.save(path, np.zeros((2, 1, 128, 128), np.float32))
    with pytest.raises(ValueError, match="delete it to recompute"):
        cached_proxies(ss, "SI", s)
    path.unlink()


def test_proxy_table_looks_up_rows(toy_store):
    train, val = toy_store.split("train").take(3), toy_store.split("val").take(2)
    table = ProxyTable.build([train, val], "smooth_patches", settings=ProxySettings())
    got = table(torch.as_tensor([int(val.rows[1]), int(train.rows[0])]))
    images = toy_store.images
    assert np.allclose(got[0, 0].numpy(), smooth_patches(images[val.rows[1], 0]), atol=1e-6)
    assert np.allclose(got[1, 0].numpy(), smooth_patches(images[train.rows[0], 0]), atol=1e-6)
    unseen = sorted(set(range(len(images))) - set(train.rows) - set(val.rows))[0]
    with pytest.raises(KeyError, match="no proxy"):
        table(torch.as_tensor([unseen]))


def test_pseudo_abnormal_proxies_paste_raw_patches():
    g = torch.Generator()
    g.manual_seed(0)
    proxy, image = torch.zeros(16, 1, 256, 256), torch.rand(16, 1, 256, 256) + 1.0
    pasted, m = paste_patches(proxy, image, g)
    area = m.flatten(1).sum(1)
    assert (area >= 16 * 16).all() and (area <= 128 * 128).all()  # sides U{16..128} at 256 px
    assert torch.equal(pasted * (1 - m), proxy * (1 - m))  # outside the mask: the proxy
    assert ((pasted > 1.0) == (m > 0)).all()  # inside: raw image pixels (all > 1 here)
    none, m0 = paste_patches(proxy, image, g, prob=0.0)
    assert m0.sum() == 0 and torch.equal(none, proxy)


# -- the model ---------------------------------------------------------------------------------------------------
def test_straight_through_reaches_the_encoder(toy_store):
    m = smoke()
    m.on_fit_start(toy_store.split("train").take(4), None)
    m.train_mode(True)
    b = batch_of(toy_store)
    out, z, mem_loss = m.pem(b.image)
    torch.nn.functional.mse_loss(out, m.proxies(b.index)).backward()
    grad = m.pem.net.encoder.levels[0][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert isinstance(m.pem.memory, EMAMemory)


def test_memory_off_is_the_identity(toy_store):
    m = smoke(variant="2xEncDec+SI")
    assert m.pem.memory is None
    m.train_mode(False)
    x = batch_of(toy_store).image
    with torch.no_grad():
        assert torch.equal(m.pem(x)[0], m.pem.net.decode(m.pem.net.encode(x)))


def test_latent_score_uses_pre_memory_codes(toy_store):
    m = smoke()
    m.train_mode(False)
    b = batch_of(toy_store)
    with torch.no_grad():
        x_rec = m.reconstruct(b.image)
        z, z_rec = m.pem.net.encode(b.image), m.pem.net.encode(x_rec)
        quantized = m.pem.memory(z).quantized
    out = m.score(b)
    assert torch.allclose(out.image_score, (z - z_rec).flatten(1).norm(dim=1), rtol=1e-5)
    assert not torch.allclose(z, quantized)  # the memory changes the codes: the check above could fail
    image_space = smoke(variant="2xEncDec+SI+mem+rep")
    image_space.load_state_dict(m.state_dict())
    assert torch.allclose(image_space.score(b).image_score, (b.image - x_rec).flatten(1).norm(dim=1), rtol=1e-5)


def test_pem_is_frozen_during_irm_training(toy_store):
    m = smoke()
    m.on_fit_start(toy_store.split("train").take(4), None)
    m.train_mode(True)
    before = {k: v.clone() for k, v in m.pem.state_dict().items()}
    irm_before = {k: v.clone() for k, v in m.irm.state_dict().items()}
    logs = m.training_step(batch_of(toy_store), ctx_for(m, "irm"))
    assert {"rec", "global", "local", "loss_d", "loss_irm"} <= set(logs)
    for k, v in m.pem.state_dict().items():  # weights, BN running statistics, memory items and EMA sums
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in m.pem.parameters())
    assert any(not torch.equal(v, irm_before[k]) for k, v in m.irm.state_dict().items())


def test_pem_step_moves_the_memory_and_ignores_the_irm(toy_store):
    m = smoke()
    m.on_fit_start(toy_store.split("train").take(4), None)
    m.train_mode(True)
    items, irm_before = m.pem.memory.items.clone(), {k: v.clone() for k, v in m.irm.state_dict().items()}
    m.training_step(batch_of(toy_store), ctx_for(m, "pem"))
    assert not torch.equal(items, m.pem.memory.items)
    assert all(torch.equal(v, irm_before[k]) for k, v in m.irm.state_dict().items())


def test_repair_off_trains_on_eq_8_only(toy_store):
    m = smoke(variant="2xEncDec+SI+mem")
    m.on_fit_start(toy_store.split("train").take(4), None)
    logs = m.training_step(batch_of(toy_store), ctx_for(m, "irm"))
    assert "global" not in logs and "local" not in logs and "loss_d" in logs


def test_variants_share_weights_where_only_scoring_differs():
    def train_key(variant: str, cls=ProxyAno):
        return cls.resolve(cls.Config(), variant).training_dict()

    assert train_key("2xEncDec+SI+mem+rep") == train_key("2xEncDec+SI+mem+rep+lat") == train_key("")
    assert train_key("2xEncDec+SI") == train_key("proxy=SI") == train_key("2xEncDec+SI+lat")
    assert train_key("2xEncDec+SI") != train_key("2xEncDec+SI+mem") != train_key("2xEncDec+SI+rep")
    assert len({str(train_key(f"proxy={k}")) for k in PROXY_KINDS}) == len(PROXY_KINDS)
    assert ProxyAno.resolve(ProxyAno.Config(), "2xEncDec+SI+lat").score_space == "latent"
    assert ProxyAno.resolve(ProxyAno.Config(), "2xEncDec+SI").score_space == "image"


def test_one_encdec_rows(toy_store):
    ae, mem, encdec_mem = smoke(AEProxy), smoke(MemAE), smoke(variant="EncDec+mem")
    for m in (ae, mem, encdec_mem):
        assert not m.two_modules and m.irm is None and [s.name for s in m.stages()] == ["train"]
    assert ae.discriminator is None and ae.pem.memory is None and ae.config.score_space == "image"
    b = batch_of(toy_store)
    mem.train_mode(True)
    logs = mem.training_step(b, ctx_for(mem, "train"))
    assert logs["memory"] > 0  # α · entropy of MemAE's addressing
    ae.train_mode(True)
    assert ae.training_step(b, ctx_for(ae, "train"))["memory"] == 0


def test_bad_settings_are_refused():
    for bad in ({"proxy": "sketch"}, {"memory": "vq"}, {"score_space": "pixel"}, {"papc_min_frac": 0.6},
                {"local_loss": "sum"}):
        with pytest.raises(ValueError):
            smoke(**bad)


def test_profiles():
    d = configure(ProxyAno, get_profile("default"))
    p = configure(ProxyAno, get_profile("paper"))
    assert p.max_steps == 20_000 and p.base_width == 64 and p.memory_items == 128 and p.slic_segments == 800
    assert d.max_steps < p.max_steps and d.base_width < p.base_width


# -- behaviour ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_reconstructs_healthy_slices(tmp_path_factory):
    """A short CPU training (both modules) on the 64-px smoke phantom makes Î far closer to the healthy test slices
    than the untrained model's, and the map starts to single out the lesions.

    Bar: mean |I − Î| over the healthy test slices ≤ 0.5 × the untrained model's, and pooled pixel AUROC ≥ 0.6.
    The untrained model cannot: its linear heads output ≈ a constant, so |I − Î| is about |I − c| everywhere."""
    pytest.importorskip("datasets.phantom")
    store = behaviour_phantom(modality="t1", size=64, cache_dir=tmp_path_factory.mktemp("phantom"))
    torch.manual_seed(0)
    cfg = configure(ProxyAno, get_profile("smoke"), base_width=8, latent_channels=16, memory_items=32,
                    disc_width=8, epochs=20, slic_segments=100)
    m = ProxyAno(cfg, data=DataSpec.of(store))
    (before, _), (after, auroc) = before_and_after_training(m, store, val=True)
    assert after <= 0.5 * before and auroc >= 0.6, (before, after, auroc)
