"""DDPM machinery shared by ``ddpm``, ``anoddpm`` and ``autoddpm`` (specs/baselines.md §18–20, §25).

One ``DiffusionSchedule`` holds the linear β schedule (1e-4 → 2e-2, T = 1000, Ho et al.) with every
coefficient computed in float64 and stored in float32, and offers the few operations those three methods
compose: forward noising, x₀ prediction, the ancestral "fixed small" step with x₀ clipping, noise-and-
denoise reconstruction, and the RePaint-style masked step and resampling loop of AutoDDPM.

Conventions (MONAI/ci-ber scheduler, which the specs follow):
- timesteps are 0-based indices; x at index t has ᾱ_t = ∏_{s≤t}(1 − β_s); a step at t maps index t to
  t − 1, and the step at t = 0 returns the clean estimate (posterior variance 0, no noise drawn);
- the model is any callable ``model(x_t, t) -> eps_hat`` with ``t`` an int64 tensor [B] on x's device; it
  runs under whatever autocast the caller set, its output is cast back so the schedule arithmetic stays in
  float32 (float64 if the data are float64);
- noise is pluggable: every draw goes through ``noise_fn(shape, generator, device, dtype)`` (default
  ``gaussian_noise``; AnoDDPM passes ``simplex.simplex_noise``). ``generator`` is None (global RNG), one
  ``torch.Generator`` or a list with one generator per batch row; with a list, row i consumes only its own
  generator, so a slice's result does not depend on the batch it is in (given a per-row model, e.g.
  GroupNorm and no batch statistics). Draws are made on the generator's device and moved to the data.
No DDIM and no cosine schedule: none of §18–21 uses them. :class:`RespacedSchedule` (a schedule restricted to a
subset of its timesteps) only serves the CPU profiles, which stride the reverse chains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

GeneratorLike = torch.Generator | Sequence[torch.Generator] | None
NoiseFn = Callable[..., torch.Tensor]  # noise_fn(shape, generator, device, dtype) -> Tensor
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Clip = tuple[float, float] | None

_BUFFERS = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_variance",
    "posterior_std",
)


def _row_generators(generator: GeneratorLike, rows: int) -> list[torch.Generator] | None:
    """The per-row list, validated; None when ``generator`` is None or a single generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != rows:
        raise ValueError(f"{len(gens)} generators for a batch of {rows}")
    return gens


def gaussian_noise(
    shape: Sequence[int],
    generator: GeneratorLike = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape``; the default ``noise_fn``.

    A single generator draws the whole tensor on its own device; a list draws row i from generator i.
    """
    shape = tuple(int(s) for s in shape)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    gens = _row_generators(generator, shape[0])
    if gens is None:
        g = generator  # a single torch.Generator
        return torch.randn(shape, generator=g, device=g.device, dtype=dtype).to(device)  # type: ignore[union-attr]
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device) for g in gens]
    return torch.cat(rows)


def _work(x: torch.Tensor) -> torch.Tensor:
    """Schedule arithmetic dtype: float32, or float64 when the data already are float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def schedule_tables(betas: torch.Tensor, abar: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every coefficient a schedule stores, in float64, from its β_t and ᾱ_t (for a respaced schedule the β of
    a kept step is 1 − ᾱ_t / ᾱ_prev, so the same formulas serve both)."""
    alphas = 1.0 - betas
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
        "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        "posterior_variance": var,
        "posterior_std": var.sqrt(),
    }


class DiffusionSchedule:
    """Linear-β DDPM schedule with ε-prediction, fixed-small posterior variance and x₀ clipping.

    Buffers (float32, [T]): ``betas``, ``alphas``, ``alphas_cumprod`` (ᾱ_t), ``alphas_cumprod_prev``
    (ᾱ_{t−1}, 1 at t = 0), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``posterior_mean_coef1`` (β_t √ᾱ_{t−1} / (1 − ᾱ_t), multiplies x₀), ``posterior_mean_coef2``
    ((1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t), multiplies x_t), ``posterior_variance`` (β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),
    exactly 0 at t = 0) and ``posterior_std``. The schedule follows its data: a call with tensors on another
    device moves it there once (same as calling ``.to(device)`` first).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_timesteps = int(num_timesteps)
        betas = torch.linspace(beta_start, beta_end, self.num_timesteps, dtype=torch.float64)
        values = schedule_tables(betas, torch.cumprod(1.0 - betas, dim=0))
        dev = torch.device(device) if device is not None else torch.device("cpu")
        for name in _BUFFERS:
            setattr(self, name, values[name].to(device=dev, dtype=torch.float32))
        self.device = dev

    # ------------------------------------------------------------------ plumbing
    def to(self, device: torch.device | str) -> DiffusionSchedule:
        """Move every buffer to ``device`` (in place; returns self for chaining)."""
        device = torch.device(device)
        for name in _BUFFERS:
            setattr(self, name, getattr(self, name).to(device))
        self.device = device
        return self

    def _follow(self, x: torch.Tensor) -> None:
        if self.betas.device != x.device:
            self.to(x.device)

    def _coef(self, name: str, t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Buffer ``name`` at t, shaped to broadcast against x (0-d for an int t, [B, 1, ...] for a tensor)."""
        self._follow(x)
        buf = getattr(self, name)
        if isinstance(t, int):
            if not 0 <= t < self.num_timesteps:
                raise ValueError(f"timestep {t} outside [0, {self.num_timesteps})")
            return buf[t].to(x.dtype)
        t = t.to(device=x.device, dtype=torch.long).reshape(-1)
        return buf.index_select(0, t).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    def _t_vector(self, t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if isinstance(t, int):
            return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        return t.to(device=x.device, dtype=torch.long).reshape(-1).expand(x.shape[0])

    @staticmethod
    def _draw(noise_fn: NoiseFn, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        return noise_fn(tuple(x.shape), generator, x.device, x.dtype)

    # ------------------------------------------------------------------ forward process / training
    def sample_timesteps(
        self, n: int, generator: GeneratorLike = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Training timesteps t ~ U{0, …, T − 1}, int64 [n] (per-row draws with a list of generators)."""
        device = torch.device(device) if device is not None else self.device
        T = self.num_timesteps
        gens = _row_generators(generator, n)
        if gens is None:
            g = generator
            dev = g.device if isinstance(g, torch.Generator) else device
            return torch.randint(0, T, (n,), generator=g, device=dev).to(device)  # type: ignore[arg-type]
        return torch.cat([torch.randint(0, T, (1,), generator=g, device=g.device).to(device) for g in gens])

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · noise, t an int or an int tensor [B] (one timestep per sample)."""
        x0 = _work(x0)
        return self._coef("sqrt_alphas_cumprod", t, x0) * x0 + self._coef(
            "sqrt_one_minus_alphas_cumprod", t, x0
        ) * noise.to(x0.dtype)

    def training_loss(
        self, model: Model, x0: torch.Tensor, noise_fn: NoiseFn = gaussian_noise, generator: GeneratorLike = None
    ) -> torch.Tensor:
        """ε-prediction MSE (spec §18 training; §19 with simplex ``noise_fn``): t uniform, target = the noise.

        Draw order per call: timesteps, then noise (both from ``generator``).
        """
        x0 = _work(x0)
        t = self.sample_timesteps(x0.shape[0], generator, x0.device)
        noise = self._draw(noise_fn, x0, generator)
        eps_hat = model(self.q_sample(x0, t, noise), t)
        return F.mse_loss(eps_hat.to(x0.dtype), noise)

    # ------------------------------------------------------------------ reverse process
    def predict_x0(self, x_t: torch.Tensor, t: int | torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
        """x̂₀ = (x_t − √(1 − ᾱ_t) · ε̂) / √ᾱ_t.

        Written with the same stored coefficients as ``q_sample`` so that it inverts it exactly (up to the
        rounding of x_t itself), rather than with separately rounded 1/√ᾱ and √(1/ᾱ − 1).
        """
        x_t = _work(x_t)
        eps = eps_hat.to(x_t.dtype)
        return (x_t - self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * eps) / self._coef(
            "sqrt_alphas_cumprod", t, x_t
        )

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t−1} | x_t, x₀) (Ho et al. eq. 7); equals x₀ at t = 0."""
        x_t = _work(x_t)
        return self._coef("posterior_mean_coef1", t, x_t) * x0.to(x_t.dtype) + self._coef(
            "posterior_mean_coef2", t, x_t
        ) * x_t

    def p_step(
        self,
        model_eps: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        clip: Clip = (-1.0, 1.0),
        noise_fn: NoiseFn = gaussian_noise,
        generator: GeneratorLike = None,
    ) -> torch.Tensor:
        """One ancestral step x_t → x_{t−1} from the model's ε̂ (``model_eps``), fixed-small variance.

        x̂₀ is clipped to ``clip`` (spec §18: [−1, 1] although the data are in [0, 1]; None disables).
        ``noise`` (else drawn from ``noise_fn``/``generator``) is scaled by the posterior std, which is 0 at
        t = 0, so that step adds nothing; for an int t = 0 no noise is drawn at all (generator untouched).
        A tensor t always draws one noise tensor for the batch.
        """
        x_t = _work(x_t)
        x0 = self.predict_x0(x_t, t, model_eps)
        if clip is not None:
            x0 = x0.clamp(clip[0], clip[1])
        mean = self.q_posterior_mean(x0, x_t, t)
        if isinstance(t, int) and t == 0:
            return mean
        if noise is None:
            noise = self._draw(noise_fn, x_t, generator)
        return mean + self._coef("posterior_std", t, x_t) * noise.to(x_t.dtype)

    def p_sample(self, model: Model, x_t: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor | None = None,
                 **step: Any) -> torch.Tensor:
        """Call ``model(x_t, t)`` and take the ancestral step (``p_step``; ``step``: its clip / noise_fn /
        generator keywords)."""
        x_t = _work(x_t)
        self._follow(x_t)
        eps_hat = model(x_t, self._t_vector(t, x_t))
        return self.p_step(eps_hat, x_t, t, noise, **step)

    @torch.no_grad()
    def partial_reconstruct(
        self,
        model: Model,
        x0: torch.Tensor,
        t_start: int,
        noise_fn: NoiseFn = gaussian_noise,
        generator: GeneratorLike = None,
        *,
        clip: Clip = (-1.0, 1.0),
    ) -> torch.Tensor:
        """Noise x₀ to index ``t_start`` and run the reverse chain t_start, …, 0 (DDPM / AnoDDPM detection).

        ci-ber convention (``sample_from_image``): t_start + 1 model calls. The official AnoDDPM code noises
        to t_AD − 1 and takes t_AD steps: pass ``t_start = t_AD − 1`` for that. The output is not clamped
        (the methods clamp to [0, 1] before the residual).
        """
        if not 0 <= int(t_start) < self.num_timesteps:
            raise ValueError(f"t_start {t_start} outside [0, {self.num_timesteps})")
        x0 = _work(x0)
        x = self.q_sample(x0, int(t_start), self._draw(noise_fn, x0, generator))
        for t in range(int(t_start), -1, -1):
            x = self.p_sample(model, x, t, clip=clip, noise_fn=noise_fn, generator=generator)
        return x

    # ------------------------------------------------------------------ RePaint (AutoDDPM inpainting)
    def resample_jump(
        self, x: torch.Tensor, t: int, noise_fn: NoiseFn = gaussian_noise, generator: GeneratorLike = None
    ) -> torch.Tensor:
        """RePaint's "go back one step" after the step at t (t ≥ 1): x ← √(1 − β_{t−1}) x + √β_{t−1} ε.

        [assumption] β_{t−1} as in the ci-ber code and spec §20 step 4; the exact forward transition from
        index t − 1 to t would use β_t, which differs by 2e-5 — immaterial, kept code-faithful.
        """
        if not 1 <= t < self.num_timesteps:
            raise ValueError("resample_jump needs 1 <= t < T")
        x = _work(x)
        beta = self._coef("betas", self._jump_index(t), x)
        return (1.0 - beta).sqrt() * x + beta.sqrt() * self._draw(noise_fn, x, generator)

    def _jump_index(self, t: int) -> int:
        """Index of the β that ``resample_jump`` after the step at t uses: t − 1 (ci-ber)."""
        return t - 1

    def repaint_step(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: int,
        x_known: torch.Tensor,
        mask: torch.Tensor,
        *,
        noise_fn: NoiseFn = gaussian_noise,
        generator: GeneratorLike = None,
        clip: Clip = (-1.0, 1.0),
        noise: torch.Tensor | None = None,
        known_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t−1} stitched from two sources: where ``mask`` is true/1 (the region to regenerate), one
        ancestral model step from x_t; elsewhere ``x_known`` noised to index t − 1 (``x_known`` itself at
        t = 0). Draw order as in ci-ber: the known-region noise first, then the step noise.
        """
        x_t = _work(x_t)
        x_known = x_known.to(x_t.dtype)
        if t > 0:
            if known_noise is None:
                known_noise = self._draw(noise_fn, x_known, generator)
            known = self.q_sample(x_known, t - 1, known_noise)
        else:
            known = x_known
        unknown = self.p_sample(model, x_t, t, noise, clip=clip, noise_fn=noise_fn, generator=generator)
        return torch.where(mask.to(device=x_t.device).bool(), unknown, known)

    @torch.no_grad()
    def repaint(
        self,
        model: Model,
        x_start: torch.Tensor,
        x_known: torch.Tensor,
        mask: torch.Tensor,
        t_start: int,
        resample_steps: int = 5,
        *,
        noise_fn: NoiseFn = gaussian_noise,
        generator: GeneratorLike = None,
        clip: Clip = (-1.0, 1.0),
    ) -> torch.Tensor:
        """AutoDDPM inpainting (spec §20 step 4): start from ``x_start`` (the reconstruction) noised to
        ``t_start``; for t = t_start … 1 repeat ``resample_steps`` times {``repaint_step``; re-noise with
        ``resample_jump`` unless it is the last repeat}; finish with one step at t = 0.

        [assumption] At t = 0 the ci-ber loop calls no model and re-stitches its t = 1 output (still at the
        ᾱ₀ level, std ≈ 0.007) with the clean input; here one model step at t = 0 returns the clean x̂₀, as
        ``partial_reconstruct`` does, so both chains end the same way.
        """
        if not 0 <= int(t_start) < self.num_timesteps:
            raise ValueError(f"t_start {t_start} outside [0, {self.num_timesteps})")
        x_start = _work(x_start)
        x = self.q_sample(x_start, int(t_start), self._draw(noise_fn, x_start, generator))
        for t in range(int(t_start), -1, -1):
            repeats = max(1, int(resample_steps)) if t > 0 else 1
            for u in range(repeats):
                x = self.repaint_step(
                    model, x, t, x_known, mask, noise_fn=noise_fn, generator=generator, clip=clip
                )
                if u < repeats - 1:
                    x = self.resample_jump(x, t, noise_fn, generator)
        return x


# ---------------------------------------------------------------------------------------------------- respacing
def respaced_timesteps(t_start: int, steps: int) -> list[int]:
    """``steps`` timesteps from 0 to ``t_start`` (increasing, both ends kept, evenly spaced and rounded); every
    timestep 0..t_start when ``steps`` ≥ t_start + 1, and just [t_start] for one step (x̂₀ predicted in one go)."""
    if steps < 1:
        raise ValueError(f"the number of reverse steps must be ≥ 1, got {steps}")
    if steps >= t_start + 1:
        return list(range(t_start + 1))
    if steps == 1:
        return [int(t_start)]
    # spacing t_start/(steps − 1) ≥ 1, so the rounded values stay distinct
    return [round(i * t_start / (steps - 1)) for i in range(steps)]


class RespacedSchedule(DiffusionSchedule):
    """A linear-β DDPM schedule restricted to the kept timesteps τ_0 < … < τ_{K−1} (Nichol & Dhariwal 2021 §4).

    Index k of this schedule is timestep τ_k of the full one: ᾱ'_k = ᾱ_{τ_k}, β'_k = 1 − ᾱ_{τ_k} / ᾱ_{τ_{k−1}}
    (ᾱ_{τ_{−1}} = 1), and every posterior coefficient follows from those with the formulas of the full schedule, so
    one ancestral step k → k − 1 is the exact DDPM posterior q(x_{τ_{k−1}} | x_{τ_k}, x̂₀). Keeping every timestep
    gives the full schedule back. The model must be called with ``timesteps[k]`` (:meth:`wrap`), not k.
    RePaint's re-noising after the step at k uses β'_k, the exact forward transition τ_{k−1} → τ_k (the full
    schedule keeps ci-ber's β_{t−1}, which differs from β_t by 2e-5; between strided steps β'_{k−1} and β'_k
    differ by far more).
    """

    def __init__(self, timesteps: Sequence[int], num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 2e-2, device: torch.device | str | None = None) -> None:
        ts = [int(t) for t in timesteps]
        if not ts or any(b <= a for a, b in zip(ts, ts[1:])) or ts[0] < 0 or ts[-1] >= num_timesteps:
            raise ValueError(f"timesteps must increase within [0, {num_timesteps}), got {ts[:5]}…")
        super().__init__(len(ts), beta_start, beta_end, device)  # buffers replaced below
        full = torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64), dim=0)
        abar = full[torch.tensor(ts)]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        for name, value in schedule_tables(1.0 - abar / abar_prev, abar).items():
            setattr(self, name, value.to(device=self.device, dtype=torch.float32))
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=self.device)

    def to(self, device: torch.device | str) -> "RespacedSchedule":
        super().to(device)
        self.timesteps = self.timesteps.to(device)
        return self

    def _jump_index(self, t: int) -> int:
        return t

    def wrap(self, model: Model) -> Model:
        """``model(x, t)`` called with the full schedule's timesteps τ_k for this schedule's indices k."""

        def respaced_model(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return model(x, self.timesteps.to(k.device)[k])

        return respaced_model

