"""Pieces shared by reconstruction-based methods: the residual map and the image score from it."""

from __future__ import annotations

import torch

from benchmark.contract import ScoreOutput


def residual_output(x: torch.Tensor, x_hat: torch.Tensor, *, power: int = 1, image_score: str = "mean") -> ScoreOutput:
    """|x − x̂|^power summed over channels; image score = mean (RA/PHANES convention) or max of the map.

    Per-paper conventions that need the reconstruction (AFSC's 21×21 max, IterMask2's normalised squared
    error) are applied by the protocols from ``reconstruction``, so methods only return their native map.
    """
    amap = (x - x_hat).abs().pow(power).sum(dim=1, keepdim=True)
    if image_score == "mean":
        score = amap.flatten(1).mean(dim=1)
    elif image_score == "max":
        score = amap.flatten(1).amax(dim=1)
    else:
        raise ValueError(f"unknown image_score rule {image_score!r}")
    return ScoreOutput(anomaly_map=amap, image_score=score, reconstruction=x_hat)
