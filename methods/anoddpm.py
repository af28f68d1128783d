"""AnoDDPM: Wyatt et al.'s DDPM anomaly detection with simplex noise (``anoddpm``; specs/baselines.md §19, §18, §25).

A pixel-space DDPM (ε-prediction, linear β 1e-4 → 2e-2, T = 1000) learns healthy slices with *simplex* noise in
place of every Gaussian draw. At test time a slice is noised to t_AD with simplex noise and denoised back to 0 by
the ancestral sampler; the model has only seen healthy anatomy, so it paints a lesion over with healthy tissue, and
the map is |x − clamp(x̂, 0, 1)|, image score = its mean (ci-ber's ``get_anomaly``, the RA/PHANES convention §0.2).

Everything but the noise is ``ddpm``'s (methods/ddpm.py: config, network, training step, validation loss, reverse
chain, scoring; the CPU profiles' respaced schedule is methods/blocks/diffusion.py's): this class only swaps the
noise for ``methods/blocks/simplex.py``'s multi-octave OpenSimplex on the device, adds its settings to the config and
keeps the PHANES data as they are (``input_range="unit"``: RA/PHANES stores already are in [0, 1]).

Noise levels (specs README resolution 10): t_AD = 250 for the PHANES tables (official ``roc_data``, GenAI_UAD,
project page); 200 (ci-ber autoDDPM ``anoddpm.yaml``) is the scoring-only variant ``"t_AD=200"``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from benchmark.contract import MethodInfo, Variant
from benchmark.registry import register_method
from methods.blocks.diffusion import NoiseFn
from methods.blocks.simplex import simplex_noise
from methods.ddpm import (CHAIN_DEVIATION, DDPM, NETWORK_DEVIATION, SEEDING_DEVIATION, DDPMConfig,
                          respacing_deviation, training_deviation)


@dataclass
class AnoDDPMConfig(DDPMConfig):
    """Defaults: the phbench default of specs/baselines.md §19 = the ci-ber DDPM of §18 at 128 px with simplex noise.

    Network, schedule and training: ``DDPMConfig`` (§18). Simplex noise (§19): 6 octaves, persistence 0.8, coarsest
    feature 64 px. RA/PHANES augmentation (protocols/phanes.md §3). ``input_range="unit"``: the PHANES stores are
    in [0, 1] and go to the model as they are. Scoring: t_AD = 250 (README resolution 10), every reverse step
    (``score_steps=None``).
    """

    input_range: str = "unit"  # RA/PHANES recipes: already [0, 1]
    simplex_octaves: int = 6
    simplex_persistence: float = 0.8
    simplex_frequency: float = 64.0  # coarsest feature size in pixels (the official "frequency")


ANODDPM_VARIANTS: dict[str, Variant] = {
    "t_AD=200": Variant({"t_ad": 200}, description="noise level 200 (ci-ber autoDDPM anoddpm.yaml; baselines.md §19's "
                                                   "value) instead of 250: same trained weights, rescored"),
}

ANODDPM_DEVIATIONS = (
    "phbench default = the ci-ber network and training of specs §18 at 128 px with simplex noise (§19), not the "
    "official AnoDDPM guided-diffusion model at 256 px (base 128, attention at 16 and 8, 2 heads, AdamW, batch 1, EMA) "
    "[assumption of the spec: 004 used the ci-ber framework for its other baselines]. EMA is off (ema_decay None) "
    "as in ci-ber; the field enables the trainer's EMA.",
    NETWORK_DEVIATION,
    training_deviation("simplex noise"),
    "RA/PHANES training augmentation (RandomAffine 10°/0.1/0.9–1.1 + h-flip 0.5, shared random_affine) on: "
    "protocols/phanes.md §3 applies it to every model [assumption for a DDPM baseline].",
    "Every Gaussian draw (training target, forward noising to t_AD, per-step posterior noise) is simplex noise "
    "(6 octaves, persistence 0.8, coarsest feature 64 px at every image size, not re-normalised: std ≈ 0.5) "
    "[spec §19]; the third coordinate is drawn per field rather than set to t, and every row and call gets its own "
    "permutation (methods/blocks/simplex.py's documented assumptions).",
    "t_AD = 250 (specs README resolution 10: official roc_data, GenAI_UAD, project page); variant 't_AD=200' "
    "(ci-ber autoDDPM anoddpm.yaml) changes only scoring and reuses the weights.",
    CHAIN_DEVIATION + " The official AnoDDPM code noises to t_AD − 1 and takes t_AD steps (one step less).",
    "Map |x − clamp(x̂, 0, 1)| summed over channels, image score = mean of the map (ci-ber get_anomaly, §0.2), not the "
    "official squared error (x − x̂)².",
    SEEDING_DEVIATION,
    "bf16 autocast on CUDA for the UNet only; schedule arithmetic, simplex noise, loss and maps in fp32.",
    respacing_deviation("10 reverse steps (25× fewer model calls than the paper's 251); on one shared core ≈ 10 "
                        "training slices/s (≈ 3 min for the phantom's 576) and ≈ 2 scored slices/s (0.08 with all 251 "
                        "steps, ~90 % of it simplex noise)."),
)


@register_method
class AnoDDPM(DDPM):
    name = "anoddpm"
    Config = AnoDDPMConfig
    version = 1
    score_version = 1
    variants = ANODDPM_VARIANTS
    info = MethodInfo(
        paper="Wyatt, Leach, Schmon, Willcocks, CVPR Workshops (NTIRE) 2022, AnoDDPM (DDPM with simplex noise)",
        summary="DDPM (ε-prediction, linear β, T = 1000) trained with simplex noise on healthy slices; a test slice is "
                "noised to t_AD = 250 with simplex noise and denoised step by step to 0; map |x − clamp(x̂, 0, 1)|, "
                "image score = mean of the map.",
        deviations=ANODDPM_DEVIATIONS,
        code="github.com/Julian-Wyatt/AnoDDPM @3052f04; ci-ber/autoDDPM model_zoo/ddpm.py, net_utils @f74b894; "
             "ci-ber/GenAI_UAD configs/anoddpm.yaml @5060423",
    )
    # CPU budgets: ddpm's profile_overrides (inherited). 'default' on the 576-slice FLAIR phantom, one shared core:
    # 216 steps in ≈ 3 min (9.5 slices/s), 10 reverse steps ≈ 1.4–1.9 scored slices/s; pixel AUROC 0.54 → 0.70.

    def make_noise_fn(self) -> NoiseFn:
        c = self.config
        return functools.partial(simplex_noise, octaves=c.simplex_octaves, persistence=c.simplex_persistence,
                                 frequency=c.simplex_frequency)
