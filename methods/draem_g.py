"""DRAEM_G: DRAEM's pseudo-healthy residual (AFSC paper §3.2; ``draem_g``, specs/baselines.md §16–§17).

No training of its own: the trained ``draem`` of the same AFSCm setting is the upstream (the run store trains it
once, under its own key, and the ``draem`` rows of a table load the same model). Map = |x − R(x)| with R DRAEM's
reconstructive sub-network (behind the frozen binary AFSC masks in the ``w/ AFSCm s=0.5`` variant; the difference is
taken against the un-compressed input), image score = max of the 21×21 mean-filtered map (afsc.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Upstream, Variant
from benchmark.registry import register_method
from methods.blocks.afscm import AFSCmConfig
from methods.blocks.reconstruction import residual_output
from methods.draem import AFSCM_VARIANT, Draem


@dataclass
class DraemGConfig(AFSCmConfig):
    """Only the AFSC module fields: they pick the upstream DRAEM (its own profile config otherwise)."""


@register_method
class DraemG(Method):
    name = "draem_g"
    Config = DraemGConfig
    version = 1
    min_size_multiple = Draem.min_size_multiple
    variants = {
        AFSCM_VARIANT: Variant(dict(Draem.variants[AFSCM_VARIANT].overrides),
                               description="AFSC Tables 1–2: the residual of DRAEM w/ AFSCm s=0.5 (the same trained "
                                           "model as that row)"),
    }
    info = MethodInfo(
        paper="AFSC paper §3.2 (DRAEM_G: the residual of DRAEM's reconstructive sub-network; DRAEM: Zavrtanik et "
              "al., ICCV 2021)",
        summary="The trained DRAEM's reconstructive sub-network gives a pseudo-healthy image; map = |x − x̂|, image "
                "score = max of the 21×21 mean-filtered map. Trains nothing.",
        deviations=(
            "The upstream is phbench's draem (methods/draem.py, same AFSCm setting, trained once and frozen), with "
            "all of its deviations (skimage.data textures, greyscale, brain foreground, C = 1, epochs, profiles).",
            "Map = absolute residual summed over channels, no post-processing; image score = max of the 21×21 "
            "mean-filtered map [assumption, baselines.md §16 and afsc.md §8: the paper says only 'the same "
            "difference calculation as other methods'].",
            "w/ AFSCm s=0.5: the input passes through the upstream's frozen binary AFSC masks before the "
            "reconstructive net; the residual is taken against the un-compressed input (afsc.md §8).",
        ),
        code="github.com/VitjanZ/DRAEM @2dbf673 (reconstructive sub-network); no public AFSC code",
    )

    @classmethod
    def upstreams(cls, config: MethodConfig) -> dict[str, Upstream]:
        """The draem with this config's AFSC module fields on top of its own (profile) config: with the defaults,
        the model of the ``draem`` rows; with the AFSCm variant's fields, the model of the ``draem`` ``w/ AFSCm
        s=0.5`` rows (named by that variant, so logs and run records say which DRAEM it is)."""
        fields = {"afscm": config.afscm, "afscm_keep": config.afscm_keep, "afscm_delta": config.afscm_delta}
        named = [v for v, spec in Draem.variants.items() if all(fields[k] == val for k, val in spec.overrides.items())]
        return {"draem": Upstream("draem", variant=named[0] if named else "", overrides=fields)}

    def networks(self) -> dict[str, nn.Module]:
        return {}

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        draem = self.upstream_method("draem")
        x = batch.image.float()
        return residual_output(x, draem.reconstruct(x), image_score="max_mean21")
