"""Latent memories that stop an auto-encoder from copying anomalies (MemAE; ProxyAno's PEM).

Two different addressing rules, kept side by side so the ProxyAno Table IV rows "EncDec + mem*" (MemAE) and
"EncDec + mem" (ours) differ only in the memory (proxyano.md §8):
- ``MemoryModule``: MemAE's learnable items, soft attention, hard shrinkage, entropy loss (baselines.md §11).
- ``EMAMemory``: ProxyAno's nearest-item codebook updated by EMA, straight-through gradient (proxyano.md §4.1).
Both accept ``[B, C]`` vectors or ``[B, C, H, W]`` maps (one address per spatial position) and compute their
addressing in fp32 whatever the autocast dtype: softmax weights around 1/N and the 1e-12 shrinkage epsilon do not
survive bf16, and an arg-min over bf16 distances would pick items by rounding noise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def _to_rows(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """[B, C] → ([B, C], None); [B, C, H, W] → ([B·H·W, C], (B, H, W)) so every position is one query."""
    if x.dim() == 2:
        return x, None
    if x.dim() == 4:
        b, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b * h * w, c), (b, h, w)
    raise ValueError(f"expected [B, C] or [B, C, H, W], got shape {tuple(x.shape)}")


def _from_rows(rows: torch.Tensor, grid: tuple[int, ...] | None) -> torch.Tensor:
    if grid is None:
        return rows
    b, h, w = grid
    return rows.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def hard_shrink_relu(w: torch.Tensor, threshold: float, eps: float = 1e-12) -> torch.Tensor:
    """MemAE eq. 7: ReLU(w − λ)·w / (|w − λ| + ε), a differentiable hard threshold that zeroes weights below λ."""
    return F.relu(w - threshold) * w / ((w - threshold).abs() + eps)


def entropy_loss(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over queries of −Σ_i ŵ_i log ŵ_i (memory axis = dim 1): pushes the addressing towards few items."""
    w = weights.float()
    return -(w * torch.log(w + eps)).sum(dim=1).mean()


class MemoryModule(nn.Module):
    """MemAE memory: ``num_items`` × ``dim`` learnable items read by sparse soft attention.

    forward(z) → (ẑ, ŵ): ŵ = L1-normalise(hard_shrink(softmax(sim(z, M)), λ)), ẑ = ŵ·M; ŵ has the memory axis at
    dim 1 ([B, N] or [B, N, H, W]) so ``entropy_loss(ŵ)`` applies directly (weight α = 0.0002 in MemAE's code).

    ``similarity``: "cosine" (MemAE paper eq. 5) or "dot" (the official code's ``F.linear``) [assumption: the paper's
    cosine by default, as the brief asks; proxyano.md §8 notes the difference]. λ default 0.0025 = the official
    code and proxyano.md §8 (baselines.md §11 proposes 1/N; the paper's own spec wins for 001's tables). Items are
    initialised U(−1/√dim, 1/√dim) as in the official module [assumption: recalled from donggong1/memae].
    """

    def __init__(self, num_items: int, dim: int, shrink_threshold: float = 0.0025, similarity: str = "cosine"):
        super().__init__()
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"unknown similarity {similarity!r} (cosine | dot)")
        self.num_items, self.dim = num_items, dim
        self.shrink_threshold = shrink_threshold
        self.similarity = similarity
        bound = 1.0 / dim**0.5
        self.items = nn.Parameter(torch.empty(num_items, dim).uniform_(-bound, bound))

    def address(self, rows: torch.Tensor) -> torch.Tensor:
        """[Q, C] queries → [Q, N] shrunk, L1-normalised weights (fp32)."""
        q, m = rows.float(), self.items.float()
        if self.similarity == "cosine":
            q, m = F.normalize(q, dim=1), F.normalize(m, dim=1)
        w = torch.softmax(q @ m.t(), dim=1)
        if self.shrink_threshold > 0:
            w = F.normalize(hard_shrink_relu(w, self.shrink_threshold), p=1, dim=1)
        return w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, grid = _to_rows(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            w = self.address(rows)
            out = w @ self.items.float()
        return _from_rows(out, grid).to(z.dtype), _from_rows(w, grid)


class MemoryRead(NamedTuple):
    """``quantized``: straight-through ẑ (value of the nearest items, gradient of z); ``indices``: the chosen item
    per query ([B] or [B, H, W]); ``commitment_loss``: β·MSE(z, sg(ẑ)) (0 when β = 0)."""

    quantized: torch.Tensor
    indices: torch.Tensor
    commitment_loss: torch.Tensor


class EMAMemory(nn.Module):
    """ProxyAno memory (proxyano.md §4.1): every latent vector is replaced by its nearest item (Euclidean, eq. 2);
    in training mode the items follow the paper's eqs. 4–6 with γ = ``decay``:
    N_i ← γN_i + (1−γ)n_i,  e_i ← γe_i + (1−γ)Σ_{z→i} z,  m_i = e_i / N_i,
    where n_i = number of vectors assigned to item i in the batch. The gradient is straight-through (§4.1).

    Items, N and e are buffers (no optimiser touches them; ``state_dict`` saves them). The update is deterministic:
    ties in the arg-min go to the lowest index, and per-item sums are a one-hot matmul rather than ``index_add_``
    (CUDA atomics are not bit-reproducible). It runs only in ``train()`` mode, on detached fp32 z.

    [assumption] Implementation details that the paper leaves open, deviating in two points from proxyano.md's
    "usual VQ-EMA code" suggestion (init e = m.clone(), N = 0, Laplace-smoothed N written back):
    - init m ~ N(0, 1), **e = 0**, N = 0: with N = 0, e = m.clone() would add 99·m_init/n_i to an item's first
      update (or blow unused items up to ~1e5·m when all items are recomputed); with e = 0 the first update puts
      an item exactly on the mean of its assigned vectors;
    - m_i is recomputed **only for items assigned in this batch**. For the others eq. 6 gives the same m_i (e and N
      both shrink by γ), so this is the paper's rule without the 0/0 that N → 0 reaches after ~10⁴ idle steps.
      Laplace smoothing (ε = ``eps`` = 1e-5, as the spec asks) is applied to N only in the division, never stored.
    ``commitment`` β = 0.25 by default (proxyano.md O3; 0 = strict paper).
    """

    def __init__(self, num_items: int = 128, dim: int = 64, decay: float = 0.99, eps: float = 1e-5,
                 commitment: float = 0.25, generator: torch.Generator | None = None):
        super().__init__()
        self.num_items, self.dim = num_items, dim
        self.decay, self.eps, self.commitment = decay, eps, commitment
        self.register_buffer("items", torch.randn(num_items, dim, generator=generator))
        self.register_buffer("cluster_size", torch.zeros(num_items))
        self.register_buffer("embed_sum", torch.zeros(num_items, dim))

    def nearest(self, rows: torch.Tensor) -> torch.Tensor:
        """Index of the nearest item (Euclidean) for each fp32 row [Q, C] → [Q]."""
        m = self.items.float()
        d = rows.square().sum(1, keepdim=True) - 2.0 * rows @ m.t() + m.square().sum(1)[None]
        return d.argmin(dim=1)

    @torch.no_grad()
    def ema_update(self, rows: torch.Tensor, idx: torch.Tensor) -> None:
        """Eqs. 4–6 for one batch of detached fp32 rows and their item indices."""
        onehot = F.one_hot(idx, self.num_items).to(rows.dtype)  # [Q, N]
        counts = onehot.sum(0)
        sums = onehot.t() @ rows
        g = self.decay
        self.cluster_size.mul_(g).add_((1 - g) * counts)
        self.embed_sum.mul_(g).add_((1 - g) * sums)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_items * self.eps) * total
        used = counts > 0
        self.items[used] = self.embed_sum[used] / smoothed[used, None]

    def forward(self, z: torch.Tensor) -> MemoryRead:
        rows, grid = _to_rows(z)
        if rows.shape[1] != self.dim:
            raise ValueError(f"latent has {rows.shape[1]} channels, the memory holds {self.dim}-d items")
        with torch.autocast(device_type=z.device.type, enabled=False):
            rows32 = rows.float()
            idx = self.nearest(rows32.detach())
            picked = self.items[idx].float()
            commit = self.commitment * F.mse_loss(rows32, picked) if self.commitment else rows32.new_zeros(())
            if self.training:
                self.ema_update(rows32.detach(), idx)
        # straight-through ("copy the gradient of z̃ to z"); written as m + (z − sg(z)) so the value is exactly m
        quantized = picked.to(rows.dtype) + (rows - rows.detach())
        idx_out = idx if grid is None else idx.reshape(grid)
        return MemoryRead(_from_rows(quantized, grid), idx_out, commit)

    @torch.no_grad()
    def reinit_items(self, which: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Put the items selected by the bool mask ``which`` [N] on random latent vectors of ``z`` (proxyano.md O4,
        dead-item restart), resetting their N and e so the next assignment starts a fresh mean."""
        rows, _ = _to_rows(z.detach())
        k = int(which.sum())
        if k == 0:
            return
        gen_device = generator.device if generator is not None else rows.device
        pick = torch.randint(rows.shape[0], (k,), generator=generator, device=gen_device).to(rows.device)
        self.items[which] = rows[pick].float()
        self.cluster_size[which] = 0.0
        self.embed_sum[which] = 0.0
