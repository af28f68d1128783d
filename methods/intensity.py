"""The no-model floor (``intensity``): the anomaly map is the input image itself.

Why it is in every table: on FLAIR and T2 the lesions the papers test on are the brightest tissue, so the raw
intensity already ranks lesion pixels far above chance. A method that learned a model of normal anatomy
must beat this floor; one that does not is, at that budget, an expensive intensity threshold. It trains
nothing and needs no GPU, so it costs a table nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch
from benchmark.registry import register_method


@dataclass
class IntensityConfig(MethodConfig):
    """``image_quantile``: the image score is this quantile of the map inside the brain mask."""

    epochs: int = 0
    image_quantile: float = 0.99


@register_method
class IntensityFloor(Method):
    name = "intensity"
    Config = IntensityConfig
    info = MethodInfo(
        paper="phbench sanity floor (no paper)",
        summary="map = the input image (channel mean); image score = 99th percentile of the map inside the brain.",
        deviations=(
            "Not a published method: the floor every learned map should clear on hyperintense lesions. The image "
            "score (99th percentile inside the brain, so one bright lesion raises it) is a phbench choice "
            "[assumption].",
        ),
    )

    def networks(self) -> dict[str, torch.nn.Module]:
        return {}

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        m = batch.image.float().mean(1, keepdim=True)
        inside = torch.where(batch.brain_mask > 0.5, m, torch.full_like(m, float("nan"))).flatten(1)
        score = torch.nanquantile(inside, self.config.image_quantile, dim=1)
        score = torch.where(torch.isnan(score), m.flatten(1).amax(1), score)  # a slice with no brain pixel
        return ScoreOutput(anomaly_map=m, image_score=score)
