"""Seeded per-slice noise: the one place test-time randomness of a method is drawn.

Why: a stochastic method (RA's sampled z, IterMask2's noise-filled mask, a diffusion model's noising) must give a
slice the same map whatever batch it is scored in and however often it is scored, or cached scores, paired
tests and the contract checks (batch independence, same seed → same maps) break. Each slice therefore draws
from its own generator, seeded by ``(seed, row id of the slice in its store)``.
"""

from __future__ import annotations

from typing import Sequence

import torch

_STRIDE = 1_000_003  # a prime: (seed, row) pairs map to distinct generator seeds for any realistic store


def slice_seed(seed: int, row: int) -> int:
    """The generator seed of slice ``row`` under a method's ``seed``."""
    return (int(seed) * _STRIDE + int(row)) % (2**63)


def slice_generators(seed: int, rows: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu"
                     ) -> list[torch.Generator]:
    """One generator per slice on ``device`` (draw on the device: no host round trip for large tensors)."""
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
    return [torch.Generator(device=device).manual_seed(slice_seed(seed, r)) for r in rows]


def per_slice_normal(shape: Sequence[int], seed: int, rows: Sequence[int] | torch.Tensor,
                     device: torch.device | str = "cpu", *, draw_on: str = "device") -> torch.Tensor:
    """``[len(rows), *shape]`` standard normal noise, slice ``i`` drawn from its own generator.

    ``draw_on="cpu"`` draws on the host and moves the result (small tensors such as a latent z: the numbers
    are then the same on every device); ``"device"`` draws with device generators (images)."""
    on = "cpu" if draw_on == "cpu" else device
    gens = slice_generators(seed, rows, on)
    if not gens:
        return torch.empty((0, *shape), device=device)
    out = torch.stack([torch.randn(tuple(shape), generator=g, device=on) for g in gens])
    return out.to(device)


def normal_from(generators: Sequence[torch.Generator], shape: Sequence[int], picks: Sequence[int],
                device: torch.device | str) -> torch.Tensor:
    """The next draw of each picked generator: ``[len(picks), *shape]`` (iterative methods that draw fresh
    noise for a shrinking subset of slices each pass)."""
    return torch.stack([torch.randn(tuple(shape), generator=generators[i], device=device) for i in picks])


COARSE_SIGNS = ("sym", "pos", "neg")


def coarse_noise(x: torch.Tensor, generator: torch.Generator, *, res: int = 16, std: float = 0.2,
                 sign: str = "sym", foreground: torch.Tensor | None = None, threshold: float = 0.01,
                 shift: tuple[int, int] | None = None) -> torch.Tensor:
    """Kascenas et al.'s coarse noise for ``x`` [B, C, H, W] (specs/baselines.md §5 ``CoarseNoise``): the noise
    to add, not the noised image.

    Per image and channel an i.i.d. N(0, std²) grid of ``res`` × ``res`` is upsampled bilinearly to H × W, the
    whole batch is rolled circularly by one random offset (dy ∈ 0..H−1, dx ∈ 0..W−1, as the official code does),
    and the result is zeroed outside the foreground: ``foreground`` [B, 1, H, W] when given, else the official
    rule channel-sum(x) > ``threshold``. ``sign``: "sym" keeps n (range [−∞, +∞], the official noise), "pos" takes
    |n| ([0, +∞]), "neg" −|n| ([−∞, 0]) — IterMask2's noise-range rows.

    Why a generator argument: training noise must be reproducible from the trainer's seed. Every draw uses
    ``generator``, which must live on ``x``'s device (the noise is drawn where the data is). ``shift`` given
    skips the offset draw (the grid draws are unchanged), so tests can check that the roll is circular.
    """
    if sign not in COARSE_SIGNS:
        raise ValueError(f"coarse noise sign must be one of {COARSE_SIGNS}, got {sign!r}")
    if generator.device.type != x.device.type:
        raise ValueError(f"coarse noise: generator on {generator.device}, data on {x.device}")
    b, c, h, w = x.shape
    grid = torch.randn((b, c, res, res), generator=generator, device=x.device) * std
    noise = torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    if shift is None:
        dy = int(torch.randint(h, (1,), generator=generator, device=x.device))
        dx = int(torch.randint(w, (1,), generator=generator, device=x.device))
    else:
        dy, dx = shift
    noise = torch.roll(noise, shifts=(dy, dx), dims=(2, 3))
    if sign == "pos":
        noise = noise.abs()
    elif sign == "neg":
        noise = -noise.abs()
    if foreground is None:
        foreground = (x.float().sum(dim=1, keepdim=True) > threshold)
    return (noise * foreground.to(noise.dtype)).to(x.dtype)


def generator_from(parent: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded by one draw of ``parent`` (the trainer's CPU generator): training noise
    drawn on the device stays reproducible from the trainer's seed and resumes with its checkpointed state."""
    seed = int(torch.randint(0, 2**62, (1,), generator=parent))
    return torch.Generator(device=device).manual_seed(seed)
