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
