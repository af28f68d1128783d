"""SI-VAE: Soft-Introspective VAE (Daniel & Tamar, CVPR 2021) as the RA/PHANES baseline (``si-vae``).

Same network and alternating encoder/decoder updates as RA without the reversed loss (λ = 0), with the paper's
App. A weights (β_rec 1, β_KL 1, β_neg 256; specs README item 13, baselines.md §6) and the plain residual map
|x − x̂| of one sampled z, image score = mean. Everything else is RA's code path (methods/ra.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.contract import MethodInfo, scoring
from benchmark.registry import register_method
from methods.ra import RA, RAConfig


@dataclass
class SIVAEConfig(RAConfig):
    """Defaults: baselines.md §6 — App. A weights, Adam 5e-5 (×0.1 at epoch 350), batch 8, ≤ 1500 epochs,
    patience 500; no reversed loss; plain residual map (no CLAHE, no LPIPS)."""

    beta_rec: float = 1.0
    beta_kl: float = 1.0
    beta_neg: float = 256.0
    gamma_r: float = 1e-8
    reverse_weight: float = 0.0
    lr_milestones: tuple[int, ...] = (350,)
    equalize: bool = scoring(False)
    perceptual: bool = scoring(False)


@register_method
class SIVAE(RA):
    name = "si-vae"
    Config = SIVAEConfig
    version = 3  # v3: channels_last networks (float rounding; issue 21)
    variants: dict = {}  # RA's Table 3 ablations are not SI-VAE rows
    info = MethodInfo(
        paper="Daniel & Tamar, CVPR 2021 (Soft-IntroVAE), as configured in Bercea et al. MIDL 2023 App. A",
        summary="Soft-Introspective VAE with alternating E/D updates; map |x − x̂| (one sampled z), "
                "image score = mean of the map.",
        deviations=(
            "App. A weights β_rec 1, β_KL 1, β_neg 256, γ_r 1e-8 (specs README item 13), not the RA trainer's "
            "0.5 / 128; RA 'w/o reverse loss' is the separate λ = 0 run with RA's own weights.",
            "MultiStepLR ×0.1 at epoch 350 (ci-ber MorphAEus SIVAETrainer, whose β match App. A) "
            "[assumption, baselines.md §6].",
            "zdim 128 as in every ci-ber config (the paper's 'bottleneck of 256' is 2·zdim for μ and log σ²).",
            "Network, augmentation, seeded stochastic inference and best-val-MSE selection as in RA "
            "(see the ra method's notes); training augmentation on, as the ci-ber fastMRI loader applies it to "
            "every model [assumption].",
            "bf16 autocast on CUDA for the networks; KL, SSE and exp(ELBO) in fp32.",
            "CPU profiles only: 'default' trains widths (16, 32, 64, 128, 128) for 2 epochs at lr 5e-4, 'smoke' "
            "widths (8, 16, 32, 64, 64); the 'paper' profile keeps the full network and schedule.",
        ),
        code="github.com/taldatech/soft-intro-vae-pytorch @b6dbf16; ci-ber/MorphAEus SIVAETrainer.py @d314eb3; "
             "ci-ber/GenAI_UAD soft_intro_vae_daniel.py @5060423",
    )
    profile_overrides = {"smoke": {"epochs": 1, "channels": (8, 16, 32, 64, 64)},
                         "default": {**RA.profile_overrides["default"], "epochs": 2}}  # RA's 5 measured for RA only
