"""DiffusionSchedule: schedule values, exact inverses, the t = 0 step, per-row generators, RePaint stitching."""

from __future__ import annotations

import math

import pytest
import torch

from methods.blocks.diffusion import DiffusionSchedule, gaussian_noise


@pytest.fixture(scope="module")
def sched() -> DiffusionSchedule:
    return DiffusionSchedule()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def oracle(s: DiffusionSchedule, target: torch.Tensor):
    """A perfect ε-predictor for images whose clean version is ``target``: returns the true noise of x_t."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
        b = s.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - a * target) / b

    return model


def shrink(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A per-pixel (hence per-row) stand-in network whose output depends on x_t and t."""
    return 0.3 * x_t + 1e-3 * t.view(-1, 1, 1, 1).float()


def test_linear_schedule_values(sched):
    abar = sched.alphas_cumprod.double()
    assert sched.num_timesteps == 1000 and sched.alphas_cumprod.dtype == torch.float32
    assert bool((abar[1:] < abar[:-1]).all())  # strictly decreasing
    betas = [1e-4 + (2e-2 - 1e-4) * i / 999 for i in range(1000)]
    assert sched.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert sched.betas[-1].item() == pytest.approx(2e-2, rel=1e-6)
    assert abar[0].item() == pytest.approx(0.9999, rel=1e-7)
    assert abar[1].item() == pytest.approx(0.9999 * (1 - betas[1]), rel=1e-7)  # = 0.99978009...
    assert abar[999].item() == pytest.approx(math.prod(1 - b for b in betas), rel=1e-5)
    assert abar[999].item() == pytest.approx(4.0358e-5, rel=1e-4)  # the well-known DDPM end value


def test_posterior_variance_and_coefficients(sched):
    assert sched.posterior_variance[0].item() == 0.0 and sched.posterior_std[0].item() == 0.0
    a = sched.alphas_cumprod.double()
    b = sched.betas.double()
    t = 500
    assert sched.posterior_variance[t].item() == pytest.approx((b[t] * (1 - a[t - 1]) / (1 - a[t])).item(), rel=1e-5)
    assert sched.posterior_mean_coef1[0].item() == pytest.approx(1.0, rel=1e-6)  # the t = 0 mean is x̂₀ itself
    assert sched.posterior_mean_coef2[0].item() == 0.0


def test_q_sample_zero_noise_scales_by_sqrt_abar(sched):
    x0 = torch.rand(3, 1, 8, 8)
    for t in (0, 1, 999):
        out = sched.q_sample(x0, t, torch.zeros_like(x0))
        assert torch.allclose(out, math.sqrt(sched.alphas_cumprod.double()[t].item()) * x0, atol=1e-7, rtol=1e-6)
    t_vec = torch.tensor([0, 10, 999])
    out = sched.q_sample(x0, t_vec, torch.zeros_like(x0))
    for i, t in enumerate(t_vec.tolist()):
        assert torch.allclose(out[i], sched.sqrt_alphas_cumprod[t] * x0[i])


def test_perfect_eps_recovers_x0(sched):
    x0 = torch.rand(4, 1, 16, 16)
    eps = torch.randn(4, 1, 16, 16, generator=gen(0))
    for t in (0, 1, 250, 500):
        assert (sched.predict_x0(sched.q_sample(x0, t, eps), t, eps) - x0).abs().max().item() < 1e-5
    t_vec = torch.tensor([0, 100, 600, 999])
    x64, e64 = x0.double(), eps.double()  # at t = 999 float32 rounding of x_t is amplified ×157: check in float64
    assert (sched.predict_x0(sched.q_sample(x64, t_vec, e64), t_vec, e64) - x64).abs().max().item() < 1e-10


def test_step_at_t0_adds_no_noise(sched):
    x = torch.rand(2, 1, 8, 8)
    eps = torch.randn(2, 1, 8, 8, generator=gen(1))
    g = gen(5)
    state = g.get_state()
    plain = sched.p_step(eps, x, 0, generator=g)
    assert torch.equal(g.get_state(), state)  # nothing drawn at t = 0
    noisy = sched.p_step(eps, x, 0, noise=100 * torch.randn(2, 1, 8, 8))
    assert torch.equal(plain, noisy)
    assert torch.allclose(plain, sched.predict_x0(x, 0, eps).clamp(-1, 1), atol=1e-6)
    per_row = sched.p_step(eps, x, torch.tensor([0, 0]), noise=100 * torch.randn(2, 1, 8, 8))
    assert torch.allclose(per_row, plain, atol=1e-6)


def test_step_at_t_matches_hand_formula_and_clips(sched):
    x_t = torch.randn(2, 1, 8, 8, generator=gen(2), dtype=torch.float64)
    eps = torch.randn(2, 1, 8, 8, generator=gen(3), dtype=torch.float64)
    z = torch.randn(2, 1, 8, 8, generator=gen(4), dtype=torch.float64)
    t = 300
    a, b = sched.alphas_cumprod.double(), sched.betas.double()
    x0 = ((x_t - (1 - a[t]).sqrt() * eps) / a[t].sqrt()).clamp(0, 1)
    mean = b[t] * a[t - 1].sqrt() / (1 - a[t]) * x0 + (1 - a[t - 1]) * (1 - b[t]).sqrt() / (1 - a[t]) * x_t
    want = mean + (b[t] * (1 - a[t - 1]) / (1 - a[t])).sqrt() * z
    got = sched.p_step(eps, x_t, t, z, clip=(0.0, 1.0))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(sched.p_step(eps, x_t, t, z, clip=None), want, atol=1e-3)  # the clip mattered


def test_partial_reconstruct_with_oracle_returns_x0(sched):
    x0 = torch.rand(2, 1, 16, 16, generator=gen(6))
    rec = sched.partial_reconstruct(oracle(sched, x0), x0, 200, generator=gen(7))
    assert (rec - x0).abs().max().item() < 1e-4
    # a non-oracle model gives something else, and the draw is reproducible from the generator
    a = sched.partial_reconstruct(shrink, x0, 30, generator=gen(8))
    b = sched.partial_reconstruct(shrink, x0, 30, generator=gen(8))
    assert torch.equal(a, b) and (a - x0).abs().max().item() > 1e-2


def test_per_row_generators_make_rows_batch_independent(sched):
    x = torch.rand(3, 1, 12, 12, generator=gen(9))
    batch = sched.partial_reconstruct(shrink, x, 25, generator=[gen(10), gen(11), gen(12)])
    alone = sched.partial_reconstruct(shrink, x[1:2], 25, generator=[gen(11)])
    assert torch.allclose(batch[1:2], alone, atol=1e-6)
    other = sched.partial_reconstruct(shrink, x, 25, generator=[gen(13), gen(11), gen(14)])
    assert torch.allclose(other[1], batch[1], atol=1e-6) and not torch.allclose(other[0], batch[0])
    n1 = gaussian_noise((3, 1, 4, 4), [gen(1), gen(2), gen(3)])
    assert torch.equal(n1[2:], gaussian_noise((1, 1, 4, 4), [gen(3)]))
    t1 = sched.sample_timesteps(3, [gen(1), gen(2), gen(3)])
    assert t1.dtype == torch.long and t1[2] == sched.sample_timesteps(1, [gen(3)])[0]


def test_repaint_step_known_region_is_renoised_input(sched):
    x_t = torch.randn(2, 1, 8, 8, generator=gen(15))
    known = torch.rand(2, 1, 8, 8, generator=gen(16))
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1  # the region to regenerate
    kn = torch.randn(2, 1, 8, 8, generator=gen(17))
    z = torch.randn(2, 1, 8, 8, generator=gen(18))
    t = 40
    out = sched.repaint_step(shrink, x_t, t, known, mask, noise=z, known_noise=kn)
    want_known = sched.q_sample(known, t - 1, kn)
    want_unknown = sched.p_step(shrink(x_t, torch.full((2,), t)), x_t, t, z)
    m = mask.bool()
    assert torch.equal(out[~m], want_known[~m])
    assert torch.allclose(out[m], want_unknown[m])
    out0 = sched.repaint_step(shrink, x_t, 0, known, mask)
    assert torch.equal(out0[~m], known[~m])  # at t = 0 the known region is the clean input
    # the same draws from a generator: known-region noise first, then the step noise
    g_out = sched.repaint_step(shrink, x_t, t, known, mask, generator=gen(20))
    g2 = gen(20)
    kn2, z2 = torch.randn(2, 1, 8, 8, generator=g2), torch.randn(2, 1, 8, 8, generator=g2)
    assert torch.allclose(g_out, sched.repaint_step(shrink, x_t, t, known, mask, noise=z2, known_noise=kn2))


def test_repaint_loop_stitches_oracle_and_input(sched):
    known = torch.rand(2, 1, 16, 16, generator=gen(21))
    target = torch.rand(2, 1, 16, 16, generator=gen(22))
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[:, :, 4:12, 4:12] = True
    out = sched.repaint(oracle(sched, target), target, known, mask, 20, resample_steps=3, generator=gen(23))
    assert (out - torch.where(mask, target, known)).abs().max().item() < 1e-4
    x = torch.rand(1, 1, 4, 4)
    j = sched.resample_jump(x, 10, lambda *a: torch.zeros(1, 1, 4, 4))
    assert torch.allclose(j, (1 - sched.betas[9]).sqrt() * x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_device_generators():
    s = DiffusionSchedule()  # built on CPU, follows the data
    x0 = torch.rand(2, 1, 16, 16, device="cuda")
    gens = [torch.Generator(device="cuda").manual_seed(i) for i in (1, 2)]
    rec = s.partial_reconstruct(oracle(s, x0), x0, 50, generator=gens)
    assert rec.device.type == "cuda" and s.betas.device.type == "cuda"
    assert (rec - x0).abs().max().item() < 1e-4
