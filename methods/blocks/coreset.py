"""Greedy k-center coreset and nearest-neighbour distances for feature-bank methods (PatchCore; specs/baselines.md
§22, §25 ``CoresetSampler`` + kNN).

Both are batched torch on whatever device the features live on (GPU first, the same code on CPU), in float32
whatever the autocast state. Memory stays bounded: the projection and the kNN search work in chunks of at most
``max_elements`` values; the coreset loop holds only the ``[N, projection_dim]`` projected features and a few
``[N]`` vectors (never an N × N matrix, unlike the official exact ``GreedyCoresetSampler``).

:func:`greedy_coreset` is the official ``ApproximateGreedyCoresetSampler`` of amazon-science/patchcore-inspection
(src/patchcore/sampler.py @fcaa92f):

1. the features are randomly projected to ``projection_dim`` (128) dimensions by a bias-free linear map with
   ``torch.nn.Linear``'s default weights (uniform in ±1/√D), only for the distance computations;
2. ``n_starts`` (10) distinct random points are drawn; every point's initial "distance to the coreset" is its
   **mean** distance to those starting points (the starting points themselves are not selected);
3. ``n`` times: select the point with the largest current distance (the first one on ties), then lower every
   point's distance to ``min(current, distance to the selected point)`` (tracked squared: the same picks).

So after the first few picks it is the classical greedy k-center (farthest-point) rule; the starting points only
replace the official "distance to nothing" (+∞) by a finite first ranking. The random numbers (projection and
starting points) come from a CPU ``torch.Generator`` and are then moved to the device, so a seed gives the same
projection and starting points on CPU and GPU.

:func:`nearest_neighbour_distance` is the official k = 1 faiss ``IndexFlatL2`` search done in torch: a matrix-product
search over bank chunks keeps the ``candidates`` closest bank rows of every query, whose distances are then
recomputed exactly as ‖q − b‖ (no ‖q‖² − 2q·b + ‖b‖² cancellation). The value returned for a query therefore does
not depend on which other queries share its chunk or batch (only a near-tie between candidates could be resolved
differently, and then the two distances agree to rounding).
"""

from __future__ import annotations

import math

import torch

__all__ = ["random_projection", "greedy_coreset", "coverage_radius", "nearest_neighbour_distance", "coreset_size"]

DEFAULT_MAX_ELEMENTS = 1 << 24  # 16 Mi float32 distances (64 MiB) per chunk


def _rows_per_chunk(cols: int, max_elements: int) -> int:
    return max(1, int(max_elements) // max(1, int(cols)))


def coreset_size(n_points: int, ratio: float) -> int:
    """The official count ``int(n_points · ratio)``, at least 1 (and at most ``n_points``)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    return min(n_points, max(1, int(n_points * ratio)))


def random_projection(dim_in: int, dim_out: int, generator: torch.Generator) -> torch.Tensor:
    """A ``[dim_in, dim_out]`` float32 matrix with ``nn.Linear(dim_in, dim_out, bias=False)``'s default weight
    distribution (kaiming-uniform with a = √5, i.e. uniform in ±1/√dim_in), drawn on the CPU from ``generator``."""
    bound = 1.0 / math.sqrt(dim_in)
    return (torch.rand(dim_in, dim_out, generator=generator, dtype=torch.float32) * 2 - 1) * bound


def _project(features: torch.Tensor, projection: torch.Tensor | None, max_elements: int) -> torch.Tensor:
    if projection is None:
        return features.float().contiguous()
    projection = projection.to(features.device)
    rows = _rows_per_chunk(features.shape[1] + projection.shape[1], max_elements)
    return torch.cat([features[i:i + rows].float() @ projection for i in range(0, len(features), rows)])


@torch.no_grad()
def greedy_coreset(features: torch.Tensor, n: int, *, projection_dim: int | None = 128, n_starts: int = 10,
                   generator: torch.Generator | None = None, seed: int = 0,
                   max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """Indices (``[n]`` int64, on the features' device, in selection order) of the approximate greedy coreset.

    ``features``: ``[N, D]``. ``projection_dim``: project to this many dimensions when ``D`` is larger (None: use
    the features as they are). ``n_starts``: number of random starting points (clipped to ``N``). ``generator``: a
    CPU generator for the projection and the starting points (default: one seeded with ``seed``).
    Cost: ``n`` passes over the ``[N, projection_dim]`` projected features (one matrix-vector product each) and
    no host synchronisation inside the loop; memory ``O(N · projection_dim)``.
    """
    if features.dim() != 2 or len(features) == 0:
        raise ValueError(f"greedy_coreset: expected non-empty [N, D] features, got {tuple(features.shape)}")
    big_n, dim = features.shape
    if not 1 <= n <= big_n:
        raise ValueError(f"greedy_coreset: cannot select {n} of {big_n} points")
    if n_starts < 1:
        raise ValueError(f"greedy_coreset: n_starts must be ≥ 1, got {n_starts}")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    with torch.autocast(device_type=features.device.type, enabled=False):
        projection = random_projection(dim, projection_dim, gen) if projection_dim and dim > projection_dim else None
        z = _project(features, projection, max_elements)  # [N, P] float32
        sq = z.square().sum(dim=1)  # ‖z‖², [N]
        starts = torch.randperm(big_n, generator=gen)[: min(n_starts, big_n)].to(z.device)

        def dist_to(index: torch.Tensor) -> torch.Tensor:  # [N, k] distances to the rows ``index`` (expanded form)
            d2 = sq[:, None] - 2.0 * (z @ z[index].T) + sq[index][None, :]
            return d2.clamp_min_(0).sqrt_()

        d = torch.cat([dist_to(starts[i:i + 256]) for i in range(0, len(starts), 256)], dim=1).mean(dim=1)
        # The loop tracks squared distances (same arg-max, as √ is monotonic): 3 kernels over N per pick.
        d2 = d.square_()
        new = torch.empty_like(sq)
        picked = torch.empty(n, dtype=torch.long, device=z.device)
        for k in range(n):
            i = torch.argmax(d2)  # 0-d tensor: the loop never waits for the device
            picked[k] = i
            torch.addmv(sq, z, z[i], alpha=-2.0, out=new)  # ‖z‖² − 2 z·z_i
            torch.minimum(d2, new.add_(sq[i]), out=d2)
    return picked


@torch.no_grad()
def coverage_radius(points: torch.Tensor, centres: torch.Tensor, *,
                    max_elements: int = DEFAULT_MAX_ELEMENTS) -> float:
    """max over ``points`` of the exact distance to the nearest of ``centres``: the k-center objective."""
    d, _ = nearest_neighbour_distance(points, centres, max_elements=max_elements)
    return float(d.max())


@torch.no_grad()
def nearest_neighbour_distance(queries: torch.Tensor, bank: torch.Tensor, *, candidates: int = 4,
                               max_elements: int = DEFAULT_MAX_ELEMENTS,
                               bank_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance ``[Q]`` float32, index ``[Q]`` int64) of each query's nearest bank row (Euclidean, k = 1).

    ``queries`` ``[Q, D]``, ``bank`` ``[M, D]`` on one device. The search uses matrix products over chunks of at
    most ``max_elements`` query × bank distances, keeping the ``candidates`` closest rows per query; the returned
    distance is the exact ‖q − b‖ of the best candidate. ``bank_sq``: precomputed ‖b‖² (``[M]``), optional.
    """
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"nearest_neighbour_distance: queries {tuple(queries.shape)} vs bank {tuple(bank.shape)}")
    if len(bank) == 0:
        raise ValueError("nearest_neighbour_distance: empty bank")
    q_all, b = queries.float(), bank.float()
    n_bank = len(b)
    k = max(1, min(candidates, n_bank))
    with torch.autocast(device_type=b.device.type, enabled=False):
        b_sq = b.square().sum(dim=1) if bank_sq is None else bank_sq.float()
        bank_rows = min(n_bank, max(k, max_elements // 256))  # bank rows per chunk (65 536 by default)
        query_rows = _rows_per_chunk(max(bank_rows, k * q_all.shape[1]), max_elements)  # d² chunk and exact step
        dists, idxs = [], []
        for qs in range(0, len(q_all), query_rows):
            q = q_all[qs:qs + query_rows]
            q_sq = q.square().sum(dim=1, keepdim=True)
            best_v = best_i = None
            for bs in range(0, n_bank, bank_rows):
                d2 = q_sq - 2.0 * (q @ b[bs:bs + bank_rows].T) + b_sq[None, bs:bs + bank_rows]
                v, i = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
                i = i + bs
                if best_v is not None:
                    v, j = torch.topk(torch.cat([best_v, v], dim=1), k, dim=1, largest=False)
                    i = torch.gather(torch.cat([best_i, i], dim=1), 1, j)
                best_v, best_i = v, i
            exact = (q[:, None, :] - b[best_i]).square().sum(dim=2).sqrt()  # [q, k]: no cancellation
            d, j = exact.min(dim=1)
            dists.append(d)
            idxs.append(torch.gather(best_i, 1, j[:, None])[:, 0])
    return torch.cat(dists), torch.cat(idxs)
