"""ProxyAno (Zhou et al., IEEE TMI; ``proxyano``, specs/proxyano.md): reconstruction bridged by a superpixel proxy.

A plain auto-encoder copies lesions. ProxyAno first predicts a *proxy* of the image — the SLIC superpixel image
(SI) — through an encoder, a nearest-item EMA memory and a decoder (the proxy extraction module, PEM, stage
``pem``), then maps the predicted proxy back to an image with a second encoder–decoder trained adversarially and
taught to repair pseudo-abnormal proxies (the image reconstruction module, IRM, stage ``irm``, with the PEM frozen).
Anomaly scores: the distance between the PEM encoder's codes of the image and of its reconstruction (eq. 13,
``score_space="latent"``) or ‖I − Î‖_F (``"image"``); map |I − Î| (eq. 14).

One class serves every row of Tables III–V (config switches ``proxy``, ``memory``, ``repair``, ``score_space``)
and, with ``proxy="none"`` (one encoder–decoder that reconstructs the image), the "EncDec" rows: the Auto-Encoder
baseline (:class:`AEProxy`, ``ae-proxy``), "EncDec + mem" and MemAE's "EncDec + mem*" (:class:`MemAE`, ``memae``),
so the ablations differ only in what the paper says differs. No official ProxyAno code exists: everything the paper
leaves open is a config key with the spec's default (proxyano.md §10) and a deviation line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Trainable, Variant, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from benchmark.trainer import Schedule, Stage, StepContext, frozen, milestone_schedules
from methods.blocks.encdec import EncoderDecoder
from methods.blocks.gan import PatchDiscriminator, bce_discriminator_loss, bce_generator_loss
from methods.blocks.memory import EMAMemory, MemoryModule, entropy_loss
from methods.blocks.proxies import PROXY_KINDS, ProxySettings, ProxyTable, paste_patches, proxy_channels
from methods.blocks.reconstruction import residual_output

MEMORIES = ("ema", "off", "memae")
SCORE_SPACES = ("latent", "image")
LOCAL_LOSSES = ("all_pixels", "masked_pixels")
OUTPUT_ACTIVATIONS = ("linear", "sigmoid")


@dataclass
class ProxyAnoConfig(MethodConfig):
    """Defaults: proxyano.md (the final model, Table I "Our Method"); each open choice O1–O12 is a field."""

    # what is built (proxyano.md §8)
    proxy: str = "SI"  # a methods.blocks.proxies.PROXY_KINDS entry, or "none": one EncDec reconstructs the image
    memory: str = "ema"  # "ema" (ProxyAno's nearest item + EMA), "off", "memae" (MemAE's soft memory: Table IV mem*)
    repair: bool = True  # the pseudo-abnormal proxies and L_global + L_local (eq. 11); False: L_rec only (eq. 8)
    adversarial: bool = True  # the λ_g terms of eqs. 8–10 (O11: the AE baseline has none)
    score_space: str = scoring("latent")  # eq. 13 ‖Enc_p(I) − Enc_p(Î)‖_F, or "image": ‖I − Î‖_F
    # architecture (§3, O1, O12)
    base_width: int = 64
    width_mults: tuple[int, ...] = (1, 2, 4, 8)  # 3 poolings: z = 64 × 32 × 32 at 256 px
    latent_channels: int = 64  # d, the memory item size
    output_activation: str = "linear"
    disc_width: int = 64  # P-Net PatchGAN with spectral norm: 64-128-256-512 → 1
    # memory (§4.1, O3, O4, O10)
    memory_items: int = 128  # k
    memory_decay: float = 0.99  # γ
    commitment: float = 0.25  # β (O3; 0 = strict paper)
    dead_item_restart: bool = True  # O4: re-seed dead items after the first PEM epoch when more than half are dead
    memae_shrink: float = 0.0025  # λ of MemAE's hard shrinkage (official code)
    memae_entropy: float = 2e-4  # α
    memae_similarity: str = "cosine"
    # proxies (§2, O2, O9)
    slic_segments: int = 800
    slic_compactness: float = 0.1
    canny_sigma: float = 1.0
    smooth_kernel: int = 11
    smooth_sigma: float = 2.5
    patch: int = 8
    # image reconstruction module (§5, O5, O7)
    lambda_g: float = 0.01
    lambda_global: float = 0.25
    lambda_local: float = 0.5
    local_loss: str = "all_pixels"
    papc_prob: float = 1.0
    papc_min_frac: float = 1 / 16  # patch sides U{16, …, 128} at 256 px
    papc_max_frac: float = 0.5
    papc_patches: int = 1
    papc_same_image: bool = False
    # optimisation (§6, O8): Adam 1e-3, betas (0.1, 0.9), wd 1e-4, D lr × 0.1, batch 8, 20k iterations per module
    # (max_steps; the epoch cap only bounds it), lr × 0.1 at 50 % and 75 % of each module's budget
    lr: float = 1e-3
    betas: tuple[float, float] = (0.1, 0.9)
    weight_decay: float = 1e-4
    d_lr_ratio: float = 0.1
    batch_size: int = 8
    epochs: int = 100_000
    max_steps: int | None = 20_000
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1

    @property
    def proxy_settings(self) -> ProxySettings:
        return ProxySettings(self.slic_segments, self.slic_compactness, self.canny_sigma, self.smooth_kernel,
                             self.smooth_sigma, self.patch)


PROXYANO_DEVIATIONS = (
    "No official code: the architecture (Fig. 5 is missing) is proxyano.md §3's assumption — double 3×3 conv-BN-ReLU "
    "levels 64-128-256-512, 3 max-pools, 1×1 conv to z (d = 64, 32×32 at 256 px), no skips, bilinear ×2 decoder, "
    "linear output; the IRM's discriminator is the group's P-Net PatchGAN with spectral norm (BCE, logits).",
    "Proxy: SLIC on the 256-px grey image in [0, 1], 800 segments, compactness 0.1 (≈ Lab c = 10; proxyano.md §2 "
    "warning), superpixels filled with their mean; computed once per training / validation slice and cached beside "
    "the slice store. Table III proxies: Canny σ 1 (skimage, [0, 1]), Gaussian 11×11 σ 2.5 (OpenCV), 8×8 mean "
    "patches, concatenations [edge, smooth…] [assumption, O9].",
    "Memory: nearest item, EMA γ 0.99 (eqs. 2–6) with e = 0 / N = 0 init and Laplace smoothing only in the division "
    "(methods/blocks/memory.py); a commitment term β = 0.25 (not in eq. 7, O3); dead items re-seeded from the batch's "
    "codes after the first PEM epoch when more than half are unused (O4).",
    "IRM: P̂ from the frozen PEM (eval mode, no EMA update); pseudo-abnormal proxies paste one raw-image rectangle "
    "(sides U{16..128} at 256 px, source = another image of the batch, independent corners) on every sample (O5); "
    "L_local is the mean over all pixels of the masked tensors (O7); one discriminator for the three adversarial "
    "terms, trained on the discriminator side of eq. 11 (each real / fake pair's BCE halved and weighted 1, "
    "λ_global, λ_local) [assumption: the paper gives only the generator's objective].",
    "Schedule: Adam 1e-3, betas (0.1, 0.9), weight decay 1e-4, discriminator lr × 0.1, batch 8, 20k iterations per "
    "module with lr × 0.1 at 50 % and 75 % [assumption: the paper gives only Adam and 1e-3]; final weights (no "
    "validation selection; the validation loss is logged only).",
    "Scores: eq. 13 on the pre-memory codes of the frozen PEM encoder (Frobenius norm, not squared); the image-space "
    "rows ‖I − Î‖_F; map |I − Î| unclamped (linear output).",
    "bf16 autocast on CUDA for the networks; memory addressing, losses and scores in fp32.",
    "CPU profiles only: 'default' narrows the widths (base 8, d 16, 32 items, discriminator 16) and trains each "
    "module 250 iterations of batch 8 (9 epochs of the 215 de-duplicated brain normals; 256-px layers are "
    "memory-bound on CPU whatever the width); 'smoke' base 4, d 8, 16 items, one epoch per module, SLIC with 200 "
    "segments.",
)


def _memory_for(c: ProxyAnoConfig) -> nn.Module | None:
    if c.memory == "ema":
        return EMAMemory(c.memory_items, c.latent_channels, decay=c.memory_decay, commitment=c.commitment)
    if c.memory == "memae":
        return MemoryModule(c.memory_items, c.latent_channels, shrink_threshold=c.memae_shrink,
                            similarity=c.memae_similarity)
    return None


class MemoryEncDec(nn.Module):
    """Encoder → (memory) → decoder; ``forward`` returns the output, the pre-memory code z and the memory loss."""

    def __init__(self, c: ProxyAnoConfig, in_channels: int, out_channels: int):
        super().__init__()
        act = None if c.output_activation == "linear" else c.output_activation
        self.net = EncoderDecoder.proxyano(in_channels, out_channels, c.base_width, tuple(c.width_mults),
                                           c.latent_channels, output_activation=act)
        self.memory = _memory_for(c)
        self.memae_entropy = c.memae_entropy
        self.usage: torch.Tensor | None = None  # per-item assignment counts of the current epoch (EMA memory)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.net.encode(x)
        loss = z.new_zeros((), dtype=torch.float32)
        if isinstance(self.memory, EMAMemory):
            read = self.memory(z)
            zq, loss = read.quantized, read.commitment_loss
            if self.training:
                counts = torch.bincount(read.indices.flatten(), minlength=self.memory.num_items)
                self.usage = counts if self.usage is None else self.usage + counts
        elif isinstance(self.memory, MemoryModule):
            zq, weights = self.memory(z)
            loss = self.memae_entropy * entropy_loss(weights)
        else:
            zq = z
        return self.net.decode(zq), z, loss


@register_method
class ProxyAno(Method, Trainable):
    name = "proxyano"
    Config = ProxyAnoConfig
    version = 2  # v2: channels_last networks (float rounding; issue 21)
    channels_last = True
    min_size_multiple = 8  # three poolings
    variants = {
        "2xEncDec+SI+mem+rep+lat": Variant({}, description="the final model (Table I 'Our Method', IV row 8, V latent)"),
        "2xEncDec+SI+mem+rep": Variant({"score_space": "image"}, description="Table IV row 7, Table V image space "
                                       "(the final model's weights, image-space score)"),
        "2xEncDec+SI+rep": Variant({"memory": "off", "score_space": "image"}, description="Table IV row 6"),
        "2xEncDec+SI+mem": Variant({"repair": False, "score_space": "image"}, description="Table IV row 5"),
        "2xEncDec+SI": Variant({"memory": "off", "repair": False, "score_space": "image"},
                               description="Table IV row 4 = Table III row 6 (proxy SI)"),
        "2xEncDec+SI+lat": Variant({"memory": "off", "repair": False},
                                   description="Table II 'Our SI approach': the 2×EncDec+SI weights scored with eq. 13"),
        "EncDec+mem": Variant({"proxy": "none", "score_space": "image", "adversarial": False},
                              description="Table IV row 3: one EncDec with ProxyAno's memory reconstructs the image"),
        **{f"proxy={k}": Variant({"proxy": k, "memory": "off", "repair": False, "score_space": "image"},
                                 description=f"Table III: 2×EncDec with the {k} proxy")
           for k in PROXY_KINDS},
    }
    info = MethodInfo(
        paper="Zhou et al., IEEE TMI 2022 (ProxyAno; arXiv 2110.01761)",
        summary="PEM (EncDec + nearest-item EMA memory) predicts the SLIC superpixel image; IRM (EncDec + GAN, "
                "repair losses on pseudo-abnormal proxies) rebuilds the image; score ‖Enc_p(I) − Enc_p(Î)‖_F, "
                "map |I − Î|.",
        deviations=PROXYANO_DEVIATIONS,
        code="none public (proxyano.md header); conventions from the group's P-Net code",
    )
    # 'default' (CPU, 2 cores, 256 px, batch 8, under load 5): PEM 2.5 slices/s, IRM 0.65 slices/s (one IRM step =
    # PEM forward, two IRM passes and six discriminator passes), scoring 4.7 slices/s; a 256² layer costs the same at
    # any width (an 8 → 8 conv fwd + bwd of 8 slices: 0.34 s), so the budget is set in iterations, not width
    profile_overrides = {
        "smoke": {"base_width": 4, "latent_channels": 8, "memory_items": 16, "disc_width": 4, "max_steps": None,
                  "slic_segments": 200},
        "default": {"base_width": 8, "latent_channels": 16, "memory_items": 32, "disc_width": 16,
                    "max_steps": 250},
    }

    def __init__(self, config: ProxyAnoConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        self.check_choices(proxy=(*PROXY_KINDS, "none"), memory=MEMORIES, score_space=SCORE_SPACES,
                           local_loss=LOCAL_LOSSES, output_activation=OUTPUT_ACTIVATIONS)
        if not 0 < c.papc_min_frac <= c.papc_max_frac <= 1:
            raise ValueError(f"{self.name}: need 0 < papc_min_frac ≤ papc_max_frac ≤ 1, got {c.papc_min_frac}, "
                             f"{c.papc_max_frac}")
        ch = self.data.channels
        self.two_modules = c.proxy != "none"
        if self.two_modules:
            p = proxy_channels(c.proxy, ch)
            self.pem = self.place(MemoryEncDec(c, ch, p))
            irm_config = c.replace(memory="off")
            self.irm: nn.Module | None = self.place(MemoryEncDec(irm_config, p, ch))
        else:
            self.pem = self.place(MemoryEncDec(c, ch, ch))  # the one EncDec: image → image
            self.irm = None
        self.discriminator = (self.place(PatchDiscriminator(ch, ndf=c.disc_width, n_layers=3, norm="none",
                                                            spectral_norm=True)) if c.adversarial else None)
        self.proxies: ProxyTable | None = None
        self._stage = "pem" if self.two_modules else "train"
        self._last_codes: torch.Tensor | None = None

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {"pem": self.pem}
        if self.irm is not None:
            nets["irm"] = self.irm
        if self.discriminator is not None:
            nets["discriminator"] = self.discriminator
        return nets

    # -- training --------------------------------------------------------------------------------------
    def on_fit_start(self, train: Any, val: Any) -> None:
        """The proxies of the training and validation slices, computed once (cached beside the store)."""
        if self.two_modules:
            self.proxies = ProxyTable.build([train, val], self.config.proxy, settings=self.config.proxy_settings,
                                            device=self.device)

    def stages(self) -> list[Stage]:
        if not self.two_modules:
            return [Stage("train", select_best=False)]
        return [Stage("pem", select_best=False), Stage("irm", select_best=False)]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config

        def adam(params: Any, lr: float) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=lr, betas=tuple(c.betas), weight_decay=c.weight_decay)

        opts = {"pem": adam(self.pem.parameters(), c.lr)}
        if self.irm is not None:
            opts["irm"] = adam(self.irm.parameters(), c.lr)
        if self.discriminator is not None:
            opts["d"] = adam(self.discriminator.parameters(), c.lr * c.d_lr_ratio)
        return opts

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> list[Schedule]:
        """lr × γ at the milestones of each module's own budget (iterations when ``max_steps`` is set, else epochs)."""
        c = self.config
        budget, interval = (c.max_steps, "step") if c.max_steps else (c.epochs, "epoch")
        groups = {"pem": ["pem"], "irm": ["irm", "d"]} if self.two_modules else {"train": ["pem", "d"]}
        out = []
        for stage, names in groups.items():
            opts = {n: optimizers[n] for n in names if n in optimizers}
            out += [Schedule(s, interval, stage) for s in milestone_schedules(opts, budget, c.lr_milestones, c.lr_gamma)]
        return out

    def _proxy_of(self, batch: SliceBatch) -> torch.Tensor:
        if self.proxies is None:
            raise RuntimeError(f"{self.name}: proxies are built in learn(); call fit / learn, not the trainer alone")
        return self.proxies(batch.index)

    def training_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        self._stage = step.stage
        if step.stage == "irm":
            return self._irm_step(batch, step)
        x = batch.image.float()
        target = self._proxy_of(batch) if step.stage == "pem" else x
        with step.autocast():
            out, z, memory_loss = self.pem(x)
        self._last_codes = z.detach()
        rec = F.mse_loss(out.float(), target)
        logs: dict[str, float] = {}
        loss = rec + memory_loss
        if step.stage == "train" and self.discriminator is not None:  # O11: the AE with the λ_g adversarial term
            loss = loss + self._adversarial(step, [(x, out.float(), 1.0)], logs)
        logs["loss_" + step.stage] = step.optimize("pem", loss)
        logs["rec"], logs["memory"] = float(rec.detach()), float(memory_loss.detach())
        return logs

    def _adversarial(self, step: StepContext, pairs: list[tuple[torch.Tensor, torch.Tensor, float]],
                     logs: dict[str, float]) -> torch.Tensor:
        """One discriminator step on the (real, fake, weight) pairs, then the generator's λ_g·Σ w·BCE(D(fake), 1)."""
        d = self.discriminator
        assert d is not None
        d_loss = torch.zeros((), device=pairs[0][0].device)
        with step.autocast():
            for real, fake, w in pairs:
                lr, lf = bce_discriminator_loss(d(real), d(fake.detach()))
                d_loss = d_loss + w * 0.5 * (lr + lf)
        logs["loss_d"] = step.optimize("d", d_loss)
        g_loss = torch.zeros((), device=pairs[0][0].device)
        with frozen(d), step.autocast():
            for _, fake, w in pairs:
                g_loss = g_loss + w * bce_generator_loss(d(fake))
        return self.config.lambda_g * g_loss

    def _irm_step(self, batch: SliceBatch, step: StepContext) -> dict[str, float]:
        """Eq. 11 with the PEM frozen (eval mode: BN running statistics, no EMA update, no gradient)."""
        c = self.config
        assert self.irm is not None
        self.pem.eval()
        x = batch.image.float()
        with torch.no_grad(), step.autocast():
            p_hat = self.pem(x)[0].float()
        logs: dict[str, float] = {}
        with step.autocast():
            x_rec = self.irm(p_hat)[0].float()
        loss = F.mse_loss(x_rec, x)
        logs["rec"] = float(loss.detach())
        pairs = [(x, x_rec, 1.0)]
        if c.repair:
            p_bad, m = paste_patches(p_hat, x, step.generator, min_frac=c.papc_min_frac, max_frac=c.papc_max_frac,
                                     n_patches=c.papc_patches, prob=c.papc_prob, same_image_source=c.papc_same_image)
            with step.autocast():
                x_fix = self.irm(p_bad)[0].float()
            l_global = F.mse_loss(x_fix, x)
            if c.local_loss == "all_pixels":
                l_local = F.mse_loss(m * x_fix, m * x)
            else:
                l_local = ((m * (x_fix - x)) ** 2).sum() / (m.sum() * x.shape[1]).clamp_min(1.0)
            loss = loss + c.lambda_global * l_global + c.lambda_local * l_local
            logs["global"], logs["local"] = float(l_global.detach()), float(l_local.detach())
            pairs += [(x, x_fix, c.lambda_global), (m * x, m * x_fix, c.lambda_local)]
        if self.discriminator is not None:
            loss = loss + self._adversarial(step, pairs, logs)
        logs["loss_irm"] = step.optimize("irm", loss)
        return logs

    def on_epoch_end(self, step: StepContext) -> None:
        """O4: after the first epoch of the memory's stage, re-seed the items no code chose when more than half are
        dead (from the last batch's codes, with the run's generator)."""
        mem = self.pem.memory
        usage = self.pem.usage
        self.pem.usage = None
        if (not isinstance(mem, EMAMemory) or not self.config.dead_item_restart or step.epoch != 0
                or step.stage not in ("pem", "train") or usage is None or self._last_codes is None):
            return
        dead = usage == 0
        if int(dead.sum()) * 2 > mem.num_items:
            mem.reinit_items(dead, self._last_codes, generator=step.generator)

    def validation_loss(self, batch: SliceBatch) -> float:
        """The running stage's reconstruction MSE (logged: the final weights are kept, §6)."""
        x = batch.image.float()
        with autocast(self.device, self.config.amp):
            if self._stage == "pem":
                return float(F.mse_loss(self.pem(x)[0].float(), self._proxy_of(batch)))
            return float(F.mse_loss(self.reconstruct(x).float(), x))

    # -- scoring ---------------------------------------------------------------------------------------
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Î = F_g(F_p(I)) (or the one EncDec's output)."""
        out = self.pem(x)[0]
        return out if self.irm is None else self.irm(out.float())[0]

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        x = batch.image.float()
        with autocast(self.device, self.config.amp):
            x_rec = self.reconstruct(x).float()
            if self.config.score_space == "latent":
                z, z_rec = self.pem.encode(x).float(), self.pem.encode(x_rec).float()
        if self.config.score_space == "latent":
            score = (z - z_rec).flatten(1).norm(dim=1)
        else:
            score = (x - x_rec).flatten(1).norm(dim=1)
        out = residual_output(x, x_rec)
        return ScoreOutput(out.anomaly_map, score, x_rec)


@dataclass
class AEProxyConfig(ProxyAnoConfig):
    """ProxyAno's Auto-Encoder (baselines.md §3): the same EncDec, L2, no memory, no proxy (O11: no adversarial
    term by default); ProxyAno's schedule (specs README resolution 6)."""

    proxy: str = "none"
    memory: str = "off"
    repair: bool = False
    adversarial: bool = False
    score_space: str = scoring("image")


@register_method
class AEProxy(ProxyAno):
    """``ae-proxy``: the "Auto-Encoder [14]" of ProxyAno's tables (Table III row 0, Table IV row 1)."""

    name = "ae-proxy"
    Config = AEProxyConfig
    variants = {}
    info = MethodInfo(
        paper="Baur et al. 2018 as used by ProxyAno (same encoder / decoder as ProxyAno, §IV-A3)",
        summary="ProxyAno's EncDec as a plain auto-encoder (L2); image score ‖I − Î‖_F, map |I − Î|.",
        deviations=(
            "The network is ProxyAno's assumed EncDec (proxyano.md §3; Fig. 5 is missing); L2 only (O11).",
            "ProxyAno's schedule (Adam 1e-3, betas (0.1, 0.9), wd 1e-4, batch 8, 20k iterations, lr × 0.1 at 50 / "
            "75 %) [assumption, specs README resolution 6].",
            "Table II scores it with eq. 13 through its own encoder (score_space='latent', set by the table).",
            *PROXYANO_DEVIATIONS[-2:],
        ),
        code="none public",
    )


@dataclass
class MemAEConfig(ProxyAnoConfig):
    """MemAE (baselines.md §11) as ProxyAno builds it: the EncDec with MemAE's memory (Table IV "EncDec + mem*"), 128
    items, λ 0.0025, α 2e-4 and ProxyAno's schedule (specs README resolution 7: one model for Tables I and IV)."""

    proxy: str = "none"
    memory: str = "memae"
    repair: bool = False
    adversarial: bool = False
    score_space: str = scoring("image")


@register_method
class MemAE(ProxyAno):
    """``memae``: Gong et al.'s memory-augmented AE on ProxyAno's EncDec."""

    name = "memae"
    Config = MemAEConfig
    variants = {}
    info = MethodInfo(
        paper="Gong et al., ICCV 2019 (MemAE)",
        summary="Encoder → MemAE memory (softmax attention, hard shrinkage, entropy loss) → decoder; score ‖I − Î‖_F "
                "(the reconstruction error), map |I − Î|.",
        deviations=(
            "Network: ProxyAno's EncDec with the memory on every 64-d latent position (128 items), not MemAE's 3-D "
            "video network [assumption, baselines.md §11; ProxyAno Table IV describes its row as EncDec + mem*].",
            "Cosine similarity (MemAE paper eq. 5; the official code uses a dot product), shrink λ 0.0025 and "
            "entropy α 2e-4 (official code), items U(±1/√d).",
            "ProxyAno's schedule instead of MemAE's Adam 1e-4 [assumption, specs README resolution 7]; image score "
            "‖I − Î‖_F, monotone in MemAE's squared error.",
            *PROXYANO_DEVIATIONS[-2:],
        ),
        code="github.com/donggong1/memae-anomaly-detection @ceece77 (memory module)",
    )
