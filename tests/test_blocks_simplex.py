"""Simplex noise: the OpenSimplex function itself, the octave/frequency meaning, statistics, seeding, plugging in."""

from __future__ import annotations

import functools
import itertools

import torch

from methods.blocks.diffusion import DiffusionSchedule
from methods.blocks.simplex import _GRADIENTS, opensimplex3, simplex_noise


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_opensimplex(pts: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The defining sum over a 6³ block of lattice vertices around each point's cell (float64), no pruning."""
    x, y, z = pts.T
    stretch = (x + y + z) * (-1.0 / 6.0)
    base = torch.stack([(x + stretch).floor(), (y + stretch).floor(), (z + stretch).floor()], 1).long()
    total = torch.zeros(len(pts), dtype=torch.float64)
    for off in itertools.product(range(-2, 4), repeat=3):
        v = base + torch.tensor(off)
        d = pts - (v.double() + v.sum(1, keepdim=True).double() / 3.0)
        w = (2.0 - (d * d).sum(1)).clamp(min=0.0) ** 4
        h = perm[(perm[(perm[v[:, 0] & 255] + v[:, 1]) & 255] + v[:, 2]) & 255]
        total += w * (_GRADIENTS[h % 24] * d).sum(1)
    return total / 103.0


def test_gradient_table_is_the_opensimplex_one():
    g = _GRADIENTS.long()
    assert g.shape == (24, 3)
    assert g[0].tolist() == [-11, 4, 4] and g[4].tolist() == [4, 11, 4] and g[23].tolist() == [4, -4, -11]
    assert sorted(g.abs().sum(1).tolist()) == [19] * 24


def test_opensimplex_matches_brute_force_sum_and_is_bounded():
    perm = torch.randperm(256, generator=gen(0))
    pts = torch.rand(800, 3, generator=gen(1), dtype=torch.float64) * 80 - 20
    ours = opensimplex3(pts[:, 0], pts[:, 1], pts[:, 2], perm)
    assert (ours - brute_opensimplex(pts, perm)).abs().max().item() < 1e-12
    assert ours.abs().max().item() < 1.0


def test_opensimplex_zero_on_lattice_and_continuous():
    perm = torch.randperm(256, generator=gen(2))
    v = torch.randint(-30, 30, (200, 3), generator=gen(3)).double()
    p = v + v.sum(1, keepdim=True) / 3.0  # unskewed lattice vertices: every neighbour is at r² = 2
    assert opensimplex3(p[:, 0], p[:, 1], p[:, 2], perm).abs().max().item() < 1e-12
    pts = torch.rand(5000, 3, generator=gen(4), dtype=torch.float64) * 40
    step = torch.full_like(pts, 1e-6)
    a = opensimplex3(pts[:, 0], pts[:, 1], pts[:, 2], perm)
    b = opensimplex3(*(pts + step).T, perm)
    assert (a - b).abs().max().item() < 1e-4  # no jumps at cell or region boundaries


def test_frequency_is_feature_size_and_octaves_sum_with_persistence():
    one = functools.partial(simplex_noise, octaves=1, z=12.0)
    coarse = one((1, 1, 32, 32), gen(5), frequency=8.0)
    fine_grid = simplex_noise((1, 1, 64, 64), gen(5), octaves=1, z=24.0, frequency=16.0)
    assert torch.allclose(coarse, fine_grid[..., ::2, ::2], atol=1e-6)  # twice the size ⇔ twice the pixels
    two = simplex_noise((1, 1, 32, 32), gen(5), octaves=2, persistence=0.7, frequency=8.0, z=12.0)
    assert torch.allclose(two, coarse + 0.7 * one((1, 1, 32, 32), gen(5), frequency=4.0), atol=1e-6)


def test_deterministic_per_seed_and_different_across_seeds():
    a = simplex_noise((2, 1, 64, 64), gen(6))
    assert torch.equal(a, simplex_noise((2, 1, 64, 64), gen(6)))
    assert not torch.allclose(a, simplex_noise((2, 1, 64, 64), gen(7)))
    assert not torch.allclose(a[0], a[1])  # rows get their own permutation


def test_per_row_generators_make_rows_batch_independent():
    batch = simplex_noise((3, 2, 32, 32), [gen(1), gen(2), gen(3)])
    alone = simplex_noise((1, 2, 32, 32), [gen(2)])
    assert torch.equal(batch[1:2], alone)
    assert not torch.allclose(batch[1, 0], batch[1, 1])  # channels are separate fields


def test_documented_statistics():
    raw = simplex_noise((16, 1, 128, 128), gen(8))
    assert abs(raw.mean().item()) < 0.1  # per-field means spread ≈ 0.13, so 16 fields pin 0 to ≈ ±0.03
    assert 0.44 < raw.std().item() < 0.57  # module docstring: pooled std ≈ 0.50, not re-normalised
    norm = simplex_noise((4, 1, 64, 64), gen(8), normalize=True)
    assert norm.mean(dim=(-2, -1)).abs().max().item() < 1e-5
    assert (norm.std(dim=(-2, -1), unbiased=False) - 1).abs().max().item() < 1e-4


def lag1_corr(x: torch.Tensor) -> float:
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return ((x[..., :, 1:] * x[..., :, :-1]).mean() / (x * x).mean()).item()


def test_spatially_smooth_unlike_gaussian():
    low = simplex_noise((8, 1, 64, 64), gen(9), octaves=1)
    full = simplex_noise((8, 1, 64, 64), gen(9))
    white = torch.randn(8, 1, 64, 64, generator=gen(9))
    assert lag1_corr(low) > 0.98
    assert lag1_corr(full) > 0.8
    assert abs(lag1_corr(white)) < 0.05


def test_shapes_dtypes_devices():
    for shape in ((2, 1, 128, 128), (2, 1, 256, 256)):
        out = simplex_noise(shape, gen(10), "cpu", torch.float32)
        assert out.shape == shape and out.dtype == torch.float32 and out.device.type == "cpu"
        assert torch.isfinite(out).all()
    assert simplex_noise((1, 1, 16, 16), gen(10), dtype=torch.float64).dtype == torch.float64
    assert simplex_noise((1, 1, 16, 16), None).shape == (1, 1, 16, 16)
    if torch.cuda.is_available():
        g = torch.Generator(device="cuda").manual_seed(0)
        out = simplex_noise((2, 1, 128, 128), g, "cuda")
        again = simplex_noise((2, 1, 128, 128), g.manual_seed(0), "cuda")
        assert out.device.type == "cuda" and torch.equal(out, again)


def test_plugs_into_diffusion_schedule():
    sched = DiffusionSchedule()
    x0 = torch.rand(2, 1, 32, 32, generator=gen(11))
    noise_fn = functools.partial(simplex_noise, octaves=6, persistence=0.8, frequency=64.0)

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = sched.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - a * x0) / sched.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)

    rec = sched.partial_reconstruct(oracle, x0, 15, noise_fn, [gen(12), gen(13)])
    assert (rec - x0).abs().max().item() < 1e-4
    loss = sched.training_loss(lambda x, t: torch.zeros_like(x), x0, noise_fn, gen(14))
    assert 0.1 < loss.item() < 0.5  # E[noise²] of the raw simplex noise (std ≈ 0.5)
