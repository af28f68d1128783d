"""Pieces shared by reconstruction-based methods: the residual map and the image score from it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.contract import ScoreOutput

IMAGE_SCORE_RULES = ("mean", "max", "max_mean21")


def max_of_mean_filtered(amap: torch.Tensor, size: int = 21) -> torch.Tensor:
    """DRAEM's image score (AFSC's slice score): the maximum of the ``size``×``size`` mean-filtered map, zero padded
    (``count_include_pad``), [B]. The protocol id ``auroc|image|afsc_max21`` computes the same from stored maps."""
    return F.avg_pool2d(amap.float(), size, stride=1, padding=size // 2).flatten(1).amax(dim=1)


def image_score_of(amap: torch.Tensor, rule: str) -> torch.Tensor:
    """A method's native image score from its [B, 1, H, W] map: ``mean``, ``max`` or ``max_mean21``."""
    if rule == "mean":
        return amap.flatten(1).mean(dim=1)
    if rule == "max":
        return amap.flatten(1).amax(dim=1)
    if rule == "max_mean21":
        return max_of_mean_filtered(amap, 21)
    raise ValueError(f"unknown image_score rule {rule!r} (one of {IMAGE_SCORE_RULES})")


def residual_output(x: torch.Tensor, x_hat: torch.Tensor, *, power: int = 1, image_score: str = "mean") -> ScoreOutput:
    """|x − x̂|^power summed over channels; image score = mean (RA/PHANES convention), max, or max of the 21×21
    mean-filtered map (AFSC / DRAEM, ``max_mean21``).

    Per-paper conventions that need the reconstruction (AFSC's 21×21 max, IterMask2's normalised squared
    error) are applied by the protocols from ``reconstruction``, so methods only return their native map.
    """
    amap = (x - x_hat).abs().pow(power).sum(dim=1, keepdim=True)
    return ScoreOutput(anomaly_map=amap, image_score=image_score_of(amap, image_score), reconstruction=x_hat)


INPUT_RANGES = ("unit", "brain_minmax")


class UnitRange:
    """How a model that assumes [0, 1] intensities sees a batch, and how its output returns (specs/baselines.md §0.1).

    ``"unit"``: the store already is in [0, 1] (RA/PHANES recipes): both maps are the identity, nothing is clipped.
    ``"brain_minmax"``: per image and channel, lo = min and hi = max of x over the brain (``brain_mask`` > 0.5; the
    whole image when a slice has no brain pixel), ``to_unit(x) = clip((x − lo) / (hi − lo), 0, 1)`` and
    ``from_unit(u) = lo + u · (hi − lo)``. Inside the brain the round trip is exact; pixels outside the brain's range
    (the background of IterMask2's stores, −3 below the brain's minimum) are clipped to the nearest end. A constant
    brain has hi − lo floored at ``eps``. An affine change a·x + b (a > 0) of a slice leaves ``to_unit`` unchanged.
    """

    def __init__(self, lo: torch.Tensor | None = None, span: torch.Tensor | None = None):
        self.lo, self.span = lo, span

    @classmethod
    def of(cls, mode: str, x: torch.Tensor, brain_mask: torch.Tensor | None, *, threshold: float = 0.5,
           eps: float = 1e-6) -> "UnitRange":
        """The range of batch ``x`` [B, C, H, W] (brain mask [B, 1, H, W]) under ``mode`` (one of INPUT_RANGES)."""
        if mode == "unit":
            return cls()
        if mode != "brain_minmax":
            raise ValueError(f"unknown input range {mode!r}; known: {INPUT_RANGES}")
        x = x.float()
        inside = torch.ones_like(x, dtype=torch.bool) if brain_mask is None else (brain_mask > threshold).expand_as(x)
        empty = ~inside.flatten(2).any(dim=2)  # [B, C]: no brain pixel → the whole image
        inside = inside | empty[..., None, None]
        lo = torch.where(inside, x, torch.full_like(x, float("inf"))).flatten(2).amin(dim=2)
        hi = torch.where(inside, x, torch.full_like(x, float("-inf"))).flatten(2).amax(dim=2)
        return cls(lo[..., None, None], (hi - lo).clamp_min(eps)[..., None, None])

    @property
    def identity(self) -> bool:
        return self.lo is None

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        return ((x.float() - self.lo) / self.span).clamp(0.0, 1.0)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return u
        return self.lo + u.float() * self.span

    def restore(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A model output ``u`` in the store's units where the input ``x`` lay inside the brain's range, and ``x``
        itself where ``to_unit`` clipped it (IterMask2's background at −3): the model never saw those pixels'
        values, so they get no residual (a clipped background would otherwise carry |x − lo| into every map and
        into a set-wide min–max)."""
        if self.identity:
            return u
        rel = (x.float() - self.lo) / self.span  # what to_unit clipped: outside [0, 1] by more than rounding
        inside = (rel >= -1e-5) & (rel <= 1.0 + 1e-5)
        return torch.where(inside, self.from_unit(u), x.float())
