"""AFSC's module (AFSCm, specs/afsc.md §3): learnable binary masks on the amplitude and phase of the 2-D spectrum.

Written once and plugged into every host (``afsc``, and the ``w/ AFSCm`` variants of ``ae`` and ``draem``) without
forking the host's code:

- a host config subclasses :class:`AFSCmConfig` (``afscm``: ``"off"`` | ``"learned"`` | ``"random"``, the keep
  ratio s, the sparsity weight δ);
- the host wraps the network that should see the compressed image with :func:`with_afscm` (identity when off);
- the host adds ``self.afscm_penalty()`` to the loss that trains that network (zero when off or frozen);
- the host lists :class:`AFSCmHost` first among its bases: a learned module splits training into a soft-mask stage
  (relaxed Bernoulli masks + sparsity loss, all epochs but the last) and a binary-mask stage (the last epoch), and
  binarises the masks to the top-s fraction between the two (``on_stage_end``, after the stage's best weights are
  restored, so the binary masks are those of the weights that are kept).

Masks are conjugate-symmetric: one parameter per pair of frequencies (k, −k), so the masked spectrum of a real
image stays Hermitian and the inverse FFT is real (the real part is still taken, as the paper does, to drop
rounding and the phase of self-conjugate bins). The paper's masks are free H×W maps; tying each pair halves the
parameters and keeps x̂ an image rather than the real part of a complex one (a documented deviation of the hosts).
FFTs run in fp32 even under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.contract import DataSpec, MethodConfig

AFSCM_MODES = ("off", "learned", "random")
SOFT_STAGE, BINARY_STAGE = "soft masks", "binary masks"


@dataclass
class AFSCmConfig(MethodConfig):
    """Config of a method that can host the AFSC module (afsc.md §3; defaults: off, s = 0.5, δ = 1e-6)."""

    afscm: str = "off"  # "learned": relaxed-Bernoulli masks → binary; "random": fixed random binary masks
    afscm_keep: float = 0.5  # s: fraction of the H·W coefficients kept (0.9 AE, 0.5 DRAEM / AFSC, paper §3.2)
    afscm_delta: float = 1e-6  # δ of the sparsity term δ(‖M_A‖₁ + ‖M_P‖₁) (authors' snippet; paper: unstated)


def conjugate_pairs(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index [H·W] → pair id, multiplicity [n_pairs]): frequency k and −k (mod H, W) share one id, numbered in
    the order of their first flat index; self-conjugate bins (DC, Nyquist) have multiplicity 1, the others 2."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    flat = (i * width + j).flatten()
    partner = (((-i) % height) * width + (-j) % width).flatten()
    canonical = torch.minimum(flat, partner)
    ids, index = torch.unique(canonical, sorted=True, return_inverse=True)
    multiplicity = torch.bincount(index, minlength=len(ids))
    return index, multiplicity


class FourierCompression(nn.Module):
    """x̂ = Re F⁻¹[(M_A ⊙ |F x|) · exp(+i · M_P ⊙ ∠F x)] with masks shared by the batch (afsc.md §3.1–3.5).

    ``mode="learned"``: logits ω̂ with p = σ(10 ω̂), initialised so that p ~ U(0, 1); training draws relaxed masks
    σ(12 (p − u)) with fresh u ~ U(0, 1) on every forward and records their L1 sum (each pair counted with its
    multiplicity, i.e. the sum over the full H×W mask) for :meth:`penalty`; :meth:`binarise` keeps the pairs of
    highest p. ``mode="random"``: a fixed random binary mask of the same sparsity, drawn at construction.
    Eval mode uses the binary masks; before they exist (validation in the soft-mask stage) it uses the masks that
    binarising now would give, without freezing them."""

    def __init__(self, height: int, width: int, *, mode: str = "learned", keep: float = 0.5, delta: float = 1e-6,
                 prob_slope: float = 10.0, sample_slope: float = 12.0):
        super().__init__()
        if mode not in ("learned", "random"):
            raise ValueError(f"FourierCompression: mode must be 'learned' or 'random', got {mode!r}")
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"FourierCompression: keep ratio s must be in (0, 1], got {keep}")
        self.height, self.width, self.mode = height, width, mode
        self.keep, self.delta = float(keep), float(delta)
        self.prob_slope, self.sample_slope = float(prob_slope), float(sample_slope)
        index, multiplicity = conjugate_pairs(height, width)
        self.register_buffer("pair_index", index, persistent=False)
        self.register_buffer("multiplicity", multiplicity.float(), persistent=False)
        n = len(multiplicity)
        self.register_buffer("binary", torch.zeros(2, n))  # rows: amplitude, phase
        self.register_buffer("frozen", torch.tensor(False))
        self.logits: nn.Parameter | None = None
        if mode == "learned":
            w = torch.rand(2, n).clamp(1e-6, 1 - 1e-6)
            self.logits = nn.Parameter(-torch.log(1 / w - 1) / self.prob_slope)
        else:
            self._freeze(torch.rand(2, n))
        self.last_sparsity: torch.Tensor | None = None

    @property
    def n_keep(self) -> int:
        return math.floor(self.keep * self.height * self.width)

    def probabilities(self) -> torch.Tensor:
        """p = σ(10 ω̂) per pair, [2, n_pairs] (learned mode)."""
        if self.logits is None:
            raise RuntimeError("FourierCompression: a random mask has no probabilities")
        return torch.sigmoid(self.prob_slope * self.logits)

    def _freeze(self, ranking: torch.Tensor) -> None:
        """Binary masks keeping, per row, the highest-ranked pairs while the full-mask count stays ≤ ⌊s·H·W⌋
        (so the kept count is ⌊s·H·W⌋ or one less: pairs count twice). Ties go to the lower pair id."""
        self.binary.copy_(torch.stack([self._top_pairs(r) for r in ranking]))
        self.frozen.fill_(True)

    def _top_pairs(self, ranking: torch.Tensor) -> torch.Tensor:
        order = torch.sort(-ranking, stable=True).indices
        kept = torch.cumsum(self.multiplicity.to(ranking.device)[order], 0) <= self.n_keep
        binary = torch.zeros_like(ranking)
        binary[order[kept]] = 1.0
        return binary

    @torch.no_grad()
    def binarise(self) -> None:
        """End of the soft-mask stage: rank p (afsc.md §3.5's deterministic rule) and freeze the binary masks."""
        self._freeze(self.probabilities().detach())

    def masks(self) -> torch.Tensor:
        """[2, n_pairs]: the binary masks once frozen, else relaxed samples with fresh noise (training) or the
        current top-s pairs (eval)."""
        if bool(self.frozen):
            return self.binary
        p = self.probabilities()
        if not self.training:  # validation during the soft-mask stage: the masks binarising now would give
            ranked = torch.zeros_like(self.binary)
            for row in range(2):
                ranked[row] = self._top_pairs(p[row].detach())
            return ranked
        return torch.sigmoid(self.sample_slope * (p - torch.rand_like(p)))

    def full_masks(self, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(M_A, M_P) as [2, H, W] full-spectrum maps (each pair's value at k and −k)."""
        m = self.masks() if masks is None else masks
        return m[:, self.pair_index].view(2, self.height, self.width)

    def kept_fraction(self) -> torch.Tensor:
        """Fraction of the H·W coefficients each binary mask keeps, [2]."""
        return (self.binary * self.multiplicity).sum(1) / (self.height * self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self.masks()
        self.last_sparsity = None if bool(self.frozen) else (masks * self.multiplicity).sum()
        full = self.full_masks(masks)
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.fft2(x.float())
            amplitude, phase = spectrum.abs(), spectrum.angle()
            compressed = torch.polar(full[0] * amplitude, full[1] * phase)
            return torch.fft.ifft2(compressed).real

    def penalty(self) -> torch.Tensor:
        """δ·L_M of the masks drawn by the last forward (0 when frozen or before any forward)."""
        if self.last_sparsity is None:
            return self.binary.new_zeros(())
        return self.delta * self.last_sparsity


class CompressedInput(nn.Module):
    """``net(compression(x))``: the host network sees the compressed image; its parameters and the masks' logits
    sit in one module, so the host's optimiser trains both (afsc.md §3.3) and its state dict saves the masks."""

    def __init__(self, compression: FourierCompression, net: nn.Module):
        super().__init__()
        self.compression, self.net = compression, net

    def forward(self, x: torch.Tensor, *args, **kw):
        return self.net(self.compression(x), *args, **kw)


def with_afscm(net: nn.Module, config: MethodConfig, data: DataSpec) -> nn.Module:
    """``net`` itself when ``config.afscm == "off"``, else ``net`` behind an AFSC module of the config's mode."""
    mode = getattr(config, "afscm", "off")
    if mode not in AFSCM_MODES:
        raise ValueError(f"afscm must be one of {AFSCM_MODES}, got {mode!r}")
    if mode == "off":
        return net
    compression = FourierCompression(data.image_size, data.image_size, mode=mode, keep=config.afscm_keep,
                                     delta=config.afscm_delta)
    device = next(net.parameters()).device
    return CompressedInput(compression, net).to(device)


class AFSCmHost:
    """Mixin (first among the bases) for a Trainable method whose config is an :class:`AFSCmConfig`.

    With ``afscm="learned"`` the single training stage becomes two: ``soft masks`` for max(E − 1, 1) epochs and
    ``binary masks`` for one (paper §2.3: binarise at the end of the penultimate period, fine-tune in the last);
    a 1-epoch budget therefore trains two epochs. The other modes keep the host's stages."""

    def afscm_modules(self) -> list[FourierCompression]:
        return [m for net in self.networks().values() for m in net.modules() if isinstance(m, FourierCompression)]

    def afscm_penalty(self) -> torch.Tensor:
        """Σ δ·L_M over the host's AFSC modules for the masks of their last forward: add it to the host's loss."""
        terms = [m.penalty() for m in self.afscm_modules()]
        return sum(terms[1:], terms[0]) if terms else torch.zeros(())

    def stages(self):
        from benchmark.trainer import Stage

        base = super().stages()
        if getattr(self.config, "afscm", "off") != "learned":
            return base
        if len(base) != 1:
            raise ValueError(f"{self.name}: the AFSC module splits a single training stage, this method has "
                             f"{len(base)}")
        soft_epochs = max(int(self.config.epochs) - 1, 1)
        return [Stage(SOFT_STAGE, epochs=soft_epochs), Stage(BINARY_STAGE, epochs=1)]

    def on_stage_end(self, step) -> None:
        if step.stage == SOFT_STAGE:
            for module in self.afscm_modules():
                module.binarise()
        super().on_stage_end(step)
